"""The tenant's execution role fitted to the application (issue 9): least privilege, scoped to its name prefix."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import yaml
from tenant_release.aws.bootstrap import TENANT_TEMPLATE, tenant_template_text
from tenant_release.config import parse_fleet
from tenant_release.errors import FleetConfigError
from tenant_release.execution_policy import CATALOG, POLICY_NAME

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet.yaml"
OWN_QUEUE = "arn:${AWS::Partition}:sqs:*:${AWS::AccountId}:${AppNamePrefix}*"
ORDERS_TYPES = ["AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::CloudFormation::Stack"]


def fleet_with(execution_role: dict | None) -> str:
    fleet = yaml.safe_load(FLEET.read_text())
    fleet["application"] = {"source": {"path": "orders"}}
    if execution_role is not None:
        fleet["application"]["execution_role"] = execution_role
    return yaml.safe_dump(fleet, sort_keys=False)


def _policy(text: str) -> list[dict]:
    template = json.loads(text)
    resource = template["Resources"]["ApplicationDeclaredResources"]
    assert resource["Type"] == "AWS::IAM::Policy"
    assert resource["Properties"]["Roles"] == [{"Ref": "ExecutionRole"}]
    assert resource["Properties"]["PolicyName"] == POLICY_NAME
    return resource["Properties"]["PolicyDocument"]["Statement"]


def test_without_declared_resources_the_bootstrap_template_is_the_file_as_it_is() -> None:
    # So its digest, and every account's bootstrap stack, stay as they were.
    assert tenant_template_text(parse_fleet(fleet_with(None))) == TENANT_TEMPLATE.read_text(encoding="utf-8")


def test_declared_resource_types_add_their_actions_on_the_applications_own_names_only() -> None:
    text = tenant_template_text(parse_fleet(fleet_with({"resource_types": ORDERS_TYPES})))
    statements = _policy(text)

    assert [s["Sid"] for s in statements] == [
        "ManageApplicationTables",
        "ManageApplicationQueues",
        "ManageApplicationTopics",
        "ManageApplicationNestedStacks",
    ]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not any(action == "*" or action.startswith("iam:") for action in statement["Action"])
        for resource in statement["Resource"]:
            arn = resource["Fn::Sub"]
            assert "${AppNamePrefix}" in arn and "${AWS::AccountId}" in arn, arn
    tables = statements[0]
    assert tables["Resource"] == [{"Fn::Sub": "arn:${AWS::Partition}:dynamodb:*:${AWS::AccountId}:table/${AppNamePrefix}*"}]
    assert "dynamodb:CreateTable" in tables["Action"] and not any(
        fnmatch.fnmatch("dynamodb:PutItem", a) for a in tables["Action"]
    )

    from cfnlint.api import lint

    problems = [f"{m.rule.id}: {m.message}" for m in lint(text) if m.rule.severity in {"error", "warning"}]
    assert problems == []


def test_buckets_of_the_catalog_are_kept_to_this_account() -> None:
    (statement,) = _policy(tenant_template_text(parse_fleet(fleet_with({"resource_types": ["AWS::S3::Bucket"]}))))
    assert statement["Condition"] == {"StringEquals": {"aws:ResourceAccount": {"Ref": "AWS::AccountId"}}}
    assert "Condition" not in CATALOG["AWS::S3::Bucket"][0]  # rendered, not changed in the catalog


def test_every_catalog_statement_is_scoped_to_the_prefix_and_only_passes_roles_conditionally() -> None:
    for kind, statements in CATALOG.items():
        for statement in statements:
            assert all("${AppNamePrefix}" in r for r in statement["Resource"]), kind
            if any(a.startswith("iam:") for a in statement["Action"]):
                assert statement["Action"] == ["iam:PassRole"] and "iam:PassedToService" in json.dumps(statement["Condition"])


@pytest.mark.parametrize(
    ("execution_role", "problem"),
    [
        ({"resource_types": ["AWS::RDS::DBInstance"]}, "AWS::RDS::DBInstance are not in the catalog"),
        (
            {"statements": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]},
            "allows '*': every resource must be in this account",
        ),
        (
            {
                "statements": [
                    {"Effect": "Allow", "Action": "iam:AttachRolePolicy", "Resource": "x${AppNamePrefix}${AWS::AccountId}"}
                ]
            },
            "allows 'iam:AttachRolePolicy'",
        ),
        ({"statements": [{"Effect": "Allow", "Action": "*", "Resource": "x"}]}, "allows '*'"),
        # Wildcards and case do not get around the list; the prefix and the account must sit where ARNs put them.
        ({"statements": [{"Effect": "Allow", "Action": "kms:CreateGrant", "Resource": OWN_QUEUE}]}, "allows 'kms:CreateGrant'"),
        ({"statements": [{"Effect": "Allow", "Action": "kms:*", "Resource": OWN_QUEUE}]}, "allows 'kms:*'"),
        ({"statements": [{"Effect": "Allow", "Action": "KMS:Put*", "Resource": OWN_QUEUE}]}, "allows 'KMS:Put*'"),
        ({"statements": [{"Effect": "Allow", "Action": "IAM:PassRole", "Resource": OWN_QUEUE}]}, "allows 'IAM:PassRole'"),
        (
            {
                "statements": [
                    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:${AWS::Partition}:s3:::*${AppNamePrefix}*"}
                ]
            },
            "every resource must be in this account and named with the application's prefix",
        ),
        (
            {
                "statements": [
                    {"Effect": "Allow", "Action": "sqs:*", "Resource": "arn:${AWS::Partition}:sqs:*:*:*${AppNamePrefix}*:s3:::"}
                ]
            },
            "every resource must be in this account",
        ),
        ({"statements": [{"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": 5}]}, "each a string or a list of strings"),
        ({"statements": [{"Effect": "Allow", "NotAction": "s3:*", "Resource": "x"}]}, "may have only Sid, Effect, Action"),
    ],
)
def test_a_statement_that_would_widen_the_role_is_refused(execution_role: dict, problem: str) -> None:
    with pytest.raises(FleetConfigError) as refused:
        parse_fleet(fleet_with(execution_role))

    assert problem in str(refused.value)


def test_an_own_statement_scoped_to_the_prefix_is_accepted_and_rendered() -> None:
    own = {
        "Sid": "ReadOwnSecrets",
        "Effect": "Allow",
        "Action": ["secretsmanager:DescribeSecret"],
        "Resource": "arn:${AWS::Partition}:secretsmanager:*:${AWS::AccountId}:secret:${AppNamePrefix}*",
    }
    bucket = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:${AWS::Partition}:s3:::${AppNamePrefix}*/*"}
    statements = _policy(tenant_template_text(parse_fleet(fleet_with({"statements": [own, bucket]}))))

    assert statements[0] == {**own, "Resource": [{"Fn::Sub": own["Resource"]}]}
    # An S3 ARN names no account: the rendered statement keeps to this account's buckets.
    assert statements[1]["Condition"] == {"StringEquals": {"aws:ResourceAccount": {"Ref": "AWS::AccountId"}}}


def test_the_applications_own_roles_may_use_declared_resources_through_their_boundary_and_nothing_more() -> None:
    template = json.loads(tenant_template_text(parse_fleet(fleet_with({"resource_types": ORDERS_TYPES}))))
    statements = template["Resources"]["AppPermissionsBoundary"]["Properties"]["PolicyDocument"]["Statement"]

    assert [s["Sid"] for s in statements] == [
        "WriteApplicationLogs",
        "UseApplicationTables",
        "UseApplicationQueues",
        "PublishToApplicationTopics",
    ]  # a nested stack has no run-time use
    for statement in statements[1:]:
        assert statement["Effect"] == "Allow"
        assert not any(a.split(":")[0] in {"iam", "sts", "kms"} or a.endswith("*") for a in statement["Action"])
        assert all("${AppNamePrefix}" in r["Fn::Sub"] and "${AWS::AccountId}" in r["Fn::Sub"] for r in statement["Resource"])
    assert "dynamodb:PutItem" in statements[1]["Action"] and "dynamodb:DeleteTable" not in statements[1]["Action"]


def test_declared_stacks_let_the_execution_role_create_nested_stacks() -> None:
    fleet = yaml.safe_load(fleet_with(None))
    fleet["application"]["stacks"] = [{"name": "data", "template": "data.yaml"}, {"name": "api", "template": "api.yaml"}]

    statements = _policy(tenant_template_text(parse_fleet(yaml.safe_dump(fleet))))

    assert [s["Sid"] for s in statements] == ["ManageApplicationNestedStacks"]
