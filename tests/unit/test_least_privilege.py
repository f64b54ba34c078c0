"""Least privilege, checked: who the orchestrator role trusts, and that the names the execution role may manage
can never cover the project's own roles and stacks.

The scanners' verdict over the templates (checkov, cfn-lint) is in test_template_security.py; the policies
themselves are read statement by statement in test_templates.py.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from tenant_release import cli
from tenant_release.aws.bootstrap import ORCHESTRATOR_PRINCIPAL_ENV, check_orchestrator_principal
from tenant_release.errors import TenantReleaseError

# --- the orchestrator role trusts one explicit principal --------------------------------------------------


def test_bootstrap_without_an_orchestrator_principal_is_refused_before_any_aws_call(
    moto: None, fleet_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ORCHESTRATOR_PRINCIPAL_ENV, raising=False)
    code = cli.main(["bootstrap"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "bootstrap needs the principal that may assume the orchestrator role" in err
    assert "--orchestrator-principal arn:aws:iam::<tooling account>:role/" in err and ORCHESTRATOR_PRINCIPAL_ENV in err
    assert boto3.client("cloudformation", region_name="us-east-1").list_stacks()["StackSummaries"] == []


def test_bootstrap_takes_the_principal_from_the_environment(
    moto: None, fleet_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    principal = "arn:aws:iam::123456789012:role/airflow-workers"
    monkeypatch.setenv(ORCHESTRATOR_PRINCIPAL_ENV, principal)
    assert cli.main(["bootstrap"]) == 0
    role = boto3.client("iam").get_role(RoleName="tenant-release-orchestrator")["Role"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": principal}


@pytest.mark.parametrize(
    "principal",
    [
        "arn:aws:iam::123456789012:root",
        "123456789012",
        "*",
        "arn:aws:sts::123456789012:assumed-role/airflow-workers/i-0abc",
        "arn:aws:iam::123456789012:role/*",
        "airflow-workers",
    ],
)
def test_an_account_or_wildcard_principal_is_refused_naming_what_to_pass(principal: str) -> None:
    with pytest.raises(TenantReleaseError) as raised:
        check_orchestrator_principal(principal)
    message = str(raised.value)
    assert repr(principal) in message and "is not the ARN of one IAM role or user" in message
    assert "--orchestrator-principal arn:aws:iam::<tooling account>:role/" in message


@pytest.mark.parametrize(
    "principal",
    ["arn:aws:iam::123456789012:role/airflow-workers", "arn:aws-cn:iam::123456789012:user/ci/deployer"],
)
def test_one_role_or_user_is_accepted(principal: str) -> None:
    check_orchestrator_principal(principal)
