"""Approval records against moto: the words people write, records that cannot be read, and approvals bound to one artifact."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from tenant_release.aws.approvals import RELEASE_WIDE, approval_key, find_decision, put_decision

TABLE = "tenant-release-approvals"
BUCKET = "tr-test-artifacts"
BUILT = "d" * 64  # the artifact this run built
OTHER = "a" * 64  # an earlier build of the same tag


@pytest.fixture
def records(moto: None):
    """The approvals table and bucket, keyed as include/templates/tooling.yaml declares them."""
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("tenant", "release")],
        KeySchema=[{"AttributeName": "tenant", "KeyType": "HASH"}, {"AttributeName": "release", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    return dynamodb, s3


def put_s3(s3, body: object, *, tenant: str = "acme", release: str = "v1.4.0") -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    s3.put_object(Bucket=BUCKET, Key=approval_key(tenant=tenant, release=release), Body=data)


def lookup(records, *, tenant: str = "acme", release: str = "v1.4.0", sha256: str | None = BUILT):
    dynamodb, s3 = records
    return find_decision(dynamodb, s3, table=TABLE, bucket=BUCKET, tenant=tenant, release=release, sha256=sha256)


@pytest.mark.parametrize(
    "word",
    ["reject", "Rejected", "DENY", "denied", "decline", "declined", "refuse", "refused", "no", "Nope", "veto",
     "vetoed", "block", "blocked", "stop", "cancel", "cancelled", "canceled", " Not  Approved ", "not_approved",
     "false", "0", "disapprove", "disapproved", "NACK", False, 0],
)  # fmt: skip
def test_every_word_a_person_uses_to_say_no_is_a_rejection_whatever_artifact_it_names(records, word):
    put_s3(records[1], {"decision": word, "decided_by": "ciso"})  # no sha256: anyone may say no to any build
    found = lookup(records)
    assert found.decision is not None and found.decision.approved is False, found
    assert found.decision.describe() == "rejected by ciso via s3"


@pytest.mark.parametrize("word", ["approve", "Approved", "YES", "ok", "LGTM", "accept", "accepted", "true", "1", "go", True, 1])
def test_approval_words_approve_the_artifact_they_name(records, word):
    put_s3(records[1], {"decision": word, "decided_by": "ticket-4711", "sha256": BUILT.upper()})
    found = lookup(records)
    assert found.decision is not None and found.decision.approved, found
    assert (found.decision.decided_by, found.decision.sha256, found.problems) == ("ticket-4711", BUILT, ())


def test_an_approval_of_another_artifact_does_not_pass_and_says_how_to_approve_this_one(records):
    dynamodb, _ = records
    put_decision(dynamodb, TABLE, tenant=RELEASE_WIDE, release="v1.4.0", approved=True, decided_by="alice", sha256=OTHER)
    found = lookup(records, tenant=RELEASE_WIDE)
    assert found.decision is None
    assert found.problems == (
        f"approval for v1.4.0 by alice via dynamodb approved artifact {OTHER[:12]}…, this run built {BUILT[:12]}…; "
        f"approve again: tenant-release approve v1.4.0 --sha256 {BUILT}",
    )
    # The same approver approves this build: it passes.
    put_decision(dynamodb, TABLE, tenant=RELEASE_WIDE, release="v1.4.0", approved=True, decided_by="alice", sha256=BUILT)
    assert lookup(records, tenant=RELEASE_WIDE).decision.approved


def test_an_approval_that_names_no_artifact_does_not_pass(records):
    put_s3(records[1], {"decision": "approve", "decided_by": "ticket-4711"})
    found = lookup(records)
    assert found.decision is None
    (problem,) = found.problems
    assert "approval for v1.4.0 by ticket-4711 via s3 names no artifact sha256" in problem
    assert f"tenant-release approve v1.4.0 --sha256 {BUILT} --tenant acme" in problem


def test_a_rejection_wins_over_an_approval_of_the_right_artifact(records):
    dynamodb, s3 = records
    put_decision(dynamodb, TABLE, tenant="acme", release="v1.4.0", approved=True, decided_by="ops", sha256=BUILT)
    put_s3(s3, {"decision": "vetoed", "decided_by": "customer", "sha256": OTHER})
    assert lookup(records).decision.describe() == "rejected by customer via s3"


LOCATION = f"approval record s3://{BUCKET}/approvals/v1.4.0/acme.json"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"approve", 'is not JSON (b\'approve\'); write {"decision": "approve" or "reject"'),
        (["approve"], 'is a JSON list, not an object; write {"decision"'),
        ({"decision": "maybe", "decided_by": "bob"}, "says decision 'maybe', which is neither an approval nor a rejection"),
        ({"decision": "approve", "sha256": BUILT}, "names no `decided_by`: say who decides"),
        ({"decided_by": "bob", "sha256": BUILT}, "has no `decision`"),
    ],
    ids=["not-json", "not-an-object", "unknown-word", "no-decided-by", "no-decision"],
)
def test_a_malformed_record_is_a_clear_problem_and_holds_back_approvals_elsewhere(records, body, says):
    dynamodb, s3 = records
    put_decision(dynamodb, TABLE, tenant="acme", release="v1.4.0", approved=True, decided_by="ops", sha256=BUILT)
    put_s3(s3, body)
    found = lookup(records)
    # It might be a rejection written wrongly: the request stays open until it is fixed.
    assert found.decision is None
    (problem,) = found.problems
    assert problem.startswith(f"{LOCATION} ") and says in problem and problem.endswith("the request stays open")


def test_a_malformed_item_names_its_table_and_key(records):
    dynamodb, _ = records
    dynamodb.put_item(
        TableName=TABLE,
        Item={"tenant": {"S": "*"}, "release": {"S": "v1.4.0"}, "decision": {"S": "perhaps"}, "decided_by": {"S": "x"}},
    )
    (problem,) = lookup(records, tenant=RELEASE_WIDE).problems
    assert problem.startswith(f"approval record tenant='*' release='v1.4.0' in DynamoDB table {TABLE} says decision 'perhaps'")


def test_the_waiting_trigger_logs_a_record_it_does_not_accept_once_and_keeps_waiting(bootstrapped, capsys):
    from tenant_release.airflow.triggers import ApprovalRecordTrigger

    put_decision(
        boto3.client("dynamodb", region_name="us-east-1"),
        TABLE,
        tenant="acme",
        release="v1.4.0",
        approved=True,
        decided_by="alice",
        sha256=OTHER,
    )
    trigger = ApprovalRecordTrigger(
        tenant="acme",
        release_tag="v1.4.0",
        sha256=BUILT,
        config_path=None,
        ti_id=None,
        deadline=(datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
        poll_interval=0.05,
    )

    async def first_event():
        async for event in trigger.run():
            return event.payload

    looks: list[int] = []
    read = trigger._lookup
    trigger._lookup = lambda: looks.append(1) or read()  # count the polls, read the real records
    capsys.readouterr()
    payload = asyncio.run(first_event())
    assert len(looks) > 1  # it looked again and again
    # It never accepted the approval of the other build: it waited until its deadline (a rejection by timeout).
    assert payload["approval"]["source"] == "timeout" and payload["approval"]["approved"] is False
    # The trigger's log (Airflow's structlog, here on stdout) says why, once, however often it looked.
    errors = [line for line in capsys.readouterr().out.splitlines() if "[error" in line]
    assert len(errors) == 1, errors
    assert (
        f"approval record not accepted: approval for v1.4.0 by alice via dynamodb approved artifact {OTHER[:12]}…, "
        f"this run built {BUILT[:12]}…; approve again: tenant-release approve v1.4.0 --sha256 {BUILT} --tenant acme"
    ) in errors[0]


def test_a_retry_of_the_same_run_reuses_an_airflow_approval_of_the_same_build_and_nothing_else(bootstrapped):
    from tenant_release.airflow import runtime
    from tenant_release.airflow.deploy_operator import TenantDeployOperator
    from tenant_release.deploy import utc_now
    from tenant_release.models import ApprovalDecision, DeployProgress, Outcome

    loaded = bootstrapped
    digest = runtime.target_digest(loaded.target("acme"), loaded.fleet.application)
    artifact = {"version": "1.4.0", "sha256": BUILT, "bucket": BUCKET, "template_key": "k", "objects": [], "source": "x"}

    def deployment(run_id: str, sha256: str):
        return runtime.planned_deployment(
            tenant="acme",
            digest=digest,
            config_path=str(loaded.path),
            release_tag="v1.4.0",
            run_id=run_id,
            artifact={**artifact, "sha256": sha256},
            record_history=True,
        )

    # Attempt 1 of run-1: acme's own approval answered in Airflow, kept in its history item (not the approvals table).
    answer = ApprovalDecision(approved=True, decided_by="ana", source="ui", sha256=BUILT, identity="airflow user 3 (ana)")
    first = deployment("run-1", BUILT)
    first.record(first.result(DeployProgress(started_at=utc_now(), approval=answer), status=Outcome.IN_PROGRESS))

    operator = TenantDeployOperator(
        task_id="deploy", tenant="acme", target_digest=digest, release_tag="v1.4.0", artifact=artifact
    )
    assert operator._earlier_approval(deployment("run-1", BUILT)) == answer  # a retry is not asked again
    assert operator._earlier_approval(deployment("run-2", BUILT)) is None  # another run is
    assert operator._earlier_approval(deployment("run-1", OTHER)) is None  # another build is
    # Nothing was written where approval records live: the orchestrator cannot write there.
    assert boto3.client("dynamodb", region_name="us-east-1").scan(TableName=TABLE)["Items"] == []
