"""Fleet tenants start in the triggerer with no worker: each finds its own entry, deploys, and is named by the scheduler."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.triggers.base import TaskSuccessEvent
from tenant_release.airflow import triggers
from tenant_release.airflow.fleet_targets import TARGETS_ID_KEY, FleetTargetError, TargetListCache, entry_at
from tenant_release.airflow.triggers import FleetTenantStartTrigger
from tenant_release.models import Outcome

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def serialized_release_dag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(DAGS / "release.py"))
    assert not bag.import_errors, bag.import_errors
    return DagSerialization.from_dict(DagSerialization.to_dict(bag.dags["tenant_release"]))


def test_only_the_mapped_tenant_deploys_start_in_the_triggerer(serialized_release_dag) -> None:
    deploy = serialized_release_dag.get_task("wave_1.deploy")
    assert deploy.start_from_trigger is True
    assert deploy.start_trigger_args.trigger_cls == "tenant_release.airflow.triggers.FleetTenantStartTrigger"
    assert deploy.start_trigger_args.next_method == "execute_complete"
    # dev's result feeds the release gate through XCom: it starts on a worker as before.
    assert serialized_release_dag.get_task("deploy_dev").start_from_trigger is False


def test_the_start_trigger_serializes_without_any_tenant_or_secret() -> None:
    classpath, kwargs = FleetTenantStartTrigger(stack_timeout_seconds=60).serialize()
    module, name = classpath.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)(**kwargs).serialize() == (classpath, kwargs)
    assert kwargs == {"stack_timeout_seconds": 60}


def test_entry_at_returns_its_own_entry_and_refuses_another_list() -> None:
    entries = [{"tenant": "acme", TARGETS_ID_KEY: "list-2"}, {"tenant": "globex", TARGETS_ID_KEY: "list-2"}]
    assert entry_at(entries, 1, "list-2")["tenant"] == "globex"
    with pytest.raises(FleetTargetError, match="map index 2 is outside the run's target list \\(2 entries\\)"):
        entry_at(entries, 2, "list-2")
    with pytest.raises(FleetTargetError, match="target list changed"):
        entry_at(entries, 0, "list-3")


def test_a_thousand_tenants_starting_at_once_read_the_list_once() -> None:
    fetched: list[str] = []

    async def scenario() -> list[Any]:
        cache = TargetListCache(keep=2)

        def fetcher(targets_id: str):
            async def fetch() -> list[dict]:
                fetched.append(targets_id)
                await asyncio.sleep(0.01)
                return [{"tenant": f"t{i}", TARGETS_ID_KEY: targets_id} for i in range(1000)]

            return fetch

        first = await asyncio.gather(*(cache.get("a", fetcher("a")) for _ in range(1000)))
        await cache.get("b", fetcher("b"))
        await cache.get("c", fetcher("c"))  # keeps two lists: "a" is dropped
        await cache.get("a", fetcher("a"))
        return first

    lists = asyncio.run(scenario())
    assert fetched == ["a", "b", "c", "a"]
    assert all(entries is lists[0] for entries in lists)


def test_a_failed_read_reaches_every_waiter_and_the_next_start_reads_again() -> None:
    calls = 0

    async def scenario() -> tuple[list[Any], list]:
        cache = TargetListCache()

        async def broken() -> list:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            raise ConnectionError("api server went away")

        async def working() -> list:
            nonlocal calls
            calls += 1
            return [{"tenant": "acme"}]

        outcomes = await asyncio.gather(*(cache.get("x", broken) for _ in range(5)), return_exceptions=True)
        return outcomes, await cache.get("x", working)

    outcomes, entries = asyncio.run(scenario())
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert entries == [{"tenant": "acme"}]
    assert calls == 2


class _XComStore:
    """The two XComs `tenant_targets` pushes, served the way the triggerer's supervisor serves them (counted)."""

    def __init__(self, entries: list[dict], targets_id: str, gate: dict | None = None) -> None:
        self.values = {TARGETS_ID_KEY: targets_id, "return_value": entries}
        self.gate = gate  # what `approve_release` returned
        self.reads: list[str] = []

    def read(self, ti: Any, task_id: str, key: str) -> Any:
        if task_id == "approve_release" and key == "return_value":
            self.reads.append("gate")
            return self.gate
        assert task_id == "wave_1.open"
        self.reads.append(key)
        return self.values[key]


def _entries(
    names: list[str],
    *,
    artifact: dict,
    config_path: str,
    targets_id: str,
    gated: set[str] = frozenset(),
    release_gated: bool = False,
) -> list[dict]:
    from tenant_release.airflow import runtime

    loaded = runtime.cached_fleet(config_path)
    return [
        {
            **({"gated": True} if release_gated else {}),
            "tenant": name,
            "target_digest": runtime.target_digest(loaded.target(name), loaded.fleet.application),
            "has_own_gate": name in gated,
            "release_tag": "v1.4.0",
            "config_path": config_path,
            "artifact": artifact,
            TARGETS_ID_KEY: targets_id,
        }
        for name in names
    ]


async def _events(trigger: FleetTenantStartTrigger) -> list[Any]:
    return [event async for event in trigger.run()]


def _started(task: Any, map_index: int) -> FleetTenantStartTrigger:
    trigger = FleetTenantStartTrigger()
    # What the triggerer gives a trigger it started for a task instance (`create_runtime_ti`): ids and the task.
    trigger.task_instance = SimpleNamespace(
        dag_id="tenant_release", run_id="manual__fleet", map_index=map_index, task=task, task_id="deploy"
    )
    return trigger


@pytest.fixture
def built(bootstrapped, fleet_file: Path) -> dict:
    from tenant_release.airflow import runtime
    from tenant_release.build import build_release
    from tenant_release.tags import parse_release_tag

    loaded = runtime.cached_fleet(str(fleet_file))
    names = ["acme", "globex", "umbrella"]
    artifact = build_release(
        runtime.aws_sessions(),
        tooling=loaded.fleet.tooling,
        application=loaded.fleet.application,
        fleet_path=loaded.path,
        release=parse_release_tag("v1.4.0"),
        targets=[loaded.target(n) for n in names],
    )
    return {"names": names, "artifact": artifact.model_dump(mode="json"), "config_path": str(fleet_file)}


def test_tenants_started_in_the_triggerer_deploy_their_own_entry_and_end_there(
    built: dict, serialized_release_dag, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenant_release.airflow import runtime
    from tenant_release.aws import ledger

    store = _XComStore(
        _entries(built["names"], artifact=built["artifact"], config_path=built["config_path"], targets_id="l1"), "l1"
    )
    monkeypatch.setattr(triggers, "_read_xcom", store.read)
    monkeypatch.setattr(triggers, "_TARGET_LISTS", TargetListCache())
    deploy_task = serialized_release_dag.get_task("wave_1.deploy")

    async def all_tenants() -> list[list[Any]]:
        return await asyncio.gather(*(_events(_started(deploy_task, i)) for i in range(len(built["names"]))))

    results = asyncio.run(all_tenants())
    assert all(len(events) == 1 and isinstance(events[0], TaskSuccessEvent) for events in results)
    assert store.reads.count("return_value") == 1  # the list once, for every tenant of the run
    # The triggerer lives on after the run: each tenant's session and clients are gone with its deploy.
    assert runtime.shared_sessions().open_tenant_sessions() == 0
    assert store.reads.count(TARGETS_ID_KEY) == 3
    tooling = runtime.cached_fleet(built["config_path"]).fleet.tooling
    history = ledger.get_many(
        runtime.aws_sessions().tooling_client("dynamodb", tooling.region),
        tooling.history_table,
        tenants=built["names"],
        release="v1.4.0",
    )
    assert {name: (r.status, r.version, r.run_id) for name, r in history.items()} == dict.fromkeys(
        built["names"], (Outcome.SUCCEEDED, "1.4.0", "manual__fleet")
    )


def test_a_tenant_with_its_own_gate_goes_to_a_worker_before_touching_aws(
    built: dict, serialized_release_dag, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenant_release.airflow import runtime
    from tenant_release.aws import ledger

    entries = _entries(
        built["names"], artifact=built["artifact"], config_path=built["config_path"], targets_id="l2", gated={"globex"}
    )
    monkeypatch.setattr(triggers, "_read_xcom", _XComStore(entries, "l2").read)
    monkeypatch.setattr(triggers, "_TARGET_LISTS", TargetListCache())
    events = asyncio.run(_events(_started(serialized_release_dag.get_task("wave_1.deploy"), 1)))
    assert [e.payload for e in events] == [{"gates": True}]
    tooling = runtime.cached_fleet(built["config_path"]).fleet.tooling
    dynamodb = runtime.aws_sessions().tooling_client("dynamodb", tooling.region)
    assert ledger.get(dynamodb, tooling.history_table, tenant="globex", release="v1.4.0") is None


def test_tenants_of_a_gated_run_start_only_when_its_gate_approved_their_artifact(
    built: dict, serialized_release_dag, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenant_release.airflow import runtime
    from tenant_release.aws import ledger

    sha256 = built["artifact"]["sha256"]
    entries = _entries(
        built["names"],
        artifact=built["artifact"],
        config_path=built["config_path"],
        targets_id="l4",
        gated={"globex"},
        release_gated=True,
    )
    # The gate approved an earlier build: `build` and `tenant_targets` were cleared and ran again without it.
    other = {"gated": True, "approved_by": "ana", "source": "ui", "identity": "airflow user 3", "sha256": "0" * 64}
    store = _XComStore(entries, "l4", gate=other)
    monkeypatch.setattr(triggers, "_read_xcom", store.read)
    monkeypatch.setattr(triggers, "_TARGET_LISTS", TargetListCache())
    monkeypatch.setattr(triggers, "_RELEASE_GATES", TargetListCache())
    deploy_task = serialized_release_dag.get_task("wave_1.deploy")

    async def start(indexes: list[int]) -> list[list[Any]]:
        return await asyncio.gather(*(_events(_started(deploy_task, i)) for i in indexes))

    refused = asyncio.run(start([0, 1, 2]))
    reason = (
        f"the release gate of this run has no approval of artifact {sha256} (approve_release returned an approval of "
        f"artifact {'0' * 64} by ana); approve the release (clear approve_release and answer it), then clear the failed tenants"
    )
    # Every tenant fails for good, globex (its own approval) too, before any worker or AWS deploy.
    assert [[e.payload["failed"] for e in events] for events in refused] == [[reason]] * 3
    assert all(events[0].payload["permanent"] is True for events in refused)
    assert store.reads.count("gate") == 1  # tenants starting together share one read of the gate
    tooling = runtime.cached_fleet(built["config_path"]).fleet.tooling
    dynamodb = runtime.aws_sessions().tooling_client("dynamodb", tooling.region)
    history = ledger.get_many(dynamodb, tooling.history_table, tenants=built["names"], release="v1.4.0")
    assert {name: (r.status, r.reason) for name, r in history.items()} == dict.fromkeys(built["names"], (Outcome.FAILED, reason))
    assert runtime.shared_sessions().open_tenant_sessions() == 0

    # Approved again for this build; the cleared tenants start again and read the gate as it is now.
    store.gate = {**other, "sha256": sha256}
    started = asyncio.run(start([0, 1, 2]))
    assert store.reads.count("gate") == 2
    assert isinstance(started[0][0], TaskSuccessEvent) and isinstance(started[2][0], TaskSuccessEvent)
    assert started[1][0].payload == {"gates": True}  # globex's own approval is asked on a worker
    history = ledger.get_many(dynamodb, tooling.history_table, tenants=["acme", "umbrella"], release="v1.4.0")
    assert {name: r.status for name, r in history.items()} == dict.fromkeys(["acme", "umbrella"], Outcome.SUCCEEDED)


def test_an_entry_from_an_older_list_fails_the_tenant_for_good(
    built: dict, serialized_release_dag, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = _entries(built["names"], artifact=built["artifact"], config_path=built["config_path"], targets_id="old")
    monkeypatch.setattr(triggers, "_read_xcom", _XComStore(entries, "new").read)
    monkeypatch.setattr(triggers, "_TARGET_LISTS", TargetListCache())
    events = asyncio.run(_events(_started(serialized_release_dag.get_task("wave_1.deploy"), 0)))
    assert len(events) == 1
    assert events[0].payload["permanent"] is True
    assert "target list changed" in events[0].payload["failed"]


def test_a_stray_event_starts_the_tenants_deploy_instead_of_failing_it(fleet_file: Path, aws_credentials: None) -> None:
    from airflow.sdk.exceptions import TaskDeferred
    from tenant_release.airflow import runtime
    from tenant_release.airflow.deploy_operator import FleetTenantDeployOperator
    from tenant_release.airflow.triggers import TenantDeployTrigger

    loaded = runtime.cached_fleet(str(fleet_file))
    operator = FleetTenantDeployOperator(
        task_id="deploy",
        tenant="acme",
        target_digest=runtime.target_digest(loaded.target("acme"), loaded.fleet.application),
        release_tag="v1.4.0",
        artifact={
            "version": "1.4.0",
            "sha256": "a" * 64,
            "bucket": "b",
            "template_key": "t",
            "objects": [{"key": "k", "sha256": "b" * 64}],
            "source": "folder /app",
        },
        config_path=str(fleet_file),
        has_own_gate=False,
        targets_id="l1",
    )
    # What a late approval trigger's event looks like when SQLite gave its id to this tenant's trigger.
    stray = {"approval": {"approved": True, "decided_by": "approver", "source": "ui", "note": ""}, "progress": {}}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute_complete({"run_id": "manual__stray"}, stray)
    trigger = deferred.value.trigger
    assert isinstance(trigger, TenantDeployTrigger)
    assert (trigger.tenant, trigger.run_id, trigger.release_tag) == ("acme", "manual__stray", "v1.4.0")


def test_a_tenant_or_an_application_changed_after_the_plan_is_refused(fleet_file: Path) -> None:
    from tenant_release.airflow import runtime
    from tenant_release.errors import FleetConfigError

    loaded = runtime.cached_fleet(str(fleet_file))
    planned = runtime.target_digest(loaded.target("acme"), loaded.fleet.application)
    assert runtime.planned_target(tenant="acme", digest=planned, config_path=str(fleet_file))[1].name == "acme"

    fleet_file.write_text(fleet_file.read_text() + "application:\n  verify: stack\n")  # mid-run edit
    with pytest.raises(FleetConfigError, match=r"'acme' or the application changed in .* after this run was planned"):
        runtime.planned_target(tenant="acme", digest=planned, config_path=str(fleet_file))
