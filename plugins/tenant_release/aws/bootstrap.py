"""Deploys the tooling stack and every target account's bootstrap stack: the seeds' manual steps, as code.

Order matters and is fixed here: the tooling stack first (its key and bucket policies name the tenant
accounts by condition, so tenant roles need not exist yet), then one bootstrap stack per target account.
Running it again updates what changed and leaves the rest alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify, naming
from tenant_release.aws.artifacts import resolve_kms_key_arn
from tenant_release.aws.session import AwsSessions
from tenant_release.aws.stacks import NEEDS_A_PERSON_STATES, SUCCESS_STATES, describe_stack
from tenant_release.config import LoadedFleet
from tenant_release.errors import FleetConfigError, PermanentAwsError
from tenant_release.models import Target

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).resolve().parents[3] / "include" / "templates"
TOOLING_TEMPLATE = _TEMPLATES / "tooling.yaml"
TENANT_TEMPLATE = _TEMPLATES / "tenant-bootstrap.yaml"
TOOLING_STACK = "tenant-release-tooling"
TENANT_STACK = "tenant-release-bootstrap"
DEFAULT_BOOTSTRAP_ROLE = "OrganizationAccountAccessRole"


@dataclass(frozen=True, kw_only=True)
class BootstrapResult:
    account_id: str
    region: str
    stack: str
    action: str  # CREATED, UPDATED, UNCHANGED


def bootstrap_fleet(
    sessions: AwsSessions,
    loaded: LoadedFleet,
    *,
    bootstrap_role_name: str = DEFAULT_BOOTSTRAP_ROLE,
    tooling_principal_arn: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> list[BootstrapResult]:
    fleet = loaded.fleet
    tooling = fleet.tooling
    targets = _one_target_per_account([loaded.target(fleet.dev.name), *loaded.tenants()])
    results = [
        _deploy_stack(
            sessions.tooling_client("cloudformation", tooling.region),
            TOOLING_STACK,
            TOOLING_TEMPLATE.read_text(encoding="utf-8"),
            {
                "ArtifactBucketName": tooling.artifact_bucket,
                "KmsKeyAlias": tooling.kms_key_alias,
                "HistoryTableName": tooling.history_table,
                "ApprovalsTableName": tooling.approvals_table,
                "QueueTableName": tooling.queue_table,
                "OrchestratorRoleName": tooling.orchestrator_role_name,
                "OrchestratorTrustedPrincipalArn": tooling_principal_arn,
                "TenantAccountIds": ",".join(sorted({t.account_id for t in targets})),
                "DeployRoleName": fleet.defaults.deploy_role_name,
                "ReleasePrefix": tooling.release_prefix,
            },
            account_id=tooling.account_id,
            region=tooling.region,
            sleep=sleep,
        )
    ]
    tooling_key_arn = resolve_kms_key_arn(sessions.tooling_client("kms", tooling.region), tooling.kms_key_alias)
    tenant_template = TENANT_TEMPLATE.read_text(encoding="utf-8")
    for target in targets:
        admin = _admin_view(target, bootstrap_role_name)
        cloudformation = sessions.tenant_client(
            admin, "cloudformation", session_name="tenant-release-bootstrap", source_identity="tenant-release@bootstrap"
        )
        results.append(
            _deploy_stack(
                cloudformation,
                TENANT_STACK,
                tenant_template,
                {
                    "ToolingAccountId": tooling.account_id,
                    "OrchestratorRoleName": tooling.orchestrator_role_name,
                    "DeployRoleName": target.deploy_role_arn.rsplit("/", 1)[1],
                    "ExecutionRoleName": target.execution_role_arn.rsplit("/", 1)[1],
                    "ExternalId": target.external_id or "",
                    "ToolingArtifactBucket": tooling.artifact_bucket,
                    "ToolingKmsKeyArn": tooling_key_arn,
                    "ReleasePrefix": tooling.release_prefix,
                    "ArtifactBucketName": target.artifact_bucket,
                    "KmsKeyAlias": target.kms_key_alias,
                    "AppNamePrefix": naming.app_name_prefix(target.stack_name, target.function_name),
                },
                account_id=target.account_id,
                region=target.region,
                sleep=sleep,
            )
        )
    return results


def _one_target_per_account(targets: list[Target]) -> list[Target]:
    """IAM roles are global to an account, so each account gets one bootstrap stack, in one region."""
    by_account: dict[str, Target] = {}
    for target in targets:
        first = by_account.setdefault(target.account_id, target)
        if first.region != target.region or first.artifact_bucket != target.artifact_bucket:
            raise FleetConfigError(
                f"targets {first.name!r} and {target.name!r} share account {target.account_id} but not region "
                f"({first.region} vs {target.region}); one account hosts one tenant region in this version"
            )
    return list(by_account.values())


def _admin_view(target: Target, bootstrap_role_name: str) -> Target:
    """The same account reached through its administrative role: the deploy role does not exist yet."""
    arn = target.deploy_role_arn.rsplit("/", 1)[0] + f"/{bootstrap_role_name}"
    return target.model_copy(update={"deploy_role_arn": arn, "external_id": None, "name": f"{target.name}-bootstrap"})


def _deploy_stack(
    cloudformation: Any,
    name: str,
    body: str,
    parameters: dict[str, str],
    *,
    account_id: str,
    region: str,
    sleep: Callable[[float], None],
) -> BootstrapResult:
    args = {
        "StackName": name,
        "TemplateBody": body,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Capabilities": ["CAPABILITY_NAMED_IAM"],
        "Tags": [{"Key": "ManagedBy", "Value": "tenant-release"}],
    }
    stack = describe_stack(cloudformation, name)
    status = stack["StackStatus"] if stack else None
    if status in NEEDS_A_PERSON_STATES or status == "ROLLBACK_COMPLETE":
        raise PermanentAwsError(
            f"bootstrap stack {name} in account {account_id} ({region}) is {status}; inspect its events, delete or "
            "repair it, then run bootstrap again"
        )
    try:
        if stack is None:
            cloudformation.create_stack(**args)
            action = "CREATED"
        else:
            cloudformation.update_stack(**args)
            action = "UPDATED"
    except ClientError as exc:
        if classify.is_no_changes(classify.error_message(exc)):
            log.info("%s in %s/%s: up to date", name, account_id, region)
            return BootstrapResult(account_id=account_id, region=region, stack=name, action="UNCHANGED")
        raise PermanentAwsError(f"bootstrap stack {name} in account {account_id} ({region}): {classify.describe(exc)}") from None
    while True:
        final = describe_stack(cloudformation, name)
        status = final["StackStatus"] if final else "DELETE_COMPLETE"
        if not status.endswith("_IN_PROGRESS"):
            break
        sleep(2)
    if status not in SUCCESS_STATES:
        raise PermanentAwsError(f"bootstrap stack {name} in account {account_id} ({region}) ended {status}")
    log.info("%s in %s/%s: %s", name, account_id, region, action.lower())
    return BootstrapResult(account_id=account_id, region=region, stack=name, action=action)
