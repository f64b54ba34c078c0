"""Security and deployability checks of the CloudFormation templates in include/templates.

Most checks read the templates themselves: moto 5.2.5 does not enforce IAM, key or bucket policies and
drops several properties when it creates stacks (bucket policies, public access block, ownership
controls, versioning, bucket keys, point-in-time recovery), so those can only be asserted statically.
The moto tests (through the shared `moto` fixture: `mock_aws` with fake credentials and scripts/moto_compat)
show that each template creates cleanly and that the resources moto does model exist.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import io
import json
import re
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode.cfn_yaml import loads
from tenant_release import naming
from tenant_release.models import ReleaseParameterNames
from tenant_release.packaging import package_template

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "include" / "templates"
APP_TEMPLATE = TEMPLATES_DIR / "app" / "template.yaml"
APP_HANDLER = TEMPLATES_DIR / "app" / "src" / "index.py"
TOOLING_TEMPLATE = TEMPLATES_DIR / "tooling.yaml"
BOOTSTRAP_TEMPLATE = TEMPLATES_DIR / "tenant-bootstrap.yaml"
ALL_TEMPLATES = (APP_TEMPLATE, TOOLING_TEMPLATE, BOOTSTRAP_TEMPLATE)

REGION = "us-east-1"
TOOLING_ACCOUNT_ID = "000000000001"
BOUNDARY_ARN = "arn:aws:iam::123456789012:policy/tenant-app-permissions-boundary"

NO_VALUE = {"Ref": "AWS::NoValue"}
OWN_ACCOUNT_ROOT = {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
ORCHESTRATOR_ROLE_ARN = {"Fn::Sub": "arn:${AWS::Partition}:iam::${ToolingAccountId}:role/${OrchestratorRoleName}"}
APP_FUNCTIONS = {"Fn::Sub": "arn:${AWS::Partition}:lambda:*:${AWS::AccountId}:function:${AppNamePrefix}*"}
APP_ROLES = {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${AppNamePrefix}*"}
APP_STACKS = {"Fn::Sub": "arn:${AWS::Partition}:cloudformation:*:${AWS::AccountId}:stack/${AppNamePrefix}*/*"}
APP_LOG_GROUPS = {"Fn::Sub": "arn:${AWS::Partition}:logs:*:${AWS::AccountId}:log-group:/aws/lambda/${AppNamePrefix}*"}
# The IAM actions that can widen what a role may do and that support the iam:PermissionsBoundary
# condition key; the execution role may use them on application roles only under the boundary.
BOUNDARY_GATED_ACTIONS = (
    "iam:CreateRole",
    "iam:PutRolePolicy",
    "iam:AttachRolePolicy",
    "iam:DetachRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:PutRolePermissionsBoundary",
)
BOUNDARY_CONDITION = {"StringEquals": {"iam:PermissionsBoundary": {"Ref": "AppPermissionsBoundary"}}}
# Actions without resource-level permissions: the only ones an identity policy may grant on "*".
RESOURCE_STAR_ACTIONS = {"cloudformation:ValidateTemplate"}

# moto has no CloudFormation model for bucket policies; it skips them with this warning.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning")


# --- reading templates --------------------------------------------------------------------------


@cache
def _template(path: Path) -> dict[str, Any]:
    """The template as data, short-form tags (!Sub, !If, ...) turned into their Fn:: mappings."""
    return loads(path.read_text(encoding="utf-8"))


def _resources(path: Path, resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in _template(path)["Resources"].items() if resource["Type"] == resource_type}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _branches(value: Any) -> Iterator[Any]:
    """Every concrete value a property can take: both sides of Fn::If, nothing for AWS::NoValue."""
    if value == NO_VALUE:
        return
    if isinstance(value, dict) and list(value) == ["Fn::If"]:
        _, if_true, if_false = value["Fn::If"]
        yield from _branches(if_true)
        yield from _branches(if_false)
        return
    yield value


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [statement for item in _listed(document["Statement"]) for statement in _branches(item)]


def _policy_documents(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(kind, location, document) for every policy: kind is identity, trust, key or bucket."""
    for name, resource in _template(path)["Resources"].items():
        props = resource.get("Properties", {})
        kind = resource["Type"]
        if kind == "AWS::IAM::Role":
            yield "trust", f"{name}.AssumeRolePolicyDocument", props["AssumeRolePolicyDocument"]
            for policy in props.get("Policies", []):
                yield "identity", f"{name}.{policy['PolicyName']}", policy["PolicyDocument"]
        elif kind in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            yield "identity", name, props["PolicyDocument"]
        elif kind == "AWS::KMS::Key":
            yield "key", f"{name}.KeyPolicy", props["KeyPolicy"]
        elif kind == "AWS::S3::BucketPolicy":
            yield "bucket", name, props["PolicyDocument"]


def _all_statements(kinds: set[str] | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in ALL_TEMPLATES:
        for kind, location, document in _policy_documents(path):
            if kinds is None or kind in kinds:
                for statement in _statements(document):
                    yield kind, f"{path.name}:{location}", statement


def _role_statements(path: Path, role: str) -> list[dict[str, Any]]:
    props = _template(path)["Resources"][role]["Properties"]
    return [s for policy in props["Policies"] for s in _statements(policy["PolicyDocument"])]


def _statements_with_action(statements: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [s for s in statements if any(a.startswith(prefix) for a in _listed(s["Action"]))]


def _by_sid(statements: list[dict[str, Any]], sid: str) -> dict[str, Any]:
    (statement,) = [s for s in statements if s.get("Sid") == sid]
    return statement


def _is_wildcard_action(action: str) -> bool:
    return action == "*" or action.endswith(":*")


# --- IAM: no wildcards, least privilege ---------------------------------------------------------


def test_no_allow_statement_grants_every_action_of_a_service_on_every_resource() -> None:
    offenders = []
    for kind, location, statement in _all_statements():
        if statement["Effect"] != "Allow":
            continue
        assert "NotAction" not in statement, location
        assert "NotResource" not in statement, location
        resources = _listed(statement.get("Resource", []))
        wildcard = [a for a in _listed(statement.get("Action", [])) if _is_wildcard_action(a)]
        # The default key policy (own account root, kms:*) only delegates the key to IAM policies.
        key_admin = kind == "key" and statement["Principal"] == {"AWS": OWN_ACCOUNT_ROOT}
        if wildcard and "*" in resources and not key_admin:
            offenders.append((location, statement.get("Sid"), wildcard))
    assert offenders == []


def test_only_key_policies_use_a_wildcard_action_and_only_for_their_own_account_root() -> None:
    for kind, location, statement in _all_statements():
        if statement["Effect"] == "Allow" and any(map(_is_wildcard_action, _listed(statement["Action"]))):
            assert kind == "key", location
            assert statement["Principal"] == {"AWS": OWN_ACCOUNT_ROOT}, location


def test_no_statement_mentions_lambda_star() -> None:
    actions = {a for _, _, s in _all_statements() for a in _listed(s.get("Action", []))}
    assert not {a for a in actions if a.lower() in {"lambda:*", "*"}}


def test_identity_policies_use_resource_star_only_for_actions_without_resource_permissions() -> None:
    for _, location, statement in _all_statements({"identity"}):
        if "*" in _listed(statement["Resource"]):
            assert set(_listed(statement["Action"])) <= RESOURCE_STAR_ACTIONS, location


def test_orchestrator_role_reaches_only_deploy_roles_its_own_data_and_release_copies() -> None:
    statements = _role_statements(TOOLING_TEMPLATE, "OrchestratorRole")
    sts = _statements_with_action(statements, "sts:")
    assert sts == [_by_sid(statements, "AssumeTenantDeployRoles")]
    assert sts[0]["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:iam::*:role/${DeployRoleName}"}
    tenant_copies = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${TenantBucketPrefix}*/${ReleasePrefix}/*"}
    for statement in _statements_with_action(statements, "s3:"):
        assert statement["Resource"] in (
            {"Fn::Sub": "${ArtifactBucket.Arn}/${ReleasePrefix}/*"},
            {"Fn::GetAtt": ["ArtifactBucket", "Arn"]},
            tenant_copies,
            {"Fn::Sub": "arn:${AWS::Partition}:s3:::${TenantBucketPrefix}*"},
            {"Fn::Sub": "${ArtifactBucket.Arn}/approvals/*"},  # read only: see the approvals test below
        )
        if statement["Resource"] == tenant_copies:
            assert set(statement["Action"]) == {"s3:PutObject", "s3:GetObject"}  # no delete, no listing of other keys
    tenant_keys, own_key = _statements_with_action(statements, "kms:")
    assert own_key["Resource"] == {"Fn::GetAtt": ["ArtifactKey", "Arn"]}
    # Another account's key is usable only if its key policy names this role, and here only through S3.
    assert set(tenant_keys["Action"]) == {"kms:GenerateDataKey", "kms:Encrypt"}
    assert tenant_keys["Condition"] == {"StringLike": {"kms:ViaService": {"Fn::Sub": "s3.*.${AWS::URLSuffix}"}}}
    dynamodb = _by_sid(statements, "RecordDeploymentsAndQueue")
    assert "dynamodb:DeleteItem" not in dynamodb["Action"]  # the audit tables
    # The attempts behind the history are append-only: added and read, never changed or deleted.
    attempts = _by_sid(statements, "AppendAttempts")
    assert set(attempts["Action"]) == {"dynamodb:PutItem", "dynamodb:Query"}
    assert attempts["Resource"] == {"Fn::GetAtt": ["AttemptsTable", "Arn"]}
    # Only a lease, which lives while a deploy does, may be deleted; and that table is all its statement reaches.
    leases = _by_sid(statements, "LeaseTenantsWhileDeploying")
    assert leases["Resource"] == {"Fn::GetAtt": ["LeasesTable", "Arn"]}
    assert set(leases["Action"]) == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
    assert [s["Sid"] for s in _statements_with_action(statements, "dynamodb:")] == [
        "RecordDeploymentsAndQueue",
        "AppendAttempts",
        "ReadApprovalRecords",
        "LeaseTenantsWhileDeploying",
    ]
    assert {"Fn::Sub": "${HistoryTable.Arn}/index/by-run"} in dynamodb["Resource"]
    assert {"Fn::GetAtt": ["QueueTable", "Arn"]} in dynamodb["Resource"]


def test_tooling_account_names_no_tenant_and_grants_nothing_across_accounts() -> None:
    template = _template(TOOLING_TEMPLATE)
    assert not any("Tenant" in name and "Account" in name for name in template["Parameters"])
    key_policy = template["Resources"]["ArtifactKey"]["Properties"]["KeyPolicy"]
    bucket_policy = template["Resources"]["ArtifactBucketPolicy"]["Properties"]["PolicyDocument"]
    allowed = [s for s in _statements(key_policy) + _statements(bucket_policy) if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allowed] == [{"AWS": OWN_ACCOUNT_ROOT}]  # the default key policy only


def test_tenant_bucket_and_key_grant_only_the_orchestrator_role_and_only_release_copies() -> None:
    template = _template(BOOTSTRAP_TEMPLATE)
    key_policy = template["Resources"]["ArtifactKey"]["Properties"]["KeyPolicy"]
    bucket_policy = template["Resources"]["ArtifactBucketPolicy"]["Properties"]["PolicyDocument"]
    outside = [
        s
        for s in _statements(key_policy) + _statements(bucket_policy)
        if s["Effect"] == "Allow" and s["Principal"] != {"AWS": OWN_ACCOUNT_ROOT}
    ]
    assert {json.dumps(s["Principal"]) for s in outside} == {json.dumps({"AWS": ORCHESTRATOR_ROLE_ARN})}
    key_grant = _by_sid(outside, "OrchestratorEncryptsReleaseCopies")
    assert set(key_grant["Action"]) == {"kms:GenerateDataKey", "kms:Encrypt"}  # never Decrypt: it cannot read copies back
    assert key_grant["Condition"] == {"StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.${AWS::URLSuffix}"}}}
    staging = _by_sid(outside, "OrchestratorStagesReleases")
    assert (set(staging["Action"]), staging["Resource"]) == (
        {"s3:PutObject", "s3:GetObject"},
        {"Fn::Sub": "${ArtifactBucket.Arn}/${ReleasePrefix}/*"},
    )
    listing = _by_sid(outside, "OrchestratorListsReleases")
    assert listing["Condition"]["StringLike"] == {"s3:prefix": [{"Fn::Sub": "${ReleasePrefix}/*"}]}


def test_deploy_role_manages_only_application_stacks_and_passes_only_the_execution_role() -> None:
    statements = _role_statements(BOOTSTRAP_TEMPLATE, "DeployRole")
    for statement in _statements_with_action(statements, "cloudformation:"):
        if statement["Action"] != "cloudformation:ValidateTemplate":
            assert statement["Resource"] == APP_STACKS
    (pass_role,) = _statements_with_action(statements, "iam:")
    assert pass_role["Action"] == "iam:PassRole"
    assert pass_role["Resource"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com"}}
    for statement in _statements_with_action(statements, "lambda:"):
        assert set(statement["Action"]) == {"lambda:GetFunctionConfiguration", "lambda:InvokeFunction"}
        assert statement["Resource"] == APP_FUNCTIONS
    # It reads its own bucket (CloudFormation fetches the template as the caller) and writes nothing there,
    # and it has no access at all to the tooling account's bucket or key.
    (s3,) = _statements_with_action(statements, "s3:")
    assert (set(s3["Action"]), s3["Resource"]) == (
        {"s3:GetObject", "s3:GetObjectVersion"},
        {"Fn::Sub": "${ArtifactBucket.Arn}/${ReleasePrefix}/*"},
    )
    (kms,) = _statements_with_action(statements, "kms:")
    assert kms["Resource"] == {"Fn::GetAtt": ["ArtifactKey", "Arn"]}
    assert "Tooling" not in json.dumps(statements).replace("ToolingAccountId", "")


def test_deploy_role_only_reads_the_alarms_of_its_own_account() -> None:
    # Health alarms are named by the tenant, so not by the application prefix; read-only, never another account's.
    statements = _role_statements(BOOTSTRAP_TEMPLATE, "DeployRole")
    (alarms,) = _statements_with_action(statements, "cloudwatch:")
    assert (alarms["Sid"], alarms["Action"]) == ("ReadHealthAlarms", "cloudwatch:DescribeAlarms")
    assert alarms["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:cloudwatch:*:${AWS::AccountId}:alarm:*"}
    assert "Condition" not in alarms


def test_execution_role_manages_only_application_functions_roles_and_logs() -> None:
    # What it may do; the Deny on the project's own resources is checked in test_least_privilege.py.
    statements = [s for s in _role_statements(BOOTSTRAP_TEMPLATE, "ExecutionRole") if s.get("Sid") != "NeverManageTenantRelease"]
    for statement in _statements_with_action(statements, "lambda:"):
        assert statement["Resource"] == APP_FUNCTIONS
    iam = _statements_with_action(statements, "iam:")
    assert all(s["Resource"] == APP_ROLES for s in iam)
    allowed_iam_actions = {a for s in iam if s["Effect"] == "Allow" for a in _listed(s["Action"])}
    # Attaching a managed policy (e.g. AdministratorAccess) or dropping a boundary would escalate.
    assert not allowed_iam_actions & {"iam:AttachRolePolicy", "iam:DeleteRolePermissionsBoundary", "iam:CreateUser"}
    assert not any(map(_is_wildcard_action, allowed_iam_actions))
    (pass_role,) = [s for s in iam if s["Action"] == "iam:PassRole"]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}
    for statement in _statements_with_action(statements, "logs:"):
        if statement["Action"] != "logs:DescribeLogGroups":
            assert statement["Resource"] == APP_LOG_GROUPS
    (s3,) = _statements_with_action(statements, "s3:")
    assert s3["Resource"] == {"Fn::Sub": "${ArtifactBucket.Arn}/${ReleasePrefix}/*"}
    (kms,) = _statements_with_action(statements, "kms:")
    assert (kms["Action"], kms["Resource"]) == ("kms:Decrypt", {"Fn::GetAtt": ["ArtifactKey", "Arn"]})


# --- the application roles' permissions boundary ------------------------------------------------


def _unbounded_role_grants(statements: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """(Sid, action) of every allowed boundary-gated action not conditioned on the application boundary.

    Action patterns are expanded, so e.g. `iam:Put*` or `iam:*` counts as every action it covers.
    """
    unbounded = []
    for statement in statements:
        if statement["Effect"] != "Allow":
            continue
        for pattern in _listed(statement["Action"]):
            for action in BOUNDARY_GATED_ACTIONS:
                if fnmatch.fnmatchcase(action.lower(), pattern.lower()) and statement.get("Condition") != BOUNDARY_CONDITION:
                    unbounded.append((statement.get("Sid"), action))
    return unbounded


def test_app_permissions_boundary_allows_only_writing_application_logs() -> None:
    template = _template(BOOTSTRAP_TEMPLATE)
    (name,) = _resources(BOOTSTRAP_TEMPLATE, "AWS::IAM::ManagedPolicy")
    assert name == "AppPermissionsBoundary"
    props = template["Resources"][name]["Properties"]
    assert props["ManagedPolicyName"] == {"Fn::Sub": "${AppNamePrefix}permissions-boundary"}
    assert "Path" not in props  # naming.app_permissions_boundary_arn assumes the default path "/"
    statements = _statements(props["PolicyDocument"])
    assert statements
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        actions = _listed(statement["Action"])
        assert not any("*" in action for action in actions), actions
        assert set(actions) <= {"logs:CreateLogStream", "logs:PutLogEvents"}
        assert _listed(statement["Resource"]) == [APP_LOG_GROUPS]
    assert template["Outputs"]["AppPermissionsBoundaryArn"]["Value"] == {"Ref": name}


@pytest.mark.parametrize("path", ALL_TEMPLATES, ids=lambda p: p.name)
def test_every_role_permission_grant_requires_the_app_permissions_boundary(path: Path) -> None:
    statements = [s for kind, _, document in _policy_documents(path) if kind == "identity" for s in _statements(document)]
    assert _unbounded_role_grants(statements) == []


def test_execution_role_creates_and_changes_app_roles_only_under_the_boundary() -> None:
    statements = _role_statements(BOOTSTRAP_TEMPLATE, "ExecutionRole")
    bounded = [s for s in statements if s.get("Condition") == BOUNDARY_CONDITION]
    assert all(s["Effect"] == "Allow" and s["Resource"] == APP_ROLES for s in bounded)
    bounded_actions = {a for s in bounded for a in _listed(s["Action"])}
    # What CloudFormation needs to create, update (including adding the boundary to an existing
    # role) and delete the application role.
    assert {"iam:CreateRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:PutRolePermissionsBoundary"} <= (bounded_actions)
    deny = _by_sid(statements, "KeepApplicationRoleBoundaries")
    assert (deny["Effect"], deny["Action"], deny["Resource"]) == ("Deny", "iam:DeleteRolePermissionsBoundary", APP_ROLES)
    assert "Condition" not in deny


def test_the_boundary_check_catches_a_grant_without_the_condition() -> None:
    """The template with the condition dropped, or a wildcard action added, fails the check above."""
    statements = _role_statements(BOOTSTRAP_TEMPLATE, "ExecutionRole")
    assert _unbounded_role_grants(statements) == []
    dropped = copy.deepcopy(statements)
    for statement in dropped:
        statement.pop("Condition", None)
    assert ("ManageBoundedApplicationRoles", "iam:CreateRole") in _unbounded_role_grants(dropped)
    assert ("ManageBoundedApplicationRoles", "iam:PutRolePolicy") in _unbounded_role_grants(dropped)
    other_key = copy.deepcopy(statements)
    _by_sid(other_key, "ManageBoundedApplicationRoles")["Condition"] = {"StringLike": {"iam:PermissionsBoundary": "*"}}
    assert _unbounded_role_grants(other_key)
    widened = [*statements, {"Sid": "Sneaky", "Effect": "Allow", "Action": "iam:Put*", "Resource": APP_ROLES}]
    assert ("Sneaky", "iam:PutRolePolicy") in _unbounded_role_grants(widened)


def test_app_roles_carry_the_permissions_boundary_parameter() -> None:
    template = _template(APP_TEMPLATE)
    assert template["Parameters"]["PermissionsBoundaryArn"]["Type"] == "String"
    assert "Default" not in template["Parameters"]["PermissionsBoundaryArn"]
    roles = _resources(APP_TEMPLATE, "AWS::IAM::Role")
    assert roles
    for role in roles.values():
        assert role["Properties"]["PermissionsBoundary"] == {"Ref": "PermissionsBoundaryArn"}


def test_the_sample_declares_every_parameter_the_release_sets_by_default() -> None:
    names = ReleaseParameterNames().names()
    assert names["permissions_boundary"] == "PermissionsBoundaryArn"
    packaged = json.loads(package_template(APP_TEMPLATE, key_prefix="releases/1.2.3").text)
    assert set(names.values()) <= set(packaged["Parameters"])


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("eu-west-1", "arn:aws:iam::111111111111:policy/tenant-app-permissions-boundary"),
        ("cn-north-1", "arn:aws-cn:iam::111111111111:policy/tenant-app-permissions-boundary"),
        ("us-gov-west-1", "arn:aws-us-gov:iam::111111111111:policy/tenant-app-permissions-boundary"),
    ],
)
def test_app_permissions_boundary_arn(region: str, expected: str) -> None:
    assert naming.app_permissions_boundary_arn(account_id="111111111111", region=region, prefix="tenant-app-") == expected


# --- trust policies -----------------------------------------------------------------------------


def test_deploy_role_trusts_only_the_orchestrator_role() -> None:
    trust = _template(BOOTSTRAP_TEMPLATE)["Resources"]["DeployRole"]["Properties"]["AssumeRolePolicyDocument"]
    statements = _statements(trust)
    assert all(s["Effect"] == "Allow" for s in statements)
    assert all(s["Principal"] == {"AWS": ORCHESTRATOR_ROLE_ARN} for s in statements)
    actions = {a for s in statements for a in _listed(s["Action"])}
    assert actions == {"sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"}


def test_deploy_role_requires_the_external_id_when_one_is_set() -> None:
    template = _template(BOOTSTRAP_TEMPLATE)
    trust = template["Resources"]["DeployRole"]["Properties"]["AssumeRolePolicyDocument"]
    (assume,) = _statements_with_action(_statements(trust), "sts:AssumeRole")
    assert assume["Condition"] == {
        "Fn::If": ["HasExternalId", {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}, NO_VALUE]
    }
    assert template["Conditions"]["HasExternalId"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ExternalId"}, ""]}]}


def test_execution_role_trusts_only_cloudformation_acting_for_its_own_account() -> None:
    trust = _template(BOOTSTRAP_TEMPLATE)["Resources"]["ExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert _statements(trust) == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "cloudformation.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
        }
    ]


APPROVALS_TABLE = {"Fn::GetAtt": ["ApprovalsTable", "Arn"]}
APPROVAL_OBJECTS = {"Fn::Sub": "${ArtifactBucket.Arn}/approvals/*"}
WRITES = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem", "dynamodb:DeleteItem", "s3:PutObject"}


def _grants(statements: list[dict[str, Any]], resource: Any) -> set[str]:
    """The actions the statements allow on `resource` (named exactly, or in a list)."""
    return {
        action
        for s in statements
        if s["Effect"] == "Allow" and resource in _listed(s["Resource"])
        for action in _listed(s["Action"])
    }


def test_the_orchestrator_reads_approval_records_but_cannot_write_one() -> None:
    # moto has no simulate_principal_policy: the rendered policy's statements are what IAM would evaluate.
    statements = _role_statements(TOOLING_TEMPLATE, "OrchestratorRole")
    assert _grants(statements, APPROVALS_TABLE) == {"dynamodb:GetItem"}
    assert _grants(statements, APPROVAL_OBJECTS) == {"s3:GetObject"}
    # No other statement reaches the approvals table or prefix through a wider resource.
    for statement in statements:
        for resource in _listed(statement["Resource"]):
            text = json.dumps(resource)
            assert "ApprovalsTable" not in text or resource == APPROVALS_TABLE
            assert not (WRITES & set(_listed(statement["Action"])) and ("approvals" in text or text.endswith('Arn/*"}')))
    # A missing approval object must answer 404 (no record), not 403: listing covers the approvals prefix.
    listing = _by_sid(statements, "ListReleaseArtifacts")
    assert "approvals/*" in listing["Condition"]["StringLike"]["s3:prefix"]


def test_only_the_approver_role_writes_approvals_and_only_for_an_explicit_principal() -> None:
    template = _template(TOOLING_TEMPLATE)
    role = template["Resources"]["ApproverRole"]
    assert role["Condition"] == "HasApproverPrincipal"
    assert template["Conditions"]["HasApproverPrincipal"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ApproverTrustedPrincipalArn"}, ""]}]
    }
    assert template["Parameters"]["ApproverTrustedPrincipalArn"]["Default"] == ""
    (trust,) = _statements(role["Properties"]["AssumeRolePolicyDocument"])
    assert trust["Principal"] == {"AWS": {"Ref": "ApproverTrustedPrincipalArn"}}  # never the account root
    statements = _role_statements(TOOLING_TEMPLATE, "ApproverRole")
    assert _grants(statements, APPROVALS_TABLE) == {"dynamodb:GetItem", "dynamodb:PutItem"}
    assert _grants(statements, APPROVAL_OBJECTS) == {"s3:PutObject"}
    writes = {a for s in statements for a in _listed(s["Action"]) if a in WRITES}
    assert writes == {"dynamodb:PutItem", "s3:PutObject"}
    # It may pause, resume or abort a rollout: the rollout-control items of the leases table, nothing else of it.
    leases = {"Fn::GetAtt": ["LeasesTable", "Arn"]}
    (controls,) = [s for s in statements if leases in _listed(s["Resource"])]
    assert set(_listed(controls["Action"])) == {"dynamodb:GetItem", "dynamodb:PutItem"}
    assert controls["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["rollout#*"]}}
    # Besides its records, it reads build manifests (the sha256 it approves) and nothing else: no sts, no deploy.
    others = [
        s
        for s in statements
        if not {json.dumps(r, sort_keys=True) for r in _listed(s["Resource"])}
        & {json.dumps(r, sort_keys=True) for r in (APPROVALS_TABLE, APPROVAL_OBJECTS, leases)}
    ]
    assert {a for s in others for a in _listed(s["Action"])} == {
        "s3:GetObject",
        "s3:ListBucket",
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKey*",
        "kms:DescribeKey",
    }
    assert not _statements_with_action(statements, "sts:") and not _statements_with_action(statements, "cloudformation:")


def test_orchestrator_role_trusts_only_the_given_principal_never_an_account() -> None:
    template = _template(TOOLING_TEMPLATE)
    trust = template["Resources"]["OrchestratorRole"]["Properties"]["AssumeRolePolicyDocument"]
    (statement,) = _statements(trust)
    assert statement["Principal"] == {"AWS": {"Ref": "OrchestratorTrustedPrincipalArn"}}
    parameter = template["Parameters"]["OrchestratorTrustedPrincipalArn"]
    assert "Default" not in parameter  # a stack without it is refused by CloudFormation
    allowed = re.compile(parameter["AllowedPattern"])
    assert allowed.match("arn:aws:iam::123456789012:role/airflow-workers")
    assert allowed.match("arn:aws-us-gov:iam::123456789012:user/ci/deployer")
    for too_broad in (
        "",
        "arn:aws:iam::123456789012:root",
        "123456789012",
        "*",
        "arn:aws:sts::123456789012:assumed-role/airflow-workers/session",
        "arn:aws:iam::123456789012:role/*",
    ):
        assert not allowed.match(too_broad), too_broad


# --- keys and buckets ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [TOOLING_TEMPLATE, BOOTSTRAP_TEMPLATE], ids=lambda p: p.name)
def test_kms_keys_rotate(path: Path) -> None:
    keys = _resources(path, "AWS::KMS::Key")
    assert keys
    assert all(key["Properties"]["EnableKeyRotation"] is True for key in keys.values())


@pytest.mark.parametrize("path", [TOOLING_TEMPLATE, BOOTSTRAP_TEMPLATE], ids=lambda p: p.name)
def test_buckets_are_private_owner_enforced_and_kms_encrypted(path: Path) -> None:
    buckets = _resources(path, "AWS::S3::Bucket")
    assert buckets
    for bucket in buckets.values():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": {"Fn::GetAtt": ["ArtifactKey", "Arn"]},
        }
        assert rule["BucketKeyEnabled"] is True


@pytest.mark.parametrize("path", [TOOLING_TEMPLATE, BOOTSTRAP_TEMPLATE], ids=lambda p: p.name)
def test_bucket_policies_deny_insecure_transport(path: Path) -> None:
    policies = _resources(path, "AWS::S3::BucketPolicy")
    assert {p["Properties"]["Bucket"]["Ref"] for p in policies.values()} == set(_resources(path, "AWS::S3::Bucket"))
    for policy in policies.values():
        deny = _by_sid(_statements(policy["Properties"]["PolicyDocument"]), "DenyInsecureTransport")
        assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:*")
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# --- the application ----------------------------------------------------------------------------


def test_app_template_is_plain_cloudformation_and_reports_the_release_version() -> None:
    template = _template(APP_TEMPLATE)
    assert "Transform" not in template
    (function,) = _resources(APP_TEMPLATE, "AWS::Lambda::Function").values()
    props = function["Properties"]
    assert (props["Runtime"], props["Handler"]) == ("python3.12", "index.handler")
    assert props["FunctionName"] == {"Ref": "ApplicationName"}
    assert props["Environment"]["Variables"] == {
        "RELEASE_VERSION": {"Ref": "ReleaseVersion"},
        "TENANT_NAME": {"Ref": "TenantName"},
        "LOG_LEVEL": {"Ref": "LogLevel"},
    }
    assert set(template["Outputs"]) == {"FunctionName", "FunctionArn", "ReleaseVersion"}


def test_app_role_may_only_write_its_own_logs() -> None:
    (statement,) = _role_statements(APP_TEMPLATE, "ExecutionRole")
    assert set(statement["Action"]) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert statement["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/aws/lambda/${ApplicationName}:*"
    }


def test_app_handler_returns_the_release_version_and_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEASE_VERSION", "v1.2.3")
    monkeypatch.setenv("TENANT_NAME", "acme")
    spec = importlib.util.spec_from_file_location("tenant_app_index", APP_HANDLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    response = module.handler({}, None)
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"message": "Hello!", "version": "v1.2.3", "tenant": "acme"}


# --- creating the stacks in moto ----------------------------------------------------------------


@pytest.fixture
def aws(moto: None) -> boto3.Session:
    """A session inside the shared `moto` fixture (fake credentials, moto_compat fixes applied)."""
    return boto3.Session(region_name=REGION)


def _create_stack(session: boto3.Session, name: str, template: Path | str, parameters: dict[str, str]) -> dict[str, str]:
    """Create a stack, require CREATE_COMPLETE and return its outputs."""
    cfn = session.client("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=template.read_text(encoding="utf-8") if isinstance(template, Path) else template,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    (stack,) = cfn.describe_stacks(StackName=name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def _bucket_kms_key(session: boto3.Session, bucket: str) -> str:
    (rule,) = session.client("s3").get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    default = rule["ApplyServerSideEncryptionByDefault"]
    assert default["SSEAlgorithm"] == "aws:kms"
    return default["KMSMasterKeyID"]


def _key_policy_sids(session: boto3.Session, key_arn: str) -> set[str]:
    raw = session.client("kms").get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    # Unpatched moto keeps a CloudFormation key policy as an object; it also keeps AWS::NoValue as null.
    policy = raw if isinstance(raw, dict) else json.loads(raw)
    return {s["Sid"] for s in policy["Statement"] if s}


def test_the_approver_role_exists_only_when_a_principal_is_named(aws: boto3.Session) -> None:
    workers = "arn:aws:iam::123456789012:role/airflow-workers"
    outputs = _create_stack(
        aws,
        "without-approver",
        TOOLING_TEMPLATE,
        {"ArtifactBucketName": "tooling-artifacts", "OrchestratorTrustedPrincipalArn": workers},
    )
    assert "ApproverRoleArn" not in outputs
    roles = [r["RoleName"] for r in aws.client("iam").list_roles()["Roles"]]
    assert "tenant-release-approver" not in roles and "tenant-release-orchestrator" in roles
    principal = "arn:aws:iam::123456789012:role/change-management"
    outputs = _create_stack(
        aws,
        "with-approver",
        TOOLING_TEMPLATE,
        {
            "ArtifactBucketName": "tooling-artifacts-2",
            "ApproverTrustedPrincipalArn": principal,
            "OrchestratorTrustedPrincipalArn": workers,
            "HistoryTableName": "h2",
            "ApprovalsTableName": "a2",
            "QueueTableName": "q2",
            "AttemptsTableName": "t2",
            "LeasesTableName": "l2",
            "OrchestratorRoleName": "o2",
            "KmsKeyAlias": "alias/k2",
        },
    )
    assert outputs["ApproverRoleArn"].endswith(":role/tenant-release-approver")
    role = aws.client("iam").get_role(RoleName="tenant-release-approver")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = trust if isinstance(trust, dict) else json.loads(trust)
    assert [s["Principal"] for s in trust["Statement"]] == [{"AWS": principal}]


def test_tooling_stack_creates_in_moto(aws: boto3.Session) -> None:
    workers = "arn:aws:iam::123456789012:role/airflow-workers"
    outputs = _create_stack(
        aws,
        "tenant-release-tooling",
        TOOLING_TEMPLATE,
        {"ArtifactBucketName": "tooling-artifacts", "OrchestratorTrustedPrincipalArn": workers},
    )
    assert outputs["HistoryTableName"] == "tenant-release-history"
    assert outputs["ApprovalsTableName"] == "tenant-release-approvals"

    dynamodb = aws.client("dynamodb")
    history = dynamodb.describe_table(TableName=outputs["HistoryTableName"])["Table"]
    assert history["KeySchema"] == [
        {"AttributeName": "tenant", "KeyType": "HASH"},
        {"AttributeName": "release", "KeyType": "RANGE"},
    ]
    assert history["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    (by_run,) = history["GlobalSecondaryIndexes"]
    assert (by_run["IndexName"], by_run["KeySchema"]) == (
        "by-run",
        [{"AttributeName": "run_id", "KeyType": "HASH"}, {"AttributeName": "tenant", "KeyType": "RANGE"}],
    )
    approvals = dynamodb.describe_table(TableName=outputs["ApprovalsTableName"])["Table"]
    assert [k["AttributeName"] for k in approvals["KeySchema"]] == ["tenant", "release"]
    queue = dynamodb.describe_table(TableName=outputs["QueueTableName"])["Table"]
    assert (outputs["QueueTableName"], queue["KeySchema"]) == (
        "tenant-release-queue",
        [{"AttributeName": "release", "KeyType": "HASH"}],
    )

    assert outputs["ArtifactBucketName"] == "tooling-artifacts"
    assert _bucket_kms_key(aws, "tooling-artifacts") == outputs["ArtifactKeyArn"]
    kms = aws.client("kms")
    assert kms.get_key_rotation_status(KeyId=outputs["ArtifactKeyArn"])["KeyRotationEnabled"] is True
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert outputs["ArtifactKeyArn"].endswith(aliases["alias/tenant-release-artifacts"])
    assert kms.describe_key(KeyId="alias/tenant-release-artifacts")["KeyMetadata"]["Arn"] == outputs["ArtifactKeyArn"]
    assert _key_policy_sids(aws, outputs["ArtifactKeyArn"]) == {"ToolingAccountAdministersKey"}

    role = aws.client("iam").get_role(RoleName="tenant-release-orchestrator")["Role"]
    assert role["Arn"] == outputs["OrchestratorRoleArn"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": workers}


@pytest.mark.parametrize("external_id", ["", "acme-3f9c"], ids=["no-external-id", "external-id"])
def test_tenant_bootstrap_stack_creates_in_moto(aws: boto3.Session, external_id: str) -> None:
    outputs = _create_stack(
        aws,
        "tenant-release-bootstrap",
        BOOTSTRAP_TEMPLATE,
        {
            "ToolingAccountId": TOOLING_ACCOUNT_ID,
            "ArtifactBucketName": "acme-artifacts",
            "ExternalId": external_id,
        },
    )
    assert outputs["ArtifactBucketName"] == "acme-artifacts"
    assert _bucket_kms_key(aws, "acme-artifacts") == outputs["ArtifactKeyArn"]
    assert aws.client("kms").get_key_rotation_status(KeyId=outputs["ArtifactKeyArn"])["KeyRotationEnabled"] is True

    iam = aws.client("iam")
    deploy = iam.get_role(RoleName="tenant-release-deploy")["Role"]
    assert deploy["Arn"] == outputs["DeployRoleArn"]
    orchestrator = f"arn:aws:iam::{TOOLING_ACCOUNT_ID}:role/tenant-release-orchestrator"
    statements = deploy["AssumeRolePolicyDocument"]["Statement"]
    assert {json.dumps(s["Principal"]) for s in statements} == {json.dumps({"AWS": orchestrator})}
    (assume,) = [s for s in statements if s["Action"] == "sts:AssumeRole"]
    expected = {"StringEquals": {"sts:ExternalId": external_id}} if external_id else None
    assert assume.get("Condition") == expected

    execution = iam.get_role(RoleName="tenant-release-cfn-execution")["Role"]
    assert execution["Arn"] == outputs["ExecutionRoleArn"]
    account_id = aws.client("sts").get_caller_identity()["Account"]
    (trust,) = execution["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "cloudformation.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": account_id}}  # the account it serves, rendered

    # The ARN the release passes to the application stack is the policy this stack created.
    boundary_arn = naming.app_permissions_boundary_arn(account_id=account_id, region=REGION, prefix="tenant-app-")
    assert outputs["AppPermissionsBoundaryArn"] == boundary_arn
    iam.get_policy(PolicyArn=boundary_arn)


def test_app_stack_creates_in_moto(aws: boto3.Session) -> None:
    packaged = package_template(APP_TEMPLATE, key_prefix="releases/1.2.3")
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="acme-artifacts")
    (code,) = packaged.objects
    s3.put_object(Bucket="acme-artifacts", Key=code.key, Body=code.body)
    with zipfile.ZipFile(io.BytesIO(code.body)) as archive:
        assert archive.namelist() == ["index.py"] and archive.read("index.py") == APP_HANDLER.read_bytes()

    outputs = _create_stack(
        aws,
        "tenant-app-acme",
        packaged.text,
        {
            "ApplicationName": "tenant-app-acme",
            "TenantName": "acme",
            "CodeS3Bucket": "acme-artifacts",
            "ReleaseVersion": "v1.2.3",
            "PermissionsBoundaryArn": BOUNDARY_ARN,
            "MemorySize": "256",
            "LogLevel": "DEBUG",
        },
    )
    assert outputs["FunctionName"] == "tenant-app-acme"
    assert outputs["ReleaseVersion"] == "v1.2.3"

    config = aws.client("lambda").get_function_configuration(FunctionName="tenant-app-acme")
    assert config["FunctionArn"] == outputs["FunctionArn"]
    assert (config["Runtime"], config["Handler"], config["MemorySize"]) == ("python3.12", "index.handler", 256)
    assert config["Environment"]["Variables"] == {
        "RELEASE_VERSION": "v1.2.3",
        "TENANT_NAME": "acme",
        "LOG_LEVEL": "DEBUG",
    }
    assert config["Role"].endswith(":role/tenant-app-acme-role")
    # moto records the boundary but, like IAM policies in general, does not enforce it.
    role = aws.client("iam").get_role(RoleName="tenant-app-acme-role")["Role"]
    assert role["PermissionsBoundary"] == {
        "PermissionsBoundaryType": "PermissionsBoundaryPolicy",
        "PermissionsBoundaryArn": BOUNDARY_ARN,
    }
    (group,) = aws.client("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/tenant-app-acme")["logGroups"]
    assert group["retentionInDays"] == 30


# --- sizes at fleet scale -------------------------------------------------------------------------

# AWS's documented maximums (moto enforces none of them).
PARAMETER_VALUE_BYTES = 4096  # CloudFormation: one parameter value
TEMPLATE_BODY_BYTES = 51_200  # CloudFormation: TemplateBody passed inline (bootstrap does)
BUCKET_POLICY_BYTES = 20 * 1024  # S3 bucket policy
KEY_POLICY_BYTES = 32 * 1024  # KMS key policy
ROLE_INLINE_POLICIES_CHARS = 10_240  # IAM: all inline policies of one role together
TRUST_POLICY_CHARS = 2048  # IAM: role trust policy (default quota)
LONG_ATTRIBUTE = "arn:aws:s3:::" + "x" * 120  # what a Fn::GetAtt / resource Ref stands for, generously


def _render(value: Any, parameters: dict[str, str]) -> Any:
    """A policy with its parameters substituted (each Fn::If taken on its larger side), to measure it as AWS would."""
    if isinstance(value, list):
        return [_render(item, parameters) for item in value if item != NO_VALUE]
    if not isinstance(value, dict):
        return value
    if list(value) == ["Ref"]:
        return parameters.get(value["Ref"], LONG_ATTRIBUTE)
    if list(value) == ["Fn::GetAtt"]:
        return LONG_ATTRIBUTE
    if list(value) == ["Fn::Sub"]:
        text = value["Fn::Sub"]
        for name, replacement in {**parameters, "AWS::Partition": "aws-us-gov", "AWS::AccountId": "0" * 12}.items():
            text = text.replace("${" + name + "}", replacement)
        return re_placeholder.sub(LONG_ATTRIBUTE, text)
    if list(value) == ["Fn::If"]:
        _, if_true, if_false = value["Fn::If"]
        sides = [_render(side, parameters) for side in (if_true, if_false) if side != NO_VALUE]
        return max(sides, key=lambda side: len(json.dumps(side))) if sides else None
    return {key: _render(item, parameters) for key, item in value.items()}


re_placeholder = __import__("re").compile(r"\$\{[^}]+\}")


def _fleet_of(count: int, tmp_path: Path):
    spec = importlib.util.spec_from_file_location("fleet_gen", Path(__file__).resolve().parents[2] / "bench" / "fleet_gen.py")
    fleet_gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fleet_gen)
    import yaml
    from tenant_release.config import load_fleet

    path = tmp_path / f"fleet-{count}.yaml"
    path.write_text(yaml.safe_dump(fleet_gen.generate(count)))
    return load_fleet(path)


def test_bootstrap_of_a_1000_tenant_fleet_fits_every_aws_size_limit(tmp_path: Path) -> None:
    from tenant_release.aws.bootstrap import bootstrap_targets, tenant_parameters, tooling_parameters

    loaded = _fleet_of(1000, tmp_path)
    tooling = tooling_parameters(loaded, tooling_principal_arn="arn:aws:iam::123456789012:role/" + "w" * 60)
    tenants = [tenant_parameters(loaded, target) for target in bootstrap_targets(loaded)]
    assert len(tenants) == 1001  # every tenant account and dev

    # Nothing in the tooling stack grows with the fleet: its parameters are those of a 2-tenant fleet.
    assert tooling == tooling_parameters(_fleet_of(2, tmp_path), tooling_principal_arn=tooling["OrchestratorTrustedPrincipalArn"])
    for parameters in (tooling, *tenants):
        for name, value in parameters.items():
            assert len(value.encode()) <= PARAMETER_VALUE_BYTES, name

    for path, parameters in ((TOOLING_TEMPLATE, tooling), (BOOTSTRAP_TEMPLATE, max(tenants, key=lambda p: len(json.dumps(p))))):
        assert len(path.read_bytes()) <= TEMPLATE_BODY_BYTES, path.name
        inline_by_role: dict[str, int] = {}
        for kind, location, document in _policy_documents(path):
            size = len(json.dumps(_render(document, parameters), separators=(",", ":")))
            limit = {"bucket": BUCKET_POLICY_BYTES, "key": KEY_POLICY_BYTES, "trust": TRUST_POLICY_CHARS}.get(kind)
            if limit:
                assert size <= limit, (location, size, limit)
            if kind == "identity":
                role = location.split(".")[0]
                inline_by_role[role] = inline_by_role.get(role, 0) + size
        for role, size in inline_by_role.items():
            if _template(path)["Resources"][role]["Type"] == "AWS::IAM::Role":
                assert size <= ROLE_INLINE_POLICIES_CHARS, (role, size)


@pytest.mark.parametrize("role", ["OrchestratorRole", "ApproverRole"])
def test_a_role_that_reads_or_writes_the_tooling_tables_may_use_their_key_through_dynamodb(role: str) -> None:
    """The tables are encrypted under the tooling key: on real AWS a caller without kms:Decrypt through DynamoDB
    is refused every read (moto does not check it, so the rendered policy is what is checked)."""
    statements = _role_statements(TOOLING_TEMPLATE, role)
    assert _statements_with_action(statements, "dynamodb:")
    key = {"Fn::GetAtt": ["ArtifactKey", "Arn"]}
    usable = [
        s
        for s in statements
        if s["Effect"] == "Allow"
        and key in _listed(s["Resource"])
        and "kms:Decrypt" in _listed(s["Action"])
        and "s3." not in json.dumps(s.get("Condition", {}))  # through S3 only does not reach DynamoDB
    ]
    assert usable, f"{role} reads DynamoDB tables encrypted under ArtifactKey but may not decrypt with it through DynamoDB"
