"""A tenant with its own sign-off, in the real scheduler: it leaves the triggerer for a worker to ask, then deploys.

Every fleet tenant's task starts in the triggerer; one with `approval: required` goes back to a worker, which asks
the person (a HITL request, answered here over REST as `approver`, as `local_stack.py` does for every request)
and hands the deploy back to the triggerer. The tenant without a gate of its own never touches a worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import local_stack
import pytest
from tenant_release.aws import ledger
from tenant_release.config import load_fleet
from tenant_release.models import Outcome

from tests.stack.release import attempt_log, isolated_stack, tooling_dynamodb

FLEET = """\
tooling: {account_id: "123456789012", region: us-east-1, artifact_bucket: tenant-release-artifacts-123456789012}
dev: {name: dev, account_id: "123456789012"}
default_group: prod
gated_groups: [prod]
approval_timeout_hours: 1
tenants:
  - {name: acme, account_id: "111111111111", region: eu-central-1, groups: [prod]}
  - {name: wayne, account_id: "222222222222", groups: [prod], approval: required}
"""


def _log(stack: local_stack.Stack, run_id: str, ti: dict, token: str) -> str:
    url = (
        f"{stack.api_url}/api/v2/dags/{local_stack.DAG_ID}/dagRuns/{run_id}/taskInstances/"
        f"{local_stack.MAPPED_TASK}/logs/{ti['try_number']}?map_index={ti['map_index']}"
    )
    return json.dumps(local_stack.http("GET", url, token=token))


@pytest.mark.slow
def test_a_tenant_with_its_own_approval_is_asked_on_a_worker_and_deployed_in_the_triggerer(tmp_path: Path) -> None:
    fleet = tmp_path / "tenants.yaml"
    fleet.write_text(FLEET)
    with isolated_stack(tmp_path / "stack", config=fleet, tag="v2.0.0") as run:
        assert run.returncode == 0, f"local_stack.py up exited {run.returncode}; output above"
        facts = run.last_run()
        run_id = facts["run_id"]
        stack = local_stack.Stack(state_dir=run.state_dir, api_port=int(facts["api_url"].rsplit(":", 1)[1]))
        token = local_stack.login(stack)
        deploys = {
            ti["rendered_map_index"]: ti
            for ti in local_stack.task_instances(stack, run_id, token)
            if ti["task_id"] == local_stack.MAPPED_TASK
        }
        assert {name: ti["state"] for name, ti in deploys.items()} == {"acme": "success", "wayne": "success"}

        # Its steps span a trigger, a worker and a trigger again: read every file of its attempt.
        wayne = attempt_log(run, run_id, deploys["wayne"]["map_index"], 1)
        # Airflow keeps one trigger log file per attempt and triggerer, so the deploy's trigger log replaces the
        # one of the trigger that sent wayne to the worker; the worker's log shows the wait and the hand-over.
        for step in (
            "waiting for approval (UI, REST or approval record)",
            "Deploy v2.0.0 to tenant wayne?",
            "Worker startup parse complete",  # the worker that asked
            "wayne: handing the deploy of v2.0.0 to the triggerer",
            "to wayne (account 222222222222",
            "wayne: SUCCEEDED",
        ):
            assert step in wayne, step
        acme = _log(stack, run_id, deploys["acme"], token)
        assert "acme: SUCCEEDED" in acme
        assert "Worker startup parse complete" not in acme

        loaded = load_fleet(fleet)
        tooling = loaded.fleet.tooling
        dynamodb = tooling_dynamodb(facts["moto_url"], tooling.region)
        history = ledger.get_many(dynamodb, tooling.history_table, tenants=["acme", "wayne"], release="v2.0.0")
        assert {name: (r.status, r.version) for name, r in history.items()} == dict.fromkeys(
            ["acme", "wayne"], (Outcome.SUCCEEDED, "2.0.0")
        )
        assert "approver" in (history["wayne"].approved_by or "")
