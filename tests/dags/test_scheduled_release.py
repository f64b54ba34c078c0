"""Queue a release, then ship it at a release window: tenant_release_queue and tenant_release_scheduled under dag.test()."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from tenant_release.airflow import queue_steps, runtime
from tenant_release.aws import release_queue
from tenant_release.aws.approvals import from_dynamodb
from tenant_release.aws.release_queue import QueueStatus

from tests.conftest import bootstrap, use_fleet
from tests.dags.test_release_dag import approve, task_states

DAGS = Path(__file__).resolve().parents[2] / "dags"
QUEUE = "tenant-release-queue"
# fleet_schedule.yaml: one window, Tuesdays 02:00-04:00 UTC; the year-end freeze 12-20..01-05.
IN_WINDOW = datetime(2027, 3, 2, 2, 30, tzinfo=UTC)  # a Tuesday
IN_FREEZE_WINDOW = datetime(2027, 12, 21, 2, 30, tzinfo=UTC)  # a Tuesday, inside the freeze
AFTER_FREEZE_WINDOW = datetime(2028, 1, 11, 2, 30, tzinfo=UTC)  # the first Tuesday after it


@pytest.fixture
def fleet(moto: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = use_fleet("fleet_schedule.yaml", tmp_path, monkeypatch)
    bootstrap(path)
    return path


@pytest.fixture
def clock() -> Iterator[Callable[[datetime], None]]:
    previous = runtime.use_clock(lambda: datetime.now(UTC))
    yield lambda at: runtime.use_clock(lambda: at)
    runtime.use_clock(previous)
    runtime.use_clock(previous)


def parse(file: str, dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / file))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


@pytest.fixture
def queue_dag(airflow_db: None, fleet: Path):
    return parse("tenant_release_queue.py", "tenant_release_queue")


@pytest.fixture
def scheduled_dag(airflow_db: None, fleet: Path):
    return parse("tenant_release_scheduled.py", "tenant_release_scheduled")


def dynamodb():
    return boto3.client("dynamodb", region_name="us-east-1")


def queued(tag: str) -> release_queue.QueuedRelease | None:
    return release_queue.get(dynamodb(), QUEUE, tag)


def put_in_queue(tag: str, tenants: tuple[str, ...] = ()) -> None:
    release_queue.enqueue(dynamodb(), QUEUE, release_tag=tag, tenants=tenants, queued_by="alice", approved_by=None)


def release_run(run_id: str):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == "tenant_release", DagRun.run_id == run_id).one_or_none()
        if run is not None:
            session.expunge(run)
        return run


def release_runs() -> list[str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        # Only runs the queue dispatched: the session's DB also holds other tests' manual runs of tenant_release.
        found = session.query(DagRun).filter(DagRun.dag_id == "tenant_release", DagRun.run_id.startswith("queued__"))
        return [r.run_id for r in found]


@pytest.fixture(autouse=True)
def no_triggered_runs_left_behind(airflow_db: None) -> Iterator[None]:
    """The metadata DB is shared by the session: remove the queued tenant_release runs these tests trigger."""
    yield
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        for run in session.query(DagRun).filter(DagRun.dag_id == "tenant_release", DagRun.run_id.like("queued__%")):
            session.delete(run)


def test_release_queued_during_a_freeze_ships_at_the_first_window_after_it(queue_dag, scheduled_dag, clock):
    clock(datetime(2027, 12, 24, 10, tzinfo=UTC))  # inside the year-end freeze: queueing is still allowed
    approve("v2.0.0", by="release-manager")  # prod is gated: decided ahead, by a record
    queued_run = queue_dag.test(run_conf={"release_tag": "v2.0.0", "tenants": []})
    assert str(queued_run.state) == "success"
    entry = queued("v2.0.0")
    assert (entry.status, entry.tenants, entry.approved_by) == (QueueStatus.QUEUED, (), "release-manager (dynamodb)")
    assert entry.queued_by == "dag_test"  # the user who triggered the queue run

    clock(AFTER_FREEZE_WINDOW)
    run = scheduled_dag.test()
    assert str(run.state) == "success"
    states = task_states(run)
    assert states[("take_queued_release", -1)] == "success"
    assert states[("trigger_release", -1)] == "success"
    assert states[("mark_dispatched", -1)] == "success"

    release_run_id = release_queue.dispatch_run_id(entry)
    triggered = release_run(release_run_id)
    assert triggered is not None, release_runs()
    assert triggered.conf == {"release_tag": "v2.0.0", "tenants": [], "override_freeze": ""}
    assert str(triggered.state) == "queued"  # nobody runs it here; it has its own gate, which the record passes
    entry = queued("v2.0.0")
    assert (entry.status, entry.run_id) == (QueueStatus.DISPATCHED, release_run_id)
    # The release-wide record the queued run's gate reads is still there.
    assert from_dynamodb(dynamodb(), "tenant-release-approvals", tenant="*", release="v2.0.0").approved


def test_narrowed_ungated_release_is_queued_without_approval_and_shipped_to_those_tenants(queue_dag, scheduled_dag, clock):
    clock(datetime(2027, 3, 1, 9, tzinfo=UTC))
    queued_run = queue_dag.test(run_conf={"release_tag": "v-2.1.0-qa", "tenants": ["initech"]})
    assert str(queued_run.state) == "success"
    entry = queued("v-2.1.0-qa")
    assert (entry.tenants, entry.approved_by) == (("initech",), None)

    clock(IN_WINDOW)
    run = scheduled_dag.test()
    assert str(run.state) == "success"
    triggered = release_run(release_queue.dispatch_run_id(entry))
    assert triggered.conf == {"release_tag": "v-2.1.0-qa", "tenants": ["initech"], "override_freeze": ""}


def test_a_dispatch_that_dies_before_marking_the_entry_ships_once(scheduled_dag, clock, monkeypatch):
    put_in_queue("v2.0.0")
    entry = queued("v2.0.0")
    mark = queue_steps.mark_dispatched

    def worker_lost(taken: dict) -> dict:
        raise AirflowFailException("the worker died after triggering the release, before marking the queue entry")

    clock(IN_WINDOW)
    monkeypatch.setattr(queue_steps, "mark_dispatched", worker_lost)
    crashed = scheduled_dag.test()
    assert task_states(crashed)[("trigger_release", -1)] == "success"
    assert task_states(crashed)[("mark_dispatched", -1)] == "failed"
    assert queued("v2.0.0").status == QueueStatus.QUEUED

    clock(datetime(2027, 3, 9, 2, 30, tzinfo=UTC))  # the next window takes the entry again
    monkeypatch.setattr(queue_steps, "mark_dispatched", mark)
    run = scheduled_dag.test()

    states = task_states(run)
    assert (states[("trigger_release", -1)], states[("mark_dispatched", -1)]) == ("skipped", "success")
    assert release_runs() == [release_queue.dispatch_run_id(entry)]  # the release ships once
    assert (queued("v2.0.0").status, queued("v2.0.0").run_id) == (QueueStatus.DISPATCHED, release_queue.dispatch_run_id(entry))


def test_rejected_at_queue_time_nothing_is_queued(queue_dag, clock):
    clock(datetime(2027, 3, 1, 9, tzinfo=UTC))
    approve("v2.0.0", approved=False, by="cto")
    run = queue_dag.test(run_conf={"release_tag": "v2.0.0", "tenants": []})
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states[("approve_release", -1)] == "failed"
    assert states[("enqueue", -1)] == "upstream_failed"
    assert queued("v2.0.0") is None


def test_unanswered_gate_at_queue_time_times_out_and_nothing_is_queued(queue_dag, clock):
    clock(datetime(2027, 3, 1, 9, tzinfo=UTC))
    run = queue_dag.test(run_conf={"release_tag": "v2.2.0", "tenants": ["acme"]})  # the gate asks, nobody answers
    assert str(run.state) == "failed"
    assert task_states(run)[("approve_release", -1)] == "failed"
    assert queued("v2.2.0") is None


def test_queueing_refuses_a_bad_target_or_a_tag_already_queued_before_asking_anyone(fleet, clock):
    now = datetime(2027, 3, 1, 9, tzinfo=UTC)
    with pytest.raises(AirflowFailException, match="not in group 'prod'"):
        queue_steps.plan_queued({"release_tag": "v2.0.0", "tenants": ["initech"]}, now=now)
    put_in_queue("v2.0.0")
    with pytest.raises(AirflowFailException, match=r"v2\.0\.0 is queued .*tenant-release queue cancel v2\.0\.0"):
        queue_steps.plan_queued({"release_tag": "v2.0.0", "tenants": []}, now=now)


def test_an_approval_given_in_airflow_at_queue_time_is_kept_in_the_run_and_written_nowhere(fleet, clock):
    clock(datetime(2027, 3, 1, 9, tzinfo=UTC))
    plan = queue_steps.plan_queued({"release_tag": "v2.0.0", "tenants": []}, now=runtime.utcnow())

    class TaskInstance:
        def xcom_pull(self, task_ids: str):
            return {"plan": plan}.get(task_ids)

    gate = queue_steps.QueuedReleaseGateOperator(task_id="approve_release")
    subject, body = gate.describe_request(TaskInstance(), gate.read_plan(TaskInstance()))
    assert subject == "Queue v2.0.0 for the next release window (2 tenant(s) of prod)?"
    assert "first opening 2027-03-02T02:00:00+00:00" in body and "- acme\n- globex" in body

    answer = {"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "release-manager"}}
    result = gate.resume({"ti": TaskInstance(), "run_id": "manual__queue"}, answer)
    # Who approved, as Airflow authenticated them; nothing is built yet, so no artifact is named.
    assert result == {
        "gated": True,
        "approved_by": "release-manager",
        "source": "ui",
        "note": "",
        "identity": "airflow user 7 (release-manager)",
        "sha256": None,
    }
    # The orchestrator writes no approval record: the shipping run's gate asks for its own build.
    assert from_dynamodb(dynamodb(), "tenant-release-approvals", tenant="*", release="v2.0.0") is None

    with pytest.raises(AirflowFailException, match="rejected by cto via ui; nothing was queued"):
        gate.resume(
            {"ti": TaskInstance(), "run_id": "manual__queue"},
            {"chosen_options": ["Reject"], "responded_by_user": {"id": "1", "name": "cto"}},
        )


def test_the_queue_gate_says_its_approval_only_admits_the_release_to_the_queue(fleet, clock):
    clock(datetime(2027, 3, 1, 9, tzinfo=UTC))
    plan = queue_steps.plan_queued({"release_tag": "v2.0.0", "tenants": []}, now=runtime.utcnow())
    gate = queue_steps.QueuedReleaseGateOperator(task_id="approve_release")
    _, body = gate.describe_request(None, gate.read_plan(SimpleNamespace(xcom_pull=lambda task_ids: plan)))
    assert "Approving only admits the release to the queue." in body
    assert "asks again at its own release gate for an approval of that build" in body
    assert "`tenant-release approve v2.0.0 --sha256 <the build's sha256>`" in body


def test_a_dispatched_run_whose_window_closed_before_its_gate_passed_deploys_nothing(fleet, clock):
    from tenant_release.airflow.gate import ReleaseGateOperator
    from tenant_release.airflow.steps import plan as plan_run

    clock(IN_WINDOW)
    plan = plan_run({"release_tag": "v2.0.0", "tenants": []}, now=IN_WINDOW, max_map_length=1024)
    pushed: dict = {}
    ti = SimpleNamespace(
        xcom_pull=lambda task_ids: {"plan": plan, "build": {"sha256": "b" * 64}}.get(task_ids),
        xcom_push=lambda key, value: pushed.update({key: value}),
    )
    dispatched = release_queue.DISPATCH_RUN_PREFIX + "v2.0.0__2027-03-01T09:00:00+00:00"
    answer = {"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "release-manager"}}
    gate = ReleaseGateOperator(task_id="approve_release")

    # Approved inside the window: it ships.
    assert gate.resume({"ti": ti, "run_id": dispatched, "params": {}}, answer)["approved_by"] == "release-manager"

    clock(datetime(2027, 3, 2, 4, 30, tzinfo=UTC))  # approved half an hour after the window closed
    with pytest.raises(AirflowSkipException) as skipped:
        gate.resume({"ti": ti, "run_id": dispatched, "params": {}}, answer)
    reason = (
        "release window it was dispatched for closed while it waited for the release gate (windows: Tue 02:00-04:00 UTC); "
        "not deployed. A dispatched release is not queued again: trigger tenant_release for v2.0.0 directly inside a window"
    )
    assert str(skipped.value) == reason
    assert pushed["return_value"]["frozen"] == reason  # the summary records every tenant SKIPPED with it
    # A run someone triggered directly keeps no window: it ships whenever approved.
    assert gate.resume({"ti": ti, "run_id": "manual__v2", "params": {}}, answer)["approved_by"] == "release-manager"


def test_inside_a_freeze_the_scheduled_run_takes_nothing_and_says_why(scheduled_dag, clock):
    put_in_queue("v2.0.0")
    clock(IN_FREEZE_WINDOW)
    run = scheduled_dag.test()
    assert str(run.state) == "success"
    states = task_states(run)
    assert states[("take_queued_release", -1)] == "skipped"
    assert states[("trigger_release", -1)] == "skipped"
    assert states[("mark_dispatched", -1)] == "skipped"
    assert queued("v2.0.0").status == QueueStatus.QUEUED
    assert release_run(release_queue.dispatch_run_id(queued("v2.0.0"))) is None
    with pytest.raises(AirflowSkipException) as skipped:
        queue_steps.take_queued_release(run_id="r", now=IN_FREEZE_WINDOW)
    assert str(skipped.value) == (
        "inside the change freeze 12-20..01-05 (year-end change freeze): v2.0.0 stays queued; "
        "the next release window opens 2028-01-11T02:00:00+00:00"
    )


def test_empty_queue_or_closed_window_skips_with_the_reason(scheduled_dag, clock):
    clock(IN_WINDOW)
    run = scheduled_dag.test()
    assert str(run.state) == "success"
    assert task_states(run)[("take_queued_release", -1)] == "skipped"
    with pytest.raises(AirflowSkipException, match="nothing queued: queue a release with the tenant_release_queue DAG"):
        queue_steps.take_queued_release(run_id="r", now=IN_WINDOW)

    put_in_queue("v2.0.0")
    wednesday = datetime(2027, 3, 3, 2, 30, tzinfo=UTC)
    with pytest.raises(AirflowSkipException, match=r"no release window is open at 2027-03-03T02:30:00\+00:00 .*v2.0.0 stays"):
        queue_steps.take_queued_release(run_id="r", now=wednesday)


def test_scheduled_dag_takes_its_windows_from_the_fleet_file_and_has_no_start_date(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    path = use_fleet("fleet_schedule.yaml", tmp_path, monkeypatch)
    dag = parse("tenant_release_scheduled.py", "tenant_release_scheduled")
    assert dag.timetable.summary == "Release windows: Tue 02:00-04:00 UTC; freezes: 12-20..01-05"
    assert dag.start_date is None and not dag.catchup  # unpausing never runs a window that already closed

    path.write_text(path.read_text().replace('windows: ["Tue 02:00-04:00 UTC"]', "windows: []"))
    unscheduled = DagBag(dag_folder=str(DAGS / "tenant_release_scheduled.py"))
    assert unscheduled.import_errors == {}  # a fleet without windows simply never ships on a schedule
    assert type(unscheduled.dags["tenant_release_scheduled"].timetable).__name__ == "NullTimetable"

    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(tmp_path / "missing.yaml"))
    errors = DagBag(dag_folder=str(DAGS / "tenant_release_scheduled.py")).import_errors
    assert (
        "tenant_release_scheduled takes its release windows from the fleet file: fleet file "
        f"{tmp_path / 'missing.yaml'} does not exist"
    ) in next(iter(errors.values()))


# --- missed windows and overlapping queued releases -------------------------------------------------------------


@pytest.fixture
def run_for_window(monkeypatch: pytest.MonkeyPatch):
    """Make dag.test() runs look like the scheduler's: their data interval is the window occurrence they are for.

    dag.test() creates a manual run, whose interval the timetable infers from its logical date; here that is the
    window opening at the logical date, as a scheduled run of that window has (tests/airflow/test_timetables.py
    shows the scheduler creating such a run late after it was down).
    """
    from airflow.timetables.base import DataInterval
    from tenant_release.airflow.timetables import ReleaseWindowTimetable

    def window_opening_at(self, *, run_after):
        return DataInterval(run_after, run_after.add(hours=2))

    monkeypatch.setattr(ReleaseWindowTimetable, "infer_manual_data_interval", window_opening_at)


def test_a_run_the_scheduler_started_late_for_a_missed_window_ships_nothing_even_inside_a_later_window(
    scheduled_dag, clock, run_for_window, caplog
):
    put_in_queue("v2.0.0")
    missed = datetime(2027, 3, 2, 2, tzinfo=UTC)  # the window the scheduler was down for
    clock(datetime(2027, 3, 9, 3, tzinfo=UTC))  # it comes back inside the next Tuesday's window

    late = scheduled_dag.test(logical_date=missed)

    states = task_states(late)
    assert (states[("take_queued_release", -1)], states[("trigger_release", -1)]) == ("skipped", "skipped")
    assert queued("v2.0.0").status == QueueStatus.QUEUED  # left for this window's own run
    assert release_runs() == []
    assert (
        "this run is for the release window 2027-03-02T02:00:00+00:00 to 2027-03-02T04:00:00+00:00, but it started at "
        "2027-03-09T03:00:00+00:00, outside it (was the scheduler down?); a missed window is not made up later: "
        "v2.0.0 stays queued; the window open now (since 2027-03-09T02:00:00+00:00) has its own run, which ships the oldest"
    ) in caplog.text

    # The open window's own run ships it, once.
    run = scheduled_dag.test(logical_date=datetime(2027, 3, 9, 2, tzinfo=UTC))
    assert task_states(run)[("mark_dispatched", -1)] == "success"
    assert release_runs() == [release_queue.dispatch_run_id(queued("v2.0.0"))]


def test_a_late_run_between_windows_says_when_the_next_window_opens(fleet, clock):
    put_in_queue("v2.0.0")
    missed = (datetime(2027, 3, 2, 2, tzinfo=UTC), datetime(2027, 3, 2, 4, tzinfo=UTC))
    with pytest.raises(AirflowSkipException) as skipped:
        queue_steps.take_queued_release(run_id="r", now=datetime(2027, 3, 3, 9, tzinfo=UTC), window=missed)
    assert str(skipped.value).endswith("v2.0.0 stays queued; the next release window opens 2027-03-09T02:00:00+00:00")
    # Started late but still inside its own window (the scheduler was down at the opening only): it ships.
    taken = queue_steps.take_queued_release(run_id="r", now=datetime(2027, 3, 2, 3, 59, tzinfo=UTC), window=missed)
    assert taken["release_tag"] == "v2.0.0"


def test_a_newer_release_queued_for_the_same_window_supersedes_the_older_one(scheduled_dag, clock, caplog):
    put_in_queue("v2.0.0")
    put_in_queue("v2.1.0")
    clock(IN_WINDOW)

    run = scheduled_dag.test()

    assert str(run.state) == "success"
    newer = queued("v2.1.0")
    assert newer.status == QueueStatus.DISPATCHED
    older = queued("v2.0.0")
    assert (older.status, older.superseded_by) == (QueueStatus.SUPERSEDED, "v2.1.0")
    # One release run, of the newer version: each tenant goes straight to it and never sees the older one.
    assert release_runs() == [newer.run_id]
    assert release_run(newer.run_id).conf["release_tag"] == "v2.1.0"
    assert "v2.0.0 is superseded by v2.1.0" in caplog.text and "every tenant it would deploy (acme, globex)" in caplog.text


def test_overlapping_releases_reach_a_shared_tenant_in_version_order_one_window_each(fleet, scheduled_dag, clock, caplog):
    # globex is pinned to 2.0: v2.1.0 reaches only acme, so it cannot supersede v2.0.0 (globex needs it).
    fleet.write_text(fleet.read_text().replace('account_id: "222222222222"', 'account_id: "222222222222"\n    pin: "2.0"'))
    put_in_queue("v2.1.0")  # queued first
    put_in_queue("v2.0.0")
    put_in_queue("v-2.2.0-qa")  # another group, queued last

    shipped = []
    for tuesday in (2, 9, 16):
        clock(datetime(2027, 3, tuesday, 2, 30, tzinfo=UTC))
        run = scheduled_dag.test()
        assert task_states(run)[("mark_dispatched", -1)] == "success"
        dispatched = {e.release for e in release_queue.list_queue(dynamodb(), QUEUE, statuses=[QueueStatus.DISPATCHED])}
        shipped.extend(dispatched - set(shipped))  # exactly one new release per window

    # acme gets 2.0.0 before 2.1.0 (the other way round its 2.0.0 deploy would be refused as a rollback); then the
    # queue order holds: v2.1.0 was queued before the qa release.
    assert shipped == ["v2.0.0", "v2.1.0", "v-2.2.0-qa"]
    assert queued("v2.0.0").status == QueueStatus.DISPATCHED  # not superseded: the pinned globex needed it
    assert "v2.0.0 ships before v2.1.0, queued earlier: they share tenants" in caplog.text


def test_backfills_refuse_the_release_dag_and_ship_nothing_for_past_windows(fleet, clock, scheduled_dag):
    """`airflow backfill create` (Airflow's own _create_backfill): the release DAG cannot be backfilled at all; the
    scheduled DAG can, and each backfilled run is for a window that closed, so it ships nothing."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.backfill import (
        Backfill,
        BackfillDagRun,
        DagNonPeriodicScheduleException,
        ReprocessBehavior,
        _create_backfill,
    )
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    # Backfills are checked against the real clock: these dates must be in the past.
    since, until = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    backfill = dict(max_active_runs=1, reverse=False, dag_run_conf=None, triggering_user_name="ops")

    with pytest.raises(DagNonPeriodicScheduleException, match="tenant_release has a non-periodic schedule"):
        _create_backfill(
            dag_id="tenant_release", from_date=since, to_date=until, reprocess_behavior=ReprocessBehavior.FAILED, **backfill
        )

    created = _create_backfill(dag_id="tenant_release_scheduled", from_date=since, to_date=until, **backfill)
    try:
        with create_session() as session:
            runs = session.query(DagRun).filter(DagRun.backfill_id == created.id).order_by(DagRun.logical_date).all()
            windows = [(r.data_interval_start, r.data_interval_end) for r in runs]
        assert [start.day for start, _ in windows] == [3, 10, 17]  # the Tuesday windows of the range
        put_in_queue("v2.0.0")
        for window in windows:  # run today (or inside any later window): each one's window has closed
            with pytest.raises(AirflowSkipException, match=r"outside it .*a missed window is not made up later"):
                queue_steps.take_queued_release(run_id="backfill", now=datetime(2027, 3, 2, 2, 30, tzinfo=UTC), window=window)
        assert queued("v2.0.0").status == QueueStatus.QUEUED
    finally:
        with create_session() as session:
            session.query(BackfillDagRun).filter(BackfillDagRun.backfill_id == created.id).delete()
            session.query(DagRun).filter(DagRun.backfill_id == created.id).delete()
            session.query(Backfill).filter(Backfill.id == created.id).delete()


# --- held tenants named by a queued release; supersession only at dispatch ----------------------------------------


def hold(fleet: Path, account_id: str, reason: str) -> None:
    """Hold back the tenant with this account id in the fleet file, as an operator does after the release was queued."""
    line = f'account_id: "{account_id}"'
    fleet.write_text(fleet.read_text().replace(line, f'{line}\n    hold: "{reason}"'))


def test_a_named_tenant_held_since_queueing_is_left_out_of_the_run_and_recorded_skipped(fleet, scheduled_dag, clock):
    from tenant_release.airflow import steps
    from tenant_release.aws import ledger
    from tenant_release.models import Outcome

    put_in_queue("v2.0.0", ("acme", "globex"))
    entry = queued("v2.0.0")
    hold(fleet, "222222222222", "customer audit")  # globex, after v2.0.0 was queued for it
    clock(IN_WINDOW)

    run = scheduled_dag.test()

    assert task_states(run)[("mark_dispatched", -1)] == "success"
    run_id = release_queue.dispatch_run_id(entry)
    assert release_run(run_id).conf == {"release_tag": "v2.0.0", "tenants": ["acme"], "override_freeze": ""}
    globex = ledger.get(dynamodb(), "tenant-release-history", tenant="globex", release="v2.0.0")
    assert (globex.status, globex.reason, globex.run_id) == (Outcome.SKIPPED, "held back: customer audit", run_id)
    assert globex.written_by == "dispatch"
    assert ledger.get(dynamodb(), "tenant-release-history", tenant="acme", release="v2.0.0") is None  # the run deploys it

    # The run's plan takes the list it was given; the list as queued would have failed the whole run.
    planned = steps.plan(release_run(run_id).conf, now=IN_WINDOW, max_map_length=1024)
    assert [t["tenant"] for t in planned["targets"]] == ["acme"]
    with pytest.raises(AirflowFailException, match="globex is held back: customer audit"):
        steps.plan({**release_run(run_id).conf, "tenants": ["acme", "globex"]}, now=IN_WINDOW, max_map_length=1024)


def test_a_queued_release_naming_only_held_tenants_stays_queued_and_another_ships(fleet, scheduled_dag, clock, caplog):
    put_in_queue("v2.0.0", ("globex",))
    put_in_queue("v-2.1.0-qa", ("initech",))
    hold(fleet, "222222222222", "customer audit")
    clock(IN_WINDOW)

    run = scheduled_dag.test()

    assert task_states(run)[("mark_dispatched", -1)] == "success"
    # Never an empty tenants list (that would be the whole group): v2.0.0 waits for the hold to be lifted.
    assert release_runs() == [release_queue.dispatch_run_id(queued("v-2.1.0-qa"))]
    assert queued("v2.0.0").status == QueueStatus.QUEUED
    assert (
        "v2.0.0 is not shipped at this window: every tenant it names is held back or pinned now (globex: held back: "
        "customer audit); it stays queued until a hold is lifted or a pin matches (or cancel it: tenant-release queue "
        "cancel v2.0.0)"
    ) in caplog.text

    # Alone in the queue, it still ships nothing, and says so.
    clock(datetime(2027, 3, 9, 2, 30, tzinfo=UTC))
    run = scheduled_dag.test()
    assert task_states(run)[("take_queued_release", -1)] == "skipped"
    assert queued("v2.0.0").status == QueueStatus.QUEUED
    assert len(release_runs()) == 1


def test_cancelling_the_newer_release_before_it_ships_leaves_the_older_one_to_ship(fleet, scheduled_dag, clock, caplog):
    put_in_queue("v-2.2.0-qa")  # another group, queued first: it takes the first window
    put_in_queue("v2.0.0")
    put_in_queue("v2.1.0")  # covers every tenant of v2.0.0
    clock(IN_WINDOW)

    scheduled_dag.test()

    assert queued("v-2.2.0-qa").status == QueueStatus.DISPATCHED
    # Not superseded yet: v2.1.0 has not been dispatched.
    assert (queued("v2.0.0").status, queued("v2.1.0").status) == (QueueStatus.QUEUED, QueueStatus.QUEUED)
    assert "v2.0.0 waits: the newer v2.1.0 deploys every tenant it would deploy (acme, globex)" in caplog.text

    release_queue.cancel(dynamodb(), QUEUE, "v2.1.0", cancelled_by="bob")
    clock(datetime(2027, 3, 9, 2, 30, tzinfo=UTC))
    scheduled_dag.test()

    older = queued("v2.0.0")
    assert (older.status, older.superseded_by) == (QueueStatus.DISPATCHED, None)
    assert release_run(older.run_id).conf["release_tag"] == "v2.0.0"
