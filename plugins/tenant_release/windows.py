"""Weekly release and maintenance windows, year-end style freezes, and when the next release may start.

Pure Python (``datetime`` + ``zoneinfo``): the Airflow timetable and the deploy steps both ask this module.

A window is written ``<Day>[-<Day>] HH:MM-HH:MM [Area/City]``, e.g. ``"Tue 02:00-04:00"`` (UTC when no zone is
given), ``"Sun 02:00-05:00 Europe/Berlin"`` or ``"Mon-Fri 22:00-02:00 America/New_York"``. A day range may wrap
the week (``Fri-Mon``). When the closing time is earlier than the opening time the window crosses midnight and
closes on the next day; the days name the day the window *opens*.

Times are local wall-clock times in the window's zone. Each boundary (opening and closing) is the first instant
at which the local clock shows that reading:

- on a fall-back day a reading that happens twice means its first occurrence (``fold=0``): a
  ``"Sun 02:00-05:00 Europe/Berlin"`` window on 2027-10-31 opens at 02:00 CEST (00:00 UTC) and runs 4 hours;
- on a spring-forward day a reading that never happens means the first valid instant after it, the moment
  of the clock change: the same window on 2027-03-28 opens at 03:00 CEST (01:00 UTC) and runs 2 hours;
- a window that lies wholly inside the skipped hour (``"Sun 02:00-02:30 Europe/Berlin"``) does not open that
  day at all, rather than opening for zero seconds.

Occurrences are half-open ``[open, close)``. Every method takes timezone-aware datetimes (any zone; naive ones
are rejected) and returns aware UTC datetimes.

Freezes are inclusive ranges of whole UTC days given as ``MM-DD`` and may wrap the year end (``12-20``..``01-05``).
A window occurrence whose *opening* falls inside a freeze is skipped entirely; one that opens before a freeze
starts may run into it.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tenant_release.models import ReleaseSchedule

__all__ = [
    "SEARCH_HORIZON",
    "WINDOW_FORM",
    "FreezePeriod",
    "MaintenanceWindow",
    "ReleaseCalendar",
    "WeeklyWindow",
]

WINDOW_FORM = "'<Day>[-<Day>] HH:MM-HH:MM [Area/City]', e.g. 'Sun 02:00-05:00 Europe/Berlin'"

# How far ahead the calendar looks for a release start before it gives up: a long enough freeze set could
# otherwise make the search run forever. Two years covers any yearly freeze pattern at least once.
SEARCH_HORIZON = timedelta(days=2 * 366)

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_INDEX = {name.lower(): index for index, name in enumerate(DAY_NAMES)} | {
    name: index for index, name in enumerate(_FULL_DAY_NAMES)
}

_WINDOW_PATTERN = re.compile(
    r"""^\s*
    (?P<first_day>[A-Za-z]+)(?:\s*-\s*(?P<last_day>[A-Za-z]+))?
    \s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})
    (?:\s+(?P<zone>\S+))?
    \s*$""",
    re.VERBOSE,
)
_MONTH_DAY_PATTERN = re.compile(r"^(\d{2})-(\d{2})$")

_UTC_NAMES = frozenset({"UTC"})
_ONE_DAY = timedelta(days=1)
# Occurrences start up to two local days before the instant asked about can still be open at it: a window may
# cross midnight and a DST change may lengthen it by an hour, and some zones change the clock at midnight.
_LOOKBACK_DAYS = 2


def _not_a_window(text: object, reason: str | None = None) -> ValueError:
    detail = f"{reason}; use" if reason else "use"
    return ValueError(f"{text!r} is not a window: {detail} {WINDOW_FORM}")


@cache
def _zone(name: str) -> tzinfo:
    # UTC needs no tz database: keep the common case working even where tzdata is missing.
    if name in _UTC_NAMES:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as error:
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'") from error


def _as_utc(value: datetime, what: str) -> datetime:
    """Return `value` as a plain `datetime` in UTC (pendulum's subclass included), rejecting naive values."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (e.g. tzinfo=timezone.utc), got naive {value.isoformat()}")
    utc = value.astimezone(UTC)
    return datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, tzinfo=UTC)


def _wall_to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant at which the clock in `zone` shows the naive reading `wall` (or first valid after it)."""
    if zone is UTC:
        return wall.replace(tzinfo=UTC)
    # fold=0 is the first of two readings on a fall-back day.
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # `wall` falls in a spring-forward gap. With fold=0 zoneinfo applies the offset from before the change (an
    # instant after it), with fold=1 the offset from after it (an instant before it): the change lies between.
    # Bisect on whole seconds for the first instant whose reading is at or past `wall`: that is the change.
    before = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    after = int(instant.timestamp())
    while after - before > 1:
        middle = (before + after) // 2
        reading = datetime.fromtimestamp(middle, UTC).astimezone(zone).replace(tzinfo=None)
        if reading >= wall:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def _parse_time(text: str, whole: str) -> time:
    hours, minutes = (int(part) for part in text.split(":"))
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        raise _not_a_window(whole, f"{text} is not a time of day (00:00-23:59)")
    return time(hours, minutes)


def _parse_day(text: str, whole: str) -> int:
    try:
        return _DAY_INDEX[text.lower()]
    except KeyError:
        raise _not_a_window(whole, f"{text!r} is not a day (Mon, Tue, ... Sun)") from None


@dataclass(frozen=True, kw_only=True)
class WeeklyWindow:
    """A window that opens every week on the given days (a cyclic range) at `start` and closes at `end`.

    Build it with `WeeklyWindow.parse("Tue 02:00-04:00 UTC")`; `str()` gives the canonical text back.
    """

    first_day: int  # 0 = Monday ... 6 = Sunday
    last_day: int  # == first_day for a single day; may be "before" first_day for a range wrapping the week
    start: time
    end: time
    tz: str = "UTC"

    def __post_init__(self) -> None:
        for day in (self.first_day, self.last_day):
            if not 0 <= day <= 6:
                raise ValueError(f"window day {day} must be 0 (Monday) to 6 (Sunday)")
        if self.start == self.end:
            raise _not_a_window(str(self), f"it opens and closes at {self.start:%H:%M}")
        if self.start.second or self.start.microsecond or self.end.second or self.end.microsecond:
            raise ValueError(f"window times must be whole minutes, got {self.start} and {self.end}")
        _zone(self.tz)  # fail now, with the zone's name, rather than on first use

    @classmethod
    def parse(cls, text: str) -> WeeklyWindow:
        """Parse ``<Day>[-<Day>] HH:MM-HH:MM [Area/City]``; raise `ValueError` naming the text on bad input."""
        if not isinstance(text, str):
            raise _not_a_window(text, f"expected text, got {type(text).__name__}")
        match = _WINDOW_PATTERN.match(text)
        if match is None:
            raise _not_a_window(text)
        first_day = _parse_day(match["first_day"], text)
        last_day = first_day if match["last_day"] is None else _parse_day(match["last_day"], text)
        if match["last_day"] is not None and last_day == first_day:
            # "Mon-Mon" could mean one day or the whole week: make the writer say which.
            raise _not_a_window(text, f"the day range {match['first_day']}-{match['last_day']} names one day twice")
        start = _parse_time(match["start"], text)
        end = _parse_time(match["end"], text)
        if start == end:
            raise _not_a_window(text, f"it opens and closes at {start:%H:%M}")
        zone = match["zone"] or "UTC"
        try:
            _zone(zone)
        except ValueError as error:
            raise ValueError(f"{text!r}: {error}") from None
        return cls(first_day=first_day, last_day=last_day, start=start, end=end, tz=zone)

    def __str__(self) -> str:
        days = DAY_NAMES[self.first_day]
        if self.last_day != self.first_day:
            days = f"{days}-{DAY_NAMES[self.last_day]}"
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.tz}"

    @property
    def days(self) -> tuple[int, ...]:
        """The weekdays (0 = Monday) on which the window opens, in range order."""
        span = (self.last_day - self.first_day) % 7
        return tuple((self.first_day + offset) % 7 for offset in range(span + 1))

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def occurrences(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Yield every occurrence ``(open, close)`` that is still open at or begins after `after`, in order.

        The first one yielded may have opened before `after` (it is open at `after`). Endless: bound the loop.
        """
        after = _as_utc(after, "after")
        zone = _zone(self.tz)
        days = frozenset(self.days)
        day: date = after.astimezone(zone).date() - timedelta(days=_LOOKBACK_DAYS)
        close_offset = _ONE_DAY if self.crosses_midnight else timedelta(0)
        while True:
            if day.weekday() in days:
                opens = _wall_to_utc(datetime.combine(day, self.start), zone)
                closes = _wall_to_utc(datetime.combine(day + close_offset, self.end), zone)
                # closes == opens only when the whole window fell into a skipped (spring-forward) hour.
                if closes > opens and closes > after:
                    yield opens, closes
            day += _ONE_DAY

    def open_interval(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The occurrence ``(open, close)`` containing `at` (``open <= at < close``), or None when closed."""
        at = _as_utc(at, "at")
        opens, closes = next(self.occurrences(at))
        return (opens, closes) if opens <= at else None

    def is_open(self, at: datetime) -> bool:
        return self.open_interval(at) is not None

    def next_interval(self, after: datetime) -> tuple[datetime, datetime]:
        """The occurrence open at `after`, else the next one to open."""
        return next(self.occurrences(after))

    def next_open(self, after: datetime) -> datetime:
        """The opening of the first occurrence that opens at or after `after` (an open one is not counted)."""
        after = _as_utc(after, "after")
        return next(opens for opens, _ in self.occurrences(after) if opens >= after)


# A tenant's maintenance window is written and behaves exactly like a release window.
MaintenanceWindow = WeeklyWindow


def _month_day(value: str, what: str) -> tuple[int, int]:
    match = _MONTH_DAY_PATTERN.match(str(value))
    if match is not None:
        month, day = int(match[1]), int(match[2])
        # 2028 is a leap year, so 02-29 is accepted (it is inside the freeze only in leap years).
        try:
            date(2028, month, day)
        except ValueError:
            pass
        else:
            return month, day
    raise ValueError(f"freeze {what} {value!r} must be a real MM-DD day, e.g. 12-20")


@dataclass(frozen=True, kw_only=True)
class FreezePeriod:
    """Whole UTC days, `start` to `end` inclusive (``MM-DD``), in which no release may start; may wrap the year."""

    start: str
    end: str
    reason: str
    _start: tuple[int, int] = field(init=False, repr=False, compare=False)
    _end: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_start", _month_day(self.start, "start"))
        object.__setattr__(self, "_end", _month_day(self.end, "end"))

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"

    def contains_day(self, day: date) -> bool:
        month_day = (day.month, day.day)
        if self._start <= self._end:
            return self._start <= month_day <= self._end
        return month_day >= self._start or month_day <= self._end  # wraps the year end

    def contains(self, at: datetime) -> bool:
        return self.contains_day(_as_utc(at, "at").date())


@dataclass(frozen=True, kw_only=True)
class ReleaseCalendar:
    """When scheduled releases may start: the openings of the weekly `windows` that fall outside every freeze."""

    windows: tuple[WeeklyWindow, ...] = ()
    freezes: tuple[FreezePeriod, ...] = ()

    @classmethod
    def from_schedule(cls, schedule: ReleaseSchedule) -> ReleaseCalendar:
        """Build from the fleet file's validated `schedule` section (`tenant_release.models.ReleaseSchedule`)."""
        return cls(
            windows=tuple(WeeklyWindow.parse(text) for text in schedule.windows),
            freezes=tuple(FreezePeriod(start=freeze.start, end=freeze.end, reason=freeze.reason) for freeze in schedule.freezes),
        )

    def freeze_at(self, at: datetime) -> FreezePeriod | None:
        """The first freeze containing `at`'s UTC day, or None."""
        day = _as_utc(at, "at").date()
        return next((freeze for freeze in self.freezes if freeze.contains_day(day)), None)

    def release_intervals(self, after: datetime, *, include_open: bool = False) -> Iterator[tuple[datetime, datetime]]:
        """Yield, in order, the occurrences ``(open, close)`` of any window that open at or after `after` and
        whose opening is outside every freeze; with `include_open`, also one already open at `after`.

        Stops after `SEARCH_HORIZON`, so a schedule frozen all year ends instead of looping.
        """
        after = _as_utc(after, "after")
        horizon = after + SEARCH_HORIZON
        cursor = after
        first_round = True
        previous: tuple[datetime, datetime] | None = None  # a window listed twice must not yield twice
        while True:
            thaw: datetime | None = None
            for opens, closes in heapq.merge(*(window.occurrences(cursor) for window in self.windows)):
                if opens > horizon:
                    return
                if closes <= after or (opens < cursor and not (include_open and first_round)):
                    # Closed before `after`, or opened in a frozen stretch already stepped over.
                    continue
                if self.freeze_at(opens) is None:
                    if (opens, closes) != previous:
                        previous = (opens, closes)
                        yield opens, closes
                    continue
                # Step over the frozen days at once rather than occurrence by occurrence.
                thaw = self._thaw_after(opens, horizon)
                break
            if thaw is None:
                return  # no windows, or frozen up to the horizon
            cursor = thaw
            first_round = False

    def _thaw_after(self, frozen: datetime, horizon: datetime) -> datetime | None:
        """The first UTC midnight after `frozen` that no freeze covers (freezes may abut), or None past `horizon`."""
        day = frozen.date() + _ONE_DAY
        while any(freeze.contains_day(day) for freeze in self.freezes):
            day += _ONE_DAY
            if day > horizon.date():
                return None
        return datetime.combine(day, time(0), tzinfo=UTC)

    def next_release_interval(self, after: datetime, *, include_open: bool = False) -> tuple[datetime, datetime] | None:
        """The first of `release_intervals(after, include_open=...)`, or None when there is none."""
        return next(self.release_intervals(after, include_open=include_open), None)

    def next_release_start(self, after: datetime) -> datetime | None:
        """The earliest window opening at or after `after` that is not inside a freeze; None if there is none."""
        interval = self.next_release_interval(after)
        return None if interval is None else interval[0]
