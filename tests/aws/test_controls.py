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


def test_a_resume_after_an_abort_is_refused_and_says_how_to_ship_the_tag_again(dynamodb: Any) -> None:
    aborted = controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.ABORTED, OPS, "bad migration")

    with pytest.raises(ControlRefused) as refused:
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.RUNNING, ONCALL, "")
    message = str(refused.value)
    assert message.startswith(f"the rollout of v1.4.0 was aborted by {OPS}: bad migration at ")
    assert "an abort is final for the runs it stopped, so it cannot be resumed" in message
    assert "tenant-release redeploy v1.4.0 --failed" in message
    with pytest.raises(ControlRefused, match="it is stopped for good, a pause would change nothing"):
        controls.set_control(dynamodb, LEASES, "v1.4.0", RolloutState.PAUSED, ONCALL, "")
    assert controls.current(dynamodb, LEASES, "v1.4.0") == aborted  # nothing written


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
