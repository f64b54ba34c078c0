"""Approval gates, per-tenant sign-off, maintenance windows and freezes, run through dag.test() against moto."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from tenant_release.airflow import runtime
from tenant_release.aws.approvals import approval_key

from tests.conftest import bootstrap, use_fleet
from tests.dags.test_release_dag import approve, built_sha256, deployed_version, history, task_states


@pytest.fixture
def gated(moto: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap(use_fleet("fleet_gates.yaml", tmp_path, monkeypatch))


@pytest.fixture
def release_dag(airflow_db: None):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "release.py"))
    return bag.dags["tenant_release"]


@pytest.fixture
def clock() -> Iterator[Callable[[datetime, timedelta], None]]:
    """A controllable clock: starts where the test says and moves by `step` each time it is read."""
    previous = runtime.use_clock(lambda: datetime.now(UTC))

    def set_clock(start: datetime, step: timedelta = timedelta(0)) -> None:
        moments = {"now": start}

        def now() -> datetime:
            current = moments["now"]
            moments["now"] = current + step
            return current

        runtime.use_clock(now)

    yield set_clock
    runtime.use_clock(previous)


def conf(tag: str, **extra: object) -> dict:
    return {"release_tag": tag, "tenants": [], "override_freeze": "", **extra}


def test_gate_approved_ships_and_the_summary_says_who_approved(gated, release_dag, clock):
    from tenant_release.aws.approvals import put_decision

    clock(datetime(2027, 3, 2, 12, tzinfo=UTC))
    sha256 = built_sha256("v2.0.0")
    approver = "arn:aws:sts::123456789012:assumed-role/tenant-release-approver/ana"
    put_decision(
        boto3.client("dynamodb", region_name="us-east-1"),
        "tenant-release-approvals",
        tenant="*",
        release="v2.0.0",
        approved=True,
        decided_by="release-manager",
        sha256=sha256,
        identity=approver,
    )
    run = release_dag.test(run_conf=conf("v2.0.0"))
    assert str(run.state) == "success"
    assert deployed_version("111111111111", "us-east-1", "acme") == "2.0.0"
    record = history()[("acme", "v2.0.0")]
    assert record.gated and record.approved_by == "release-manager (dynamodb, release gate)"
    # The audit trail names the authenticated approver and the artifact approved, not only the free text.
    assert (record.approval.identity, record.approval.sha256, record.approval.release_gate) == (approver, sha256, True)
    assert record.sha256 == sha256


PROD = {
    "acme": ("111111111111", "eu-central-1"),
    "globex": ("222222222222", "us-east-1"),
    "umbrella": ("044444444444", "us-east-1"),
}


@pytest.mark.parametrize(
    ("gate_result", "returned"),
    [
        (None, "approve_release returned nothing: was it marked success without an answer?"),
        (
            {"gated": True, "approved_by": "release-manager", "source": "ui", "note": "", "identity": None, "sha256": "0" * 64},
            f"approve_release returned an approval of artifact {'0' * 64} by release-manager",
        ),
    ],
    ids=["gate-marked-success", "gate-approved-another-build"],
)
def test_a_gated_run_deploys_no_tenant_whose_artifact_its_gate_did_not_approve(
    canary_fleet, release_dag, monkeypatch, gate_result, returned
):
    # What the gate task leaves when someone marks it success in the UI (no result), or when the build was cleared
    # and run again after the gate approved the earlier build (an approval of another sha256).
    from tenant_release.airflow.gate import ReleaseGateOperator

    monkeypatch.setattr(ReleaseGateOperator, "execute", lambda self, context: gate_result)
    run = release_dag.test(run_conf=conf("v1.4.0"))

    assert str(run.state) == "failed"
    sha256 = built_sha256("v1.4.0")
    states, records = task_states(run), history()
    for tenant, (account, region) in PROD.items():
        assert states[("wave_1.deploy", tenant)] == "failed"
        assert deployed_version(account, region, tenant) is None
        record = records[(tenant, "v1.4.0")]
        assert record.status.value == "FAILED"
        assert record.reason == (
            f"the release gate of this run has no approval of artifact {sha256} ({returned}); "
            "approve the release (clear approve_release and answer it), then clear the failed tenants"
        )


def test_gate_rejected_touches_no_tenant_and_names_who_rejected(gated, release_dag, clock):
    clock(datetime(2027, 3, 2, 12, tzinfo=UTC))
    approve("v2.0.0", approved=False, by="cto")
    run = release_dag.test(run_conf=conf("v2.0.0"))
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states[("approve_release", -1)] == "failed"
    assert deployed_version("123456789012", "us-east-1", "dev") == "2.0.0"  # dev ran before the gate
    assert deployed_version("111111111111", "us-east-1", "acme") is None
    record = history()[("acme", "v2.0.0")]
    assert record.status.value == "SKIPPED"
    assert "release gate was rejected" in record.reason


def test_per_tenant_approval_by_record_rejection_and_timeout(gated, release_dag, clock):
    clock(datetime(2027, 3, 2, 12, tzinfo=UTC))
    # wayne: approved by an external system writing an S3 object; bruce: rejected in DynamoDB;
    # lois: only an approval of another build of the tag (times out); clark: needs no approval.
    sha256 = built_sha256("v-2.0.0-regulated")
    boto3.client("s3", region_name="us-east-1").put_object(
        Bucket="tr-test-artifacts",
        Key=approval_key(tenant="wayne", release="v-2.0.0-regulated"),
        Body=json.dumps({"decision": "Approved", "decided_by": "ticket-4711", "sha256": sha256}).encode(),
    )
    approve("v-2.0.0-regulated", "bruce", approved=False, by="bruce-ciso")
    approve("v-2.0.0-regulated", "lois", by="lois-ops", sha256="0" * 64)
    run = release_dag.test(run_conf=conf("v-2.0.0-regulated"))

    assert str(run.state) == "success"  # skipped tenants are not failures
    records = history()
    assert records[("wayne", "v-2.0.0-regulated")].status.value == "SUCCEEDED"
    assert records[("wayne", "v-2.0.0-regulated")].approved_by == "ticket-4711 (s3)"
    assert records[("wayne", "v-2.0.0-regulated")].approval.sha256 == sha256  # the history keeps what was approved
    assert deployed_version("222222222222", "us-east-1", "wayne") == "2.0.0"

    bruce = records[("bruce", "v-2.0.0-regulated")]
    assert bruce.status.value == "SKIPPED" and bruce.reason == "rejected by bruce-ciso via dynamodb"
    assert deployed_version("333333333333", "us-east-1", "bruce") is None

    lois = records[("lois", "v-2.0.0-regulated")]
    assert lois.status.value == "SKIPPED" and lois.reason.startswith("approval timed out")
    assert deployed_version("555555555555", "us-east-1", "lois") is None

    assert records[("clark", "v-2.0.0-regulated")].status.value == "SUCCEEDED"
    assert deployed_version("444444444444", "us-east-1", "clark") == "2.0.0"
    states = task_states(run)
    assert states[("wave_1.deploy", "bruce")] == "skipped" and states[("wave_1.deploy", "lois")] == "skipped"


@pytest.fixture
def canary_fleet(moto: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/fixtures/fleet.yaml (acme is in canary and in the gated prod), with a gate that times out in ~2 s."""
    path = use_fleet("fleet.yaml", tmp_path, monkeypatch)
    path.write_text(path.read_text().replace("gated_groups: [prod]", "gated_groups: [prod]\napproval_timeout_hours: 0.0005"))
    bootstrap(path)
    return path


def test_a_canary_tag_reaching_a_prod_tenant_stops_at_the_gate_until_its_artifact_is_approved(canary_fleet, release_dag, capsys):
    # An approval of v-1.4.0-canary recorded for another build (e.g. before the tag moved): it does not pass.
    approve("v-1.4.0-canary", by="release-manager", sha256="0" * 64)
    stopped = release_dag.test(run_conf=conf("v-1.4.0-canary"))
    assert str(stopped.state) == "failed"
    assert task_states(stopped)[("approve_release", -1)] == "failed"  # waited, nobody approved this build: timed out
    assert deployed_version("111111111111", "eu-central-1", "acme") is None
    sha256 = built_sha256("v-1.4.0-canary")  # the same source builds the same artifact
    assert (
        f"approval for v-1.4.0-canary by release-manager via dynamodb approved artifact 000000000000…, this run built "
        f"{sha256[:12]}…; approve again: tenant-release approve v-1.4.0-canary --sha256 {sha256}"
    ) in capsys.readouterr().out
    assert history()[("acme", "v-1.4.0-canary")].status.value == "SKIPPED"

    approve("v-1.4.0-canary", by="release-manager", sha256=sha256)
    shipped = release_dag.test(run_conf=conf("v-1.4.0-canary"))
    assert str(shipped.state) == "success"
    assert deployed_version("111111111111", "eu-central-1", "acme") == "1.4.0"
    acme = history()[("acme", "v-1.4.0-canary")]
    assert acme.gated and acme.approved_by == "release-manager (dynamodb, release gate)"


def test_the_gate_request_names_the_gated_tenants_and_an_answer_in_airflow_binds_to_the_build(airflow_db, fleet_file):
    from tenant_release.airflow.gate import ReleaseGateOperator
    from tenant_release.models import RunPlan

    plan = RunPlan(
        release_tag="v-1.4.0-canary",
        version="1.4.0",
        group="canary",
        gated=True,
        config_path=str(fleet_file),
        tenants=("acme", "ford"),
        gated_tenants=("acme",),
    )
    build = {"sha256": "b" * 64, "bucket": "tr-test-artifacts", "template_key": "releases/1.4.0/t.yaml", "source": "x"}

    class TaskInstance:
        def xcom_pull(self, task_ids: str):
            return {"plan": plan.model_dump(mode="json"), "build": build}.get(task_ids)

    gate = ReleaseGateOperator(task_id="approve_release")
    _, body = gate.describe_request(TaskInstance(), plan)
    assert "**Gated** because these tenants belong to a gated group: acme\n" in body and "b" * 64 in body
    answer = {"chosen_options": ["Approve"], "responded_by_user": {"id": "3", "name": "ana"}}
    # (overriding a freeze: the gate then reads no fleet file, and this test has none)
    result = gate.resume({"ti": TaskInstance(), "run_id": "manual__1", "params": {"override_freeze": "test"}}, answer)
    assert (result["approved_by"], result["identity"], result["sha256"]) == ("ana", "airflow user 3 (ana)", "b" * 64)


def test_tenant_outside_its_window_waits_until_it_opens(gated, release_dag, clock):
    # Saturday 2027-01-09 22:00 UTC; diana's window opens Sunday 02:00 Berlin = 01:00 UTC.
    # The clock moves 20 minutes each time it is read.
    clock(datetime(2027, 1, 9, 22, tzinfo=UTC), timedelta(minutes=20))
    run = release_dag.test(run_conf=conf("v-2.0.0-windowed", tenants=["diana"]))
    assert str(run.state) == "success"
    diana = history()[("diana", "v-2.0.0-windowed")]
    assert diana.status.value == "SUCCEEDED"
    assert deployed_version("666666666666", "us-east-1", "diana") == "2.0.0"
    started = datetime.fromisoformat(diana.note.split("deploy started ")[1].split(";")[0])
    assert datetime(2027, 1, 10, 1, tzinfo=UTC) <= started < datetime(2027, 1, 10, 4, tzinfo=UTC)
    assert "waited for maintenance window Sun 02:00-05:00 Europe/Berlin" in diana.note


def test_missed_window_with_skip_policy_is_skipped_not_deployed(gated, release_dag, clock):
    # steve's one-hour window (Sun 01:00-02:00 UTC) is closed at the first look (00:30) and over before the
    # clock, jumping 3 h a read, looks again.
    clock(datetime(2027, 3, 6, 21, 30, tzinfo=UTC), timedelta(hours=3))
    run = release_dag.test(run_conf=conf("v-2.0.0-windowed", tenants=["steve"]))
    steve = history()[("steve", "v-2.0.0-windowed")]
    assert steve.status.value == "SKIPPED" and "missed its maintenance window" in steve.reason
    assert deployed_version("777777777777", "us-east-1", "steve") is None
    assert str(run.state) == "success"


def test_manual_run_inside_a_freeze_is_refused_unless_overridden(gated, release_dag, clock):
    clock(datetime(2027, 12, 24, 10, tzinfo=UTC))
    refused = release_dag.test(run_conf=conf("v-2.0.0-regulated", tenants=["clark"]))
    assert str(refused.state) == "failed"
    assert task_states(refused)[("plan", -1)] == "failed"
    assert deployed_version("123456789012", "us-east-1", "dev") is None

    allowed = release_dag.test(run_conf=conf("v-2.0.0-regulated", tenants=["clark"], override_freeze="hotfix INC-99"))
    assert str(allowed.state) == "success"
    clark = history()[("clark", "v-2.0.0-regulated")]
    assert "override: hotfix INC-99" in clark.note and "year-end change freeze" in clark.note
