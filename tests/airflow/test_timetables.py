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
