"""Rollout controls (pause, resume, abort) and a wave's deploy slots, as items of the leases table on moto."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from tenant_release.aws import controls, leases, slots
from tenant_release.aws.controls import ControlRefused
from tenant_release.errors import PermanentAwsError, TenantReleaseError
from tenant_release.models import RolloutState

from tests.conftest import emulated_aws

LEASES = "tenant-release-leases"
OPS = "arn:aws:sts::123456789012:assumed-role/ops/alice"
ONCALL = "arn:aws:sts::123456789012:assumed-role/ops/bob"


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The leases table as the tooling stack creates it (key `tenant`), alone: these tests need nothing else."""
    with emulated_aws(monkeypatch):
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=LEASES,
            KeySchema=[{"AttributeName": "tenant", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "tenant", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


# --- pause, resume, abort ----------------------------------------------------------------------------------------


def test_a_pause_then_a_resume_is_what_status_shows_with_who_and_why(dynamodb: Any) -> None:
    assert controls.current(dynamodb, LEASES, "v1.4.0") is None  # never controlled: it runs as planned

    paused = controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, OPS, "error rate up in canary")
    assert paused.pauses() and not paused.aborts(None)
    assert controls.current(dynamodb, LEASES, "v1.4.0") == paused
    assert controls.current(dynamodb, LEASES, "v1.5.0") is None  # one tag's control is not another's

    resumed = controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.RUNNING, ONCALL, "")
    record = controls.recorded(dynamodb, LEASES, "v1.4.0")
    assert (record.control, record.previous) == (resumed, paused)
    assert not record.control.pauses()
    assert record.describe() == (
        f"running: resumed by {ONCALL} at {resumed.at} (after: paused by {OPS}: error rate up in canary at {paused.at})"
    )


def test_the_control_item_never_meets_a_tenants_lease_and_the_tables_ttl_never_removes_it(dynamodb: Any) -> None:
    controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, OPS, "why")
    assert leases.acquire(dynamodb, LEASES, tenant="acme", run_id="run-a", release="v1.4.0", seconds=60) is None

    item = dynamodb.get_item(TableName=LEASES, Key={"tenant": {"S": "rollout#v1.4.0"}})["Item"]
    assert "expires_at" not in item  # the table's TTL attribute: a control must outlive every lease
    assert leases.holder(dynamodb, LEASES, tenant="acme").run_id == "run-a"


def test_an_abort_stops_the_runs_planned_before_it_not_a_later_run(dynamodb: Any) -> None:
    aborted = controls.set_control(
        dynamodb, LEASES, "v1.4.0", RolloutState.ABORTED, OPS, "bad migration", at="2026-12-03T10:00:00.000000+00:00"
    )
    control = controls.current(dynamodb, LEASES, "v1.4.0")
    assert control == aborted
    assert control.aborts("2026-12-03T09:59:59.999999+00:00")
    assert not control.aborts("2026-12-03T10:00:00.000001+00:00")  # a redeploy planned afterwards
    assert control.describe() == f"aborted by {OPS}: bad migration at 2026-12-03T10:00:00.000000+00:00"


def test_a_resume_after_an_abort_is_refused_and_says_how_to_ship_the_tag_again_and_hold_it(dynamodb: Any) -> None:
    aborted = controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.ABORTED, OPS, "bad migration")

    with pytest.raises(ControlRefused) as refused:
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.RUNNING, ONCALL, "")
    message = str(refused.value)
    assert message.startswith(f"the rollout of v1.4.0 was aborted by {OPS}: bad migration at ")
    assert "an abort is final for the runs planned before it, so it cannot be resumed" in message
    assert "tenant-release redeploy v1.4.0 --failed" in message
    assert "to hold that run, `tenant-release pause v1.4.0`" in message  # and a pause is indeed taken (below)
    assert controls.current(dynamodb, LEASES, "v1.4.0") == aborted  # nothing written


BEFORE, ABORT, AFTER = "2026-12-03T09:00:00.000000+00:00", "2026-12-03T10:00:00.000000+00:00", "2026-12-03T11:00:00.000000+00:00"


def test_a_redeploy_planned_after_an_abort_can_be_paused_and_resumed_while_the_abort_keeps_stopping_the_earlier_run(
    dynamodb: Any,
) -> None:
    controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.ABORTED, OPS, "bad migration", at=ABORT)
    assert controls.current(dynamodb, LEASES, "v1.4.0").aborts(BEFORE)
    assert not controls.current(dynamodb, LEASES, "v1.4.0").aborts(AFTER)  # the redeploy runs

    paused = controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, ONCALL, "watching the redeploy")
    control = controls.current(dynamodb, LEASES, "v1.4.0")
    assert control == paused
    assert control.pauses() and not control.aborts(AFTER)  # the redeploy waits...
    assert control.aborts(BEFORE)  # ...and the aborted run stays aborted, with the abort's own who and why
    assert (control.aborted_by, control.aborted_reason, control.aborted_at) == (OPS, "bad migration", ABORT)
    record = controls.recorded(dynamodb, LEASES, "v1.4.0")
    assert record.describe() == (
        f"paused: paused by {ONCALL}: watching the redeploy at {paused.at}; "
        f"earlier aborted by {OPS}: bad migration at {ABORT}, still stopping the runs planned before it"
    )

    resumed = controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.RUNNING, ONCALL, "")
    control = controls.current(dynamodb, LEASES, "v1.4.0")
    assert not control.pauses() and not control.aborts(AFTER) and control.aborts(BEFORE)
    assert controls.recorded(dynamodb, LEASES, "v1.4.0").describe() == (
        f"running: resumed by {ONCALL} at {resumed.at} (after: paused by {ONCALL}: watching the redeploy at {paused.at}); "
        f"earlier aborted by {OPS}: bad migration at {ABORT}, still stopping the runs planned before it"
    )
    assert resumed.describe().startswith(f"resumed by {ONCALL} at {resumed.at} (after the abort, still in force")

    # A second abort replaces the first: it stops every run the first did, and the redeploy planned since.
    controls.set_control(
        dynamodb, LEASES, "v1.4.0", RolloutState.ABORTED, ONCALL, "redeploy bad too", at="2026-12-03T12:00:00.000000+00:00"
    )
    control = controls.current(dynamodb, LEASES, "v1.4.0")
    assert control.aborts(BEFORE) and control.aborts(AFTER)
    assert (control.aborted_by, control.aborted_reason) == (ONCALL, "redeploy bad too")


def test_an_abort_item_written_before_aborts_were_kept_apart_still_stops_the_runs_before_it(dynamodb: Any) -> None:
    dynamodb.put_item(
        TableName=LEASES,
        Item={
            "tenant": {"S": "rollout#v1.4.0"},
            "release": {"S": "v1.4.0"},
            "state": {"S": "aborted"},
            "by": {"S": OPS},
            "reason": {"S": "bad migration"},
            "at": {"S": ABORT},
        },
    )
    control = controls.current(dynamodb, LEASES, "v1.4.0")
    assert control.aborts(BEFORE) and not control.aborts(AFTER)
    paused = controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, ONCALL, "")
    assert paused.aborts(BEFORE) and paused.aborted_reason == "bad migration"


def test_a_resume_of_a_rollout_that_is_not_paused_is_refused(dynamodb: Any) -> None:
    with pytest.raises(ControlRefused, match=r"^the rollout of v1.4.0 is not paused; nothing to resume$"):
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.RUNNING, ONCALL, "")
    controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, OPS, "")
    controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.RUNNING, ONCALL, "")
    with pytest.raises(ControlRefused, match=r"is not paused \(last: resumed by .*bob at .*\); nothing to resume"):
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.RUNNING, ONCALL, "")
    assert controls.current(dynamodb, LEASES, "v1.4.0") is not None


def test_an_abort_needs_a_reason(dynamodb: Any) -> None:
    with pytest.raises(TenantReleaseError, match="the reason is missing; an abort must say why"):
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.ABORTED, OPS, "  ")
    with pytest.raises(TenantReleaseError, match="at most 500 printable characters on one line"):
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, OPS, "two\nlines")
    assert controls.current(dynamodb, LEASES, "v1.4.0") is None


def test_two_operators_at_once_cannot_undo_each_other_unseen(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = controls.recorded(dynamodb, LEASES, "v1.4.0")  # bob read "never controlled"...
    controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.ABORTED, OPS, "bad migration")  # ...alice aborted
    real_recorded, reads = controls.recorded, [stale]
    monkeypatch.setattr(controls, "recorded", lambda *args: reads.pop() if reads else real_recorded(*args))

    with pytest.raises(ControlRefused, match=r"changed while this was recorded .*aborted by .*alice.*nothing was written"):
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, ONCALL, "")
    monkeypatch.undo()
    assert controls.current(dynamodb, LEASES, "v1.4.0").state == RolloutState.ABORTED


def test_a_missing_leases_table_names_the_fix(dynamodb: Any) -> None:
    with pytest.raises(PermanentAwsError, match=r"leases table 'nope' \(which holds rollout controls\) does not exist"):
        controls.current(dynamodb, "nope", "v1.4.0")


# --- deploy slots ------------------------------------------------------------------------------------------------

WAVE = slots.SlotScope(run_id="run-a", wave="canary", scope=slots.WHOLE_WAVE, limit=2)
T0 = 1_000_000.0


def test_scopes_are_taken_narrowest_first_and_keyed_by_run_wave_and_scope() -> None:
    found = slots.scopes_for(run_id="run-a", wave="early", region="eu-west-1", max_parallel=5, max_parallel_per_region=2)
    assert [(s.key, s.limit) for s in found] == [("slots#run-a#early#region:eu-west-1", 2), ("slots#run-a#early#all", 5)]
    assert found[0].describe() == "wave early in eu-west-1: at most 2 at once (max_parallel_per_region)"
    assert slots.scopes_for(run_id="r", wave="w", region="x", max_parallel=None, max_parallel_per_region=None) == []


def test_at_most_limit_tenants_hold_a_slot_and_a_freed_slot_goes_to_the_next(dynamodb: Any) -> None:
    take = dict(seconds=900, now=T0)
    assert slots.acquire(dynamodb, LEASES, WAVE, tenant="acme", **take) is None
    assert slots.acquire(dynamodb, LEASES, WAVE, tenant="globex", **take) is None
    assert slots.acquire(dynamodb, LEASES, WAVE, tenant="acme", **take) is None  # a retry keeps its own slot
    full = slots.acquire(dynamodb, LEASES, WAVE, tenant="initech", **take)
    assert set(full) == {"acme", "globex"}

    other_run = slots.SlotScope(run_id="run-b", wave="canary", scope=slots.WHOLE_WAVE, limit=2)
    assert slots.acquire(dynamodb, LEASES, other_run, tenant="initech", **take) is None  # caps are per run

    assert slots.release(dynamodb, LEASES, WAVE, tenant="acme")
    assert not slots.release(dynamodb, LEASES, WAVE, tenant="acme")  # nothing left to give back
    assert slots.acquire(dynamodb, LEASES, WAVE, tenant="initech", **take) is None
    assert set(slots.holders(dynamodb, LEASES, WAVE, now=T0)) == {"globex", "initech"}


def test_a_holder_that_died_frees_its_slot_when_it_expires_and_cannot_renew_it_after(dynamodb: Any) -> None:
    assert slots.acquire(dynamodb, LEASES, WAVE, tenant="acme", seconds=900, now=T0) is None
    assert slots.acquire(dynamodb, LEASES, WAVE, tenant="globex", seconds=900, now=T0 + 600) is None
    assert slots.renew(dynamodb, LEASES, WAVE, tenant="globex", seconds=900, now=T0 + 800)  # live: pushed out

    assert set(slots.acquire(dynamodb, LEASES, WAVE, tenant="initech", seconds=900, now=T0 + 899)) == {"acme", "globex"}
    assert slots.acquire(dynamodb, LEASES, WAVE, tenant="initech", seconds=900, now=T0 + 901) is None  # acme died

    item = dynamodb.get_item(TableName=LEASES, Key={"tenant": {"S": WAVE.key}})["Item"]
    assert set(item["holders"]["M"]) == {"globex", "initech"}  # the dead holder is gone from the map
    assert not slots.renew(dynamodb, LEASES, WAVE, tenant="acme", seconds=900, now=T0 + 902)
    assert int(item["expires_at"]["N"]) == int(T0 + 901 + 900)  # the TTL tidies the item only after its last holder


def test_a_slot_given_back_is_never_brought_back_by_a_write_read_before(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    wave = slots.SlotScope(run_id="run-a", wave="canary", scope=slots.WHOLE_WAVE, limit=3)
    for tenant in ("acme", "globex"):
        assert slots.acquire(dynamodb, LEASES, wave, tenant=tenant, seconds=900, now=T0) is None
    real_read = slots._read
    before = real_read(dynamodb, LEASES, wave, T0)  # initech's triggerer reads "acme and globex, one slot free"...
    assert slots.release(dynamodb, LEASES, wave, tenant="acme")  # ...then acme's deploy ends
    reads = iter([before])
    monkeypatch.setattr(slots, "_read", lambda *args: next(reads, None) or real_read(*args))

    # Its write of "acme, globex, initech" is refused (the map changed since it read); its next look writes the truth.
    assert slots.acquire(dynamodb, LEASES, wave, tenant="initech", seconds=900, now=T0) is None
    monkeypatch.undo()
    assert set(slots.holders(dynamodb, LEASES, wave, now=T0)) == {"globex", "initech"}


# --- the control's time: AWS's clock, not the CLI host's -----------------------------------------------------------


def _answer(date: str | None) -> dict[str, Any]:
    return {"Arn": OPS, "ResponseMetadata": {"HTTPHeaders": {"date": date} if date else {}}}


def test_a_control_is_stamped_by_aws_clock_and_a_host_clock_far_off_is_named():
    from datetime import UTC, datetime, timedelta

    received = datetime(2026, 12, 3, 9, 58, 0, 250000, tzinfo=UTC)  # this host's clock: two minutes behind AWS
    offset, note = controls.aws_clock_offset(_answer("Thu, 03 Dec 2026 10:00:00 GMT"), received=received)
    assert controls.stamp(received + offset) == "2026-12-03T10:00:00.000000+00:00"
    assert note.startswith("this host's clock is 120 s behind AWS's; the control is stamped with AWS's time")

    ahead = datetime(2026, 12, 3, 10, 0, 30, tzinfo=UTC)  # 30 s ahead: AWS's time is used, silently
    offset, note = controls.aws_clock_offset(_answer("Thu, 03 Dec 2026 10:00:00 GMT"), received=ahead)
    assert (offset, note) == (timedelta(seconds=-30), None)

    # Under a second is below the header's precision: the host's clock (and its sub-second order) is kept.
    close = datetime(2026, 12, 3, 10, 0, 0, 700000, tzinfo=UTC)
    assert controls.aws_clock_offset(_answer("Thu, 03 Dec 2026 10:00:00 GMT"), received=close) == (timedelta(0), None)

    for header in (None, "yesterday"):  # no usable header: the host's clock, and the operator is told
        offset, note = controls.aws_clock_offset(_answer(header), received=close)
        assert offset == timedelta(0) and "no usable Date header" in note and "stamped with this host's clock" in note
