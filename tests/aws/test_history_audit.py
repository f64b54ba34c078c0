"""The history as an audit trail, on moto: the latest result per tenant and release is never replaced by an older
write (an older run's summary, a retried or cleared summary, a lost worker's late write), every written outcome is
kept in the attempts table, and an interrupted release that is resumed ends with a complete and correct history.

No scheduler: the summary's logic (`steps.summarize`, the airflow glue) is called as the `summary` task calls it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException
from tenant_release.airflow import steps
from tenant_release.aws import ledger
from tenant_release.cli import main as cli_main
from tenant_release.errors import PermanentAwsError
from tenant_release.models import Outcome, RunPlan, TenantResult, ToolingAccount

from tests.conftest import bootstrap, emulated_aws

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet.yaml"
HISTORY = "tenant-release-history"
ATTEMPTS = "tenant-release-attempts"
ACCOUNTS = {"acme": "111111111111", "globex": "222222222222", "umbrella": "044444444444"}
PROD = ("acme", "globex", "umbrella")
T0 = datetime.now(UTC) - timedelta(hours=3)  # the summary stamps its writes with the real clock
GATE = {"gated": True, "approved_by": "alice", "source": "ui"}
ARTIFACT = {"sha256": "ab" * 32}
DEV = {"status": "SUCCEEDED"}


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="microseconds")


def now() -> float:
    """Minutes since T0: an attempt that starts now, after the summary that ran before it."""
    return (datetime.now(UTC) - T0).total_seconds() / 60


@pytest.fixture(scope="module")
def tooling() -> Iterator[Any]:
    """The tooling account as bootstrap leaves it (its history and attempts tables come from tooling.yaml)."""
    with pytest.MonkeyPatch.context() as env, emulated_aws(env):
        env.setenv("TENANT_RELEASE_CONFIG", str(FLEET))
        bootstrap(FLEET)
        yield boto3.client("dynamodb", region_name="us-east-1")


@pytest.fixture
def dynamodb(tooling: Any) -> Iterator[Any]:
    yield tooling
    for table, keys in ((HISTORY, ("tenant", "release")), (ATTEMPTS, ("tenant", "recorded"))):
        for page in tooling.get_paginator("scan").paginate(TableName=table):
            for item in page["Items"]:
                tooling.delete_item(TableName=table, Key={k: item[k] for k in keys})


def outcome(
    tenant: str, run_id: str, status: Outcome, *, run_started: float, attempt: float, by: str = "deploy", **fields: Any
) -> TenantResult:
    """A tenant's outcome as a writer of run `run_id` (planned at minute `run_started`) records it."""
    return TenantResult(
        tenant=tenant,
        account_id=ACCOUNTS.get(tenant, "555555555555"),
        region="us-east-1",
        release="v1.4.0",
        version="1.4.0",
        status=status,
        run_id=run_id,
        started_at=at(attempt),
        finished_at=at(attempt + 1),
        run_started_at=at(run_started),
        attempt_started_at=at(attempt),
        written_by=by,
        **fields,
    )


def write(dynamodb: Any, result: TenantResult, **kwargs: Any) -> bool:
    return ledger.record(dynamodb, HISTORY, result, attempts_table=ATTEMPTS, **kwargs)


def latest(dynamodb: Any, tenant: str) -> TenantResult | None:
    return ledger.get(dynamodb, HISTORY, tenant=tenant, release="v1.4.0")


def trail(dynamodb: Any, tenant: str) -> list[tuple[str, str, str | None]]:
    return [(r.run_id, r.status.value, r.written_by) for r in ledger.attempts(dynamodb, ATTEMPTS, tenant=tenant)]


TOOLING = ToolingAccount(account_id="123456789012", artifact_bucket="tr-test-artifacts")  # as fleet.yaml says


def plan(
    *, run_started: float, config_path: Path = FLEET, tenants: tuple[str, ...] = PROD, tooling: ToolingAccount | None = TOOLING
) -> dict[str, Any]:
    return RunPlan(
        release_tag="v1.4.0",
        version="1.4.0",
        group="prod",
        gated=True,
        config_path=str(config_path),
        tenants=tenants,
        planned_at=at(run_started),
        triggered_by="alice",
        tooling=tooling,
    ).model_dump(mode="json")


# --- the seen bug -------------------------------------------------------------------------------------------


def test_an_older_runs_late_summary_does_not_overwrite_a_newer_runs_succeeded_items(dynamodb) -> None:
    # Run A (planned at minute 0) failed acme; run B (planned at minute 10) then shipped every prod tenant.
    write(dynamodb, outcome("acme", "run-a", Outcome.FAILED, run_started=0, attempt=1, reason="AccessDenied"))
    for tenant in PROD:
        assert write(dynamodb, outcome(tenant, "run-b", Outcome.SUCCEEDED, run_started=10, attempt=11))

    # Run A's summary runs only now (it was cleared, or its worker was slow).
    with pytest.raises(AirflowFailException, match="3 of 3 tenant"):
        steps.summarize(plan(run_started=0), ARTIFACT, DEV, GATE, "run-a", try_number=2)

    for tenant in PROD:  # run B's outcome stays the latest
        assert (latest(dynamodb, tenant).run_id, latest(dynamodb, tenant).status) == ("run-b", Outcome.SUCCEEDED)
    # Run A's summary is kept as an attempt, not lost; its acme row is run A's own outcome (from the attempts).
    assert trail(dynamodb, "acme") == [
        ("run-a", "FAILED", "deploy"),
        ("run-b", "SUCCEEDED", "deploy"),
        ("run-a", "FAILED", "summary"),
    ]
    (summary_attempt,) = [r for r in ledger.attempts(dynamodb, ATTEMPTS, tenant="acme") if r.written_by == "summary"]
    assert summary_attempt.reason == "AccessDenied"
    assert summary_attempt.try_number == 2
    assert summary_attempt.identity == "session tr-v1.4.0-run-a, triggered by alice"


# --- the ledger's order ---------------------------------------------------------------------------------------

# (write, becomes the latest?) in the order the writes arrive; run A planned at minute 0, run B at minute 10.
ARRIVALS = [
    ("A try 1 starts", outcome("acme", "A", Outcome.IN_PROGRESS, run_started=0, attempt=1), True),
    ("A try 1 succeeds", outcome("acme", "A", Outcome.SUCCEEDED, run_started=0, attempt=1), True),
    (
        "A try 1's IN_PROGRESS again (a lost worker's late write)",
        outcome("acme", "A", Outcome.IN_PROGRESS, run_started=0, attempt=1),
        False,
    ),
    ("an earlier attempt of A, late", outcome("acme", "A", Outcome.FAILED, run_started=0, attempt=0.5), False),
    ("A cleared: try 2 starts", outcome("acme", "A", Outcome.IN_PROGRESS, run_started=0, attempt=5), True),
    ("A try 2 fails", outcome("acme", "A", Outcome.FAILED, run_started=0, attempt=5), True),
    ("run B succeeds", outcome("acme", "B", Outcome.SUCCEEDED, run_started=10, attempt=11), True),
    ("A cleared again, after B: try 3", outcome("acme", "A", Outcome.SUCCEEDED, run_started=0, attempt=30), False),
    ("an older run's summary", outcome("acme", "Z", Outcome.FAILED, run_started=-60, attempt=40, by="summary"), False),
]


def test_only_newer_writes_become_the_latest_result_and_every_write_is_an_attempt(dynamodb) -> None:
    for what, result, becomes_latest in ARRIVALS:
        assert write(dynamodb, result) is becomes_latest, what

    assert (latest(dynamodb, "acme").run_id, latest(dynamodb, "acme").status) == ("B", Outcome.SUCCEEDED)
    listed = dynamodb.query(
        TableName=ATTEMPTS, KeyConditionExpression="tenant = :t", ExpressionAttributeValues={":t": {"S": "acme"}}
    )["Items"]
    assert [item["latest"]["BOOL"] for item in listed] == [latest for _, _, latest in ARRIVALS]
    assert [(r.run_id, r.status) for r in ledger.attempts(dynamodb, ATTEMPTS, tenant="acme")] == [
        (r.run_id, r.status) for _, r, _ in ARRIVALS
    ]
    assert ledger.attempts(dynamodb, ATTEMPTS, tenant="acme", release="v9.9.9") == []


def test_a_tooling_stack_without_the_attempts_table_is_an_error_that_names_the_fix(dynamodb) -> None:
    result = outcome("acme", "A", Outcome.SUCCEEDED, run_started=0, attempt=1)
    with pytest.raises(PermanentAwsError, match=r"attempts table tenant-release-gone does not exist.*tenant-release bootstrap"):
        ledger.record(dynamodb, HISTORY, result, attempts_table="tenant-release-gone")


def test_an_item_written_before_ordered_writes_existed_is_replaced(dynamodb) -> None:
    legacy = outcome("acme", "old", Outcome.FAILED, run_started=0, attempt=0)
    item = {k: {"S": str(v)} for k, v in legacy.model_dump(mode="json").items() if isinstance(v, str)}
    dynamodb.put_item(TableName=HISTORY, Item=item)  # no write order: written by an earlier version

    assert write(dynamodb, outcome("acme", "new", Outcome.SUCCEEDED, run_started=-5, attempt=1))
    assert latest(dynamodb, "acme").run_id == "new"


def test_a_read_modify_write_is_refused_when_the_item_changed_since_it_was_read(dynamodb) -> None:
    read = outcome("acme", "A", Outcome.FAILED, run_started=0, attempt=1, by="summary")
    write(dynamodb, read)
    finished = outcome("acme", "A", Outcome.SUCCEEDED, run_started=0, attempt=1)  # the same attempt's real end
    assert write(dynamodb, finished)

    annotated = read.model_copy(update={"approved_by": "alice"})
    assert not write(dynamodb, annotated, expected=read)
    assert latest(dynamodb, "acme").status == Outcome.SUCCEEDED
    assert write(dynamodb, finished.model_copy(update={"approved_by": "alice"}), expected=finished)
    assert latest(dynamodb, "acme").approved_by == "alice"


def test_many_results_are_written_conditionally_and_the_refused_ones_named(dynamodb) -> None:
    tenants = [f"t{n:03d}" for n in range(200)]
    newer = [outcome(t, "B", Outcome.SUCCEEDED, run_started=10, attempt=11) for t in tenants[::2]]
    assert ledger.record_many(dynamodb, HISTORY, newer, attempts_table=ATTEMPTS) == []

    older = [outcome(t, "A", Outcome.FAILED, run_started=0, attempt=20, by="summary") for t in tenants]
    refused = ledger.record_many(dynamodb, HISTORY, older, attempts_table=ATTEMPTS)

    assert refused == tenants[::2]
    found = ledger.get_many(dynamodb, HISTORY, tenants=tenants, release="v1.4.0")
    assert {t for t, r in found.items() if r.run_id == "B"} == set(tenants[::2])
    assert {t for t, r in found.items() if r.run_id == "A"} == set(tenants[1::2])
    assert trail(dynamodb, "t000") == [("B", "SUCCEEDED", "deploy"), ("A", "FAILED", "summary")]


# --- interrupted and resumed ----------------------------------------------------------------------------------


def test_a_release_interrupted_half_way_and_resumed_ends_with_a_complete_and_correct_history(dynamodb) -> None:
    run = plan(run_started=0)
    write(dynamodb, outcome("acme", "R", Outcome.SUCCEEDED, run_started=0, attempt=1))
    write(dynamodb, outcome("globex", "R", Outcome.IN_PROGRESS, run_started=0, attempt=1))  # still deploying
    # umbrella's task never started (its worker was lost before it wrote anything).

    with pytest.raises(AirflowFailException, match=r"2 of 3 tenant.*globex, umbrella"):
        steps.summarize(run, ARTIFACT, DEV, GATE, "R", try_number=1)
    assert latest(dynamodb, "globex").status == Outcome.FAILED
    assert "without reporting" in latest(dynamodb, "globex").reason

    # globex's deploy finishes after all; umbrella's task is cleared and re-runs.
    assert write(dynamodb, outcome("globex", "R", Outcome.SUCCEEDED, run_started=0, attempt=1))
    cleared = now()
    assert write(dynamodb, outcome("umbrella", "R", Outcome.IN_PROGRESS, run_started=0, attempt=cleared))
    assert write(dynamodb, outcome("umbrella", "R", Outcome.SUCCEEDED, run_started=0, attempt=cleared))
    # A write of globex's try from before the summary, arriving now, changes nothing.
    assert not write(dynamodb, outcome("globex", "R", Outcome.IN_PROGRESS, run_started=0, attempt=1))

    summary = steps.summarize(run, ARTIFACT, DEV, GATE, "R", try_number=2)  # the summary is cleared and re-runs

    assert summary["tenants"] == {"acme": "SUCCEEDED", "globex": "SUCCEEDED", "umbrella": "SUCCEEDED"}
    for tenant in PROD:
        result = latest(dynamodb, tenant)
        assert (result.run_id, result.status, result.approved_by) == ("R", Outcome.SUCCEEDED, "alice (ui, release gate)")
    assert trail(dynamodb, "globex") == [
        ("R", "IN_PROGRESS", "deploy"),
        ("R", "FAILED", "summary"),
        ("R", "SUCCEEDED", "deploy"),
        ("R", "IN_PROGRESS", "deploy"),  # the late write: kept as an attempt, not as the result
        ("R", "SUCCEEDED", "summary"),
    ]
    assert trail(dynamodb, "umbrella") == [
        ("R", "FAILED", "summary"),
        ("R", "IN_PROGRESS", "deploy"),
        ("R", "SUCCEEDED", "deploy"),
        ("R", "SUCCEEDED", "summary"),
    ]

    steps.summarize(run, ARTIFACT, DEV, GATE, "R", try_number=3)  # again: nothing left to add
    assert len(trail(dynamodb, "globex")) == 5


def test_a_tenant_removed_from_the_fleet_file_mid_run_is_reported_from_the_history(dynamodb, tmp_path) -> None:
    fleet = yaml.safe_load(FLEET.read_text())
    fleet["tenants"] = [t for t in fleet["tenants"] if t["name"] not in {"globex", "umbrella"}]
    edited = tmp_path / "tenants.yaml"
    edited.write_text(yaml.safe_dump(fleet))
    write(dynamodb, outcome("acme", "R", Outcome.SUCCEEDED, run_started=0, attempt=1))
    write(dynamodb, outcome("globex", "R", Outcome.SUCCEEDED, run_started=0, attempt=1))
    write(dynamodb, outcome("umbrella", "Q", Outcome.SUCCEEDED, run_started=-60, attempt=-59))  # an earlier run

    summary = steps.summarize(plan(run_started=0, config_path=edited), ARTIFACT, DEV, GATE, "R", try_number=1)

    assert summary["tenants"] == {"acme": "SUCCEEDED", "globex": "SUCCEEDED", "umbrella": "SKIPPED"}
    removed = f"removed from the fleet file {edited} after this run was planned"
    assert removed in latest(dynamodb, "globex").note
    umbrella = latest(dynamodb, "umbrella")
    assert umbrella.run_id == "R" and umbrella.account_id == ACCOUNTS["umbrella"]  # what the history knew
    assert umbrella.reason == "not deployed: removed from the fleet file after this run was planned"
    assert removed not in (latest(dynamodb, "acme").note or "")


def test_history_attempts_command_lists_a_tenants_attempts_in_order(dynamodb, capsys) -> None:
    for _, result, _ in ARRIVALS[:2]:
        write(dynamodb, result)
    write(dynamodb, outcome("acme", "C", Outcome.SUCCEEDED, run_started=20, attempt=21).model_copy(update={"release": "v1.5.0"}))

    assert cli_main(["history", "acme", "--attempts", "--release", "v1.4.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["finished", "release", "status", "run", "try", "written", "by", "reason"]
    assert [line.split()[2] for line in lines[1:]] == ["IN_PROGRESS", "SUCCEEDED"]

    assert cli_main(["history", "acme", "--attempts"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["v1.4.0", "v1.4.0", "v1.5.0"]
    assert cli_main(["history", "initech", "--attempts"]) == 1
    assert "no attempts recorded for tenant initech" in capsys.readouterr().out


# --- overlapping runs of one release: a busy refusal is an attempt only, in the summary too ------------------


@pytest.mark.parametrize("holder_wrote_its_item", [True, False], ids=["holder-in-progress", "holder-wrote-nothing-yet"])
def test_a_busy_refusal_stays_an_attempt_only_through_the_gated_summary_and_is_not_a_lost_worker(
    dynamodb, holder_wrote_its_item: bool
) -> None:
    # Run A (planned at minute 0) holds acme's lease; run B (minute 10) of the same release was refused on acme.
    if holder_wrote_its_item:
        assert write(dynamodb, outcome("acme", "A", Outcome.IN_PROGRESS, run_started=0, attempt=1))
    busy = "tenant acme is being deployed by run A (v1.4.0) since 2026-12-03T09:00:00+00:00; this run waited 60 min"
    assert not write(dynamodb, outcome("acme", "B", Outcome.FAILED, run_started=10, attempt=11, reason=busy), attempt_only=True)
    for tenant in ("globex", "umbrella"):
        assert write(dynamodb, outcome(tenant, "B", Outcome.SUCCEEDED, run_started=10, attempt=11))

    with pytest.raises(AirflowFailException, match=r"1 of 3 tenant\(s\) failed: acme\."):
        steps.summarize(plan(run_started=10), ARTIFACT, DEV, GATE, "B", try_number=1)  # gated: it annotates

    held = latest(dynamodb, "acme")  # still run A's, or nothing yet
    assert (held and (held.run_id, held.status)) == (("A", Outcome.IN_PROGRESS) if holder_wrote_its_item else None)
    (summarized,) = [a for a in ledger.attempt_items(dynamodb, ATTEMPTS, tenant="acme") if a.result.written_by == "summary"]
    assert summarized.result.reason == busy  # B's own outcome, not "worker lost?"
    assert summarized.result.approved_by == "alice (ui, release gate)"
    assert summarized.attempt_only and not summarized.latest
    # Run A's deploy ends: its outcome becomes the latest, not refused as older than B's refusal.
    assert write(dynamodb, outcome("acme", "A", Outcome.SUCCEEDED, run_started=0, attempt=1))
    assert (latest(dynamodb, "acme").run_id, latest(dynamodb, "acme").status) == ("A", Outcome.SUCCEEDED)
    assert latest(dynamodb, "globex").approved_by == "alice (ui, release gate)"


# --- a fleet file that breaks mid-run ---------------------------------------------------------------------------


def test_a_fleet_file_that_became_invalid_mid_run_does_not_crash_the_summary(dynamodb, tmp_path, caplog) -> None:
    broken = tmp_path / "tenants.yaml"
    broken.write_text(FLEET.read_text() + "tenants: [\n")  # someone is editing it: not YAML any more
    write(dynamodb, outcome("acme", "R", Outcome.SUCCEEDED, run_started=0, attempt=1))
    write(dynamodb, outcome("globex", "R", Outcome.FAILED, run_started=0, attempt=1, reason="AccessDenied"))
    # umbrella's task never reported.

    with pytest.raises(AirflowFailException, match=r"2 of 3 tenant\(s\) failed: globex, umbrella\."):
        steps.summarize(plan(run_started=0, config_path=broken), ARTIFACT, DEV, GATE, "R", try_number=1)

    assert f"the fleet file {broken} is invalid now" in caplog.text
    assert "reporting the plan's 3 tenant(s) from what the history knows" in caplog.text
    assert (latest(dynamodb, "acme").status, latest(dynamodb, "acme").approved_by) == (
        Outcome.SUCCEEDED,
        "alice (ui, release gate)",
    )
    assert latest(dynamodb, "globex").reason == "AccessDenied"
    umbrella = latest(dynamodb, "umbrella")
    assert (umbrella.run_id, umbrella.status) == ("R", Outcome.FAILED)
    assert "without reporting a result" in umbrella.reason and "removed" not in umbrella.reason

    # A plan made before plans carried the tooling account: one clear line, no traceback.
    with pytest.raises(AirflowFailException, match=r"fleet file .* is invalid now, so the summary cannot find the history"):
        steps.summarize(plan(run_started=0, config_path=broken, tooling=None), ARTIFACT, DEV, GATE, "R", try_number=2)
