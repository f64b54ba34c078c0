"""Two runs never deploy one tenant at once: the per-tenant lease, on moto (the deploy layer and the deploy trigger).

The moto world, its clean-up and the fault-injecting sessions are test_deploy_aws's fixtures, imported by name.
"""

# ruff: noqa: F811

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from airflow.triggers.base import TaskSuccessEvent
from tenant_release.airflow import runtime
from tenant_release.airflow.triggers import TenantDeployTrigger
from tenant_release.aws import leases, ledger
from tenant_release.aws.session import AwsSessions
from tenant_release.errors import PermanentAwsError, TenantBusyError
from tenant_release.models import DeployProgress, Outcome

from tests.aws.test_deploy_aws import (  # noqa: F401 (clean_slate: autouse)
    GLOBEX,
    HISTORY,
    World,
    clean_slate,
    count,
    deploy,
    faults,
    sessions,
    with_status,
    world,
)
from tests.faults import Faults

LEASES = "tenant-release-leases"


@pytest.fixture
def dynamodb(world: World) -> Any:
    return world.history()


@pytest.fixture(autouse=True)
def free_every_tenant(dynamodb: Any) -> Iterator[None]:
    yield
    for item in dynamodb.scan(TableName=LEASES)["Items"]:
        dynamodb.delete_item(TableName=LEASES, Key={"tenant": item["tenant"]})


def test_the_tooling_stack_creates_the_leases_table(dynamodb: Any) -> None:
    table = dynamodb.describe_table(TableName=LEASES)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "tenant", "KeyType": "HASH"}]


def test_a_lease_is_reentrant_for_its_run_refused_to_another_and_free_again_once_expired(dynamodb: Any) -> None:
    take = dict(tenant="acme", release="v1.4.0", seconds=600, now=1_000_000.0)
    assert leases.acquire(dynamodb, LEASES, run_id="run-a", **take) is None
    assert leases.acquire(dynamodb, LEASES, run_id="run-a", **take) is None  # a retry of the same run
    held = leases.acquire(dynamodb, LEASES, run_id="run-b", **{**take, "release": "v1.5.0"})
    assert (held.run_id, held.release) == ("run-a", "v1.4.0")
    assert leases.acquire(dynamodb, LEASES, run_id="run-b", tenant="globex", release="v1.5.0", seconds=600) is None

    # run-a's long deploy pushes its own lease out; another run cannot renew or end it.
    assert leases.renew(dynamodb, LEASES, tenant="acme", run_id="run-a", seconds=600, now=1_000_000.0 + 300)
    assert leases.holder(dynamodb, LEASES, tenant="acme").expires_at == 1_000_000 + 900
    assert not leases.renew(dynamodb, LEASES, tenant="acme", run_id="run-b", seconds=600)
    assert not leases.release(dynamodb, LEASES, tenant="acme", run_id="run-b")
    assert leases.holder(dynamodb, LEASES, tenant="acme").run_id == "run-a"

    # run-a died without releasing: after its expiry run-b takes the tenant, and run-a cannot end run-b's lease.
    later = {**take, "release": "v1.5.0", "now": 1_000_000.0 + 901}
    assert leases.acquire(dynamodb, LEASES, run_id="run-b", **later) is None
    assert not leases.release(dynamodb, LEASES, tenant="acme", run_id="run-a")
    assert leases.release(dynamodb, LEASES, tenant="acme", run_id="run-b")
    assert leases.holder(dynamodb, LEASES, tenant="acme") is None


def test_a_missing_leases_table_names_the_fix(dynamodb: Any) -> None:
    with pytest.raises(PermanentAwsError, match=r"leases table 'nope' does not exist .* run `tenant-release bootstrap`"):
        leases.acquire(dynamodb, "nope", tenant="acme", run_id="run-a", release="v1.4.0", seconds=60)


def test_a_second_run_on_a_tenant_being_deployed_starts_nothing_and_names_the_run_holding_it(
    world: World, sessions: AwsSessions, faults: Faults, dynamodb: Any
) -> None:
    first = world.deployment(sessions, "globex", run_id="run-a")
    progress = first.begin(DeployProgress(started_at="2026-12-03T09:00:00+00:00"))  # run-a's stack update is under way
    change_sets = count(faults, GLOBEX, "create_change_set")

    second = world.deployment(sessions, "globex", version="1.5.0", run_id="run-b")
    with pytest.raises(TenantBusyError) as busy:
        deploy(second)

    assert str(busy.value).startswith("tenant globex is being deployed by run run-a (v1.4.0) since ")
    assert count(faults, GLOBEX, "create_change_set") == change_sets  # no competing change set, no copy
    refused = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.5.0")
    assert (refused.status, refused.run_id) == (Outcome.FAILED, "run-b")
    assert "being deployed by run run-a" in refused.reason
    assert leases.holder(dynamodb, LEASES, tenant="globex").run_id == "run-a"  # run-b's failure freed nothing

    # run-a ends (its outcome recorded): the tenant is free, and run-b's retry deploys it.
    first.record(first.finish(progress, stack_status=first.poll().status))
    assert leases.holder(dynamodb, LEASES, tenant="globex") is None
    assert deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-b")).version_after == "1.5.0"
    assert leases.holder(dynamodb, LEASES, tenant="globex") is None


def test_a_run_of_the_same_release_refused_as_busy_does_not_hide_the_holding_runs_outcome(
    world: World, sessions: AwsSessions, dynamodb: Any
) -> None:
    first = world.deployment(sessions, "globex", run_id="run-a")
    progress = first.begin(DeployProgress(started_at="2026-12-03T09:00:00+00:00"))
    with pytest.raises(TenantBusyError):
        deploy(world.deployment(sessions, "globex", run_id="run-b"))  # same tag, planned later: its writes sort newer

    first.record(first.finish(progress, stack_status=first.poll().status))

    latest = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0")
    assert (latest.status, latest.run_id) == (Outcome.SUCCEEDED, "run-a")  # the run that deployed it
    refusals = [
        a for a in ledger.attempts(dynamodb, "tenant-release-attempts", tenant="globex", release="v1.4.0") if a.run_id == "run-b"
    ]
    assert [a.status for a in refusals] == [Outcome.FAILED]
    assert "being deployed by run run-a" in refusals[0].reason


def _trigger(world: World, tenant: str, *, version: str, run_id: str) -> TenantDeployTrigger:
    target = world.loaded.target(tenant)
    return TenantDeployTrigger(
        tenant=tenant,
        target_digest=runtime.target_digest(target, world.loaded.fleet.application),
        config_path=str(world.loaded.path),
        release_tag=f"v{version}",
        run_id=run_id,
        artifact=world.artifacts[version].model_dump(mode="json"),
        progress=DeployProgress(started_at=datetime.now(UTC).isoformat()).model_dump(mode="json"),
        poll_interval=0.0,
        deadline=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    )


def _events(trigger: TenantDeployTrigger) -> list[Any]:
    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


@pytest.fixture
def triggerer_sessions(sessions: AwsSessions) -> Iterator[None]:
    previous = runtime.use_session_factory(lambda: sessions)
    yield
    runtime.use_session_factory(previous)


def test_the_deploy_trigger_waits_for_the_other_run_then_deploys(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__TENANT_RELEASE__LEASE_POLL_SECONDS", "0")
    assert leases.acquire(dynamodb, LEASES, tenant="globex", run_id="run-a", release="v1.4.0", seconds=3600) is None
    tries: list[str] = []

    def other_run_ends_at_the_third_look(kwargs: dict[str, Any]) -> bool:
        if kwargs.get("TableName") == LEASES:
            tries.append(kwargs["Item"]["run_id"]["S"])
            if len(tries) == 3:
                leases.release(dynamodb, LEASES, tenant="globex", run_id="run-a")
        return False

    faults.add(service="dynamodb", operation="put_item", account="tooling", when=other_run_ends_at_the_third_look)

    (event,) = _events(_trigger(world, "globex", version="1.5.0", run_id="run-b"))

    assert isinstance(event, TaskSuccessEvent)
    assert tries[:3] == ["run-b", "run-b", "run-b"]  # refused twice while run-a held it, no change set meanwhile
    assert world.function_config("globex")["Environment"]["Variables"]["RELEASE_VERSION"] == "1.5.0"
    assert count(faults, GLOBEX, "create_change_set") == 1
    assert leases.holder(dynamodb, LEASES, tenant="globex") is None  # released at the end


def test_the_deploy_trigger_gives_up_after_the_wait_limit_and_fails_the_tenant_with_the_reason(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__TENANT_RELEASE__LEASE_WAIT_MINUTES", "0")
    assert leases.acquire(dynamodb, LEASES, tenant="globex", run_id="run-a", release="v1.4.0", seconds=3600) is None

    (event,) = _events(_trigger(world, "globex", version="1.5.0", run_id="run-b"))

    failed = event.payload
    assert failed["permanent"] is True  # retrying at once would only wait again: a person re-runs it
    assert failed["failed"].startswith("tenant globex is being deployed by run run-a (v1.4.0) since ")
    assert "this run waited 0 min ([tenant_release] lease_wait_minutes) and started nothing" in failed["failed"]
    assert world.stack(GLOBEX, "us-east-1", "tenant-app-globex") is None  # never a competing stack operation
    assert count(faults, GLOBEX, "create_change_set") == 0
    recorded = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.5.0")
    assert recorded.status == Outcome.FAILED and recorded.reason == failed["failed"]
    assert leases.holder(dynamodb, LEASES, tenant="globex").run_id == "run-a"


def test_a_holder_that_died_mid_deploy_frees_the_tenant_within_15_minutes(
    world: World, sessions: AwsSessions, dynamodb: Any
) -> None:
    dead = world.deployment(sessions, "globex", run_id="run-a")
    dead.begin(DeployProgress(started_at="2026-12-03T09:00:00+00:00"))  # its stack update starts, then its trigger is cancelled
    taken = time.time()

    soon = {"tenant": "globex", "run_id": "run-b", "release": "v1.5.0", "seconds": 900}
    assert leases.acquire(dynamodb, LEASES, **soon, now=taken + 60).run_id == "run-a"  # still held a minute later
    assert leases.acquire(dynamodb, LEASES, **soon, now=taken + 15 * 60 + 2) is None  # not an hour or two


def test_the_lease_is_freed_even_when_the_tenants_outcome_cannot_be_written(
    world: World, sessions: AwsSessions, faults: Faults, dynamodb: Any
) -> None:
    deployment = world.deployment(sessions, "globex", run_id="run-a")
    progress = deployment.begin(DeployProgress(started_at="2026-12-03T09:00:00+00:00"))
    faults.add(
        service="dynamodb",
        operation="put_item",
        account="tooling",
        code="ResourceNotFoundException",
        when=lambda kwargs: kwargs.get("TableName") == "tenant-release-attempts",
    )

    with pytest.raises(PermanentAwsError, match="attempts table tenant-release-attempts does not exist"):
        deployment.record(deployment.finish(progress, stack_status=deployment.poll().status))

    assert leases.holder(dynamodb, LEASES, tenant="globex") is None  # the next run is not locked out


def test_the_deploy_trigger_renews_its_lease_while_the_stack_settles(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__TENANT_RELEASE__LEASE_RENEW_SECONDS", "0")  # due at every poll
    faults.add(  # the stack update takes three more looks to settle than moto needs
        service="cloudformation",
        operation="describe_stacks",
        account=GLOBEX,
        rewrite=with_status("UPDATE_IN_PROGRESS"),
        when=lambda kwargs: count(faults, GLOBEX, "execute_change_set") == 1,
        times=3,
    )
    renewals: list[str] = []

    def renewal(kwargs: dict[str, Any]) -> bool:
        if kwargs.get("TableName") == LEASES:
            renewals.append(kwargs["ExpressionAttributeValues"][":run"]["S"])
        return False

    faults.add(service="dynamodb", operation="update_item", account="tooling", when=renewal)

    (event,) = _events(_trigger(world, "globex", version="1.5.0", run_id="run-b"))

    assert isinstance(event, TaskSuccessEvent)
    assert len(renewals) >= 3 and set(renewals) == {"run-b"}  # while the stack was UPDATE_IN_PROGRESS
    assert leases.holder(dynamodb, LEASES, tenant="globex") is None
