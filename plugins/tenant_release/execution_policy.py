"""The tenant's CloudFormation execution role, fitted to the application (`application.execution_role`).

The bootstrap's execution role may manage the sample's resources only: Lambda functions, their bounded roles and
log groups, all named with the application's name prefix. An application with a table, a queue or a topic names
those resource types here; each adds the actions CloudFormation's handler for that type needs, on resources
named with the same prefix only (`${AppNamePrefix}`, the bootstrap's parameter). Extra statements may be given
too, under the same rules: no wildcard resource, no IAM action (roles stay bounded by the permissions boundary
through the statements the bootstrap already has), nothing outside this account.

The statements become one more inline policy of the execution role, rendered into the bootstrap template, so
`tenant-release bootstrap` re-applies it to every account when it changes (the template's digest changes).
"""

from __future__ import annotations

import copy
import fnmatch
import re
from typing import Any

POLICY_NAME = "manage-application-declared-resources"

_ARN = "arn:${AWS::Partition}"
_ACCOUNT = "${AWS::AccountId}"
_PREFIX = "${AppNamePrefix}"

# Resource type -> statements (Sid, actions, resource ARN patterns); from each type's CloudFormation handler
# permissions (the registry schema's `handlers`), minus features that need other services (encryption with
# customer keys, replication, Kinesis streaming...), which an application adds as `statements`.
CATALOG: dict[str, list[dict[str, Any]]] = {
    "AWS::DynamoDB::Table": [
        {
            "Sid": "ManageApplicationTables",
            "Action": [
                "dynamodb:CreateTable",
                "dynamodb:DeleteTable",
                "dynamodb:DescribeTable",
                "dynamodb:UpdateTable",
                "dynamodb:DescribeContinuousBackups",
                "dynamodb:UpdateContinuousBackups",
                "dynamodb:DescribeTimeToLive",
                "dynamodb:UpdateTimeToLive",
                "dynamodb:DescribeContributorInsights",
                "dynamodb:UpdateContributorInsights",
                "dynamodb:DescribeKinesisStreamingDestination",
                "dynamodb:GetResourcePolicy",
                "dynamodb:ListTagsOfResource",
                "dynamodb:TagResource",
                "dynamodb:UntagResource",
            ],
            "Resource": [f"{_ARN}:dynamodb:*:{_ACCOUNT}:table/{_PREFIX}*"],
        }
    ],
    "AWS::SQS::Queue": [
        {
            "Sid": "ManageApplicationQueues",
            "Action": [
                "sqs:CreateQueue",
                "sqs:DeleteQueue",
                "sqs:GetQueueAttributes",
                "sqs:SetQueueAttributes",
                "sqs:GetQueueUrl",
                "sqs:ListQueueTags",
                "sqs:TagQueue",
                "sqs:UntagQueue",
            ],
            "Resource": [f"{_ARN}:sqs:*:{_ACCOUNT}:{_PREFIX}*"],
        }
    ],
    "AWS::SNS::Topic": [
        {
            "Sid": "ManageApplicationTopics",
            "Action": [
                "sns:CreateTopic",
                "sns:DeleteTopic",
                "sns:GetTopicAttributes",
                "sns:SetTopicAttributes",
                "sns:GetDataProtectionPolicy",
                "sns:PutDataProtectionPolicy",
                "sns:ListSubscriptionsByTopic",
                "sns:ListTagsForResource",
                "sns:TagResource",
                "sns:UntagResource",
            ],
            "Resource": [f"{_ARN}:sns:*:{_ACCOUNT}:{_PREFIX}*"],
        }
    ],
    "AWS::SNS::Subscription": [
        {
            "Sid": "ManageApplicationSubscriptions",
            "Action": ["sns:Subscribe", "sns:Unsubscribe", "sns:GetSubscriptionAttributes", "sns:SetSubscriptionAttributes"],
            "Resource": [f"{_ARN}:sns:*:{_ACCOUNT}:{_PREFIX}*"],
        }
    ],
    "AWS::S3::Bucket": [
        {
            "Sid": "ManageApplicationBuckets",
            "Action": [
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:GetBucket*",
                "s3:PutBucket*",
                "s3:GetEncryptionConfiguration",
                "s3:PutEncryptionConfiguration",
                "s3:GetLifecycleConfiguration",
                "s3:PutLifecycleConfiguration",
                "s3:GetAccelerateConfiguration",
                "s3:GetReplicationConfiguration",
            ],
            "Resource": [f"{_ARN}:s3:::{_PREFIX}*"],
        }
    ],
    "AWS::Events::Rule": [
        {
            "Sid": "ManageApplicationRules",
            "Action": [
                "events:PutRule",
                "events:DeleteRule",
                "events:DescribeRule",
                "events:EnableRule",
                "events:DisableRule",
                "events:PutTargets",
                "events:RemoveTargets",
                "events:ListTargetsByRule",
                "events:TagResource",
                "events:UntagResource",
            ],
            "Resource": [f"{_ARN}:events:*:{_ACCOUNT}:rule/{_PREFIX}*"],
        }
    ],
    "AWS::Lambda::Permission": [
        {
            "Sid": "ManageApplicationFunctionPermissions",
            "Action": ["lambda:AddPermission", "lambda:RemovePermission", "lambda:GetPolicy"],
            "Resource": [f"{_ARN}:lambda:*:{_ACCOUNT}:function:{_PREFIX}*"],
        }
    ],
    "AWS::Lambda::LayerVersion": [
        {
            "Sid": "ManageApplicationLayers",
            "Action": ["lambda:PublishLayerVersion", "lambda:DeleteLayerVersion", "lambda:GetLayerVersion"],
            "Resource": [f"{_ARN}:lambda:*:{_ACCOUNT}:layer:{_PREFIX}*", f"{_ARN}:lambda:*:{_ACCOUNT}:layer:{_PREFIX}*:*"],
        }
    ],
    "AWS::SSM::Parameter": [
        {
            "Sid": "ManageApplicationParameters",
            "Action": [
                "ssm:PutParameter",
                "ssm:DeleteParameter",
                "ssm:GetParameters",
                "ssm:AddTagsToResource",
                "ssm:RemoveTagsFromResource",
                "ssm:ListTagsForResource",
            ],
            "Resource": [f"{_ARN}:ssm:*:{_ACCOUNT}:parameter/{_PREFIX}*"],
        }
    ],
    "AWS::StepFunctions::StateMachine": [
        {
            "Sid": "ManageApplicationStateMachines",
            "Action": [
                "states:CreateStateMachine",
                "states:DeleteStateMachine",
                "states:DescribeStateMachine",
                "states:UpdateStateMachine",
                "states:ListTagsForResource",
                "states:TagResource",
                "states:UntagResource",
            ],
            "Resource": [f"{_ARN}:states:*:{_ACCOUNT}:stateMachine:{_PREFIX}*"],
        },
        {
            "Sid": "PassApplicationRolesToStepFunctions",
            "Action": ["iam:PassRole"],
            "Resource": [f"{_ARN}:iam::{_ACCOUNT}:role/{_PREFIX}*"],
            "Condition": {"StringEquals": {"iam:PassedToService": "states.amazonaws.com"}},
        },
    ],
    "AWS::CloudFormation::Stack": [
        {
            # A nested stack is named after its parent (<parent>-<logical id>-<suffix>), so the prefix holds.
            "Sid": "ManageApplicationNestedStacks",
            "Action": [
                "cloudformation:CreateStack",
                "cloudformation:UpdateStack",
                "cloudformation:DeleteStack",
                "cloudformation:DescribeStacks",
                "cloudformation:DescribeStackEvents",
                "cloudformation:GetTemplate",
            ],
            "Resource": [f"{_ARN}:cloudformation:*:{_ACCOUNT}:stack/{_PREFIX}*/*"],
        }
    ],
}

# Resource type -> what the application's own roles may do with such resources at run time (the data plane),
# added to the permissions boundary every application role carries. The application's templates still grant
# it (a boundary grants nothing by itself); without it here, no role of the application could use them.
RUNTIME: dict[str, list[dict[str, Any]]] = {
    "AWS::DynamoDB::Table": [
        {
            "Sid": "UseApplicationTables",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:BatchGetItem",
                "dynamodb:Query",
                "dynamodb:Scan",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:BatchWriteItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:DescribeTable",
            ],
            "Resource": [
                f"{_ARN}:dynamodb:*:{_ACCOUNT}:table/{_PREFIX}*",
                f"{_ARN}:dynamodb:*:{_ACCOUNT}:table/{_PREFIX}*/index/*",
            ],
        }
    ],
    "AWS::SQS::Queue": [
        {
            "Sid": "UseApplicationQueues",
            "Action": [
                "sqs:SendMessage",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
            ],
            "Resource": [f"{_ARN}:sqs:*:{_ACCOUNT}:{_PREFIX}*"],
        }
    ],
    "AWS::SNS::Topic": [
        {"Sid": "PublishToApplicationTopics", "Action": ["sns:Publish"], "Resource": [f"{_ARN}:sns:*:{_ACCOUNT}:{_PREFIX}*"]}
    ],
    "AWS::S3::Bucket": [
        {
            "Sid": "UseApplicationBuckets",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"],
            "Resource": [f"{_ARN}:s3:::{_PREFIX}*", f"{_ARN}:s3:::{_PREFIX}*/*"],
        }
    ],
    "AWS::SSM::Parameter": [
        {
            "Sid": "ReadApplicationParameters",
            "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
            "Resource": [f"{_ARN}:ssm:*:{_ACCOUNT}:parameter/{_PREFIX}*"],
        }
    ],
    "AWS::StepFunctions::StateMachine": [
        {
            "Sid": "StartApplicationStateMachines",
            "Action": ["states:StartExecution", "states:DescribeExecution"],
            "Resource": [
                f"{_ARN}:states:*:{_ACCOUNT}:stateMachine:{_PREFIX}*",
                f"{_ARN}:states:*:{_ACCOUNT}:execution:{_PREFIX}*:*",
            ],
        }
    ],
}


def boundary_statements(resource_types: tuple[str, ...]) -> list[dict[str, Any]]:
    """What the permissions boundary adds for the declared resource types (run-time use of the application's own)."""
    return statements_for(tuple(kind for kind in resource_types if kind in RUNTIME), (), catalog=RUNTIME)


# Services none of whose actions a declared statement may allow, and single actions likewise (lowercase).
_FORBIDDEN_SERVICES = {"iam", "sts", "organizations", "account", "sso", "identitystore"}
_FORBIDDEN_ACTIONS = ("kms:creategrant", "kms:putkeypolicy", "kms:schedulekeydeletion", "kms:disablekey", "s3:putbucketpolicy")
_ACTION = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9*?]+$")
_OWN_RESOURCE = re.compile(r"^([A-Za-z0-9-]+[/:])?\$\{AppNamePrefix\}")


def check_statements(statements: tuple[dict[str, Any], ...]) -> None:
    """Refuse what would widen the role beyond the application's own resources (a ValueError names the statement).

    Allowed: actions of other services than IAM/STS/Organizations, no wildcard that reaches a forbidden action, on
    resources `arn:${AWS::Partition}:<service>:<region>:${AWS::AccountId}:[<type>/]${AppNamePrefix}...` (S3:
    `arn:${AWS::Partition}:s3:::${AppNamePrefix}...`, held to this account by a condition added when rendered).
    """
    for index, statement in enumerate(statements):
        where = f"execution_role.statements[{index}]"
        if not isinstance(statement, dict):
            raise ValueError(f"{where} must be a mapping with Effect, Action and Resource")
        if set(statement) - {"Sid", "Effect", "Action", "Resource", "Condition"}:
            raise ValueError(f"{where} may have only Sid, Effect, Action, Resource and Condition")
        if statement.get("Effect") not in {"Allow", "Deny"}:
            raise ValueError(f"{where}: Effect must be Allow or Deny")
        actions, resources = _as_list(statement.get("Action")), _as_list(statement.get("Resource"))
        if not actions or not resources or not all(isinstance(v, str) for v in (*actions, *resources)):
            raise ValueError(f"{where} needs Action and Resource, each a string or a list of strings")
        if statement["Effect"] == "Deny":
            continue
        for action in actions:
            _check_action(where, action)
        for resource in resources:
            _check_resource(where, resource)


def _check_action(where: str, action: str) -> None:
    lowered = action.lower()
    service = lowered.split(":", 1)[0]
    reaches_forbidden = any(fnmatch.fnmatchcase(forbidden, lowered) for forbidden in _FORBIDDEN_ACTIONS)
    if not _ACTION.match(action) or service in _FORBIDDEN_SERVICES or reaches_forbidden:
        raise ValueError(
            f"{where} allows {action!r}: IAM, STS, Organizations and key- or bucket-policy actions stay with the "
            "bootstrap's bounded statements, and '*' is never allowed"
        )


def _check_resource(where: str, resource: str) -> None:
    # The pseudo parameters hold "::" themselves: name them first, then split the ARN into its six fields.
    named = resource.replace("${AWS::Partition}", "PARTITION").replace(_ACCOUNT, "ACCOUNT").replace("${AWS::Region}", "REGION")
    parts = named.split(":", 5)
    ok = len(parts) == 6 and parts[0] == "arn" and parts[1] == "PARTITION"
    if ok and parts[2] == "s3":
        ok = parts[3] == "" and parts[4] == "" and parts[5].startswith(_PREFIX)
    elif ok:
        ok = parts[4] == "ACCOUNT" and bool(_OWN_RESOURCE.match(parts[5]))
    if not ok:
        raise ValueError(
            f"{where} allows {resource!r}: every resource must be in this account and named with the application's "
            "prefix, e.g. arn:${AWS::Partition}:sqs:*:${AWS::AccountId}:${AppNamePrefix}* "
            "(S3: arn:${AWS::Partition}:s3:::${AppNamePrefix}*)"
        )


def statements_for(
    resource_types: tuple[str, ...], extra: tuple[dict[str, Any], ...], *, catalog: dict[str, list[dict[str, Any]]] = CATALOG
) -> list[dict[str, Any]]:
    """The policy's statements, each resource ARN a `Fn::Sub` over the bootstrap's parameters."""
    chosen = copy.deepcopy([s for kind in resource_types for s in catalog[kind]] + list(extra))
    rendered = []
    for statement in chosen:
        statement.setdefault("Effect", "Allow")
        resources = _as_list(statement["Resource"])
        if any(resource.startswith("arn:${AWS::Partition}:s3:::") for resource in resources):
            # S3 ARNs name no account: keep the statement to buckets of this account.
            condition = statement.setdefault("Condition", {})
            condition.setdefault("StringEquals", {})["aws:ResourceAccount"] = {"Ref": "AWS::AccountId"}
        statement["Resource"] = [{"Fn::Sub": resource} for resource in resources]
        rendered.append(statement)
    return rendered


def policy_resource(resource_types: tuple[str, ...], extra: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """An inline policy of the execution role (`AWS::IAM::Policy`, which the emulation supports too)."""
    return {
        "Type": "AWS::IAM::Policy",
        "Properties": {
            "Roles": [{"Ref": "ExecutionRole"}],
            "PolicyName": POLICY_NAME,
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements_for(resource_types, extra)},
        },
    }


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
