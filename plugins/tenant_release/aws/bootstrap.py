"""Deploys the tooling stack and every target account's bootstrap stack: the seeds' manual steps, as code.

Order matters and is fixed here: the tooling stack first (its orchestrator role must exist before a tenant's
trust, key and bucket policies can name it), then one bootstrap stack per target account, many at once.
The tooling stack names no tenant, so adding a tenant changes nothing there. Each stack carries a digest of
its template and parameters (tag `BootstrapDigest`): running bootstrap again touches only the accounts whose
stack is missing or out of date, and leaves the rest alone without an update call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify, naming
from tenant_release.aws.session import AwsSessions
from tenant_release.aws.stacks import NEEDS_A_PERSON_STATES, SUCCESS_STATES, describe_stack, stack_tag
from tenant_release.config import LoadedFleet
from tenant_release.errors import FleetConfigError, PermanentAwsError, TenantReleaseError
from tenant_release.models import Target

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).resolve().parents[3] / "include" / "templates"
TOOLING_TEMPLATE = _TEMPLATES / "tooling.yaml"
TENANT_TEMPLATE = _TEMPLATES / "tenant-bootstrap.yaml"
TOOLING_STACK = naming.TOOLING_STACK
TENANT_STACK = naming.TENANT_STACK
DEFAULT_BOOTSTRAP_ROLE = "OrganizationAccountAccessRole"
TAG_BOOTSTRAP_DIGEST = "BootstrapDigest"
ORCHESTRATOR_PRINCIPAL_ENV = "TENANT_RELEASE_ORCHESTRATOR_PRINCIPAL"
# The tooling template's AllowedPattern: one IAM role or user; never an account root, which would let every
# principal of that account that IAM allows assume the orchestrator role.
_PRINCIPAL_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]{1,512}$")
# Accounts bootstrapped at once: each is an assume-role and a few CloudFormation calls, mostly waiting.
DEFAULT_CONCURRENCY = int(os.environ.get("TENANT_RELEASE_BOOTSTRAP_CONCURRENCY", "16"))


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
    tooling_principal_arn: str,
    bootstrap_role_name: str = DEFAULT_BOOTSTRAP_ROLE,
    sleep: Callable[[float], None] = time.sleep,
    concurrency: int = DEFAULT_CONCURRENCY,
    approver_principal_arn: str = "",
) -> list[BootstrapResult]:
    fleet = loaded.fleet
    tooling = fleet.tooling
    targets = bootstrap_targets(loaded)
    parameters = tooling_parameters(  # a bad principal is refused before any AWS call
        loaded, tooling_principal_arn=tooling_principal_arn, approver_principal_arn=approver_principal_arn
    )
    tooling_result = _deploy_stack(
        sessions.tooling_client("cloudformation", tooling.region),
        TOOLING_STACK,
        TOOLING_TEMPLATE.read_text(encoding="utf-8"),
        parameters,
        account_id=tooling.account_id,
        region=tooling.region,
        sleep=sleep,
    )
    tenant_template = tenant_template_text(loaded)

    def bootstrap_account(target: Target) -> BootstrapResult:
        admin = _admin_view(target, bootstrap_role_name)
        cloudformation = sessions.tenant_client(
            admin, "cloudformation", session_name="tenant-release-bootstrap", source_identity="tenant-release@bootstrap"
        )
        return _deploy_stack(
            cloudformation,
            TENANT_STACK,
            tenant_template,
            tenant_parameters(loaded, target),
            account_id=target.account_id,
            region=target.region,
            sleep=sleep,
        )

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(targets))), thread_name_prefix="bootstrap") as pool:
        futures = [pool.submit(bootstrap_account, target) for target in targets]
    results, failures = [tooling_result], []
    for target, future in zip(targets, futures, strict=True):
        try:
            results.append(future.result())
        except Exception as exc:  # one account's problem must not hide the others' results
            failures.append(f"{target.name} ({target.account_id}): {exc}")
    if failures:
        raise BootstrapError(results, failures)
    return results


def tenant_template_text(loaded: LoadedFleet) -> str:
    """The tenant bootstrap template, with the execution role fitted to the application when it asks for more.

    Without `application.execution_role` it is the file as it is, so its digest (and every account's stack) stays
    the same; with it, one more inline policy of the execution role, and the permissions boundary of the
    application's roles widened to the run-time use of those resources (rendered as JSON), so a change to it
    changes the digest and `bootstrap` re-applies it everywhere.
    """
    text = TENANT_TEMPLATE.read_text(encoding="utf-8")
    application = loaded.fleet.application
    wanted = application.execution_role
    if application.stacks and "AWS::CloudFormation::Stack" not in wanted.resource_types:
        # Declared stacks are nested in the tenant's one stack: its execution role creates them.
        wanted = wanted.model_copy(update={"resource_types": (*wanted.resource_types, "AWS::CloudFormation::Stack")})
    if wanted.is_empty:
        return text
    from tenant_release.execution_policy import boundary_statements, policy_resource
    from tenant_release.packaging import load_template

    template = load_template(TENANT_TEMPLATE)
    template["Resources"]["ApplicationDeclaredResources"] = policy_resource(wanted.resource_types, wanted.statements)
    # The application's own roles may use its declared resources too: the boundary they all carry allows it.
    boundary = template["Resources"]["AppPermissionsBoundary"]["Properties"]["PolicyDocument"]["Statement"]
    boundary.extend(boundary_statements(wanted.resource_types))
    return json.dumps(template, indent=1) + "\n"


def tooling_parameters(loaded: LoadedFleet, *, tooling_principal_arn: str, approver_principal_arn: str = "") -> dict[str, str]:
    """The tooling stack's parameters: none of them lists or grows with the tenants."""
    check_orchestrator_principal(tooling_principal_arn)
    check_approver_principal(approver_principal_arn, orchestrator_role_name=loaded.fleet.tooling.orchestrator_role_name)
    if approver_principal_arn and approver_principal_arn == tooling_principal_arn:
        raise TenantReleaseError(
            "the approver principal is the orchestrator principal: the identity that deploys may not approve; "
            "name the role your approvers use with --approver-principal"
        )
    fleet = loaded.fleet
    tooling = fleet.tooling
    return {
        "ArtifactBucketName": tooling.artifact_bucket,
        "KmsKeyAlias": tooling.kms_key_alias,
        "HistoryTableName": tooling.history_table,
        "ApprovalsTableName": tooling.approvals_table,
        "QueueTableName": tooling.queue_table,
        "OrchestratorRoleName": tooling.orchestrator_role_name,
        "OrchestratorTrustedPrincipalArn": tooling_principal_arn,
        "TenantBucketPrefix": naming.common_bucket_prefix(
            [spec.artifact_bucket or fleet.defaults.artifact_bucket for spec in (fleet.dev, *fleet.tenants)]
        ),
        "DeployRoleName": fleet.defaults.deploy_role_name,
        "ReleasePrefix": tooling.release_prefix,
        "AttemptsTableName": tooling.attempts_table,
        "ApproverTrustedPrincipalArn": approver_principal_arn,  # empty: no approver role
        "LeasesTableName": tooling.leases_table,
    }


def check_orchestrator_principal(arn: str) -> None:
    """Refuse a missing or too-broad principal for the orchestrator role's trust, saying what to pass instead."""
    example = "e.g. --orchestrator-principal arn:aws:iam::<tooling account>:role/<airflow workers' role>"
    if not arn:
        raise TenantReleaseError(
            "bootstrap needs the principal that may assume the orchestrator role, i.e. the identity Airflow's workers "
            f"run as (`aws sts get-caller-identity` on a worker shows it): {example}, or set {ORCHESTRATOR_PRINCIPAL_ENV}"
        )
    if not _PRINCIPAL_ARN.match(arn):
        raise TenantReleaseError(
            f"orchestrator principal {arn!r} is not the ARN of one IAM role or user ({example}); an account root or an "
            "assumed-role session ARN is refused, because the orchestrator role must trust one identity, not an account"
        )


def check_approver_principal(arn: str, *, orchestrator_role_name: str) -> None:
    """An approver principal, when given, is one role or user: approving must never be open to a whole account."""
    if arn and not _PRINCIPAL_ARN.match(arn):
        raise TenantReleaseError(
            f"approver principal {arn!r} is not the ARN of one IAM role or user (e.g. --approver-principal "
            "arn:aws:iam::<tooling account>:role/<your approvers' SSO role>); an account root or an assumed-role session "
            "ARN is refused, because anyone in that account could then approve releases"
        )
    if arn.endswith(f":role/{orchestrator_role_name}"):
        raise TenantReleaseError(
            f"approver principal {arn!r} is the orchestrator role: the identity that deploys may not approve; name the "
            "role your approvers (people or a change-management system) use"
        )


def tenant_parameters(loaded: LoadedFleet, target: Target) -> dict[str, str]:
    """One target account's bootstrap parameters: its own names, and the one tooling role it trusts."""
    tooling = loaded.fleet.tooling
    return {
        "ToolingAccountId": tooling.account_id,
        "OrchestratorRoleName": tooling.orchestrator_role_name,
        "DeployRoleName": target.deploy_role_arn.rsplit("/", 1)[1],
        "ExecutionRoleName": target.execution_role_arn.rsplit("/", 1)[1],
        "ExternalId": target.external_id or "",
        "ReleasePrefix": tooling.release_prefix,
        "ArtifactBucketName": target.artifact_bucket,
        "KmsKeyAlias": target.kms_key_alias,
        "AppNamePrefix": naming.app_name_prefix(target.stack_name, target.function_name),
    }


def bootstrap_targets(loaded: LoadedFleet) -> list[Target]:
    """One target per account (dev included): the accounts `bootstrap_fleet` deploys a bootstrap stack to."""
    return _one_target_per_account([loaded.target(loaded.fleet.dev.name), *loaded.tenants()])


class BootstrapError(PermanentAwsError):
    """Some accounts could not be bootstrapped; the others were, and `results` says how."""

    def __init__(self, results: list[BootstrapResult], failures: list[str]) -> None:
        done = len(results) - 1
        super().__init__(
            f"{len(failures)} account(s) could not be bootstrapped ({done} other(s) are up to date): " + "; ".join(failures)
        )
        self.results = results
        self.failures = failures


def stack_digest(body: str, parameters: dict[str, str]) -> str:
    """What makes a bootstrap stack up to date: its template text and every parameter value."""
    flat = "\n".join(f"{key}={parameters[key]}" for key in sorted(parameters))
    return hashlib.sha256(f"{body}\n{flat}".encode()).hexdigest()


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
    digest = stack_digest(body, parameters)
    args = {
        "StackName": name,
        "TemplateBody": body,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Capabilities": ["CAPABILITY_NAMED_IAM"],
        "Tags": [{"Key": "ManagedBy", "Value": "tenant-release"}, {"Key": TAG_BOOTSTRAP_DIGEST, "Value": digest}],
    }
    stack = describe_stack(cloudformation, name)
    status = stack["StackStatus"] if stack else None
    if status in SUCCESS_STATES and stack_tag(stack, TAG_BOOTSTRAP_DIGEST) == digest:
        log.info("%s in %s/%s: up to date", name, account_id, region)
        return BootstrapResult(account_id=account_id, region=region, stack=name, action="UNCHANGED")
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
