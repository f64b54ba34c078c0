"""Pause, resume, abort and a wave's caps, as the deploy trigger obeys them, on in-process moto.

The moto world, its clean-up and the fault-injecting sessions are tests/aws/test_deploy_aws's fixtures, imported by name.
"""

# ruff: noqa: F811

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSkipException
from airflow.triggers.base import TaskSkippedEvent, TaskSuccessEvent, TriggerEvent
from tenant_release.airflow import runtime
from tenant_release.airflow.control_triggers import RolloutResumedTrigger
from tenant_release.airflow.deploy_operator import TenantDeployOperator
from tenant_release.airflow.triggers import TenantDeployTrigger
from tenant_release.aws import controls, leases, ledger, slots
from tenant_release.models import DeployProgress, Outcome, RolloutCaps, RolloutState

from tests.aws.test_deploy_aws import (  # noqa: F401 (clean_slate: autouse)
    ACME,
    GLOBEX,
    HISTORY,
    INITECH,
    UMBRELLA,
    World,
    clean_slate,
    count,
    faults,
    sessions,
    with_status,
    world,
)
from tests.aws.test_leases import triggerer_sessions  # noqa: F401 (the triggerer's sessions: the test's faulty ones)
from tests.faults import Faults

LEASES = "tenant-release-leases"
OPS = "arn:aws:sts::123456789012:assumed-role/ops/alice"
PLANNED = "2026-12-03T09:00:00.000000+00:00"  # when the run under test was planned
ACCOUNTS = {ACME: "acme", GLOBEX: "globex", INITECH: "initech", UMBRELLA: "umbrella"}


@pytest.fixture
def dynamodb(world: World) -> Any:
    return world.history()


@pytest.fixture(autouse=True)
def quick_polls_and_a_clean_leases_table(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for setting in ("CONTROL_POLL_SECONDS", "CONTROL_CACHE_SECONDS", "SLOT_POLL_SECONDS", "LEASE_POLL_SECONDS"):
        monkeypatch.setenv(f"AIRFLOW__TENANT_RELEASE__{setting}", "0")
    yield
    for item in dynamodb.scan(TableName=LEASES)["Items"]:  # leases, slots and rollout controls
        dynamodb.delete_item(TableName=LEASES, Key={"tenant": item["tenant"]})


def _trigger(
    world: World,
    tenant: str,
    *,
    run_id: str = "run-a",
    version: str = "1.4.0",
    planned: str = PLANNED,
    rollout: RolloutCaps | None = None,
    end_in_triggerer: bool = True,
    record_history: bool = True,
) -> TenantDeployTrigger:
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
        run_started_at=planned,
        end_in_triggerer=end_in_triggerer,
        record_history=record_history,
        rollout=rollout.model_dump(mode="json") if rollout is not None else None,
    )


def _run_all(*triggers: TenantDeployTrigger) -> list[list[Any]]:
    """Run the triggers together in one event loop, as one triggerer process runs them."""

    async def collect(trigger: TenantDeployTrigger) -> list[Any]:
        return [event async for event in trigger.run()]

    async def together() -> list[list[Any]]:
        return list(await asyncio.gather(*(collect(t) for t in triggers)))

    return asyncio.run(together())


def _control(dynamodb: Any, state: RolloutState, reason: str = "", at: str | None = None) -> Any:
    return controls.set_control(dynamodb, LEASES, "v1.4.0", state, OPS, reason, at=at)


def test_a_paused_tenant_starts_nothing_until_the_rollout_is_resumed_then_deploys(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _control(dynamodb, RolloutState.PAUSED, "error rate up in canary")
    happened: list[str] = []

    def resume_at_the_fourth_look(kwargs: dict[str, Any]) -> bool:
        if kwargs.get("Key", {}).get("tenant", {}).get("S") == "rollout#v1.4.0":
            happened.append("control read")
            if happened.count("control read") == 4:
                _control(dynamodb, RolloutState.RUNNING)
                happened.append("resumed")
        return False

    faults.add(service="dynamodb", operation="get_item", account="tooling", when=resume_at_the_fourth_look)
    faults.add(service="cloudformation", operation="create_change_set", when=lambda kwargs: bool(happened.append("change set")))

    capsys.readouterr()
    ((event,),) = _run_all(_trigger(world, "globex"))
    log = capsys.readouterr().out  # the trigger's log (its task's log in Airflow)

    assert isinstance(event, TaskSuccessEvent)
    assert happened.index("resumed") < happened.index("change set")  # nothing started while paused
    assert happened.count("control read") >= 4
    assert world.function_config("globex")["Environment"]["Variables"]["RELEASE_VERSION"] == "1.4.0"
    waits = [line for line in log.splitlines() if "paused by" in line]
    assert len(waits) == 1, log  # once, not once per look
    assert f"rollout of v1.4.0 paused by {OPS}: error rate up in canary; waiting" in waits[0]
    assert ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0").status == Outcome.SUCCEEDED


def test_an_aborted_tenant_ends_skipped_with_who_and_why_and_no_change_set_but_a_later_run_deploys(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None
) -> None:
    abort = _control(dynamodb, RolloutState.ABORTED, "bad migration", at="2026-12-03T09:30:00.000000+00:00")

    ((skipped,),) = _run_all(_trigger(world, "globex"))  # planned at 09:00, before the abort

    assert isinstance(skipped, TaskSkippedEvent)
    recorded = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0")
    assert (recorded.status, recorded.reason, recorded.run_id) == (Outcome.SKIPPED, f"aborted by {OPS}: bad migration", "run-a")
    assert count(faults, GLOBEX, "create_change_set") == 0
    assert world.stack(GLOBEX, "us-east-1", "tenant-app-globex") is None
    assert leases.holder(dynamodb, LEASES, tenant="globex") is None  # the tenant is free for another run

    # On a worker-resumed deploy (dev's path) the skip travels as an event the operator turns into a skip.
    ((event,),) = _run_all(_trigger(world, "acme", end_in_triggerer=False))
    assert isinstance(event, TriggerEvent) and event.payload == {"skipped": f"aborted by {OPS}: bad migration"}
    operator = TenantDeployOperator(task_id="deploy", tenant="acme", target_digest="d", release_tag="v1.4.0", artifact={})
    with pytest.raises(AirflowSkipException, match=f"aborted by {OPS}: bad migration"):
        operator.execute_complete({}, event.payload)

    later = _trigger(world, "globex", run_id="run-b", planned="2026-12-03T09:45:00.000000+00:00")  # e.g. a redeploy
    ((deployed,),) = _run_all(later)
    assert isinstance(deployed, TaskSuccessEvent), abort
    assert ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0").status == Outcome.SUCCEEDED


def test_dev_is_not_a_tenant_of_the_rollout_so_an_abort_does_not_skip_its_smoke_test(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None
) -> None:
    _control(dynamodb, RolloutState.ABORTED, "bad migration")
    dev = _trigger(world, "dev", planned=None, end_in_triggerer=False, record_history=False)  # as deploy_dev defers

    ((event,),) = _run_all(dev)

    assert event.payload["result"]["version_after"] == "1.4.0"


def test_a_tenant_that_waited_for_a_slot_does_not_start_once_the_rollout_was_paused_meanwhile(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None
) -> None:
    happened: list[str] = []

    def change_set(tenant: str) -> Any:
        def when(kwargs: dict[str, Any]) -> bool:
            happened.append(f"{tenant} change set")
            if "paused" not in happened:  # the first tenant is deploying; the other waits for the one slot
                _control(dynamodb, RolloutState.PAUSED, "looking into errors")
                happened.append("paused")
            return False

        return when

    def resume_after_a_few_looks(kwargs: dict[str, Any]) -> bool:
        if kwargs.get("Key", {}).get("tenant", {}).get("S") == "rollout#v1.4.0" and "paused" in happened:
            happened.append("look while paused")
            if happened.count("look while paused") == 3:
                _control(dynamodb, RolloutState.RUNNING)
                happened.append("resumed")
        return False

    faults.add(service="cloudformation", operation="create_change_set", account=GLOBEX, when=change_set("globex"))
    faults.add(service="cloudformation", operation="create_change_set", account=UMBRELLA, when=change_set("umbrella"))
    faults.add(service="dynamodb", operation="get_item", account="tooling", when=resume_after_a_few_looks)
    caps = RolloutCaps(wave="general", max_parallel=1)

    events = _run_all(_trigger(world, "globex", rollout=caps), _trigger(world, "umbrella", rollout=caps))

    assert all(isinstance(event, TaskSuccessEvent) for (event,) in events)  # the one deploying finished too
    starts = [entry for entry in happened if entry.endswith("change set")]
    assert len(starts) == 2
    assert happened.index("resumed") < happened.index(starts[1])  # the second started only after the resume


class InProgress:
    """Which tenants have a stack operation under way: from their change set until their outcome is recorded."""

    def __init__(self, dynamodb: Any, scopes: list[slots.SlotScope]) -> None:
        self.now: set[str] = set()
        self.most: dict[str, int] = {}  # key -> the most seen at once ("all", or a region)
        self.outside_a_slot: list[str] = []
        self._dynamodb, self._scopes, self._lock = dynamodb, scopes, threading.Lock()

    def started(self, tenant: str, region: str) -> None:
        own = [scope for scope in self._scopes if scope.scope in (slots.WHOLE_WAVE, slots.region_scope(region))]
        held = {scope.scope: slots.holders(self._dynamodb, LEASES, scope) for scope in own}
        with self._lock:
            self.outside_a_slot += [f"{tenant} {scope}" for scope, holders in held.items() if tenant not in holders]
            self.now.add(f"{tenant}@{region}")
            for key in ("all", *{t.split("@")[1] for t in self.now}):
                at_once = len([t for t in self.now if key == "all" or t.endswith(f"@{key}")])
                self.most[key] = max(self.most.get(key, 0), at_once)

    def ended(self, tenant: str) -> None:
        with self._lock:
            self.now = {t for t in self.now if not t.startswith(f"{tenant}@")}


@pytest.mark.parametrize(
    ("caps", "most"),
    [
        (RolloutCaps(wave="general", max_parallel=2), {"all": 2}),
        # globex and umbrella share us-east-1: one at a time there, while the other regions go on.
        (RolloutCaps(wave="general", max_parallel_per_region=1), {"all": 3, "us-east-1": 1}),
    ],
    ids=["max_parallel=2", "max_parallel_per_region=1"],
)
def test_a_waves_caps_bound_how_many_of_its_tenants_deploy_at_once(
    caps: RolloutCaps,
    most: dict[str, int],
    world: World,
    faults: Faults,
    dynamodb: Any,
    triggerer_sessions: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DynamoDB applies a conditional write atomically; in-process moto does not (two threads' "attribute_not_exists"
    # writes can both pass). One slot call at a time gives the test DynamoDB's atomicity; the refused-write path
    # itself is tested in tests/aws/test_controls.py.
    atomic = threading.Lock()
    for name in ("acquire", "renew", "release"):

        def one_at_a_time(*args: Any, _call: Any = getattr(slots, name), **kwargs: Any) -> Any:
            with atomic:
                return _call(*args, **kwargs)

        monkeypatch.setattr(slots, name, one_at_a_time)
    regions = {name: world.loaded.target(name).region for name in ACCOUNTS.values()}
    scopes = [
        scope
        for name in ACCOUNTS.values()
        for scope in slots.scopes_for(
            run_id="run-a",
            wave=caps.wave,
            region=regions[name],
            max_parallel=caps.max_parallel,
            max_parallel_per_region=caps.max_parallel_per_region,
        )
    ]
    progress = InProgress(dynamodb, list({s.key: s for s in scopes}.values()))

    def change_set(account: str) -> Any:
        def when(kwargs: dict[str, Any]) -> bool:
            progress.started(ACCOUNTS[account], regions[ACCOUNTS[account]])
            return False

        return when

    def outcome(kwargs: dict[str, Any]) -> bool:
        item = kwargs.get("Item", {})
        if kwargs.get("TableName") == HISTORY and item.get("status", {}).get("S") != "IN_PROGRESS":
            progress.ended(item["tenant"]["S"])
        return False

    for account in ACCOUNTS:
        faults.add(service="cloudformation", operation="create_change_set", account=account, when=change_set(account))
        faults.add(  # each stack takes a few looks to settle, so the tenants' deploys would overlap if let
            service="cloudformation",
            operation="describe_stacks",
            account=account,
            rewrite=with_status("CREATE_IN_PROGRESS"),
            when=lambda kwargs, account=account: count(faults, account, "execute_change_set") == 1,
            times=4,
        )
    faults.add(service="dynamodb", operation="put_item", account="tooling", when=outcome)

    events = _run_all(*(_trigger(world, name, rollout=caps) for name in ACCOUNTS.values()))

    assert all(isinstance(event, TaskSuccessEvent) for (event,) in events)
    assert {k: progress.most[k] for k in most} == most
    assert progress.outside_a_slot == []  # every stack operation ran while its tenant held each of its slots
    for scope in progress._scopes:
        assert slots.holders(dynamodb, LEASES, scope) == {}  # every slot given back at the end


def test_the_wave_level_wait_fires_once_the_rollout_is_no_longer_paused(
    world: World, dynamodb: Any, triggerer_sessions: None
) -> None:
    _control(dynamodb, RolloutState.PAUSED, "looking into errors")
    trigger = RolloutResumedTrigger(
        release_tag="v1.4.0", config_path=str(world.loaded.path), run_started_at=PLANNED, poll_interval=0.0
    )

    async def first_event() -> Any:
        events = trigger.run()
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # still paused: no event
        await asyncio.get_running_loop().run_in_executor(None, lambda: _control(dynamodb, RolloutState.ABORTED, "bad migration"))
        return await asyncio.wait_for(waiting, timeout=30)

    event = asyncio.run(first_event())
    assert event.payload["control"]["state"] == "aborted"
    assert event.payload["control"]["by"] == OPS


@pytest.mark.parametrize(
    "trigger",
    [
        TenantDeployTrigger(
            tenant="acme",
            target_digest="0123456789abcdef",
            config_path="/etc/fleet.yaml",
            release_tag="v1.4.0",
            run_id="manual__1",
            artifact={"version": "1.4.0"},
            progress={"started_at": "2026-12-01T10:00:00+00:00"},
            poll_interval=5.0,
            deadline="2026-12-01T12:00:00+00:00",
            rollout={"wave": "canary", "max_parallel": 2, "max_parallel_per_region": None},
        ),
        RolloutResumedTrigger(release_tag="v1.4.0", config_path=None, run_started_at=PLANNED, poll_interval=15.0),
    ],
    ids=lambda t: type(t).__name__,
)
def test_the_rollout_triggers_round_trip_through_the_metadata_db(trigger: Any) -> None:
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


CAPS = {"wave": "early", "max_parallel": 2, "max_parallel_per_region": 1}


def test_both_paths_to_the_deploy_trigger_hand_it_the_waves_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant started in the triggerer (its list entry) and one sent to a worker for its own gate (the operator)."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import TaskDeferred
    from tenant_release.airflow.triggers import FleetTenantStartTrigger

    entry = {"tenant": "acme", "target_digest": "d", "release_tag": "v1.4.0", "artifact": {}, "targets_id": "l1"}
    seen: list[Any] = []

    async def own_entry(self: Any) -> dict[str, Any]:
        return {**entry, "rollout": CAPS}

    async def deploy(self: Any) -> Any:
        seen.append(self.rollout)
        yield TriggerEvent({"result": {}})

    monkeypatch.setattr(FleetTenantStartTrigger, "_own_entry", own_entry)
    monkeypatch.setattr(TenantDeployTrigger, "run", deploy)
    started = FleetTenantStartTrigger()
    started.task_instance = SimpleNamespace(dag_id="tenant_release", run_id="run-a", map_index=0, task_id="deploy")

    async def events() -> list[Any]:
        return [event async for event in started.run()]

    assert len(asyncio.run(events())) == 1
    operator = TenantDeployOperator(
        task_id="deploy", tenant="acme", target_digest="d", release_tag="v1.4.0", artifact={}, rollout=CAPS
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator._defer_deploy({"run_id": "run-a"}, DeployProgress(started_at="2026-12-03T09:00:00+00:00"))
    seen.append(deferred.value.trigger.rollout)
    assert seen == [CAPS, CAPS]


def _own_gate_start(world: World, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Start globex's task as the scheduler does (in the triggerer), globex needing its own approval; returns its events."""
    from types import SimpleNamespace

    from tenant_release.airflow.triggers import FleetTenantStartTrigger

    target = world.loaded.target("globex")
    entry = {
        "tenant": "globex",
        "target_digest": runtime.target_digest(target, world.loaded.fleet.application),
        "config_path": str(world.loaded.path),
        "release_tag": "v1.4.0",
        "artifact": world.artifacts["1.4.0"].model_dump(mode="json"),
        "targets_id": "l1",
        "has_own_gate": True,
        "run_started_at": PLANNED,
    }

    async def own_entry(self: Any) -> dict[str, Any]:
        return entry

    monkeypatch.setattr(FleetTenantStartTrigger, "_own_entry", own_entry)

    def start() -> list[Any]:
        started = FleetTenantStartTrigger()
        started.task_instance = SimpleNamespace(dag_id="tenant_release", run_id="run-a", map_index=0, task_id="deploy")

        async def events() -> list[Any]:
            return [event async for event in started.run()]

        return asyncio.run(events())

    return start


def test_a_tenant_with_its_own_approval_is_not_asked_for_it_once_the_rollout_is_aborted(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = _own_gate_start(world, monkeypatch)

    assert [event.payload for event in start()] == [{"gates": True}]  # not aborted: a worker asks as before

    _control(dynamodb, RolloutState.ABORTED, "bad migration", at="2026-12-03T09:30:00.000000+00:00")
    (event,) = start()

    assert isinstance(event, TaskSkippedEvent)
    recorded = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0")
    assert (recorded.status, recorded.reason) == (Outcome.SKIPPED, f"aborted by {OPS}: bad migration")
    assert count(faults, GLOBEX, "create_change_set") == 0


# --- a deploy this run began already is not stopped by a pause or abort read after a triggerer restart ------------


def _run_with_a_limit(trigger: TenantDeployTrigger, seconds: float = 120.0) -> list[Any]:
    """Run one trigger; a trigger that waits for ever (a pause it must not obey) fails the test instead of hanging it."""

    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout=seconds))


def _began_before_a_restart(world: World, faults: Faults) -> Any:
    """What a triggerer killed mid-deploy leaves: globex recorded IN_PROGRESS by run-a and its change set executing
    (the stack reports CREATE_IN_PROGRESS for a few more looks), with nobody watching it."""
    faults.add(
        service="cloudformation",
        operation="describe_stacks",
        account=GLOBEX,
        rewrite=with_status("CREATE_IN_PROGRESS"),
        when=lambda kwargs: count(faults, GLOBEX, "execute_change_set") == 1,
        times=3,
    )
    before = _trigger(world, "globex")
    deployment = before._deployment()
    deployment.begin(DeployProgress.model_validate(before.progress))
    assert ledger.get(world.history(), HISTORY, tenant="globex", release="v1.4.0").status == Outcome.IN_PROGRESS
    assert count(faults, GLOBEX, "execute_change_set") == 1
    return faults.faults[-1]


@pytest.mark.parametrize("control", ["abort", "pause"])
def test_a_deploy_begun_before_a_triggerer_restart_re_attaches_after_an_abort_or_pause_and_reports_its_outcome(
    control: str, world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    in_progress = _began_before_a_restart(world, faults)
    if control == "abort":  # after the run was planned: it stops the tenants of run-a that have not begun
        _control(dynamodb, RolloutState.ABORTED, "bad migration", at="2026-12-03T09:30:00.000000+00:00")
    else:
        _control(dynamodb, RolloutState.PAUSED, "looking into errors")
    capsys.readouterr()

    (event,) = _run_with_a_limit(_trigger(world, "globex"))  # the triggerer restarted: the same trigger runs again
    log = capsys.readouterr().out

    assert isinstance(event, TaskSuccessEvent), getattr(event, "payload", event)  # neither SKIPPED nor left waiting
    recorded = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0")
    assert (recorded.status, recorded.run_id, recorded.version_after) == (Outcome.SUCCEEDED, "run-a", "1.4.0")
    assert in_progress.hits == 3  # it watched the stack until the change settled
    assert count(faults, GLOBEX, "create_change_set") == 1  # re-attached to its change set, made no other
    assert "this run's deploy of it began already" in log and "re-attaching to it" in log
    assert leases.holder(dynamodb, LEASES, tenant="globex") is None


def test_an_abort_still_skips_a_tenant_whose_earlier_attempt_of_the_run_made_no_change_set(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None
) -> None:
    first = _trigger(world, "globex")
    deployment = first._deployment()
    progress = DeployProgress.model_validate(first.progress)
    deployment.record(deployment.result(progress, status=Outcome.IN_PROGRESS))  # it died before its change set
    _control(dynamodb, RolloutState.ABORTED, "bad migration", at="2026-12-03T09:30:00.000000+00:00")

    (event,) = _run_with_a_limit(_trigger(world, "globex"))

    assert isinstance(event, TaskSkippedEvent)
    recorded = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0")
    assert (recorded.status, recorded.reason) == (Outcome.SKIPPED, f"aborted by {OPS}: bad migration")
    assert count(faults, GLOBEX, "create_change_set") == 0


def test_an_abort_after_a_later_pause_still_skips_with_the_aborts_who_and_why(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None
) -> None:
    _control(dynamodb, RolloutState.ABORTED, "bad migration", at="2026-12-03T09:30:00.000000+00:00")
    controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, "arn:aws:sts::1:assumed-role/ops/bob", "redeploy")

    (event,) = _run_with_a_limit(_trigger(world, "globex"))  # planned at 09:00: before the abort

    assert isinstance(event, TaskSkippedEvent)
    recorded = ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0")
    assert recorded.reason == f"aborted by {OPS}: bad migration"  # the abort's, not the later pause's


# --- caps and leases: a queued tenant holds no lease; a lease taken from it is waited for, not a failure ----------


def test_a_tenant_queued_behind_max_parallel_holds_no_tenant_lease_while_it_waits(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None
) -> None:
    queued_leases: list[Any] = []

    def change_set(tenant: str, other: str) -> Any:
        def when(kwargs: dict[str, Any]) -> bool:
            if not queued_leases:  # the first to deploy: the other one waits for the wave's one slot now
                queued_leases.append(leases.holder(dynamodb, LEASES, tenant=other))
            return False

        return when

    faults.add(service="cloudformation", operation="create_change_set", account=GLOBEX, when=change_set("globex", "umbrella"))
    faults.add(service="cloudformation", operation="create_change_set", account=UMBRELLA, when=change_set("umbrella", "globex"))
    caps = RolloutCaps(wave="general", max_parallel=1)

    events = _run_all(_trigger(world, "globex", rollout=caps), _trigger(world, "umbrella", rollout=caps))

    assert all(isinstance(event, TaskSuccessEvent) for (event,) in events)
    assert queued_leases == [None]  # another run (a hotfix) could take the queued tenant meanwhile


def test_a_lease_taken_by_another_run_just_before_the_deploy_began_is_waited_for_not_a_failure(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    control_reads: list[int] = []
    tries: list[str] = []

    def lease_lapses_and_run_b_takes_it(kwargs: dict[str, Any]) -> bool:
        if kwargs.get("Key", {}).get("tenant", {}).get("S") == "rollout#v1.4.0":
            control_reads.append(1)
            if len(control_reads) == 2:  # the look after run-a took its slot and lease: the lease lapsed meanwhile
                leases.release(dynamodb, LEASES, tenant="globex", run_id="run-a")
                assert leases.acquire(dynamodb, LEASES, tenant="globex", run_id="run-b", release="v1.4.0", seconds=3600) is None
        return False

    def run_b_ends_at_run_as_third_refusal(kwargs: dict[str, Any]) -> bool:
        if kwargs.get("TableName") == LEASES and kwargs.get("Item", {}).get("tenant", {}).get("S") == "globex":
            tries.append(kwargs["Item"]["run_id"]["S"])
            if len(control_reads) >= 2 and tries.count("run-a") == 5:
                leases.release(dynamodb, LEASES, tenant="globex", run_id="run-b")
        return False

    faults.add(service="dynamodb", operation="get_item", account="tooling", when=lease_lapses_and_run_b_takes_it)
    faults.add(service="dynamodb", operation="put_item", account="tooling", when=run_b_ends_at_run_as_third_refusal)
    capsys.readouterr()

    (event,) = _run_with_a_limit(_trigger(world, "globex", rollout=RolloutCaps(wave="general", max_parallel=1)))
    log = capsys.readouterr().out

    assert isinstance(event, TaskSuccessEvent), getattr(event, "payload", event)
    assert "another run took its lease before this deploy began; waiting for it" in log
    assert "tenant globex is being deployed by run run-b (v1.4.0)" in log
    assert ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0").status == Outcome.SUCCEEDED
    assert count(faults, GLOBEX, "create_change_set") == 1


def test_a_tenant_waiting_for_a_busy_stack_keeps_its_deploy_slot(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (first,) = _run_with_a_limit(_trigger(world, "globex", run_id="run-0"))  # the stack exists, holding 1.4.0
    assert isinstance(first, TaskSuccessEvent)
    monkeypatch.setenv("AIRFLOW__TENANT_RELEASE__LEASE_RENEW_SECONDS", "0")  # every wait is due a renewal
    busy_looks: list[int] = []  # how many busy looks the stack had given when the slot was renewed
    renewed_while_busy: list[int] = []

    def slot_renewal(kwargs: dict[str, Any]) -> bool:
        key = kwargs.get("Key", {}).get("tenant", {}).get("S", "")
        if key == "slots#run-a#general#all" and kwargs.get("UpdateExpression", "").startswith("SET holders.#t = :until"):
            renewed_while_busy.append(busy_looks[-1] if busy_looks else 0)
        return False

    def someone_elses_operation(kwargs: dict[str, Any]) -> bool:
        busy_looks.append(len(busy_looks) + 1)
        return True

    faults.add(service="dynamodb", operation="update_item", account="tooling", when=slot_renewal)
    faults.add(  # an operation this release did not start holds the stack for a few looks
        service="cloudformation",
        operation="describe_stacks",
        account=GLOBEX,
        rewrite=with_status("UPDATE_IN_PROGRESS"),
        when=someone_elses_operation,
        times=4,
    )

    (event,) = _run_with_a_limit(_trigger(world, "globex", version="1.5.0", rollout=RolloutCaps(wave="general", max_parallel=1)))

    assert isinstance(event, TaskSuccessEvent), getattr(event, "payload", event)
    assert len(busy_looks) >= 4
    assert [look for look in renewed_while_busy if 1 <= look < 4]  # renewed between busy looks, not only after
    assert world.function_config("globex")["Environment"]["Variables"]["RELEASE_VERSION"] == "1.5.0"


def test_a_tenant_with_its_own_approval_whose_deploy_began_is_not_skipped_by_an_abort_on_a_retry(
    world: World, faults: Faults, dynamodb: Any, triggerer_sessions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _began_before_a_restart(world, faults)  # its first try began the deploy, then died
    _control(dynamodb, RolloutState.ABORTED, "bad migration", at="2026-12-03T09:30:00.000000+00:00")

    assert [event.payload for event in _own_gate_start(world, monkeypatch)()] == [{"gates": True}]  # its worker goes on
    assert ledger.get(dynamodb, HISTORY, tenant="globex", release="v1.4.0").status == Outcome.IN_PROGRESS


def test_the_wave_level_wait_of_a_run_the_abort_stopped_fires_even_while_a_later_pause_holds_newer_runs(
    world: World, dynamodb: Any, triggerer_sessions: None
) -> None:
    _control(dynamodb, RolloutState.ABORTED, "bad migration", at="2026-12-03T09:30:00.000000+00:00")
    _control(dynamodb, RolloutState.PAUSED, "watching the redeploy")

    def first_event(planned: str) -> Any:
        trigger = RolloutResumedTrigger(
            release_tag="v1.4.0", config_path=str(world.loaded.path), run_started_at=planned, poll_interval=0.0
        )

        async def first() -> Any:
            return await asyncio.wait_for(trigger.run().__anext__(), timeout=0.5)

        return asyncio.run(first())

    event = first_event(PLANNED)  # planned before the abort: it is stopped, not held
    assert event.payload["control"]["state"] == "paused" and event.payload["control"]["aborted_reason"] == "bad migration"
    with pytest.raises(TimeoutError):
        first_event("2026-12-03T10:00:00.000000+00:00")  # the redeploy waits for the resume
