"""Release windows, freezes and the release calendar (no Airflow)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from tenant_release.models import Freeze, ReleaseSchedule
from tenant_release.windows import (
    SEARCH_HORIZON,
    WINDOW_FORM,
    FreezePeriod,
    MaintenanceWindow,
    ReleaseCalendar,
    WeeklyWindow,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TUESDAY, THURSDAY = 1, 3


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def year_end_calendar(*windows: str) -> ReleaseCalendar:
    return ReleaseCalendar.from_schedule(
        ReleaseSchedule(
            windows=windows or ("Tue 02:00-04:00", "Thu 02:00-04:00 UTC"),
            freezes=(Freeze(start="12-20", end="01-05", reason="year-end freeze"),),
        )
    )


# --- parsing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "days", "start", "end"),
    [
        ("Tue 02:00-04:00", "Tue 02:00-04:00 UTC", (1,), time(2), time(4)),
        ("Tue 02:00-04:00 UTC", "Tue 02:00-04:00 UTC", (1,), time(2), time(4)),
        ("Sun 02:00-05:00 Europe/Berlin", "Sun 02:00-05:00 Europe/Berlin", (6,), time(2), time(5)),
        ("Mon-Fri 22:00-02:00 America/New_York", "Mon-Fri 22:00-02:00 America/New_York", (0, 1, 2, 3, 4), time(22), time(2)),
        ("  wednesday   9:30-11:45  ", "Wed 09:30-11:45 UTC", (2,), time(9, 30), time(11, 45)),
        ("fri - MON 23:00-01:00 Asia/Tokyo", "Fri-Mon 23:00-01:00 Asia/Tokyo", (4, 5, 6, 0), time(23), time(1)),
        ("SUNDAY 00:00-23:59", "Sun 00:00-23:59 UTC", (6,), time(0), time(23, 59)),
    ],
)
def test_parse_good(text: str, canonical: str, days: tuple[int, ...], start: time, end: time) -> None:
    window = WeeklyWindow.parse(text)
    assert (str(window), window.days, window.start, window.end) == (canonical, days, start, end)
    assert WeeklyWindow.parse(str(window)) == window  # the canonical text round-trips
    assert MaintenanceWindow.parse(text) == window


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Sun 25:00-05:00", "25:00 is not a time of day"),
        ("Sun 02:60-05:00", "02:60 is not a time of day"),
        ("Sun 02:00-24:00", "24:00 is not a time of day"),
        ("Funday 02:00-05:00", "'Funday' is not a day"),
        ("Mon-Xyz 02:00-05:00", "'Xyz' is not a day"),
        ("Mon-Mon 02:00-05:00", "names one day twice"),
        ("Sun 02:00-02:00 Europe/Berlin", "opens and closes at 02:00"),
        ("Sun 02:00", None),
        ("02:00-05:00", None),
        ("", None),
        ("Sun 2pm-5pm", None),
        ("Sun 02:00-05:00 Europe/Berlin extra", None),
        ("Mon,Wed 02:00-03:00", None),
    ],
)
def test_parse_bad_names_text_and_form(text: str, reason: str | None) -> None:
    with pytest.raises(ValueError) as error:
        WeeklyWindow.parse(text)
    message = str(error.value)
    assert message.startswith(f"{text!r} is not a window: ")
    assert message.endswith(f"use {WINDOW_FORM}")
    if reason is not None:
        assert reason in message


def test_parse_example_message_from_brief() -> None:
    with pytest.raises(ValueError, match=r"^'Sun 25:00-05:00' is not a window: .*'<Day>\[-<Day>\] HH:MM-HH:MM \[Area/City\]'"):
        WeeklyWindow.parse("Sun 25:00-05:00")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/Berln", "+02:00", "../etc/passwd"])
def test_parse_unknown_zone_names_the_zone(zone: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown time zone {zone!r}")) as error:
        WeeklyWindow.parse(f"Sun 02:00-05:00 {zone}")
    assert "Sun 02:00-05:00" in str(error.value)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(ValueError, match="is not a window: expected text"):
        WeeklyWindow.parse(None)  # type: ignore[arg-type]


def test_naive_datetimes_are_rejected() -> None:
    window = WeeklyWindow.parse("Tue 02:00-04:00")
    calendar = year_end_calendar()
    naive = datetime(2027, 1, 12, 3)
    for call in (
        window.is_open,
        window.next_open,
        window.open_interval,
        window.next_interval,
        calendar.freeze_at,
        calendar.next_release_start,
    ):
        with pytest.raises(ValueError, match="timezone-aware"):
            call(naive)


def test_any_aware_input_gives_utc_output() -> None:
    window = WeeklyWindow.parse("Tue 02:00-04:00")
    # 2027-01-11 22:00 in New York is 2027-01-12 03:00 UTC: inside Tuesday's window.
    at = datetime(2027, 1, 11, 22, tzinfo=NEW_YORK)
    assert window.open_interval(at) == (utc(2027, 1, 12, 2), utc(2027, 1, 12, 4))
    assert window.next_open(at).tzinfo is UTC


# --- a whole year against brute force ------------------------------------------------------------------------


def _frozen_year_end(day: date) -> bool:
    return (day.month == 12 and day.day >= 20) or (day.month == 1 and day.day <= 5)


def _brute_next_release(after: datetime) -> datetime:
    """Step hour by hour (window openings are on the hour here) to the first Tue/Thu 02:00 outside the freeze."""
    candidate = after.replace(minute=0, second=0, microsecond=0)
    if candidate < after:
        candidate += timedelta(hours=1)
    while not (candidate.weekday() in (TUESDAY, THURSDAY) and candidate.hour == 2 and not _frozen_year_end(candidate.date())):
        candidate += timedelta(hours=1)
    return candidate


def test_next_release_start_every_day_of_2027_matches_brute_force() -> None:
    calendar = year_end_calendar()
    day = utc(2027, 1, 1)
    while day.year == 2027:
        # Before, exactly at, and just after a 02:00 opening, and late in the day.
        for after in (day, day + timedelta(hours=2), day + timedelta(hours=2, seconds=1), day + timedelta(hours=23)):
            found = calendar.next_release_start(after)
            assert found is not None
            assert found.weekday() in (TUESDAY, THURSDAY) and found.time() == time(2), after
            assert not _frozen_year_end(found.date()), after
            assert found == _brute_next_release(after), after
        day += timedelta(days=1)


def test_is_open_every_hour_of_2027_matches_brute_force() -> None:
    window = WeeklyWindow.parse("Tue 02:00-04:00")
    at = utc(2027, 1, 1)
    while at.year == 2027:
        expected = at.weekday() == TUESDAY and 2 <= at.hour < 4
        assert window.is_open(at) is expected, at
        assert window.is_open(at + timedelta(minutes=59)) is expected, at
        at += timedelta(hours=1)


def test_window_boundaries_are_half_open() -> None:
    window = WeeklyWindow.parse("Tue 02:00-04:00")
    assert not window.is_open(utc(2027, 1, 12, 1, 59, 59))
    assert window.is_open(utc(2027, 1, 12, 2))
    assert window.is_open(utc(2027, 1, 12, 3, 59, 59))
    assert not window.is_open(utc(2027, 1, 12, 4))


def test_next_open_counts_an_opening_at_after_but_not_an_open_window() -> None:
    window = WeeklyWindow.parse("Tue 02:00-04:00")
    assert window.next_open(utc(2027, 1, 12, 2)) == utc(2027, 1, 12, 2)
    assert window.next_open(utc(2027, 1, 12, 3)) == utc(2027, 1, 19, 2)
    # next_interval, by contrast, gives the window that is open now.
    assert window.next_interval(utc(2027, 1, 12, 3)) == (utc(2027, 1, 12, 2), utc(2027, 1, 12, 4))
    assert window.next_interval(utc(2027, 1, 12, 4)) == (utc(2027, 1, 19, 2), utc(2027, 1, 19, 4))
    assert window.open_interval(utc(2027, 1, 12, 4)) is None


# --- daylight saving time ------------------------------------------------------------------------------------


def test_berlin_spring_forward_opens_at_first_valid_instant() -> None:
    window = WeeklyWindow.parse("Sun 02:00-05:00 Europe/Berlin")
    opens, closes = window.next_interval(utc(2027, 3, 27))
    # 2027-03-28 02:00 CET does not exist: the clock jumps to 03:00 CEST (01:00 UTC).
    assert (opens, closes) == (utc(2027, 3, 28, 1), utc(2027, 3, 28, 3))
    assert opens.astimezone(BERLIN).time() == time(3)
    assert closes.astimezone(BERLIN).time() == time(5)
    # The Sundays either side keep their usual local times.
    assert window.next_interval(utc(2027, 3, 20)) == (utc(2027, 3, 21, 1), utc(2027, 3, 21, 4))
    assert window.next_interval(utc(2027, 3, 29)) == (utc(2027, 4, 4, 0), utc(2027, 4, 4, 3))


def test_berlin_fall_back_opens_at_first_0200() -> None:
    window = WeeklyWindow.parse("Sun 02:00-05:00 Europe/Berlin")
    opens, closes = window.next_interval(utc(2027, 10, 30))
    # 02:00 happens twice on 2027-10-31: the window opens at the first (CEST, 00:00 UTC) and runs 4 hours.
    assert (opens, closes) == (utc(2027, 10, 31, 0), utc(2027, 10, 31, 4))
    assert opens.astimezone(BERLIN).fold == 0
    assert window.is_open(utc(2027, 10, 31, 1, 30))  # the second 02:30 is still inside


def test_window_inside_the_skipped_hour_does_not_open_that_day() -> None:
    window = WeeklyWindow.parse("Sun 02:00-02:30 Europe/Berlin")
    assert window.next_open(utc(2027, 3, 27)) == utc(2027, 4, 4, 0)
    assert not window.is_open(utc(2027, 3, 28, 1))


def test_new_york_transitions() -> None:
    spring = WeeklyWindow.parse("Sun 02:30-03:30 America/New_York")
    # 2027-03-14 02:30 EST does not exist: opens at 03:00 EDT (07:00 UTC).
    assert spring.next_interval(utc(2027, 3, 13)) == (utc(2027, 3, 14, 7), utc(2027, 3, 14, 7, 30))
    assert spring.next_interval(utc(2027, 3, 15)) == (utc(2027, 3, 21, 6, 30), utc(2027, 3, 21, 7, 30))
    fall = WeeklyWindow.parse("Sun 01:30-02:30 America/New_York")
    # 2027-11-07 01:30 happens twice: the first is EDT (05:30 UTC); 02:30 EST is 07:30 UTC.
    assert fall.next_interval(utc(2027, 11, 6)) == (utc(2027, 11, 7, 5, 30), utc(2027, 11, 7, 7, 30))


def test_new_york_weeknight_window_follows_local_time_across_dst() -> None:
    window = WeeklyWindow.parse("Mon-Fri 22:00-02:00 America/New_York")
    # Friday 2027-03-12 22:00 EST -> Saturday 02:00 EST (asked after Thursday's window closed).
    assert window.next_interval(utc(2027, 3, 12, 8)) == (utc(2027, 3, 13, 3), utc(2027, 3, 13, 7))
    # Monday 2027-03-15 22:00 EDT -> Tuesday 02:00 EDT: an hour earlier in UTC.
    assert window.next_interval(utc(2027, 3, 13, 8)) == (utc(2027, 3, 16, 2), utc(2027, 3, 16, 6))


def _minutes(first: datetime, days: int) -> Iterator[datetime]:
    at = first
    while at < first + timedelta(days=days):
        yield at
        at += timedelta(minutes=1)


@pytest.mark.parametrize(
    ("berlin_first", "new_york_first"),
    [(utc(2027, 3, 27), utc(2027, 3, 13)), (utc(2027, 10, 30), utc(2027, 11, 6))],
    ids=["spring", "autumn"],
)
def test_dst_weekends_minute_by_minute_match_the_local_clock(berlin_first: datetime, new_york_first: datetime) -> None:
    # Brute force on the local clock reading: open while a Berlin clock shows Sunday 02:00-04:59, and while a
    # New York clock shows a weekday from 22:00 or the following morning before 02:00.
    berlin = WeeklyWindow.parse("Sun 02:00-05:00 Europe/Berlin")
    new_york = WeeklyWindow.parse("Mon-Fri 22:00-02:00 America/New_York")
    for at in _minutes(berlin_first, 3):
        local = at.astimezone(BERLIN)
        assert berlin.is_open(at) is (local.weekday() == 6 and time(2) <= local.time() < time(5)), at
    for at in _minutes(new_york_first, 3):
        local = at.astimezone(NEW_YORK)
        expected = (local.weekday() <= 4 and local.time() >= time(22)) or (1 <= local.weekday() <= 5 and local.time() < time(2))
        assert new_york.is_open(at) is expected, at


# --- midnight ------------------------------------------------------------------------------------------------


def test_midnight_crossing_window_closes_next_day() -> None:
    window = WeeklyWindow.parse("Mon-Fri 22:00-02:00")
    # 2027-01-15 is a Friday: its window runs into Saturday.
    assert window.open_interval(utc(2027, 1, 16, 1, 59)) == (utc(2027, 1, 15, 22), utc(2027, 1, 16, 2))
    assert not window.is_open(utc(2027, 1, 16, 2))
    assert not window.is_open(utc(2027, 1, 16, 23))  # Saturday: no window opens
    assert not window.is_open(utc(2027, 1, 18, 1))  # Monday early: Sunday opened no window
    assert window.is_open(utc(2027, 1, 18, 23))
    assert window.is_open(utc(2027, 1, 19, 0, 30))
    assert window.next_open(utc(2027, 1, 16, 0, 30)) == utc(2027, 1, 18, 22)


def test_sunday_window_crossing_into_monday_wraps_the_week() -> None:
    window = WeeklyWindow.parse("Sun 23:00-01:00")
    assert window.open_interval(utc(2027, 1, 18, 0, 30)) == (utc(2027, 1, 17, 23), utc(2027, 1, 18, 1))
    assert window.next_interval(utc(2027, 1, 18, 1)) == (utc(2027, 1, 24, 23), utc(2027, 1, 25, 1))


# --- freezes -------------------------------------------------------------------------------------------------


def test_freeze_period_contains_whole_utc_days_across_the_year_end() -> None:
    freeze = FreezePeriod(start="12-20", end="01-05", reason="year-end freeze")
    assert not freeze.contains(utc(2027, 12, 19, 23, 59))
    assert freeze.contains(utc(2027, 12, 20, 0, 0))
    assert freeze.contains(utc(2028, 1, 5, 23, 59))
    assert not freeze.contains(utc(2028, 1, 6))
    # 2027-12-20 00:30 in Berlin is still 12-19 in UTC.
    assert not freeze.contains(datetime(2027, 12, 20, 0, 30, tzinfo=BERLIN))
    assert str(freeze) == "12-20..01-05"


def test_freeze_period_rejects_days_that_do_not_exist() -> None:
    for bad in ("02-30", "04-31", "13-01", "1-05", "12/20"):
        with pytest.raises(ValueError, match="must be a real MM-DD day"):
            FreezePeriod(start=bad, end="12-31", reason="x")
    assert FreezePeriod(start="02-29", end="02-29", reason="leap day").contains(utc(2028, 2, 29))


@pytest.mark.parametrize(
    ("opening", "allowed"),
    [
        (utc(2027, 12, 19, 2), True),
        (utc(2027, 12, 20, 2), False),
        (utc(2028, 1, 5, 2), False),
        (utc(2028, 1, 6, 2), True),
    ],
)
def test_freeze_boundaries(opening: datetime, allowed: bool) -> None:
    calendar = year_end_calendar("Mon-Sun 02:00-04:00")
    expected = opening if allowed else utc(2028, 1, 6, 2)
    assert calendar.next_release_start(opening) == expected
    assert (calendar.freeze_at(opening) is None) is allowed


def test_window_opening_before_a_freeze_may_run_into_it() -> None:
    calendar = year_end_calendar("Sun 23:00-03:00")
    # Sunday 2027-12-19 23:00 opens a day before the freeze and closes inside it: allowed.
    assert calendar.next_release_interval(utc(2027, 12, 19)) == (utc(2027, 12, 19, 23), utc(2027, 12, 20, 3))
    assert calendar.next_release_start(utc(2027, 12, 19, 23, 1)) == utc(2028, 1, 9, 23)


def test_abutting_and_overlapping_freezes_are_stepped_over_together() -> None:
    calendar = ReleaseCalendar.from_schedule(
        ReleaseSchedule(
            windows=("Mon-Sun 02:00-04:00",),
            freezes=(
                Freeze(start="12-20", end="12-31", reason="holidays"),
                Freeze(start="01-01", end="01-05", reason="new year"),
                Freeze(start="01-03", end="01-10", reason="inventory"),
            ),
        )
    )
    assert calendar.next_release_start(utc(2027, 12, 20)) == utc(2028, 1, 11, 2)
    assert calendar.freeze_at(utc(2028, 1, 4)).reason == "new year"


def test_calendar_with_no_windows_has_no_release() -> None:
    assert ReleaseCalendar().next_release_start(utc(2027, 1, 1)) is None
    assert ReleaseCalendar.from_schedule(ReleaseSchedule()).next_release_interval(utc(2027, 1, 1)) is None


def test_calendar_frozen_all_year_gives_up_at_the_horizon() -> None:
    calendar = ReleaseCalendar.from_schedule(
        ReleaseSchedule(windows=("Mon-Sun 02:00-04:00",), freezes=(Freeze(start="01-01", end="12-31"),))
    )
    assert calendar.next_release_start(utc(2027, 1, 1)) is None
    assert SEARCH_HORIZON >= timedelta(days=366)


def test_calendar_merges_windows_in_order_and_drops_duplicates() -> None:
    calendar = year_end_calendar("Thu 02:00-04:00", "Tue 02:00-04:00", "Tue 02:00-04:00 UTC")
    intervals = calendar.release_intervals(utc(2027, 1, 11))
    starts = [next(intervals)[0] for _ in range(4)]
    assert starts == [utc(2027, 1, 12, 2), utc(2027, 1, 14, 2), utc(2027, 1, 19, 2), utc(2027, 1, 21, 2)]


def test_include_open_returns_the_window_open_now() -> None:
    calendar = year_end_calendar()
    now = utc(2027, 1, 12, 3)
    assert calendar.next_release_interval(now) == (utc(2027, 1, 14, 2), utc(2027, 1, 14, 4))
    assert calendar.next_release_interval(now, include_open=True) == (utc(2027, 1, 12, 2), utc(2027, 1, 12, 4))


def test_include_open_never_returns_a_window_opened_in_a_freeze() -> None:
    calendar = year_end_calendar("Mon-Sun 23:00-03:00")
    # The window open at 2028-01-06 01:00 opened on 01-05 (frozen); the next one opens 01-06 23:00.
    assert calendar.next_release_interval(utc(2028, 1, 6, 1), include_open=True) == (
        utc(2028, 1, 6, 23),
        utc(2028, 1, 7, 3),
    )


def test_frozen_dataclasses_compare_by_value() -> None:
    assert year_end_calendar() == year_end_calendar()
    assert hash(WeeklyWindow.parse("Tue 02:00-04:00")) == hash(WeeklyWindow.parse("tuesday 02:00-04:00 UTC"))
    assert WeeklyWindow(first_day=1, last_day=1, start=time(2), end=time(4)) == WeeklyWindow.parse("Tue 02:00-04:00")
    with pytest.raises(ValueError, match="unknown time zone 'Nowhere/Town'"):
        WeeklyWindow(first_day=1, last_day=1, start=time(2), end=time(4), tz="Nowhere/Town")
