"""Least privilege, checked: who the orchestrator role trusts, and that the names the execution role may manage
can never cover the project's own roles and stacks.

The scanners' verdict over the templates (checkov, cfn-lint) is in test_template_security.py; the policies
themselves are read statement by statement in test_templates.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import boto3
import pytest
from cfnlint.decode.cfn_yaml import loads
from tenant_release import cli
from tenant_release.aws.bootstrap import (
    ORCHESTRATOR_PRINCIPAL_ENV,
    TENANT_TEMPLATE,
    bootstrap_targets,
    check_orchestrator_principal,
)
from tenant_release.config import load_fleet
from tenant_release.errors import FleetConfigError, TenantReleaseError

from tests.conftest import ORCHESTRATOR_PRINCIPAL

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


def test_make_run_and_docker_compose_pass_the_identity_the_emulation_runs_as(moto: None, tmp_path: Path) -> None:
    import local_stack  # scripts/, on sys.path through tests/conftest.py
    import yaml

    run_env = local_stack.environment(local_stack.Stack(state_dir=tmp_path))
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yaml").read_text(encoding="utf-8"))
    compose_env = compose["services"]["tenant-release-bootstrap"]["environment"]
    caller = boto3.client("sts").get_caller_identity()["Arn"].replace(":sts:", ":iam:")  # moto's, for the fake keys
    assert run_env[ORCHESTRATOR_PRINCIPAL_ENV] == compose_env[ORCHESTRATOR_PRINCIPAL_ENV] == ORCHESTRATOR_PRINCIPAL == caller
    check_orchestrator_principal(caller)


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


# --- the application name prefix never covers tenant-release's own resources -----------------------------

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet.yaml"


def _fleet_with(defaults: str, *, tooling: str = "") -> str:
    text = FLEET.read_text(encoding="utf-8").replace("defaults:\n", f"defaults:\n{defaults}")
    return text.replace("  artifact_bucket: tr-test-artifacts\n", f"  artifact_bucket: tr-test-artifacts\n{tooling}")


@pytest.mark.parametrize(
    ("defaults", "tooling", "clash"),
    [
        # The example: `tenant-{name}` shares `tenant-` with every tenant-release name.
        (
            "  stack_name: tenant-{name}\n  function_name: tenant-{name}\n",
            "",
            "deploy role 'tenant-release-deploy', CloudFormation execution role 'tenant-release-cfn-execution', "
            "orchestrator role 'tenant-release-orchestrator', bootstrap stack 'tenant-release-bootstrap', "
            "tooling stack 'tenant-release-tooling'",
        ),
        ("  stack_name: tenant-release-{name}\n  function_name: tenant-release-{name}\n", "", "bootstrap stack"),
        ("  stack_name: tr-test-{name}\n  function_name: tr-test-{name}\n", "", "tooling artifact bucket 'tr-test-artifacts'"),
        (
            "  deploy_role_name: apps-deployer\n  stack_name: apps-{name}\n  function_name: apps-{name}\n",
            "",
            "deploy role 'apps-deployer'",
        ),
        ("  stack_name: ledger-{name}\n  function_name: ledger-{name}\n", "  history_table: ledger-history\n", "history table"),
        (
            "  artifact_bucket: 'app-{account_id}'\n  stack_name: app-{name}\n  function_name: app-{name}\n",
            "",
            "artifact bucket 'app-",
        ),
    ],
    ids=["tenant-", "tenant-release-", "tooling-bucket", "deploy-role", "history-table", "tenant-bucket"],
)
def test_a_prefix_covering_the_projects_own_names_is_refused_naming_the_clash_and_the_fix(
    tmp_path: Path, defaults: str, tooling: str, clash: str
) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(_fleet_with(defaults, tooling=tooling), encoding="utf-8")
    with pytest.raises(FleetConfigError) as raised:
        load_fleet(path)
    message = str(raised.value)
    assert "the application name prefix" in message and clash in message
    assert "Give the application a prefix of its own, e.g. stack_name and function_name 'tenant-app-{name}'" in message


def test_validate_refuses_the_tenant_prefix_once_for_every_target(fleet_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet_file.write_text(_fleet_with("  stack_name: tenant-{name}\n  function_name: tenant-{name}\n"), encoding="utf-8")
    code = cli.main(["validate"])
    out, err = capsys.readouterr()
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert code == 2 and out == "" and len(problems) == 1, err  # one problem, naming every target it affects
    assert "dev target 'dev', tenant 'acme'" in problems[0]
    assert "the application name prefix 'tenant-'" in problems[0] and "deploy role 'tenant-release-deploy'" in problems[0]


def test_the_default_prefix_and_a_prefix_of_its_own_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(_fleet_with("  stack_name: orders-{name}\n  function_name: orders-{name}-api\n"), encoding="utf-8")
    assert {t.stack_name for t in load_fleet(path).tenants()} == {
        f"orders-{n}" for n in ("acme", "globex", "initech", "umbrella")
    }
    assert load_fleet(FLEET).target("acme").stack_name == "tenant-app-acme"


def test_the_execution_role_is_denied_the_projects_own_resources_whatever_the_prefix() -> None:
    template = loads(TENANT_TEMPLATE.read_text(encoding="utf-8"))
    policies = template["Resources"]["ExecutionRole"]["Properties"]["Policies"]
    (deny,) = [s for p in policies for s in p["PolicyDocument"]["Statement"] if s.get("Sid") == "NeverManageTenantRelease"]
    assert deny["Effect"] == "Deny" and "Condition" not in deny
    assert set(deny["Action"]) == {"iam:*", "cloudformation:*", "s3:*", "kms:*"}
    own = "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/"
    assert deny["Resource"] == [
        {"Fn::Sub": own + "${DeployRoleName}"},
        {"Fn::Sub": own + "${ExecutionRoleName}"},
        {"Fn::Sub": own + "${OrchestratorRoleName}"},
        {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:policy/${AppNamePrefix}permissions-boundary"},
        {"Fn::Sub": "arn:${AWS::Partition}:cloudformation:*:${AWS::AccountId}:stack/${AWS::StackName}/*"},
        {"Fn::GetAtt": ["ArtifactBucket", "Arn"]},  # the bucket itself; the role still reads the code in it
        {"Fn::Sub": "arn:${AWS::Partition}:kms:*:${AWS::AccountId}:${KmsKeyAlias}"},
    ]


def _iam_in(account_id: str):
    """An IAM client acting in another emulated account (moto lets any role be assumed)."""
    creds = boto3.client("sts").assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/inspector", RoleSessionName="inspector")
    keys = creds["Credentials"]
    return boto3.client(
        "iam",
        aws_access_key_id=keys["AccessKeyId"],
        aws_secret_access_key=keys["SecretAccessKey"],
        aws_session_token=keys["SessionToken"],
    )


def test_each_bootstrapped_execution_role_trusts_cloudformation_only_for_its_own_account(bootstrapped) -> None:
    targets = bootstrap_targets(bootstrapped)
    assert len({t.account_id for t in targets}) == 5  # dev (in the tooling account) and four tenant accounts
    for target in targets:
        role = _iam_in(target.account_id).get_role(RoleName=target.execution_role_arn.rsplit("/", 1)[1])["Role"]
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "cloudformation.amazonaws.com"}
        assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": target.account_id}}


@pytest.mark.parametrize(
    ("approver", "refusal"),
    [
        ("arn:aws:iam::123456789012:root", "is not the ARN of one IAM role or user"),
        ("arn:aws:iam::123456789012:role/*", "is not the ARN of one IAM role or user"),
        ("arn:aws:iam::123456789012:role/tenant-release-orchestrator", "the identity that deploys may not approve"),
        (ORCHESTRATOR_PRINCIPAL, "the approver principal is the orchestrator principal"),
    ],
)
def test_an_approver_principal_that_opens_approving_to_an_account_or_to_the_deployer_is_refused(
    fleet_file: Path, approver: str, refusal: str
) -> None:
    from tenant_release.aws.bootstrap import tooling_parameters

    with pytest.raises(TenantReleaseError, match=re.escape(refusal)):
        tooling_parameters(load_fleet(fleet_file), tooling_principal_arn=ORCHESTRATOR_PRINCIPAL, approver_principal_arn=approver)
    people = "arn:aws:iam::123456789012:role/release-approvers"
    loaded = load_fleet(fleet_file)
    parameters = tooling_parameters(loaded, tooling_principal_arn=ORCHESTRATOR_PRINCIPAL, approver_principal_arn=people)
    assert parameters["ApproverTrustedPrincipalArn"] == people
