"""CloudFormation change-set deploys: create or update, "no changes" as its own outcome, and why a stack failed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from botocore.exceptions import ClientError

from tenant_release import classify, naming
from tenant_release.errors import PermanentAwsError, RecoverableAwsError, StackBusyError, StackFailedError

log = logging.getLogger(__name__)

TAG_RELEASE_VERSION = "ReleaseVersion"
TAG_DEPLOY_DIGEST = "DeployDigest"
TAG_MANAGED_BY = "ManagedBy"

SUCCESS_STATES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"})
NEEDS_A_PERSON_STATES = frozenset(
    {"UPDATE_ROLLBACK_FAILED", "ROLLBACK_FAILED", "DELETE_FAILED", "CREATE_FAILED", "UPDATE_FAILED", "IMPORT_ROLLBACK_FAILED"}
)
FAILED_CREATE_STATE = "ROLLBACK_COMPLETE"
# Where a stack ends when CloudFormation undid the operation (a failed resource, or a rollback trigger's alarm).
ROLLED_BACK_STATES = frozenset({"UPDATE_ROLLBACK_COMPLETE", FAILED_CREATE_STATE})

_FIX_FOR_STATE = {
    "UPDATE_ROLLBACK_FAILED": "fix what the events name, then continue the rollback with the tenant account's "
    "credentials: `aws cloudformation continue-update-rollback --stack-name {stack} --region {region}` (add "
    "`--resources-to-skip <LogicalResourceId>` for a resource that still cannot roll back), or in the CloudFormation "
    "console of that account and region: Stacks > {stack} > Stack actions > Continue update rollback. Once the stack "
    "is UPDATE_ROLLBACK_COMPLETE, re-run this tenant",
    # Not a person's job to repair, only the cause: the stack is usable again as it is.
    "UPDATE_ROLLBACK_COMPLETE": "the stack rolled back to what it ran before and takes the next release as it is; "
    "fix what the events name (the template, a parameter, a quota), then release again",
    FAILED_CREATE_STATE: "a stack whose first create rolled back holds nothing and can only be deleted: the next "
    "release deletes it and creates it again; fix what the events name first",
    "ROLLBACK_FAILED": "delete the stack after fixing what blocks its deletion, then re-run this tenant",
    "DELETE_FAILED": "delete the stack after fixing what blocks its deletion, then re-run this tenant",
}


@dataclass(frozen=True, kw_only=True)
class StackDeployStart:
    """What starting a deploy led to: nothing to do, a change set now executing, or one still being created."""

    unchanged: bool
    change_set_name: str | None
    change_set_type: str | None
    pending: bool = False  # created but not ready yet (asked not to wait): `execute_when_ready` executes it


@dataclass(frozen=True, kw_only=True)
class StackPoll:
    status: str
    settled: bool
    succeeded: bool


def describe_stack(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if classify.error_code(exc) == "ValidationError" and "does not exist" in classify.error_message(exc):
            return None
        raise
    return stacks[0] if stacks else None


def stack_tag(stack: dict[str, Any] | None, key: str) -> str | None:
    for tag in (stack or {}).get("Tags") or []:
        if tag.get("Key") == key:
            return tag.get("Value")
    return None


NOT_READ = object()


def start_deploy(
    cloudformation: Any,
    *,
    stack_name: str,
    template_url: str,
    parameters: dict[str, str],
    tags: dict[str, str],
    execution_role_arn: str,
    change_set_name: str,
    deploy_digest: str,
    capabilities: list[str] | None = None,
    rollback_configuration: dict[str, Any] | None = None,
    stack: dict[str, Any] | object | None = NOT_READ,
    wait: bool = True,
    wait_poll: float = 2.0,
    wait_timeout: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
) -> StackDeployStart:
    """Create (or find again) the deterministic change set and execute it, unless nothing would change.

    `stack` is the stack as the caller has just read it (None: there is none), to save a second read.
    `rollback_configuration`: CloudFormation's rollback triggers for the change set (None: leave the stack's as they are).
    With `wait=False` a change set just created is returned `pending` instead of waited for here: CloudFormation
    takes seconds to make one, and a thread that sleeps meanwhile is a thread a thousand tenants share.
    """
    if stack is NOT_READ:
        stack = describe_stack(cloudformation, stack_name)
    stack = cast("dict[str, Any] | None", stack)
    status = stack["StackStatus"] if stack else None
    attached = operation_under_way(cloudformation, stack_name=stack_name, stack=stack, change_set_name=change_set_name)
    if attached is not None:
        return attached
    if status in NEEDS_A_PERSON_STATES:
        # Never a change set on it: CloudFormation would refuse it, and the stack needs a person first.
        fix = _FIX_FOR_STATE.get(status, "inspect the stack events, repair the stack, then re-run this tenant")
        reasons = failure_reasons(cloudformation, stack_name)
        why = f" after: {'; '.join(reasons)}" if reasons else ""
        raise PermanentAwsError(
            f"stack {stack_name} is in {status}{why}. It cannot be deployed until it is repaired. "
            f"Fix: {_fix(fix, cloudformation, stack_name)}"
        )
    if status == FAILED_CREATE_STATE:
        # A stack whose creation rolled back holds no resources and can only be deleted: delete it and create anew.
        reasons = failure_reasons(cloudformation, stack_name)
        log.warning(
            "stack %s is %s from an earlier failed create (%s); deleting it before creating again",
            stack_name,
            status,
            "; ".join(reasons) or "no failed resource event",
        )
        cloudformation.delete_stack(StackName=stack_name)
        _wait_until_gone(cloudformation, stack_name, poll=wait_poll, timeout=wait_timeout, sleep=sleep)
        stack, status = None, None
    if status in SUCCESS_STATES and stack_tag(stack, TAG_DEPLOY_DIGEST) == deploy_digest:
        return StackDeployStart(unchanged=True, change_set_name=None, change_set_type=None)

    change_set_type = "CREATE" if status in (None, "REVIEW_IN_PROGRESS") else "UPDATE"
    existing = _describe_change_set(cloudformation, stack_name, change_set_name)
    if existing and existing.get("ExecutionStatus") == "EXECUTE_COMPLETE":
        # This exact deploy ran before, but the stack has moved on since (another release, a failed update, a
        # rollback to this version): that change set is spent. Make one for the stack as it is now, named after
        # its current digest, so that a retry of this attempt finds it again.
        change_set_name = naming.change_set_name_from(change_set_name, stack_tag(stack, TAG_DEPLOY_DIGEST))
        existing = _describe_change_set(cloudformation, stack_name, change_set_name)
    if existing:
        execution = existing.get("ExecutionStatus")
        if execution == "EXECUTE_IN_PROGRESS":
            return StackDeployStart(unchanged=False, change_set_name=change_set_name, change_set_type=change_set_type)
        if existing.get("Status") == "FAILED" and classify.is_no_changes(existing.get("StatusReason")):
            return StackDeployStart(unchanged=True, change_set_name=None, change_set_type=None)
        if not (existing.get("Status") == "CREATE_COMPLETE" and execution == "AVAILABLE"):
            cloudformation.delete_change_set(StackName=stack_name, ChangeSetName=change_set_name)
            existing = None
    if not existing:
        try:
            cloudformation.create_change_set(
                StackName=stack_name,
                ChangeSetName=change_set_name,
                ChangeSetType=change_set_type,
                TemplateURL=template_url,
                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(parameters.items())],
                Capabilities=capabilities if capabilities is not None else ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
                RoleARN=execution_role_arn,
                Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())],
                Description=f"tenant-release {tags.get(TAG_RELEASE_VERSION, '')}",
                **({"RollbackConfiguration": rollback_configuration} if rollback_configuration is not None else {}),
            )
        except ClientError as exc:
            if classify.is_no_changes(classify.error_message(exc)):
                return StackDeployStart(unchanged=True, change_set_name=None, change_set_type=None)
            if classify.is_retriable(exc):
                raise
            raise PermanentAwsError(f"creating change set for {stack_name} failed: {classify.describe(exc)}") from None
        if not wait:
            return StackDeployStart(
                unchanged=False, change_set_name=change_set_name, change_set_type=change_set_type, pending=True
            )
        created = _wait_for_change_set(
            cloudformation, stack_name, change_set_name, poll=wait_poll, timeout=wait_timeout, sleep=sleep
        )
        return _execute_created(cloudformation, stack_name, change_set_name, change_set_type, created)
    return _execute_created(cloudformation, stack_name, change_set_name, change_set_type, existing)


def operation_under_way(
    cloudformation: Any, *, stack_name: str, stack: dict[str, Any] | None, change_set_name: str
) -> StackDeployStart | None:
    """None when the stack is at rest. Mid-operation: this deploy's own change set executing (a retry attaches to
    it), or someone else's operation, which `StackBusyError` says to wait for: never a competing update."""
    status = stack["StackStatus"] if stack else None
    if not status or not status.endswith("_IN_PROGRESS") or status == "REVIEW_IN_PROGRESS":
        return None
    existing = _describe_change_set(cloudformation, stack_name, change_set_name)
    if existing and existing.get("ExecutionStatus") in {"EXECUTE_IN_PROGRESS", "EXECUTE_COMPLETE"}:
        return StackDeployStart(unchanged=False, change_set_name=change_set_name, change_set_type=None)
    raise StackBusyError(
        f"stack {stack_name} is busy with an operation this release did not start ({status}); the deploy waits for it "
        "to settle, then deploys",
        stack_status=status,
    )


def execute_when_ready(
    cloudformation: Any, *, stack_name: str, change_set_name: str, change_set_type: str | None
) -> StackDeployStart | None:
    """One look at a change set being created: None while it still is; then execute it (or find nothing to do)."""
    change_set = cloudformation.describe_change_set(StackName=stack_name, ChangeSetName=change_set_name)
    if change_set.get("Status") not in {"CREATE_COMPLETE", "FAILED"}:
        return None
    return _execute_created(cloudformation, stack_name, change_set_name, change_set_type, change_set)


def _execute_created(
    cloudformation: Any, stack_name: str, change_set_name: str, change_set_type: str | None, created: dict[str, Any]
) -> StackDeployStart:
    if created.get("Status") == "FAILED":
        reason = created.get("StatusReason", "")
        if classify.is_no_changes(reason):
            cloudformation.delete_change_set(StackName=stack_name, ChangeSetName=change_set_name)
            return StackDeployStart(unchanged=True, change_set_name=None, change_set_type=None)
        raise PermanentAwsError(f"change set {change_set_name} for {stack_name} failed: {reason}")
    cloudformation.execute_change_set(StackName=stack_name, ChangeSetName=change_set_name)
    log.info("executing %s change set %s on %s", change_set_type, change_set_name, stack_name)
    return StackDeployStart(unchanged=False, change_set_name=change_set_name, change_set_type=change_set_type)


def poll_stack(cloudformation: Any, stack_name: str) -> StackPoll:
    stack = describe_stack(cloudformation, stack_name)
    if stack is None:
        return StackPoll(status="DELETE_COMPLETE", settled=True, succeeded=False)
    status = stack["StackStatus"]
    settled = not status.endswith("_IN_PROGRESS")
    return StackPoll(status=status, settled=settled, succeeded=status in SUCCESS_STATES)


def failure_reasons(cloudformation: Any, stack_name: str, *, limit: int = 5) -> list[str]:
    """The failing resources of the latest operation, first failure first: the real cause leads."""
    try:
        pages = cloudformation.get_paginator("describe_stack_events").paginate(StackName=stack_name)
        events: list[dict[str, Any]] = []
        for page in pages:
            events.extend(page.get("StackEvents", []))
            if len(events) >= 200:
                break
    except ClientError as exc:
        return [f"(stack events unavailable: {classify.describe(exc)})"]
    current: list[dict[str, Any]] = []
    for event in events:  # newest first; stop at the start of the latest operation
        current.append(event)
        if (
            event.get("ResourceType") == "AWS::CloudFormation::Stack"
            and event.get("ResourceStatus")
            in {
                "CREATE_IN_PROGRESS",
                "UPDATE_IN_PROGRESS",
            }
            and event.get("ResourceStatusReason") in {"User Initiated", None}
        ):
            break
    failed = [
        e
        for e in reversed(current)
        if str(e.get("ResourceStatus", "")).endswith("_FAILED") and e.get("ResourceType") != "AWS::CloudFormation::Stack"
    ]
    return [
        f"{e.get('LogicalResourceId')} ({e.get('ResourceType')}) {e.get('ResourceStatus')}: "
        f"{e.get('ResourceStatusReason', 'no reason given')}"
        for e in failed[:limit]
    ]


def raise_for_failed_stack(cloudformation: Any, stack_name: str, status: str) -> None:
    reasons = failure_reasons(cloudformation, stack_name)
    first = reasons[0] if reasons else f"stack ended {status} with no failed resource event"
    fix = _FIX_FOR_STATE.get(status)
    message = f"stack {stack_name} ended {status}: {first}"
    if fix:
        message += f". Fix: {_fix(fix, cloudformation, stack_name)}"
    raise StackFailedError(message, stack_status=status, events=reasons)


def _fix(template: str, cloudformation: Any, stack_name: str) -> str:
    return template.format(stack=stack_name, region=cloudformation.meta.region_name)


def deploy_change_set(
    cloudformation: Any,
    *,
    stack_name: str,
    stack: dict[str, Any] | None,
    change_set_name: str,
    deploy_digest: str,
    digest_before: str | None,
) -> dict[str, Any] | None:
    """The change set of the deploy `deploy_digest` on the stack, named as `start_deploy` names it (its `-from-`
    form when the plain one was spent by an earlier deploy of the same build): None when it has none, or only a
    failed one (nothing of it reached the stack). `digest_before`: the stack's digest when that deploy began.
    """
    found = _describe_change_set(cloudformation, stack_name, change_set_name)
    spent = found is not None and found.get("ExecutionStatus") == "EXECUTE_COMPLETE"
    if spent and stack_tag(stack, TAG_DEPLOY_DIGEST) != deploy_digest:
        # Spent by an earlier deploy of this build, and the stack moved on since: this deploy makes one of its own.
        found = _describe_change_set(cloudformation, stack_name, naming.change_set_name_from(change_set_name, digest_before))
    if found is None or found.get("Status") == "FAILED":
        return None
    return found


def _describe_change_set(cloudformation: Any, stack_name: str, name: str) -> dict[str, Any] | None:
    try:
        return cloudformation.describe_change_set(StackName=stack_name, ChangeSetName=name)
    except ClientError as exc:
        if classify.error_code(exc) in {"ChangeSetNotFound", "ChangeSetNotFoundException", "ValidationError"}:
            return None
        raise


def _wait_for_change_set(
    cloudformation: Any, stack_name: str, name: str, *, poll: float, timeout: float, sleep: Callable[[float], None]
) -> dict[str, Any]:
    waited = 0.0
    while True:
        change_set = cloudformation.describe_change_set(StackName=stack_name, ChangeSetName=name)
        if change_set.get("Status") in {"CREATE_COMPLETE", "FAILED"}:
            return change_set
        if waited >= timeout:
            raise RecoverableAwsError(f"change set {name} on {stack_name} still {change_set.get('Status')} after {timeout:.0f}s")
        sleep(poll)
        waited += poll


def _wait_until_gone(
    cloudformation: Any, stack_name: str, *, poll: float, timeout: float, sleep: Callable[[float], None]
) -> None:
    waited = 0.0
    while (stack := describe_stack(cloudformation, stack_name)) is not None:
        if stack["StackStatus"] == "DELETE_FAILED":
            raise PermanentAwsError(f"stack {stack_name} could not be deleted (DELETE_FAILED); delete it by hand")
        if waited >= timeout:
            raise RecoverableAwsError(f"stack {stack_name} still deleting after {timeout:.0f}s")
        sleep(poll)
        waited += poll
