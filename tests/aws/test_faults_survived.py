"""Faults a release must survive, one test each, on in-process moto with injected faults.

moto cannot throttle, deny, roll back, corrupt a copy or expire a session, so `tests.faults` injects those around
the real moto clients. The moto world (bootstrapped accounts and two builds) is the one of `test_deploy_aws`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tenant_release.aws import ledger
from tenant_release.aws.session import AwsSessions
from tenant_release.aws.stacks import stack_tag
from tenant_release.classify import RetryPolicy
from tenant_release.deploy import TargetDeployment
from tenant_release.errors import ChecksumMismatchError, PermanentAwsError, StackFailedError
from tenant_release.models import DeployProgress, Outcome, TenantResult

from tests.aws import test_deploy_aws as base
from tests.aws.test_deploy_aws import (
    ACME,
    GLOBEX,
    HISTORY,
    INITECH,
    TOOLING,
    UMBRELLA,
    World,
    count,
    deploy,
    recorder,
    with_status,
)
from tests.conftest import use_fleet
from tests.faults import Faults

# The moto world of test_deploy_aws (bootstrapped accounts, two builds), built once for this module too.
world, clean_slate, faults, sessions = base.world, base.clean_slate, base.faults, base.sessions

TENANTS = {"acme": ACME, "globex": GLOBEX, "initech": INITECH, "umbrella": UMBRELLA}


def stack_updates(world: World, tenant: str) -> int:
    """How many updates CloudFormation started on the tenant's stack, from its own events."""
    target = world.loaded.target(tenant)
    cloudformation = world.inspect("cloudformation", target.account_id, target.region)
    pages = cloudformation.get_paginator("describe_stack_events").paginate(StackName=target.stack_name)
    events = [event for page in pages for event in page["StackEvents"]]
    return sum(
        1
        for event in events
        if event["ResourceType"] == "AWS::CloudFormation::Stack" and event["ResourceStatus"] == "UPDATE_IN_PROGRESS"
    )


def test_throttling_storm(world: World, sessions: AwsSessions, faults: Faults) -> None:
    """A third of CloudFormation, STS, S3 and KMS calls throttled: every tenant ships, each stack updated once."""
    for tenant in TENANTS:
        assert deploy(world.deployment(sessions, tenant, run_id="run-1")).status == Outcome.SUCCEEDED
    throttled: list[int] = []  # indexes into faults.calls of the calls answered with a throttle

    def every_third_call() -> Callable[[dict[str, Any]], bool]:
        seen = itertools.count(1)  # calls of one service, any account, any operation

        def when(kwargs: dict[str, Any]) -> bool:
            if next(seen) % 3:
                return False
            throttled.append(len(faults.calls) - 1)  # the injector logs a call before it decides
            return True

        return when

    codes = {"cloudformation": "Throttling", "sts": "RequestLimitExceeded", "s3": "SlowDown", "kms": "ThrottlingException"}
    for service, code in codes.items():
        faults.add(service=service, operation="*", code=code, message="Rate exceeded", when=every_third_call())
    first_call = len(faults.calls)
    sleeps: list[float] = []

    results = {
        tenant: deploy(
            world.deployment(sessions, tenant, version="1.5.0", run_id="run-2", retry=RetryPolicy(sleep=sleeps.append))
        )
        for tenant in TENANTS
    }

    assert {tenant: (r.status, r.version_after) for tenant, r in results.items()} == {
        tenant: (Outcome.SUCCEEDED, "1.5.0") for tenant in TENANTS
    }
    stormed = Counter(service for service, _, _ in faults.calls[first_call:] if service in codes)
    hit = Counter(faults.calls[index][0] for index in throttled)
    assert all(hit[service] == stormed[service] // 3 > 0 for service in codes), (hit, stormed)  # a third of each
    assert len(sleeps) == len(throttled)  # each throttled call waited, then was sent again
    reached = Counter(call for index, call in enumerate(faults.calls) if index >= first_call and index not in throttled)
    for tenant, account in TENANTS.items():
        assert reached["cloudformation", account, "execute_change_set"] == 1, tenant
        assert reached["cloudformation", account, "update_stack"] == 0, tenant
        assert stack_updates(world, tenant) == 1, tenant


def test_access_denied_on_one_tenants_role_or_key(world: World, sessions: AwsSessions, faults: Faults) -> None:
    """A denied assume-role, a copy the tenant's key policy refuses, a key the deploy role may not describe:
    each fails its own tenant only, naming the role or key and the statement of the policy to fix."""
    tooling, orchestrator = world.loaded.fleet.tooling.account_id, "tenant-release-orchestrator"
    caller = f"arn:aws:sts::{tooling}:assumed-role/{orchestrator}/tr-v1.4.0-run-1"
    globex_role = world.loaded.target("globex").deploy_role_arn
    acme_key = world.key_arn(ACME, "eu-central-1", "alias/tenant-release-tenant")
    faults.add(
        service="sts",
        operation="assume_role",
        code="AccessDenied",
        message=f"User: {caller} is not authorized to perform: sts:AssumeRole on resource: {globex_role}",
        when=lambda kwargs: kwargs["RoleArn"] == globex_role,
    )
    faults.add(
        service="s3",
        operation="copy_object",
        code="AccessDenied",
        message=f"User: {caller} is not authorized to perform: kms:GenerateDataKey on resource: {acme_key} "
        "because no resource-based policy allows the kms:GenerateDataKey action",
        when=lambda kwargs: kwargs.get("SSEKMSKeyId") == acme_key,
    )
    faults.add(
        service="kms",
        operation="describe_key",
        account=UMBRELLA,
        code="AccessDeniedException",
        message=f"User: arn:aws:sts::{UMBRELLA}:assumed-role/tenant-release-deploy/x is not authorized to perform: "
        "kms:DescribeKey",
    )
    sleeps: list[float] = []
    outcomes: dict[str, str] = {}
    for tenant in TENANTS:
        try:
            outcomes[tenant] = deploy(world.deployment(sessions, tenant, retry=RetryPolicy(sleep=sleeps.append))).status
        except PermanentAwsError as exc:
            outcomes[tenant] = str(exc)

    assert outcomes.pop("initech") == Outcome.SUCCEEDED
    assert sleeps == []  # a denial is not retried
    denied_role = outcomes.pop("globex")
    assert denied_role.startswith(f"cannot assume {globex_role} for tenant 'globex': AccessDenied")
    for fix in (
        "trust policy of " + globex_role,
        "OrchestratorAssumesRole",
        "OrchestratorSetsSessionIdentity",
        "include/templates/tenant-bootstrap.yaml",
        "account 222222222222",
        "tenant-release bootstrap",
    ):
        assert fix in denied_role
    denied_copy = outcomes.pop("acme")
    assert "kms:GenerateDataKey" in denied_copy and f"the key policy of the tenant's key {acme_key}" in denied_copy
    assert (
        "OrchestratorEncryptsReleaseCopies" in denied_copy
        and "ArtifactKey in include/templates/tenant-bootstrap.yaml" in denied_copy
    )
    assert "acme-ext-0001" not in denied_copy
    denied_key = outcomes.pop("umbrella")
    assert denied_key.startswith("KMS key alias/tenant-release-tenant not found or not usable: AccessDeniedException")
    assert "UseTenantKey of DeployRole in include/templates/tenant-bootstrap.yaml" in denied_key
    for tenant, account in {"globex": GLOBEX, "acme": ACME, "umbrella": UMBRELLA}.items():
        assert count(faults, account, "create_change_set") == 0, tenant
        recorded = ledger.get(world.history(), HISTORY, tenant=tenant, release="v1.4.0")
        assert recorded is not None and recorded.status == Outcome.FAILED and "Fix:" in recorded.reason
    assert stack_tag(world.stack(INITECH, "eu-west-1", "tenant-app-initech"), "ReleaseVersion") == "1.4.0"


def moto_stack(world: World, tenant: str) -> Any:
    from moto.cloudformation.models import cloudformation_backends

    target = world.loaded.target(tenant)
    return cloudformation_backends[target.account_id][target.region].get_stack(target.stack_name)


def rolls_back(world: World, tenant: str, status: str, *failed: tuple[str, str, str]):
    """A `rewrite` for ExecuteChangeSet: once moto has run the change set, leave the stack as a failed operation does.

    moto never fails a stack operation, so its own stack is set to what CloudFormation leaves: the final status, the
    failed resources' events (logical id, resource type, reason) and, after an update's rollback, the template,
    parameters and tags the stack had before (as they are now, when this is called).
    """
    from moto.cloudformation.models import Event

    operation = "CREATE" if status == "ROLLBACK_COMPLETE" else "UPDATE"
    before = moto_stack(world, tenant) if operation == "UPDATE" else None
    kept = (before.template, dict(before.parameters), dict(before.tags)) if before is not None else None

    def rewrite(response: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        stack = moto_stack(world, tenant)
        for logical_id, resource_type, reason in failed:
            stack.events.append(
                Event(
                    stack_id=stack.stack_id,
                    stack_name=stack.name,
                    logical_resource_id=logical_id,
                    physical_resource_id=logical_id,
                    resource_type=resource_type,
                    resource_status=f"{operation}_FAILED",
                    resource_status_reason=reason,
                    resource_properties=None,
                )
            )
        stack._add_stack_event(status)
        stack.status = status
        if kept is not None:
            stack.template, stack.parameters, stack.tags = kept[0], dict(kept[1]), dict(kept[2])
            stack._parse_template()
        return response

    return rewrite


MEMORY_REFUSED = ("Function", "AWS::Lambda::Function", 'Resource handler returned message: "Memory size 3000 is not valid"')


def tags_of(world: World, tenant: str) -> dict[str, str]:
    target = world.loaded.target(tenant)
    return {tag["Key"]: tag["Value"] for tag in world.stack(target.account_id, target.region, target.stack_name)["Tags"]}


def test_stack_ending_update_rollback_complete(world: World, sessions: AwsSessions, faults: Faults) -> None:
    """An update that rolled back fails the tenant with the first failed resource's reason; the next release updates it."""
    assert deploy(world.deployment(sessions, "umbrella", run_id="run-1")).status == Outcome.SUCCEEDED
    rolled_back = rolls_back(
        world,
        "umbrella",
        "UPDATE_ROLLBACK_COMPLETE",
        MEMORY_REFUSED,
        ("LogGroup", "AWS::Logs::LogGroup", "Resource update cancelled"),
    )
    faults.add(service="cloudformation", operation="execute_change_set", account=UMBRELLA, times=1, rewrite=rolled_back)

    with pytest.raises(StackFailedError) as caught:
        deploy(world.deployment(sessions, "umbrella", version="1.5.0", run_id="run-2"))

    message = str(caught.value)
    assert message.startswith(
        "stack tenant-app-umbrella ended UPDATE_ROLLBACK_COMPLETE: Function (AWS::Lambda::Function) UPDATE_FAILED: "
        'Resource handler returned message: "Memory size 3000 is not valid". Fix: the stack rolled back'
    )
    recorded = ledger.get(world.history(), HISTORY, tenant="umbrella", release="v1.5.0")
    assert (recorded.status, recorded.stack_status) == (Outcome.FAILED, "UPDATE_ROLLBACK_COMPLETE")
    assert "Memory size 3000 is not valid" in recorded.reason

    again = deploy(world.deployment(sessions, "umbrella", version="1.5.0", run_id="run-3"))

    assert (again.status, again.version_before, again.version_after) == (Outcome.SUCCEEDED, "1.4.0", "1.5.0")
    assert count(faults, UMBRELLA, "execute_change_set") == 3  # the create, the update that failed, this one
    assert tags_of(world, "umbrella")["ReleaseVersion"] == "1.5.0"


def test_stack_left_update_rollback_failed(world: World, sessions: AwsSessions, faults: Faults) -> None:
    """A rollback that failed is left for a person: the exact command and console step, and no change set after."""
    assert deploy(world.deployment(sessions, "initech", run_id="run-1")).status == Outcome.SUCCEEDED
    rollback_failed = rolls_back(world, "initech", "UPDATE_ROLLBACK_FAILED", MEMORY_REFUSED)
    faults.add(service="cloudformation", operation="execute_change_set", account=INITECH, times=1, rewrite=rollback_failed)
    command = "`aws cloudformation continue-update-rollback --stack-name tenant-app-initech --region eu-west-1`"
    console = "Stacks > tenant-app-initech > Stack actions > Continue update rollback"

    with pytest.raises(StackFailedError) as caught:
        deploy(world.deployment(sessions, "initech", version="1.5.0", run_id="run-2"))
    assert str(caught.value).startswith(
        "stack tenant-app-initech ended UPDATE_ROLLBACK_FAILED: Function (AWS::Lambda::Function) UPDATE_FAILED: "
    )
    assert command in str(caught.value) and console in str(caught.value)

    started = len(faults.calls)
    sleeps: list[float] = []
    with pytest.raises(PermanentAwsError) as refused:
        deploy(world.deployment(sessions, "initech", version="1.5.0", run_id="run-3", retry=RetryPolicy(sleep=sleeps.append)))

    message = str(refused.value)
    assert message.startswith(
        "stack tenant-app-initech is in UPDATE_ROLLBACK_FAILED after: Function (AWS::Lambda::Function) UPDATE_FAILED: "
        'Resource handler returned message: "Memory size 3000 is not valid". It cannot be deployed until it is repaired.'
    )
    assert command in message and console in message and "--resources-to-skip" in message
    after = {name for _, account, name in faults.calls[started:] if account == INITECH}
    assert not after & {"create_change_set", "execute_change_set", "update_stack", "delete_stack"}, after
    assert sleeps == []
    recorded = ledger.get(world.history(), HISTORY, tenant="initech", release="v1.5.0")
    assert (recorded.run_id, recorded.status) == ("run-3", Outcome.FAILED) and command in recorded.reason


def test_stack_left_rollback_complete_by_a_failed_first_create(world: World, sessions: AwsSessions, faults: Faults) -> None:
    """A first create that rolled back fails with its reason; the next release deletes the empty stack and creates it."""
    deleted: list[dict[str, Any]] = []
    change_sets: list[dict[str, Any]] = []
    faults.add(service="cloudformation", operation="delete_stack", account=GLOBEX, when=recorder(deleted))
    faults.add(service="cloudformation", operation="create_change_set", account=GLOBEX, when=recorder(change_sets))
    failed_create = rolls_back(world, "globex", "ROLLBACK_COMPLETE", MEMORY_REFUSED)
    faults.add(service="cloudformation", operation="execute_change_set", account=GLOBEX, times=1, rewrite=failed_create)

    with pytest.raises(StackFailedError) as caught:
        deploy(world.deployment(sessions, "globex", run_id="run-1"))

    assert str(caught.value).startswith(
        "stack tenant-app-globex ended ROLLBACK_COMPLETE: Function (AWS::Lambda::Function) CREATE_FAILED: "
        'Resource handler returned message: "Memory size 3000 is not valid". Fix: a stack whose first create rolled back '
        "holds nothing and can only be deleted: the next release deletes it"
    )
    recorded = ledger.get(world.history(), HISTORY, tenant="globex", release="v1.4.0")
    assert (recorded.status, recorded.stack_status) == (Outcome.FAILED, "ROLLBACK_COMPLETE")

    result = deploy(world.deployment(sessions, "globex", run_id="run-2"))

    assert [kwargs["StackName"] for kwargs in deleted] == ["tenant-app-globex"]
    assert [kwargs["ChangeSetType"] for kwargs in change_sets] == ["CREATE", "CREATE"]
    assert (result.status, result.version_before, result.version_after) == (Outcome.SUCCEEDED, None, "1.4.0")
    stack = world.stack(GLOBEX, "us-east-1", "tenant-app-globex")
    assert stack["StackStatus"] == "CREATE_COMPLETE" and stack_tag(stack, "ReleaseVersion") == "1.4.0"


def in_the_triggerer(deployment: TargetDeployment, waits: list[float]) -> TenantResult:
    """The deploy as `TenantDeployTrigger` runs it: its `_begin` waits (asleep in the event loop) for a busy stack."""
    import asyncio

    from tenant_release.airflow.triggers import TenantDeployTrigger

    trigger = TenantDeployTrigger(
        tenant=deployment.target.name,
        target_digest="-",
        config_path=None,
        release_tag=deployment.run.release.tag,
        run_id=deployment.run.run_id,
        artifact=deployment.run.artifact.model_dump(mode="json"),
        progress={},
        poll_interval=30.0,
        deadline=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    )

    waiting_to_begin = [True]

    async def asleep(seconds: float) -> None:
        if waiting_to_begin[0]:
            waits.append(30.0 if 24.0 <= seconds <= 36.0 else seconds)  # jittered around the poll interval

    async def deploy_in_the_triggerer() -> tuple[DeployProgress, str]:
        progress = await trigger._begin(deployment, DeployProgress(started_at="2026-12-03T00:00:00+00:00"))
        waiting_to_begin[0] = False
        progress = await trigger._execute_when_ready(deployment, progress)
        return progress, await trigger._settle(deployment, progress)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", asleep)
        progress, status = asyncio.run(deploy_in_the_triggerer())
    return deployment.finish(progress, stack_status=status)


def in_a_thread(deployment: TargetDeployment, waits: list[float]) -> TenantResult:
    return deployment.run_to_completion(poll_interval=30.0, sleep=waits.append)


@pytest.mark.parametrize("waiting", [in_a_thread, in_the_triggerer], ids=lambda f: f.__name__)
def test_stack_already_update_in_progress_by_someone_else(
    world: World, sessions: AwsSessions, faults: Faults, waiting: Callable[[TargetDeployment, list[float]], TenantResult]
) -> None:
    """Someone else's update holds the stack: the deploy waits for it to settle, then deploys; it never competes."""
    assert deploy(world.deployment(sessions, "acme", run_id="run-1")).status == Outcome.SUCCEEDED
    busy_reads: list[int] = []  # indexes into faults.calls of the reads that found the other update under way
    faults.add(
        service="cloudformation",
        operation="describe_stacks",
        account=ACME,
        times=4,
        when=lambda kwargs: not busy_reads.append(len(faults.calls) - 1),
        rewrite=with_status("UPDATE_IN_PROGRESS"),
    )
    started = len(faults.calls)
    waits: list[float] = []
    retries: list[float] = []
    deployment = world.deployment(sessions, "acme", version="1.5.0", run_id="run-2", retry=RetryPolicy(sleep=retries.append))

    result = waiting(deployment, waits)

    assert (result.status, result.version_before, result.version_after) == (Outcome.SUCCEEDED, "1.4.0", "1.5.0")
    assert len(busy_reads) == 4 and waits == [30.0] * 4 and retries == []  # waited at the stack's pace, not retried
    stack_changes = [
        index
        for index, (_, account, name) in enumerate(faults.calls)
        if index >= started and account == ACME and name in {"create_change_set", "execute_change_set", "update_stack"}
    ]
    assert len(stack_changes) == 2 and min(stack_changes) > max(busy_reads)  # one change set, after the other update
    copies = [index for index, (_, _, name) in enumerate(faults.calls) if index >= started and name == "copy_object"]
    assert min(copies) > max(busy_reads)  # nothing copied or recorded while it waited
    assert stack_updates(world, "acme") == 1


def test_credentials_expiring_during_a_long_wait(world: World, faults: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half-hour tenant sessions, a stack update that takes fifty minutes: the session is re-assumed before it
    expires, every call is signed with live credentials, and the deploy completes.

    One clock moves for botocore (when to refresh) and moto (when what it issues expires); the wait moves it.
    test_session_refresh shows the refresh itself; this shows a deploy living through it.
    """
    import botocore.credentials
    import moto.sts.models
    from tenant_release.aws import session as session_module

    now = [datetime.now(UTC)]
    monkeypatch.setattr(botocore.credentials, "_local_now", lambda: now[0])
    monkeypatch.setattr(moto.sts.models, "utcnow", lambda: now[0].replace(tzinfo=None))
    monkeypatch.setattr(session_module, "ASSUME_DURATION_SECONDS", 1800)
    signed: list[tuple[datetime, datetime]] = []  # (when, until when its credentials were valid) of each tenant call

    def hook(service: str, account: str, client: Any) -> Any:
        if account == UMBRELLA:
            credentials = client._request_signer._credentials
            credentials._time_fetcher = lambda: now[0]  # bound when botocore made them; the clock is ours
            client.meta.events.register("before-send", lambda **_: signed.append((now[0], credentials._expiry_time)))
        return faults.hook(service, account, client)

    sessions = AwsSessions(world.base_session, client_hook=hook)
    executed: list[dict[str, Any]] = []
    faults.add(service="cloudformation", operation="execute_change_set", account=UMBRELLA, when=recorder(executed))
    faults.add(
        service="cloudformation",
        operation="describe_stacks",
        account=UMBRELLA,
        times=10,
        when=lambda kwargs: bool(executed),
        rewrite=with_status("CREATE_IN_PROGRESS"),
    )

    def wait(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    result = world.deployment(sessions, "umbrella").run_to_completion(poll_interval=300.0, sleep=wait)

    assert (result.status, result.version_after) == (Outcome.SUCCEEDED, "1.4.0")
    assert now[0] - signed[0][0] >= timedelta(minutes=50)  # the deploy outlived the first session by far
    assert all(when < valid_until for when, valid_until in signed), "a call was signed with expired credentials"
    assumed = [call for call in faults.calls if call == ("sts", "tooling", "assume_role")]
    assert len(assumed) >= 3  # the first session, and a new one at least every quarter of an hour after that


def test_corrupted_artifact(world: World, sessions: AwsSessions, faults: Faults) -> None:
    """A copy that does not hash to the build, because the copy differs or the source changed after the build: not
    deployed, the tenant fails naming the object and both hashes."""
    artifact = world.artifacts["1.5.0"]
    (code,) = artifact.objects
    wrong = hashlib.sha256(b"tampered").hexdigest()
    faults.add(
        service="s3",
        operation="copy_object",
        when=lambda kwargs: kwargs["Bucket"].startswith(f"tenant-release-{ACME}-"),
        rewrite=lambda response, kwargs: {
            **response,
            "CopyObjectResult": {
                **response["CopyObjectResult"],
                "ChecksumSHA256": base64.b64encode(bytes.fromhex(wrong)).decode(),
            },
        },
    )
    tooling_s3 = world.inspect("s3", TOOLING, "us-east-1")
    built = tooling_s3.get_object(Bucket=artifact.bucket, Key=code.key)
    changed = b"not what was built"
    sleeps: list[float] = []
    failures: dict[str, str] = {}
    try:
        # Someone overwrites the built object in the tooling bucket, keeping its metadata (which names the build's hash).
        tooling_s3.put_object(Bucket=artifact.bucket, Key=code.key, Body=changed, Metadata=built["Metadata"])
        for tenant in ("acme", "globex"):
            with pytest.raises(ChecksumMismatchError) as caught:
                deploy(world.deployment(sessions, tenant, version="1.5.0", retry=RetryPolicy(sleep=sleeps.append)))
            failures[tenant] = str(caught.value)
    finally:
        tooling_s3.put_object(Bucket=artifact.bucket, Key=code.key, Body=built["Body"].read(), Metadata=built["Metadata"])

    copy_differs, source_changed = failures["acme"], failures["globex"]
    assert copy_differs.startswith(
        f"the copy at s3://tenant-release-{ACME}-eu-central-1/{code.key} hashes to {wrong}, not to the built artifact's "
        f"{code.sha256}: the source s3://{artifact.bucket}/{code.key} no longer holds what was built"
    )
    assert source_changed.startswith(
        f"the copy at s3://tenant-release-{GLOBEX}-us-east-1/{code.key} hashes to {hashlib.sha256(changed).hexdigest()}, "
        f"not to the built artifact's {code.sha256}"
    )
    for tenant, account in (("acme", ACME), ("globex", GLOBEX)):
        assert "it was not deployed. Fix:" in failures[tenant] and "rebuild: true" in failures[tenant]
        assert count(faults, account, "create_change_set") == 0
        recorded = ledger.get(world.history(), HISTORY, tenant=tenant, release="v1.5.0")
        assert recorded.status == Outcome.FAILED and code.sha256 in recorded.reason
    assert sleeps == []  # a corrupted copy is not retried
    assert deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-2")).status == Outcome.SUCCEEDED


def test_queued_release_dispatch_interrupted_between_trigger_and_mark(
    world: World, faults: Faults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduled run triggers the release, then dies before marking the queue entry: neither its retry nor the
    next window's run ships the release a second time.

    The steps are the scheduled DAG's own (`queue_steps`); `runs` stands for Airflow's dag_run table, which holds
    one run per run id (the DAG's TriggerDagRunOperator skips when the id exists). tests/dags/test_scheduled_release
    runs the same crash under dag.test().
    """
    from airflow.sdk.exceptions import AirflowSkipException
    from botocore.exceptions import ClientError
    from tenant_release.airflow import queue_steps, runtime
    from tenant_release.aws import release_queue

    use_fleet("fleet_schedule.yaml", tmp_path, monkeypatch)  # its tooling account is this world's
    monkeypatch.setattr(runtime, "_session_factory", lambda: AwsSessions(world.base_session, client_hook=faults.hook))
    queue = world.history()  # the tooling account's DynamoDB
    table = world.loaded.fleet.tooling.queue_table
    release_queue.enqueue(queue, table, release_tag="v2.0.0", tenants=(), queued_by="alice", approved_by=None)
    runs: dict[str, dict[str, Any]] = {}

    def trigger(taken: dict[str, Any]) -> None:
        runs.setdefault(taken["trigger_run_id"], taken["conf"])

    tuesday = datetime(2027, 3, 2, 2, 30, tzinfo=UTC)
    first = queue_steps.take_queued_release(run_id="scheduled__2027-03-02T02:00:00+00:00", now=tuesday)
    trigger(first)
    crash = faults.add(service="dynamodb", operation="update_item", code="InternalServerError", message="worker lost")
    with pytest.raises(ClientError):
        queue_steps.mark_dispatched(first)  # the worker dies here: the entry is still QUEUED
    assert release_queue.get(queue, table, "v2.0.0").status == release_queue.QueueStatus.QUEUED
    faults.faults.remove(crash)

    retried = queue_steps.mark_dispatched(first)  # the task's retry
    with pytest.raises(AirflowSkipException, match="nothing queued"):  # the next window's run: nothing left to ship
        queue_steps.take_queued_release(run_id="scheduled__2027-03-09T02:00:00+00:00", now=tuesday + timedelta(days=7))
    assert (retried["status"], retried["run_id"]) == ("DISPATCHED", first["trigger_run_id"])

    # The same crash, and no retry: the next window's run takes the entry again, with the same run id.
    release_queue.enqueue(queue, table, release_tag="v2.1.0", tenants=(), queued_by="alice", approved_by=None)
    dying = queue_steps.take_queued_release(run_id="scheduled__2027-03-16T02:00:00+00:00", now=tuesday + timedelta(days=14))
    trigger(dying)
    again = queue_steps.take_queued_release(run_id="scheduled__2027-03-23T02:00:00+00:00", now=tuesday + timedelta(days=21))
    assert again["trigger_run_id"] == dying["trigger_run_id"]
    trigger(again)  # Airflow finds the run already there: nothing new is created
    assert queue_steps.mark_dispatched(again)["run_id"] == dying["trigger_run_id"]

    assert sorted(runs) == sorted({first["trigger_run_id"], dying["trigger_run_id"]})  # each release once
    assert [conf["release_tag"] for conf in runs.values()] == ["v2.0.0", "v2.1.0"]
