"""Every template under include/templates passes cfn-lint and checkov; each finding left is justified in the template.

A finding is justified by a `Metadata: checkov: skip: [{id, comment}]` entry on the resource, and the comment says
why (checkov reports it as the skip's `suppress_comment`). checkov runs from its own virtualenv (`make checkov`;
its pins conflict with apache-airflow's) as a subprocess, once for all templates (a few seconds).

The templates under tests/fixtures (orders_app) are test inputs for the application-declared execution role, not
templates a user deploys or copies, so they are not held to this.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_all
from cfnlint.decode.cfn_yaml import loads
from tenant_release.packaging import package_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = ROOT / "include" / "templates"
TEMPLATES = sorted(TEMPLATES_DIR.rglob("*.yaml"))
APP_TEMPLATE = TEMPLATES_DIR / "app" / "template.yaml"
CHECKOV = Path(os.environ.get("TENANT_RELEASE_CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))
# A justification says why, in words; an id or "false positive" alone is not one.
MIN_JUSTIFICATION_CHARS = 60
# The tooling template with its tables' customer-key encryption and the bucket's justification taken out: the
# scan must report both, or this test could pass whatever the templates say.
WEAKENED = "weakened-tooling.yaml"


def _weaken(text: str) -> str:
    text = re.sub(r"\n      SSESpecification:\n(        .*\n)+", "\n", text)
    weakened = re.sub(r"\n    Metadata:\n      checkov:\n(        .*\n)+", "\n", text)
    assert weakened != text
    return weakened


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{file name relative to the repo (or WEAKENED): {"failed"|"skipped"|"passed": [check, ...]}}."""
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make checkov` (or point TENANT_RELEASE_CHECKOV at it)")
    weakened = tmp_path_factory.mktemp("checkov") / WEAKENED
    weakened.write_text(_weaken((TEMPLATES_DIR / "tooling.yaml").read_text(encoding="utf-8")), encoding="utf-8")
    command = [str(CHECKOV), "--framework", "cloudformation", "--output", "json", "--skip-download", "--compact"]
    # Relative paths: given an absolute one, checkov 3.3.30 checks its own `__file__` marker among a function's
    # environment variables and may take the checkout's path for a hard-coded secret (CKV_AWS_45).
    for path in (*(p.relative_to(ROOT) for p in TEMPLATES), weakened):
        command += ["--file", str(path)]
    # --skip-download: no call to the vendor's API (this needs no network); exit code 1 just means findings.
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode in (0, 1), completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert report["results"]["parsing_errors"] == []
    by_file: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind in ("failed", "skipped", "passed"):
        for check in report["results"][f"{kind}_checks"]:
            path = Path(check["file_abs_path"])
            name = WEAKENED if path.name == WEAKENED else str((ROOT / path).resolve().relative_to(ROOT))
            by_file.setdefault(name, {"failed": [], "skipped": [], "passed": []})[kind].append(check)
    return by_file


def _describe(check: dict[str, Any]) -> str:
    lines = check.get("file_line_range") or ["?", "?"]
    return f"{check['file_path']}:{lines[0]} {check['resource']} {check['check_id']} {check['check_name']}"


def test_checkov_scans_every_template(checkov_results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    scanned = {name for name, checks in checkov_results.items() if checks["passed"]}
    assert scanned >= {str(p.relative_to(ROOT)) for p in TEMPLATES} | {WEAKENED}


def test_checkov_finds_nothing_unjustified(checkov_results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    templates = {name: checks for name, checks in checkov_results.items() if name != WEAKENED}
    failed = [_describe(check) for checks in templates.values() for check in checks["failed"]]
    assert failed == [], "checkov findings; fix them, or justify each in the resource's Metadata.checkov.skip:\n" + (
        "\n".join(failed)
    )
    unexplained = [
        f"{_describe(check)}: {check['check_result'].get('suppress_comment')!r}"
        for checks in templates.values()
        for check in checks["skipped"]
        if len((check["check_result"].get("suppress_comment") or "").strip()) < MIN_JUSTIFICATION_CHARS
    ]
    assert unexplained == [], "skipped checks whose comment does not say why:\n" + "\n".join(unexplained)


def test_checkov_reports_what_the_templates_fixed_or_justified_once_it_is_taken_out(
    checkov_results: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    failed = {(check["resource"], check["check_id"]) for check in checkov_results[WEAKENED]["failed"]}
    assert {
        ("AWS::DynamoDB::Table.HistoryTable", "CKV_AWS_119"),
        ("AWS::DynamoDB::Table.ApprovalsTable", "CKV_AWS_119"),
        ("AWS::DynamoDB::Table.QueueTable", "CKV_AWS_119"),
        ("AWS::S3::Bucket.ArtifactBucket", "CKV_AWS_18"),
    } <= failed
    assert checkov_results[WEAKENED]["skipped"] == []


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(TEMPLATES_DIR)))
def test_cfn_lint_reports_no_errors_or_warnings(path: Path) -> None:
    # The application is linted as the release deploys it: packaged (its local code path rewritten to S3).
    text = package_template(path, key_prefix="releases/1.2.3").text if path == APP_TEMPLATE else path.read_text("utf-8")
    matches = lint_all(text)
    problems = [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches if m.rule.severity in {"error", "warning"}]
    assert problems == []


def test_every_table_in_the_tooling_account_is_encrypted_under_its_own_key() -> None:
    template = loads((TEMPLATES_DIR / "tooling.yaml").read_text(encoding="utf-8"))
    tables = {name: r for name, r in template["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"}
    assert tables
    for name, table in tables.items():
        assert table["Properties"]["SSESpecification"] == {
            "SSEEnabled": True,
            "SSEType": "KMS",
            "KMSMasterKeyId": {"Fn::GetAtt": ["ArtifactKey", "Arn"]},
        }, name
