"""The Airflow timetable that starts a scheduled release when a release window opens, never inside a freeze."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.exceptions import AirflowTimetableInvalid
from airflow.timetables.base import DagRunInfo, DataInterval, Timetable

from tenant_release.models import ReleaseSchedule
from tenant_release.windows import ReleaseCalendar

if TYPE_CHECKING:
    from airflow.timetables.base import TimeRestriction
    from pendulum import DateTime

# Window openings are whole minutes (or a clock change, a whole second), so one second past the last scheduled
# opening excludes that occurrence, and a window listed twice, without skipping any other.
_PAST_LAST_OPENING = timedelta(seconds=1)


def _utcnow() -> datetime:
    # One seam for "now", so tests can pin it.
    return pendulum.now("UTC")


def _pendulum(value: datetime) -> DateTime:
    # The scheduler expects pendulum DateTimes in DagRunInfo; windows.py deals in plain datetimes.
    return pendulum.instance(value)


class ReleaseWindowTimetable(Timetable):
    """Schedule one run per release-window occurrence that opens outside every freeze.

    The run's data interval is the window occurrence itself (open to close) and it becomes runnable when the
    window opens, so the release ships inside its window. Built from the fleet file's ``schedule`` section::

        ReleaseWindowTimetable(windows=["Tue 02:00-04:00", "Thu 02:00-04:00"],
                               freezes=[{"start": "12-20", "end": "01-05", "reason": "year-end freeze"}])

    With ``catchup=False`` a window that already closed is never run; the one open right now still is.
    """

    def __init__(self, *, windows: Sequence[str], freezes: Sequence[Mapping[str, str]] = ()) -> None:
        # Validated by the fleet-file model, so a DAG file and tenants.yaml reject the same mistakes.
        schedule = ReleaseSchedule.model_validate({"windows": list(windows), "freezes": [dict(f) for f in freezes]})
        self.calendar = ReleaseCalendar.from_schedule(schedule)
        windows_text = ", ".join(str(window) for window in self.calendar.windows) or "none"
        freezes_text = ", ".join(str(freeze) for freeze in self.calendar.freezes) or "none"
        self._summary = f"Release windows: {windows_text}; freezes: {freezes_text}"
        freeze_reasons = ", ".join(f"{freeze} ({freeze.reason})" for freeze in self.calendar.freezes) or "none"
        self.description = f"Release windows: {windows_text}; no release starts in freezes: {freeze_reasons}"

    @classmethod
    def from_schedule(cls, schedule: ReleaseSchedule) -> ReleaseWindowTimetable:
        """Build from a validated `tenant_release.models.ReleaseSchedule` (the fleet's ``schedule``)."""
        return cls(
            windows=schedule.windows,
            freezes=[freeze.model_dump(mode="json") for freeze in schedule.freezes],
        )

    @property
    def summary(self) -> str:
        return self._summary

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._summary})"

    def serialize(self) -> dict[str, Any]:
        return {
            "windows": [str(window) for window in self.calendar.windows],
            "freezes": [{"start": freeze.start, "end": freeze.end, "reason": freeze.reason} for freeze in self.calendar.freezes],
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ReleaseWindowTimetable:
        return cls(windows=data["windows"], freezes=data.get("freezes", []))

    def validate(self) -> None:
        if not self.calendar.windows:
            raise AirflowTimetableInvalid(
                "ReleaseWindowTimetable needs at least one release window; use schedule=None for manual releases only"
            )

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        # A manual release is not tied to a window: its interval is the moment it was asked for.
        return DataInterval.exact(run_after)

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        # The next window must open after the last scheduled one, and not before the DAG's start_date.
        floor: datetime | None = None
        if last_automated_data_interval is not None:
            floor = last_automated_data_interval.start + _PAST_LAST_OPENING
        if restriction.earliest is not None:
            floor = restriction.earliest if floor is None else max(floor, restriction.earliest)

        if restriction.catchup and floor is not None:
            search_from, include_open = floor, False
        else:
            # No catch-up (or no start_date and no run yet): windows that already closed are not run, but the
            # one open now still is: a release started late in its window is better than waiting a week.
            now = _utcnow()
            if floor is None or floor <= now:
                search_from, include_open = now, True
            else:
                search_from, include_open = floor, False

        for opens, closes in self.calendar.release_intervals(search_from, include_open=include_open):
            if floor is not None and opens < floor:
                continue  # the window open now is the one the last scheduled run already took
            if restriction.latest is not None and opens > restriction.latest:
                return None
            start, end = _pendulum(opens), _pendulum(closes)
            return DagRunInfo(run_after=start, data_interval=DataInterval(start=start, end=end))
        return None
