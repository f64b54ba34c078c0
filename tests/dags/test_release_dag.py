"""The whole release DAG under dag.test() against moto: who got which version, who failed and why, what history holds."""

from __future__ import annotations

from pathlib import Path

import boto3
from tenant_release.aws import ledger
from tenant_release.aws.session import AwsSessions
from tenant_release.aws.stacks import describe_stack, stack_tag

DAGS = Path(__file__).resolve().parents[2] / "dags"
HISTORY = "tenant-release-history"


def built_sha256(release: str) -> str:
    """Build the tag as the run's build task will (the run then reuses it) and return the artifact's sha256.

    An approval binds to one artifact: an approval given ahead of a run must name the build that run ships.
    """
    from tenant_release.build import build_release
    from tenant_release.config import load_fleet
    from tenant_release.plan import plan_release
    from tenant_release.tags import parse_release_tag

    loaded = load_fleet()
    tag = parse_release_tag(release)
    artifact = build_release(
        AwsSessions(),
        tooling=loaded.fleet.tooling,
        application=loaded.fleet.application,
        fleet_path=loaded.path,
        release=tag,
        targets=list(plan_release(loaded, tag).targets),
    )
    return artifact.sha256


def approve(
    release: str, tenant: str = "*", *, approved: bool = True, by: str = "release-manager", sha256: str | None = None
) -> None:
    """Answer an approval the way an external system does: a record in the tooling account's approvals table.

    An approval names the artifact it approves (by default the one the run will build); a rejection needs none.
    """
    from tenant_release.aws.approvals import put_decision

    put_decision(
        boto3.client("dynamodb", region_name="us-east-1"),
        "tenant-release-approvals",
        tenant=tenant,
        release=release,
        approved=approved,
        decided_by=by,
        sha256=sha256 or (built_sha256(release) if approved else None),
    )


def tenant_client(service: str, account: str, region: str):
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/inspector", RoleSessionName="test"
    )["Credentials"]
    return boto3.client(
        service,
        region_name=region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def deployed_version(account: str, region: str, tenant: str) -> str | None:
    stack = describe_stack(tenant_client("cloudformation", account, region), f"tenant-app-{tenant}")
    return stack_tag(stack, "ReleaseVersion") if stack else None


def function_version(account: str, region: str, tenant: str) -> str:
    config = tenant_client("lambda", account, region).get_function_configuration(FunctionName=f"tenant-app-{tenant}")
    return config["Environment"]["Variables"]["RELEASE_VERSION"]


def history() -> dict[str, ledger.TenantResult]:
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    items = dynamodb.scan(TableName=HISTORY)["Items"]
    return {(r.tenant, r.release): r for r in (ledger._from_item(i) for i in items)}


def task_states(run) -> dict[tuple[str, str | int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id, TaskInstance.dag_id == run.dag_id).all()
        return {(ti.task_id, ti.rendered_map_index or ti.map_index): str(ti.state) for ti in tis}


def test_release_deploys_its_group_and_isolates_a_tenant_whose_role_cannot_be_assumed(bootstrapped, release_dag, faults):
    faults.add(
        service="sts",
        operation="assume_role",
        account="tooling",
        code="AccessDenied",
        message="User is not authorized to perform: sts:AssumeRole on arn:aws:iam::222222222222:role/tenant-release-deploy",
        when=lambda kwargs: kwargs["RoleArn"].startswith("arn:aws:iam::222222222222:"),
    )

    approve("v1.4.0")  # prod is gated
    run = release_dag.test(run_conf={"release_tag": "v1.4.0"})

    assert str(run.state) == "failed"  # a failed tenant fails the run, so the UI shows it
    states = task_states(run)
    assert states[("wave_1.deploy", "acme")] == "success"
    assert states[("wave_1.deploy", "umbrella")] == "success"
    assert states[("wave_1.deploy", "globex")] == "failed"
    assert states[("summary", -1)] == "failed"
    assert states[("deploy_dev", -1)] == "success"
    # prod group: acme (eu-central-1), globex, umbrella; initech is qa only and untouched.
    assert deployed_version("111111111111", "eu-central-1", "acme") == "1.4.0"
    assert function_version("111111111111", "eu-central-1", "acme") == "1.4.0"
    assert deployed_version("044444444444", "us-east-1", "umbrella") == "1.4.0"
    assert deployed_version("222222222222", "us-east-1", "globex") is None
    assert deployed_version("333333333333", "eu-west-1", "initech") is None
    assert deployed_version("123456789012", "us-east-1", "dev") == "1.4.0"

    records = history()
    assert set(records) == {("acme", "v1.4.0"), ("globex", "v1.4.0"), ("umbrella", "v1.4.0")}
    assert records[("acme", "v1.4.0")].status.value == "SUCCEEDED"
    assert records[("umbrella", "v1.4.0")].status.value == "SUCCEEDED"
    failed = records[("globex", "v1.4.0")]
    assert failed.status.value == "FAILED"
    assert "AccessDenied" in failed.reason and "tenant-release bootstrap" in failed.reason
    acme = records[("acme", "v1.4.0")]
    assert acme.run_id == run.run_id
    assert acme.artifact_uri.startswith("s3://tenant-release-111111111111-eu-central-1/releases/1.4.0/")
    assert acme.version_before is None and acme.version_after == "1.4.0"
    assert len(acme.sha256) == 64
    assert acme.gated and acme.approved_by == "release-manager (dynamodb, release gate)"


def test_group_tag_and_second_release_only_touch_their_tenants(bootstrapped, release_dag, faults):
    # umbrella is in qa and in the gated prod: a qa tag reaching it is gated too.
    approve("v-1.4.0-qa")
    approve("v-1.5.0-qa")
    first = release_dag.test(run_conf={"release_tag": "v-1.4.0-qa"})
    assert str(first.state) == "success"
    assert deployed_version("333333333333", "eu-west-1", "initech") == "1.4.0"
    assert deployed_version("044444444444", "us-east-1", "umbrella") == "1.4.0"
    assert deployed_version("111111111111", "eu-central-1", "acme") is None

    changes_before = len(faults.calls)
    again = release_dag.test(run_conf={"release_tag": "v-1.4.0-qa", "tenants": ["umbrella"]})
    assert str(again.state) == "success"
    # Already at the release: recorded UNCHANGED by fleet_changes, with no task instance and no change set.
    assert not [key for key in task_states(again) if key[0] == "wave_1.deploy" and key[1] != -1]
    umbrella_calls = [name for _, account, name in faults.calls[changes_before:] if account == "044444444444"]
    assert "create_change_set" not in umbrella_calls and "execute_change_set" not in umbrella_calls
    records = history()
    assert records[("umbrella", "v-1.4.0-qa")].status.value == "UNCHANGED"
    assert records[("umbrella", "v-1.4.0-qa")].run_id == again.run_id
    assert records[("initech", "v-1.4.0-qa")].run_id == first.run_id  # not part of the narrowed run

    # dag.test() reuses one DAG object, whose params keep the previous run's conf: reset "tenants" explicitly.
    newer = release_dag.test(run_conf={"release_tag": "v-1.5.0-qa", "tenants": []})
    assert str(newer.state) == "success"
    assert function_version("333333333333", "eu-west-1", "initech") == "1.5.0"
    assert deployed_version("333333333333", "eu-west-1", "initech") == "1.5.0"
    upgraded = history()[("initech", "v-1.5.0-qa")]
    assert (upgraded.version_before, upgraded.version_after, upgraded.status.value) == ("1.4.0", "1.5.0", "SUCCEEDED")


def test_unknown_group_fails_before_anything_is_deployed(bootstrapped, release_dag):
    run = release_dag.test(run_conf={"release_tag": "v-1.4.0-nosuchgroup"})
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states[("plan", -1)] == "failed"
    assert states.get(("build", -1)) in {"upstream_failed", None}
    assert deployed_version("123456789012", "us-east-1", "dev") is None
    assert history() == {}
