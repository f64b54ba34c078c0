"""The fleet file's `application` section (issue 9): what it accepts, and what it refuses with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tenant_release.config import parse_fleet
from tenant_release.errors import FleetConfigError
from tenant_release.models import Capability, VerifyMode

ONE_SOURCE = "give exactly one of path (a folder), git (a repository address) or archive"
FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet.yaml"


def fleet_with(application: dict | None) -> str:
    fleet = yaml.safe_load(FLEET.read_text())
    if application is not None:
        fleet["application"] = application
    return yaml.safe_dump(fleet, sort_keys=False)


def test_without_a_section_the_sample_ships_and_is_verified_by_its_function() -> None:
    application = parse_fleet(fleet_with(None)).fleet.application

    assert application.is_sample and application.verify_mode == VerifyMode.FUNCTION_VERSION
    assert application.parameters.names() == {
        "version": "ReleaseVersion",
        "tenant": "TenantName",
        "bucket": "CodeS3Bucket",
        "name": "ApplicationName",
        "permissions_boundary": "PermissionsBoundaryArn",
    }


def test_your_own_application_is_verified_by_its_stack_and_uses_its_own_names() -> None:
    application = parse_fleet(
        fleet_with(
            {
                "source": {"git": "https://git.example.com/orders.git", "ref": "release/{version}"},
                "build": "make dist",
                "template": "infra/template.yaml",
                "parameters": {"version": "AppVersion", "tenant": None, "bucket": "Artifacts"},
                "capabilities": ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
                "health": [{"output": "Url", "http": True, "status": 204}],
            }
        )
    ).fleet.application

    assert application.verify_mode == VerifyMode.STACK
    assert application.parameters.names()["version"] == "AppVersion" and "tenant" not in application.parameters.names()
    assert application.capabilities == (Capability.IAM, Capability.AUTO_EXPAND)
    assert application.health[0].describe() == "GET the URL in output Url (expect 204)"


@pytest.mark.parametrize(
    ("application", "problem"),
    [
        (
            {"source": {"path": "app", "git": "https://x/y.git"}},
            ONE_SOURCE,
        ),
        ({"source": {}}, ONE_SOURCE),
        ({"source": {"path": "app", "ref": "main"}}, "ref applies to a git source only"),
        ({"source": {"git": "x", "archive": "s3://b/{version}.zip"}}, "give exactly one of path"),
        ({"source": {"git": "https://bot:ghp_secret@git.example.com/a.git"}}, "holds a password or token"),
        ({"source": {"git": "https://git.example.com/a.git", "ref": "{tag!r}"}}, "may use only {tag} and {version}"),
        ({"source": {"archive": "s3://ci/orders/{version.zip"}}, "must name the version with {version} or {tag}"),
        ({"build": "make"}, "build and template describe your own application: give its source too"),
        ({"source": {"path": "app"}, "template": "../elsewhere.yaml"}, "must be a path inside the source folder"),
        ({"source": {"path": "app"}, "parameters": {"bucket": None}}, "parameters.bucket may not be null"),
        ({"source": {"path": "app"}, "capabilities": ["CAPABILITY_EVERYTHING"]}, "application.capabilities.0"),
        (
            {"source": {"path": "app"}, "health": [{"output": "X", "http": True, "invoke": True}]},
            "exactly one of invoke, http or equals",
        ),
        ({"source": {"path": "app"}, "health": [{"output": "X", "equals": "1", "contains": "1"}]}, "contains applies to invoke"),
        ({"source": {"path": "app"}, "bulid": "make"}, "application.bulid: is not a known setting"),
        (
            {"source": {"path": "app"}, "stacks": [{"name": "api", "template": "a.yaml", "inputs": {"T": "data.Table"}}]},
            "must name an output of a stack declared before it",
        ),
        (
            {"source": {"path": "app"}, "template": "x.yaml", "stacks": [{"name": "a", "template": "a.yaml"}]},
            "give either template (one stack) or stacks (several), not both",
        ),
        ({"source": {"path": "app"}, "stacks": [{"name": "a", "template": "a.yaml"}] * 2}, "'a' is declared twice"),
        ({"source": {"path": "app"}, "stacks": [{"name": "my-stack", "template": "a.yaml"}]}, "must be letters and digits"),
    ],
)
def test_a_bad_application_section_is_refused_naming_the_field(application: dict, problem: str) -> None:
    with pytest.raises(FleetConfigError, match="is invalid") as refused:
        parse_fleet(fleet_with(application))

    assert problem in str(refused.value)
