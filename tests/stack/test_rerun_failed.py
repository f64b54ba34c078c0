"""Re-running only the failed tenant of a release in the same run, in the real scheduler, through the REST API.

A release to three tenants where one (`initech`) cannot be deployed: its artifact bucket, which `tenant-release
bootstrap` created, is deleted before the release reaches it (moto does not check that an assumed role exists, so a
missing deploy role cannot fail a deploy here; a missing bucket fails it the same way, as an error a person must
fix: `NoSuchBucket`, no retry). The run fails with that tenant `FAILED` and the others `SUCCEEDED`. Then the bucket
is there again (what re-running bootstrap does for a real account) and the operator clears that tenant's task
instance with Airflow's REST API, as the README says:

    POST /api/v2/dags/tenant_release/clearTaskInstances
    {"dag_run_id": RUN, "task_ids": [[DEPLOY_TASK, MAP_INDEX]], "only_failed": true, "include_downstream": true}

Checked: the dry run lists exactly that tenant's deploy and the failed tasks downstream of it (the summary; with
waves, the wave's bake and what the stopped release left failed), never another tenant; after the clear the run
succeeds, the cleared tenant deployed on its second try, the other tenants' task instances ran once and their stacks
got no new change set, and the history and the summary (its XCom) show the new result.

The deploy task is found by its id's suffix `deploy` (`deploy` today, `wave_<n>.deploy` with waves).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import local_stack
import pytest
from tenant_release.aws import ledger
from tenant_release.config import load_fleet
from tenant_release.models import Outcome, Target
from tenant_release.plan import plan_release
from tenant_release.tags import parse_release_tag

from tests.stack.release import StackRun, isolated_stack, option, tenant_cloudformation, tooling_dynamodb, until

TAG = "v1.0.0"
BROKEN = "initech"
# Ungated: nobody needs to answer a gate; the run goes from dev straight to the tenants.
FLEET = """\
tooling: {account_id: "123456789012", region: us-east-1, artifact_bucket: tenant-release-artifacts-123456789012}
dev: {name: dev, account_id: "123456789012"}
default_group: prod
tenants:
  - {name: acme, account_id: "111111111111", groups: [prod]}
  - {name: globex, account_id: "222222222222", region: eu-central-1, groups: [prod]}
  - {name: initech, account_id: "333333333333", groups: [prod]}
"""


def tenant_s3(moto_url: str, target: Target) -> Any:
    """An S3 client in the tenant's own account of the stack's moto server."""
    aws = {"endpoint_url": moto_url, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    sts = boto3.client("sts", region_name="us-east-1", **aws)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{target.account_id}:role/stack-test", RoleSessionName="stack-test")[
        "Credentials"
    ]
    return boto3.client(
        "s3",
        region_name=target.region,
        endpoint_url=moto_url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


class BreakOneTenant:
    """`during` of the release: as soon as bootstrap has created initech's bucket, delete it (before any deploy)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.deleted = False

    def __call__(self, run: StackRun) -> None:
        moto_url = f"http://127.0.0.1:{option(run, '--moto-port')}"

        def bucket_exists() -> bool:
            try:
                tenant_s3(moto_url, self.target).head_bucket(Bucket=self.target.artifact_bucket)
            except Exception:  # moto not up yet, or bootstrap not there yet
                return False
            return True

        # Bootstrap runs before Airflow starts; the release is triggered only once the DAG is parsed, well after.
        until(f"bootstrap to create {self.target.artifact_bucket}", bucket_exists, 150, 0.2)
        tenant_s3(moto_url, self.target).delete_bucket(Bucket=self.target.artifact_bucket)
        self.deleted = True


def tenant_deploys(instances: list[dict]) -> dict[str, dict]:
    """Each tenant's deploy instance by name: mapped `deploy` (`wave_<n>.deploy`) instances; an empty wave's is not one."""
    return {
        ti["rendered_map_index"]: ti
        for ti in instances
        if (ti["task_id"] == "deploy" or ti["task_id"].endswith(".deploy")) and ti["map_index"] >= 0
    }


def change_sets(moto_url: str, target: Target) -> list[tuple[str, str]]:
    cloudformation = tenant_cloudformation(moto_url, target)
    found = cloudformation.list_change_sets(StackName=target.stack_name)["Summaries"]
    return sorted((c["ChangeSetName"], c["ExecutionStatus"]) for c in found)


@pytest.mark.slow
def test_clearing_only_the_failed_tenant_re_runs_exactly_that_tenant_and_the_summary(tmp_path: Path) -> None:
    fleet = tmp_path / "tenants.yaml"
    fleet.write_text(FLEET)
    loaded = load_fleet(fleet)
    targets = {t.name: t for t in plan_release(loaded, parse_release_tag(TAG)).targets}
    breaker = BreakOneTenant(targets[BROKEN])

    with isolated_stack(tmp_path / "stack", "--timeout", "200", config=fleet, tag=TAG, during=breaker, up_timeout=400) as run:
        assert breaker.deleted
        facts = run.last_run()
        run_id, moto_url = facts["run_id"], facts["moto_url"]
        assert facts["state"] == "failed", facts
        stack = local_stack.Stack(state_dir=run.state_dir, api_port=int(option(run, "--api-port")))
        token = local_stack.login(stack)
        base = f"{stack.api_url}/api/v2/dags/{local_stack.DAG_ID}"

        first = local_stack.task_instances(stack, run_id, token)
        deploys = tenant_deploys(first)
        assert {name: ti["state"] for name, ti in deploys.items()} == {
            "acme": "success",
            "globex": "success",
            BROKEN: "failed",
        }
        tooling = loaded.fleet.tooling
        dynamodb = tooling_dynamodb(moto_url, tooling.region)
        failed = ledger.get_many(dynamodb, tooling.history_table, tenants=[BROKEN], release=TAG)[BROKEN]
        assert (failed.status, failed.run_id) == (Outcome.FAILED, run_id)
        assert "bucket" in (failed.reason or "").lower(), failed.reason
        healthy = [name for name in targets if name != BROKEN]
        before = {name: change_sets(moto_url, targets[name]) for name in healthy}

        # The fix a person makes (bootstrap again gives a real account its bucket back), then the clear.
        tenant_s3(moto_url, targets[BROKEN]).create_bucket(Bucket=targets[BROKEN].artifact_bucket)
        broken_ti = deploys[BROKEN]
        clear = {
            "dag_run_id": run_id,
            "task_ids": [[broken_ti["task_id"], broken_ti["map_index"]]],
            "only_failed": True,
            "include_downstream": True,
        }
        planned = local_stack.http("POST", f"{base}/clearTaskInstances", {**clear, "dry_run": True}, token)
        cleared = {(ti["task_id"], ti["map_index"]) for ti in planned["task_instances"]}
        print("the clear re-runs:", sorted(cleared))
        assert (broken_ti["task_id"], broken_ti["map_index"]) in cleared
        assert ("summary", -1) in cleared
        other_deploys = {(ti["task_id"], ti["map_index"]) for name, ti in deploys.items() if name != BROKEN}
        assert not cleared & other_deploys, cleared
        assert all(ti["state"] in ("failed", "upstream_failed") for ti in planned["task_instances"]), planned
        local_stack.http("POST", f"{base}/clearTaskInstances", {**clear, "dry_run": False}, token)

        def finished() -> str | None:
            state = local_stack.http("GET", f"{base}/dagRuns/{quote(run_id)}", token=token)["state"]
            return state if state in ("success", "failed") else None

        assert until("the cleared run to finish", finished, 200, 2) == "success"

        after = tenant_deploys(local_stack.task_instances(stack, run_id, token))
        assert {name: (ti["state"], ti["try_number"]) for name, ti in after.items()} == {
            "acme": ("success", 1),
            "globex": ("success", 1),
            BROKEN: ("success", 2),
        }
        # The tenants that had succeeded were not deployed again: no new change set on their stacks.
        assert {name: change_sets(moto_url, targets[name]) for name in healthy} == before
        history = ledger.get_many(dynamodb, tooling.history_table, tenants=list(targets), release=TAG)
        assert {name: (r.status, r.version, r.run_id) for name, r in history.items()} == dict.fromkeys(
            targets, (Outcome.SUCCEEDED, "1.0.0", run_id)
        )
        summary = local_stack.http(
            "GET", f"{base}/dagRuns/{quote(run_id)}/taskInstances/summary/xcomEntries/return_value", token=token
        )["value"]
        summary = json.loads(summary) if isinstance(summary, str) else summary
        assert summary["tenants"] == dict.fromkeys(targets, "SUCCEEDED")
