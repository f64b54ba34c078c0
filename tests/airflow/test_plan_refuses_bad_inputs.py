"""The run's first task refuses what `tenant-release validate` refuses, for every tenant at once, before any AWS call."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from tenant_release.airflow import steps

NOW = datetime(2027, 3, 2, 2, 30, tzinfo=UTC)  # outside the fixture's (absent) freezes


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(self, operation_name, api_params):
        calls.append(operation_name)
        raise AssertionError(f"an AWS call was made: {operation_name}")

    monkeypatch.setattr("botocore.client.BaseClient._make_api_call", refuse)
    return calls


def test_plan_refuses_parameters_the_template_does_not_allow(fleet_file: Path, no_aws: list[str]) -> None:
    text = fleet_file.read_text().replace("MemorySize: 256", "MemorySize: 300").replace("LogLevel: DEBUG", "LogLevel: LOUD")
    fleet_file.write_text(text)
    with pytest.raises(AirflowFailException) as refused:
        steps.plan({"release_tag": "v-1.4.0-qa"}, now=NOW, max_map_length=1024)
    message = str(refused.value)
    assert "tenant 'initech': LogLevel='LOUD' is not one of DEBUG, INFO, WARNING, ERROR" in message
    assert no_aws == []
    # acme is not in group qa, but a prod release names it too: the check covers the tenants the run would touch.
    with pytest.raises(AirflowFailException, match="tenant 'acme': MemorySize='300' is not one of 128, 256"):
        steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=1024)


def test_plan_refuses_a_fleet_file_with_a_key_written_twice(fleet_file: Path, no_aws: list[str]) -> None:
    fleet_file.write_text(fleet_file.read_text() + "gated_groups: []\n")
    with pytest.raises(AirflowFailException, match="key 'gated_groups' appears twice in one mapping, at line 15 and line 36"):
        steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=1024)
    assert no_aws == []


def test_plan_passes_the_fixture(fleet_file: Path, no_aws: list[str]) -> None:
    plan = steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=1024)
    assert plan["tenants"] == ["acme", "globex", "umbrella"] and no_aws == []


def hold(fleet_file: Path) -> None:
    """acme held back, umbrella pinned to 1.3, in two waves (canary: acme; general: the rest)."""
    text = fleet_file.read_text()
    text = text.replace("  - name: acme\n", '  - name: acme\n    hold: "customer freeze until 2027-01-10"\n')
    text = text.replace("  - name: umbrella\n", '  - name: umbrella\n    pin: "1.3"\n')
    waves = "rollout:\n  waves:\n    - {name: canary, groups: [canary]}\n    - {name: general}\n"
    fleet_file.write_text(text.replace("tenants:\n", waves + "tenants:\n", 1))


def test_plan_keeps_held_tenants_planned_but_out_of_targets_and_waves(fleet_file: Path, no_aws: list[str]) -> None:
    hold(fleet_file)
    plan = steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=1024)
    assert plan["tenants"] == ["acme", "globex", "umbrella"]  # the summary reports every planned tenant
    assert [t["tenant"] for t in plan["targets"]] == ["globex"]
    assert [(w["name"], w["tenants"]) for w in plan["waves"]] == [("general", ["globex"])]
    assert plan["held"] == [
        {"tenant": "acme", "reason": "held back: customer freeze until 2027-01-10"},
        {"tenant": "umbrella", "reason": "pinned to 1.3.x: 1.4.0 is not a 1.3 release"},
    ]
    assert plan["gated_tenants"] == ["globex"] and plan["override_hold"] == ""
    assert no_aws == []


def test_plan_refuses_a_named_held_tenant_and_records_an_override(fleet_file: Path, no_aws: list[str]) -> None:
    hold(fleet_file)
    with pytest.raises(AirflowFailException) as refused:
        steps.plan({"release_tag": "v1.4.0", "tenants": ["acme"]}, now=NOW, max_map_length=1024)
    assert str(refused.value).startswith(
        "tenant acme is held back: customer freeze until 2027-01-10; to deploy it anyway trigger with override_hold set to "
        "the reason"
    )
    plan = steps.plan(
        {"release_tag": "v1.4.0", "tenants": ["acme", "umbrella"], "override_hold": "CHG-7: customer asked"},
        now=NOW,
        max_map_length=1024,
    )
    assert [t["tenant"] for t in plan["targets"]] == ["acme", "umbrella"] and plan["held"] == []
    assert plan["override_hold"] == "CHG-7: customer asked"
    assert [(w["name"], w["tenants"]) for w in plan["waves"]] == [("canary", ["acme"]), ("general", ["umbrella"])]
    assert no_aws == []


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"tenants": ["acme"], "redeploy_of": "manual__1"}, "redeploy_of selects the tenants itself"),
        ({"redeploy_of": "manual run"}, "run id 'manual run' is not an Airflow run id"),
        ({"redeploy_of": "manual__1", "override_hold": "x"}, "a held tenant stays held (SKIPPED) in a redeploy"),
        ({"override_hold": "x"}, "override_hold deploys held or pinned tenants that the tenants param names"),
    ],
)
def test_plan_refuses_a_bad_redeploy_or_override_before_aws(
    params: dict, expect: str, fleet_file: Path, no_aws: list[str]
) -> None:
    with pytest.raises(AirflowFailException, match=re.escape(expect)):
        steps.plan({"release_tag": "v1.4.0", **params}, now=NOW, max_map_length=1024)
    assert no_aws == []


def test_a_wave_larger_than_airflow_maps_is_refused_and_waves_split_a_fleet_that_is(fleet_file: Path, no_aws: list[str]) -> None:
    with pytest.raises(AirflowFailException) as refused:
        steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=2)
    assert "puts 3 tenants in wave all, more than Airflow maps in one task ([core] max_map_length = 2)" in str(refused.value)
    assert "Split the fleet into more waves" in str(refused.value)
    waves = "rollout:\n  waves:\n    - {name: canary, groups: [canary]}\n    - {name: general}\n"
    fleet_file.write_text(fleet_file.read_text().replace("tenants:\n", waves + "tenants:\n", 1))
    plan = steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=2)
    assert [(wave["name"], wave["tenants"]) for wave in plan["waves"]] == [
        ("canary", ["acme"]),
        ("general", ["globex", "umbrella"]),
    ]
    assert no_aws == []
