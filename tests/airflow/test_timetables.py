"""ReleaseWindowTimetable: scheduling inside release windows and around freezes, serialization, plugin registration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pendulum
import pytest
from airflow import plugins_manager
from airflow.exceptions import AirflowTimetableInvalid
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from tenant_release.airflow import timetables
from tenant_release.airflow.timetables import ReleaseWindowTimetable
from tenant_release.models import Freeze, ReleaseSchedule

REPO = Path(__file__).resolve().parents[2]
WINDOWS = ["Tue 02:00-04:00", "Thu 02:00-04:00 UTC"]
FREEZES = [{"start": "12-20", "end": "01-05", "reason": "year-end freeze"}]
IMPORT_PATH = "tenant_release.airflow.timetables.ReleaseWindowTimetable"


def utc(*args: int) -> pendulum.DateTime:
    return pendulum.datetime(*args, tz="UTC")


@pytest.fixture
def timetable() -> ReleaseWindowTimetable:
    return ReleaseWindowTimetable(windows=WINDOWS, freezes=FREEZES)


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch):
    """Pin the timetable's clock: `now(datetime)`."""

    def pin(at: datetime) -> None:
        monkeypatch.setattr(timetables, "_utcnow", lambda: at)

    return pin


def window(day: pendulum.DateTime) -> tuple[pendulum.DateTime, pendulum.DateTime]:
    return day.add(hours=2), day.add(hours=4)


def test_summary_and_description(timetable: ReleaseWindowTimetable) -> None:
    assert timetable.summary == "Release windows: Tue 02:00-04:00 UTC, Thu 02:00-04:00 UTC; freezes: 12-20..01-05"
    assert "12-20..01-05 (year-end freeze)" in timetable.description
    assert ReleaseWindowTimetable(windows=["Sun 02:00-05:00 Europe/Berlin"]).summary == (
        "Release windows: Sun 02:00-05:00 Europe/Berlin; freezes: none"
    )


def test_serialize_round_trip(timetable: ReleaseWindowTimetable) -> None:
    data = timetable.serialize()
    assert data == {
        "windows": ["Tue 02:00-04:00 UTC", "Thu 02:00-04:00 UTC"],
        "freezes": [{"start": "12-20", "end": "01-05", "reason": "year-end freeze"}],
    }
    restored = ReleaseWindowTimetable.deserialize(json.loads(json.dumps(data)))
    assert restored.calendar == timetable.calendar
    assert restored.serialize() == data
    assert restored.summary == timetable.summary


def test_from_schedule_matches_the_fleet_file_section() -> None:
    schedule = ReleaseSchedule(windows=tuple(WINDOWS), freezes=(Freeze(**FREEZES[0]),))
    assert (
        ReleaseWindowTimetable.from_schedule(schedule).serialize()
        == ReleaseWindowTimetable(windows=WINDOWS, freezes=FREEZES).serialize()
    )


@pytest.mark.parametrize(
    ("windows", "freezes", "message"),
    [
        (["Tue 25:00-04:00"], [], "'Tue 25:00-04:00' is not a window"),
        (["Tue 02:00-04:00 Mars/Olympus"], [], "unknown time zone 'Mars/Olympus'"),
        (WINDOWS, [{"start": "12/20", "end": "01-05"}], "must be MM-DD"),
        (WINDOWS, [{"start": "02-30", "end": "03-01"}], "must be a real MM-DD day"),
        (WINDOWS, [{"start": "12-20", "end": "01-05", "why": "typo"}], "why"),
    ],
)
def test_bad_schedule_is_rejected_when_the_dag_is_parsed(windows: list[str], freezes: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReleaseWindowTimetable(windows=windows, freezes=freezes)


def test_no_windows_is_invalid() -> None:
    with pytest.raises(AirflowTimetableInvalid, match="at least one release window"):
        ReleaseWindowTimetable(windows=[]).validate()
    ReleaseWindowTimetable(windows=WINDOWS).validate()


def test_no_windows_schedules_nothing(now) -> None:
    now(utc(2027, 12, 1))
    empty = ReleaseWindowTimetable(windows=[])
    restriction = TimeRestriction(earliest=utc(2027, 12, 1), latest=None, catchup=True)
    assert empty.next_dagrun_info(last_automated_data_interval=None, restriction=restriction) is None


def test_runs_cover_each_window_and_skip_the_freeze(timetable: ReleaseWindowTimetable, now) -> None:
    now(utc(2028, 3, 1))  # catch-up makes "now" irrelevant; pin it anyway so the test cannot depend on the date
    restriction = TimeRestriction(earliest=utc(2027, 12, 1), latest=utc(2028, 1, 31), catchup=True)
    runs: list[DagRunInfo] = []
    last: DataInterval | None = None
    while (info := timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)) is not None:
        runs.append(info)
        last = info.data_interval
        assert len(runs) < 100
    days = [(2027, 12, d) for d in (2, 7, 9, 14, 16)] + [(2028, 1, d) for d in (6, 11, 13, 18, 20, 25, 27)]
    expected = [window(utc(*day)) for day in days]
    assert [(info.data_interval.start, info.data_interval.end) for info in runs] == expected
    for info in runs:
        # The run becomes due when its window opens, and ships inside it.
        assert info.run_after == info.data_interval.start == info.logical_date
        assert isinstance(info.run_after, pendulum.DateTime)
        assert info.run_after.tzinfo is not None and info.run_after.utcoffset().total_seconds() == 0


def test_earliest_on_an_opening_is_inclusive(timetable: ReleaseWindowTimetable) -> None:
    restriction = TimeRestriction(earliest=utc(2027, 12, 7, 2), latest=None, catchup=True)
    info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert info.data_interval == DataInterval(*window(utc(2027, 12, 7)))


def test_latest_is_inclusive_and_stops_scheduling(timetable: ReleaseWindowTimetable) -> None:
    last = DataInterval(*window(utc(2027, 12, 2)))
    at_latest = TimeRestriction(earliest=utc(2027, 12, 1), latest=utc(2027, 12, 7, 2), catchup=True)
    info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=at_latest)
    assert info.data_interval.start == utc(2027, 12, 7, 2)
    before = TimeRestriction(earliest=utc(2027, 12, 1), latest=utc(2027, 12, 7, 1, 59), catchup=True)
    assert timetable.next_dagrun_info(last_automated_data_interval=last, restriction=before) is None


def test_latest_inside_a_freeze_stops_scheduling(timetable: ReleaseWindowTimetable) -> None:
    last = DataInterval(*window(utc(2027, 12, 16)))
    restriction = TimeRestriction(earliest=utc(2027, 12, 1), latest=utc(2028, 1, 1), catchup=True)
    assert timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction) is None


class TestNoCatchup:
    def test_open_window_still_runs(self, timetable: ReleaseWindowTimetable, now) -> None:
        now(utc(2027, 12, 7, 3))  # Tuesday's window is open
        restriction = TimeRestriction(earliest=utc(2027, 1, 1), latest=None, catchup=False)
        info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
        assert info.data_interval == DataInterval(*window(utc(2027, 12, 7)))
        assert info.run_after == utc(2027, 12, 7, 2)

    def test_closed_windows_are_never_run(self, timetable: ReleaseWindowTimetable, now) -> None:
        now(utc(2027, 12, 7, 4))  # Tuesday's window just closed
        restriction = TimeRestriction(earliest=utc(2027, 1, 1), latest=None, catchup=False)
        last = DataInterval(*window(utc(2027, 11, 2)))  # paused for a month
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        assert info.data_interval == DataInterval(*window(utc(2027, 12, 9)))

    def test_open_window_already_run_is_not_run_again(self, timetable: ReleaseWindowTimetable, now) -> None:
        now(utc(2027, 12, 7, 3))
        restriction = TimeRestriction(earliest=None, latest=None, catchup=False)
        last = DataInterval(*window(utc(2027, 12, 7)))
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        assert info.data_interval == DataInterval(*window(utc(2027, 12, 9)))

    def test_future_start_date_wins(self, timetable: ReleaseWindowTimetable, now) -> None:
        now(utc(2027, 12, 7, 3))
        restriction = TimeRestriction(earliest=utc(2027, 12, 10), latest=None, catchup=False)
        info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
        assert info.data_interval == DataInterval(*window(utc(2027, 12, 14)))

    def test_during_a_freeze_waits_for_its_end(self, timetable: ReleaseWindowTimetable, now) -> None:
        now(utc(2027, 12, 21, 3))  # a Tuesday window time, but frozen
        restriction = TimeRestriction(earliest=None, latest=None, catchup=False)
        info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
        assert info.data_interval == DataInterval(*window(utc(2028, 1, 6)))


def test_catchup_without_start_date_starts_from_now(timetable: ReleaseWindowTimetable, now) -> None:
    now(utc(2027, 12, 8))
    restriction = TimeRestriction(earliest=None, latest=None, catchup=True)
    info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert info.data_interval == DataInterval(*window(utc(2027, 12, 9)))


def test_manual_run_has_a_zero_length_interval(timetable: ReleaseWindowTimetable) -> None:
    run_after = utc(2027, 12, 24, 15, 30)  # inside the freeze: a manual release is the operator's call
    assert timetable.infer_manual_data_interval(run_after=run_after) == DataInterval(run_after, run_after)


def test_airflow_dag_serialization_round_trip(timetable: ReleaseWindowTimetable, monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow stores a custom timetable by import path and only restores it if a plugin registered it: stand in
    # for the plugin registry here (the subprocess test below checks the real plugin).
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setattr(plugins_manager, "get_timetables_plugins", lambda: {IMPORT_PATH: ReleaseWindowTimetable})
    dag = DAG("release_windows", schedule=timetable, start_date=datetime(2027, 1, 1, tzinfo=UTC))
    data = DagSerialization.to_dict(dag)
    assert data["dag"]["timetable"]["__type"] == IMPORT_PATH
    restored = DagSerialization.from_dict(json.loads(json.dumps(data))).timetable
    assert isinstance(restored, ReleaseWindowTimetable)
    assert restored.calendar == timetable.calendar


def test_plugin_registers_the_timetable(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    # Start from a clean Airflow environment: importing airflow under pytest switches on unit-test mode in
    # os.environ, which the CLI would inherit.
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
    }
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "plugins", "--output", "json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plugins = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}
    assert "tenant_release" in plugins, result.stdout
    assert plugins["tenant_release"]["timetables"] == [IMPORT_PATH]


# --- the scheduler down across release windows, against Airflow's own run-creation code ------------------------
# fleet_schedule.yaml has one window, Tuesdays 02:00-04:00 UTC. These tests drive the code paths Airflow 3.3 uses:
# the dag-processor's DagModel.calculate_dagrun_date_fields (every parse, from the latest scheduled run) and the
# scheduler's SchedulerJobRunner._create_dag_runs (which creates the run DagModel.next_dagrun names, however late).

SCHEDULED_DAG = "tenant_release_scheduled"


@pytest.fixture
def scheduler(airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The scheduled DAG in the metadata DB, and the scheduler's and the dag-processor's steps on it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    from tests.conftest import use_fleet

    use_fleet("fleet_schedule.yaml", tmp_path, monkeypatch)
    bag = DagBag(dag_folder=str(REPO / "dags" / "tenant_release_scheduled.py"))
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()

    def scheduled_runs() -> list[DagRun]:
        with create_session() as session:
            runs = session.query(DagRun).filter(DagRun.dag_id == SCHEDULED_DAG, DagRun.run_type == DagRunType.SCHEDULED)
            found = sorted(runs, key=lambda run: run.logical_date)
            for run in found:
                session.expunge(run)
            return found

    def delete_scheduled_runs() -> None:
        with create_session() as session:
            for run in session.query(DagRun).filter(DagRun.dag_id == SCHEDULED_DAG, DagRun.run_type == DagRunType.SCHEDULED):
                session.delete(run)

    class Scheduler:
        def parse(self) -> None:
            """What the dag-processor does at each parse: store the DAG and recompute DagModel.next_dagrun."""
            sync_bag_to_db(bag, "dags-folder", None)

        def next_run(self) -> DataInterval | None:
            with create_session() as session:
                model = session.get(DagModel, SCHEDULED_DAG)
                return (
                    None
                    if model.next_dagrun is None
                    else DataInterval(model.next_dagrun_data_interval_start, model.next_dagrun_data_interval_end)
                )

        def create_due_run(self) -> None:
            """One scheduler loop's run creation for this DAG, if due (as DagModel.dags_needing_dagruns selects it)."""
            with create_session() as session:
                model = session.get(DagModel, SCHEDULED_DAG)
                if model.next_dagrun_create_after is None or model.next_dagrun_create_after > timetables._utcnow():
                    return
                runner = SchedulerJobRunner(job=Job(), num_runs=1)
                runner._create_dag_runs([model], session)

        def finish_runs(self) -> None:
            """Each run did its (short) work: max_active_runs=1 lets the scheduler create the next one."""
            with create_session() as session:
                for run in session.query(DagRun).filter(DagRun.dag_id == SCHEDULED_DAG):
                    run.state = DagRunState.SUCCESS
                model = session.get(DagModel, SCHEDULED_DAG)
                model.exceeds_max_non_backfill = False

        runs = staticmethod(scheduled_runs)

    delete_scheduled_runs()
    assert SerializedDagModel  # imported for its side effect of registering the model with the ORM
    yield Scheduler()
    delete_scheduled_runs()


def windows_of(runs) -> list[tuple[pendulum.DateTime, pendulum.DateTime]]:
    return [(pendulum.instance(r.data_interval_start), pendulum.instance(r.data_interval_end)) for r in runs]


def test_scheduler_down_across_windows_creates_one_late_run_for_the_first_missed_window(scheduler, now) -> None:
    now(utc(2027, 3, 1, 10))  # Monday: the dag-processor schedules Tuesday's window
    scheduler.parse()
    assert scheduler.next_run() == DataInterval(*window(utc(2027, 3, 2)))

    # The scheduler is down from Monday until Wednesday of the following week: two Tuesday windows pass.
    now(utc(2027, 3, 10, 9))
    scheduler.create_due_run()  # the scheduler's first loop, before the dag-processor parses again
    scheduler.finish_runs()
    scheduler.create_due_run()
    scheduler.parse()

    # One run, late, for the first missed window (not for the second); then the next window to come, not a catch-up.
    assert windows_of(scheduler.runs()) == [window(utc(2027, 3, 2))]
    assert scheduler.next_run() == DataInterval(*window(utc(2027, 3, 16)))


def test_scheduler_back_inside_a_later_window_runs_the_missed_one_late_and_the_open_one(scheduler, now) -> None:
    now(utc(2027, 3, 1, 10))
    scheduler.parse()

    now(utc(2027, 3, 9, 3))  # back on the next Tuesday at 03:00, inside that window
    scheduler.create_due_run()
    scheduler.finish_runs()
    scheduler.create_due_run()

    # Two runs start inside the open window: the late one for last week's window, and this window's own.
    # take_queued_release ships nothing in the late one (tests/dags/test_scheduled_release.py): one release per window.
    assert windows_of(scheduler.runs()) == [window(utc(2027, 3, 2)), window(utc(2027, 3, 9))]
    assert scheduler.next_run() == DataInterval(*window(utc(2027, 3, 16)))


def test_dag_processor_first_back_skips_the_missed_windows(scheduler, now) -> None:
    now(utc(2027, 3, 1, 10))
    scheduler.parse()

    now(utc(2027, 3, 9, 3))
    scheduler.parse()  # the dag-processor re-parses before the scheduler's first loop: next_dagrun is recomputed
    scheduler.create_due_run()

    assert windows_of(scheduler.runs()) == [window(utc(2027, 3, 9))]
