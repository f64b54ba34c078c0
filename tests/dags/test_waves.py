"""Rollout waves under dag.test() against moto: a wave over its failure tolerance stops the rollout, later waves'
tenants are never touched and end SKIPPED with the rule that stopped it; a wave within its tolerance goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from tenant_release.models import Outcome

from tests.conftest import bootstrap
from tests.dags.test_release_dag import deployed_version, history, task_states

WAVED_FLEET = """
tooling: {account_id: "123456789012", region: us-east-1, artifact_bucket: tr-test-artifacts}
dev: {name: dev, account_id: "123456789012", region: us-east-1}
defaults: {region: us-east-1}
default_group: qa
rollout:
  waves:
    - {name: canary, groups: [canary], max_failures: 0}
    - {name: early, groups: [early], max_failures: %(early_tolerance)s}
    - {name: general}
tenants:
  - {name: can1, account_id: "210000000001", groups: [qa, canary]}
  - {name: early1, account_id: "210000000002", groups: [qa, early]}
  - {name: early2, account_id: "210000000003", groups: [qa, early]}
  - {name: early3, account_id: "210000000004", groups: [qa, early]}
  - {name: gen1, account_id: "210000000005", groups: [qa]}
  - {name: gen2, account_id: "210000000006", groups: [qa], region: eu-west-1}
"""
ACCOUNTS = {
    "can1": "210000000001",
    "early1": "210000000002",
    "early2": "210000000003",
    "early3": "210000000004",
    "gen1": "210000000005",
    "gen2": "210000000006",
}
REGIONS = {"gen2": "eu-west-1"}


def waved_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, early_tolerance: str = "0") -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(WAVED_FLEET % {"early_tolerance": early_tolerance})
    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(path))
    bootstrap(path)
    return path


def version(tenant: str) -> str | None:
    return deployed_version(ACCOUNTS[tenant], REGIONS.get(tenant, "us-east-1"), tenant)


def deny_role_of(faults, tenant: str) -> None:
    faults.add(
        service="sts",
        operation="assume_role",
        account="tooling",
        code="AccessDenied",
        message=f"not authorized to perform: sts:AssumeRole on arn:aws:iam::{ACCOUNTS[tenant]}:role/tenant-release-deploy",
        when=lambda kwargs, account=ACCOUNTS[tenant]: kwargs["RoleArn"].startswith(f"arn:aws:iam::{account}:"),
    )


def test_a_canary_over_its_tolerance_stops_the_rollout_and_later_waves_are_never_touched(
    moto, tmp_path, monkeypatch, release_dag, faults, caplog
):
    waved_fleet(tmp_path, monkeypatch)
    deny_role_of(faults, "can1")

    run = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert run.state == "failed"
    states = task_states(run)
    assert states[("wave_1.deploy", "can1")] == "failed"
    assert states[("wave_1.bake", -1)] == "failed"
    assert ("wave_2.deploy", "early1") not in states  # never expanded: no task instance, nothing touched
    recorded = history()
    stop = "wave canary: 1 of 1 failed, tolerance 0"
    assert recorded[("can1", "v-2.0.0-qa")].status == Outcome.FAILED
    for tenant in ("early1", "early2", "early3", "gen1", "gen2"):
        item = recorded[(tenant, "v-2.0.0-qa")]
        assert (item.status, item.reason) == (Outcome.SKIPPED, f"not started: {stop}"), tenant
        assert version(tenant) is None, f"{tenant}'s stack was created although its wave never started"
    summary = "\n".join(r.getMessage() for r in caplog.records if "summary" in r.getMessage() or "stopped" in r.getMessage())
    assert f"rollout stopped: {stop}" in summary
    assert f"tenant-release redeploy v-2.0.0-qa --failed --run {run.run_id}" in caplog.text


def test_a_wave_within_its_tolerance_lets_the_next_wave_start(moto, tmp_path, monkeypatch, release_dag, faults):
    waved_fleet(tmp_path, monkeypatch, early_tolerance='"34%"')  # 34% of 3 = 1 tolerated
    deny_role_of(faults, "early2")

    run = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert run.state == "failed"  # a failed tenant fails the run, but did not stop the rollout
    recorded = history()
    assert recorded[("early2", "v-2.0.0-qa")].status == Outcome.FAILED
    for tenant in ("can1", "early1", "early3", "gen1", "gen2"):
        assert recorded[(tenant, "v-2.0.0-qa")].status == Outcome.SUCCEEDED, tenant
        assert version(tenant) == "2.0.0"
    states = task_states(run)
    assert states[("wave_2.bake", -1)] == "success"
    assert states[("wave_3.deploy", "gen2")] == "success"
    # The fleet declares three waves: the first unused wave's open skips every wave task after it, in one task.
    assert states[("wave_4.open", -1)] == "success"
    assert {states[(f"wave_{n}.{task}", -1)] for n in (4, 5, 6) for task in ("bake",)} == {"skipped"}
    assert {states[(f"wave_{n}.open", -1)] for n in (5, 6)} == {"skipped"}


def test_a_second_wave_tripped_by_two_failures_skips_the_third_with_the_rule(moto, tmp_path, monkeypatch, release_dag, faults):
    waved_fleet(tmp_path, monkeypatch, early_tolerance="1")
    deny_role_of(faults, "early1")
    deny_role_of(faults, "early3")

    run = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert run.state == "failed"
    recorded = history()
    assert recorded[("can1", "v-2.0.0-qa")].status == Outcome.SUCCEEDED
    assert recorded[("early2", "v-2.0.0-qa")].status == Outcome.SUCCEEDED
    for tenant in ("gen1", "gen2"):
        item = recorded[(tenant, "v-2.0.0-qa")]
        assert item.status == Outcome.SKIPPED
        assert item.reason == "not started: wave early: 2 of 3 failed, tolerance 1"
        assert version(tenant) is None


def test_a_wave_that_needs_approval_starts_only_once_its_artifact_is_approved_and_a_rejection_stops_the_rollout(
    moto, tmp_path, monkeypatch, release_dag
):
    from tests.dags.test_release_dag import approve

    path = waved_fleet(tmp_path, monkeypatch)
    path.write_text(path.read_text().replace("{name: general}", "{name: general, approval: true}"))

    approve("v-2.0.0-qa", "wave:general", approved=False, by="cab")
    run = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert run.state == "failed"
    states = task_states(run)
    assert states[("wave_2.bake", -1)] == "success"
    assert states[("wave_3.open", -1)] == "failed"
    recorded = history()
    for tenant in ("gen1", "gen2"):
        item = recorded[(tenant, "v-2.0.0-qa")]
        assert item.status == Outcome.SKIPPED
        assert item.reason == "not started: wave general: rejected by cab via dynamodb", item.reason
        assert version(tenant) is None
    assert version("early3") == "2.0.0"

    approve("v-2.0.0-qa", "wave:general", by="cab")
    again = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert again.state == "success"
    assert version("gen1") == version("gen2") == "2.0.0"
    assert history()[("gen1", "v-2.0.0-qa")].run_id == again.run_id


def test_an_alarm_firing_while_a_wave_bakes_fails_that_tenant_and_stops_the_rollout(moto, tmp_path, monkeypatch, release_dag):
    import boto3

    path = waved_fleet(tmp_path, monkeypatch)
    path.write_text(
        path.read_text()
        .replace("defaults: {region: us-east-1}", 'defaults: {region: us-east-1, alarms: ["tenant-app-{name}-errors"]}')
        .replace(
            "{name: early, groups: [early], max_failures: 0}",
            "{name: early, groups: [early], max_failures: 0, bake_minutes: 0.02}",
        )
    )
    monkeypatch.setenv("AIRFLOW__TENANT_RELEASE__BAKE_POLL_SECONDS", "0.2")
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNTS['early2']}:role/monitoring", RoleSessionName="monitoring"
    )["Credentials"]
    cloudwatch = boto3.client(
        "cloudwatch",
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    cloudwatch.put_metric_alarm(
        AlarmName="tenant-app-early2-errors",
        MetricName="Errors",
        Namespace="AWS/Lambda",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    cloudwatch.set_alarm_state(AlarmName="tenant-app-early2-errors", StateValue="ALARM", StateReason="errors")

    run = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert run.state == "failed"
    recorded = history()
    early2 = recorded[("early2", "v-2.0.0-qa")]
    assert early2.status == Outcome.FAILED
    assert early2.reason.startswith("alarm tenant-app-early2-errors in ALARM since ")
    assert early2.reason.endswith("during its wave's bake")
    assert early2.version_after == "2.0.0"  # its stack holds the release: the alarm, not the deploy, failed it
    for tenant in ("can1", "early1", "early3"):
        assert recorded[(tenant, "v-2.0.0-qa")].status == Outcome.SUCCEEDED, tenant
    for tenant in ("gen1", "gen2"):
        assert recorded[(tenant, "v-2.0.0-qa")].reason == "not started: wave early: 1 of 3 failed, tolerance 0"
        assert version(tenant) is None


def test_an_abort_while_the_canary_deploys_lets_it_finish_and_starts_no_later_wave(
    moto, tmp_path, monkeypatch, release_dag, faults
):
    import boto3
    from tenant_release.aws.controls import set_control
    from tenant_release.models import RolloutState

    waved_fleet(tmp_path, monkeypatch)

    def operator_aborts(kwargs) -> bool:  # an operator acts while can1's change set executes; no fault is injected
        set_control(
            boto3.client("dynamodb", region_name="us-east-1"),
            "tenant-release-leases",
            "v-2.0.0-qa",
            RolloutState.ABORTED,
            "arn:aws:iam::123456789012:user/ops",
            "error rate up",
        )
        return False

    faults.add(service="cloudformation", operation="execute_change_set", account=ACCOUNTS["can1"], when=operator_aborts)

    run = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert run.state == "failed"
    recorded = history()
    assert recorded[("can1", "v-2.0.0-qa")].status == Outcome.SUCCEEDED  # already deploying: it finishes
    assert version("can1") == "2.0.0"
    for tenant in ("early1", "early2", "early3", "gen1", "gen2"):
        item = recorded[(tenant, "v-2.0.0-qa")]
        assert item.status == Outcome.SKIPPED, tenant
        assert item.reason.startswith("not started: aborted by arn:aws:iam::123456789012:user/ops: error rate up at "), (
            item.reason
        )
        assert version(tenant) is None
    assert task_states(run)[("wave_2.open", -1)] == "failed"


def test_a_tenant_held_back_mid_rollout_is_skipped_with_its_hold_not_failed(moto, tmp_path, monkeypatch, release_dag, faults):
    path = waved_fleet(tmp_path, monkeypatch)

    def customer_freezes_gen1(kwargs) -> bool:  # while the canary deploys, gen1's customer asks for a freeze
        text = path.read_text()
        if "hold:" not in text:
            path.write_text(
                text.replace(
                    '{name: gen1, account_id: "210000000005", groups: [qa]}',
                    '{name: gen1, account_id: "210000000005", groups: [qa], hold: "customer freeze"}',
                )
            )
        return False

    faults.add(service="cloudformation", operation="execute_change_set", account=ACCOUNTS["can1"], when=customer_freezes_gen1)

    run = release_dag.test(run_conf={"release_tag": "v-2.0.0-qa"})

    assert run.state == "success"  # a hold is not a failure
    gen1 = history()[("gen1", "v-2.0.0-qa")]
    assert (gen1.status, gen1.reason) == (Outcome.SKIPPED, "held back: customer freeze (since this run was planned)")
    assert version("gen1") is None
    assert version("gen2") == "2.0.0"
