"""Crashes mid-release, in the real scheduler: a worker killed, then the scheduler and the triggerer killed and restarted.

Where a deploy lives decides where a crash can hit it. A fleet tenant's stack operation runs in the triggerer
(`FleetTenantStartTrigger` → `TenantDeployTrigger`): assume role, copy, change set, wait for the stack. A worker
holds a tenant's deploy only for the steps before that: a tenant with its own gate (here: a maintenance window,
open now) comes back from its start trigger to a worker, which checks the gate and hands the deploy to the
triggerer. So the test breaks the release where each can really happen:

1. SIGKILL the worker process (the task process, `airflow worker -- <ti id>`) of `wayne` as soon as it exists:
   its start trigger has handed wayne's deploy to a worker, which dies before it hands the deploy back to the
   triggerer (the only stretch of a fleet tenant's deploy a worker holds; the window is under a second, so the
   process is killed the moment it appears rather than at a log line). Its supervisor reports the attempt failed,
   Airflow retries it, and the retry deploys wayne once. (Killing the scheduler with the supervisor as well
   would leave the attempt `running` until Airflow's orphaned-task check, 5 minutes: Airflow's, not ours.)
2. While `acme`'s and `globex`'s stacks are `CREATE_IN_PROGRESS`, SIGKILL the scheduler (with its
   LocalExecutor workers) and the triggerer, and start both again with `local_stack.py restart`. The dead
   triggerer's triggers go to the new one once its heartbeat is stale (`[triggerer]
   triggerer_health_check_threshold`); each trigger starts again from its first step, finds its change set
   executing on a stack still in progress, and waits for it instead of starting a second one. The same attempt
   ends the task: no retry. moto holds the stacks in progress (its settle time, `scripts/moto_compat.py`) until
   both restarted triggers are waiting on them, then lets them settle: no race with a fixed settle time.

Then: the run and its summary succeed, each tenant's stack went through exactly one stack operation in this
release (moto's stack events and executed change sets, read from the moto server), and each tenant's history
item is this run's `SUCCEEDED`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import local_stack
import moto_compat
import pytest
from tenant_release.aws import ledger
from tenant_release.config import load_fleet
from tenant_release.models import Outcome
from tenant_release.plan import plan_release
from tenant_release.tags import parse_release_tag

from tests.stack.release import (
    ROOT,
    SCRIPT,
    StackRun,
    attempt_log,
    clean_environment,
    isolated_stack,
    option,
    tenant_cloudformation,
    tooling_dynamodb,
    until,
)

TAG = "v1.0.0"
HOLD_SECONDS = 3600  # moto's settle time while the test holds the stacks in progress; 0 lets them settle
ATTACHED = "executing on {stack}; waiting for it to settle"
# An always-open window: wayne's deploy goes through a worker (its own gate) and never waits.
FLEET = """\
tooling: {account_id: "123456789012", region: us-east-1, artifact_bucket: tenant-release-artifacts-123456789012}
dev: {name: dev, account_id: "123456789012"}
default_group: prod
tenants:
  - {name: acme, account_id: "111111111111", groups: [prod]}
  - {name: globex, account_id: "222222222222", region: eu-central-1, groups: [prod]}
  - {name: wayne, account_id: "333333333333", groups: [prod], maintenance_window: "Mon-Sun 00:00-23:59 UTC"}
"""
IN_THE_TRIGGERER = ("acme", "globex")
ON_A_WORKER = "wayne"


def _task_process(ti_id: str) -> int | None:
    """The task process Airflow's supervisor forked for this task instance (it names itself after the id)."""
    title = f"airflow worker -- {ti_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title):
                    return int(entry.name)
            except OSError:
                continue
    return None


class Crashes:
    """What `during` does to the running release, and what it saw (for the assertions after the run)."""

    def __init__(self, fleet: Path, settle_file: Path) -> None:
        self.env = {**clean_environment(fleet), moto_compat.SETTLE_FILE_ENV: str(settle_file)}
        loaded = load_fleet(fleet)
        self.targets = {t.name: t for t in plan_release(loaded, parse_release_tag(TAG)).targets}
        self.settle_file = settle_file
        self.killed_worker: int | None = None

    def __call__(self, run: StackRun) -> None:
        stack = local_stack.Stack(state_dir=run.state_dir, api_port=int(option(run, "--api-port")))
        moto_url = f"http://127.0.0.1:{option(run, '--moto-port')}"
        run_id = until("the release to be triggered", lambda: self._run_id(run), 240, 1)

        def tenant_tis() -> dict[str, dict] | None:
            instances = local_stack.task_instances(stack, run_id, local_stack.login(stack))
            if not any(ti["task_id"] == "deploy_dev" and ti["state"] == "success" for ti in instances):
                return None
            found = {ti["rendered_map_index"]: ti for ti in instances if ti["task_id"] == local_stack.MAPPED_TASK}
            return found if set(found) == set(self.targets) else None

        # Dev settles at once; the tenants' stacks, from here on, stay in progress until let go.
        tis = until("dev to succeed and the tenants' task instances", tenant_tis, 150)
        self.settle_file.write_text(str(HOLD_SECONDS))

        # 1. The worker that runs wayne's deploy: kill it the moment it exists.
        pid = until(f"a worker to run {ON_A_WORKER}'s deploy", lambda: _task_process(tis[ON_A_WORKER]["id"]), 90, 0.05)
        os.kill(pid, signal.SIGKILL)
        self.killed_worker = pid
        # Its supervisor (a LocalExecutor worker, forked by the scheduler) reports the attempt failed; wait for
        # that before killing the scheduler, which would take the supervisor with it (see the docstring).
        until(f"{ON_A_WORKER}'s killed attempt to be failed", lambda: self._state(stack, run_id) == "up_for_retry", 60)

        # 2. Scheduler and triggerer, while the other tenants' stacks are being created.
        clients = {name: tenant_cloudformation(moto_url, self.targets[name]) for name in IN_THE_TRIGGERER}

        def waits(name: str) -> int:
            return attempt_log(run, run_id, tis[name]["map_index"], 1).count(ATTACHED.format(stack=self.targets[name].stack_name))

        def in_progress() -> bool:
            for name, cloudformation in clients.items():
                stacks = cloudformation.list_stacks()["StackSummaries"]
                mine = [s["StackStatus"] for s in stacks if s["StackName"] == self.targets[name].stack_name]
                if mine != ["CREATE_IN_PROGRESS"] or waits(name) != 1:
                    return False
            return True

        until("the tenants' stacks to be in progress, the triggerer waiting on them", in_progress, 90)
        command = ["restart", "scheduler", "triggerer", "--signal", "KILL", "--state-dir", str(run.state_dir)]
        restart = subprocess.run(
            [sys.executable, str(SCRIPT), *command],
            env=self.env,  # the components come back with their own environment; this is in case it cannot be read
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert restart.returncode == 0, restart.stdout + restart.stderr
        print(restart.stdout)

        # One wait per triggerer in the attempt's logs: the restarted triggerer's trigger waits on the stack too.
        until("the restarted triggerer to wait on the stacks", lambda: all(waits(n) == 2 for n in IN_THE_TRIGGERER), 120)
        self.settle_file.write_text("0")

    @staticmethod
    def _state(stack: local_stack.Stack, run_id: str) -> str | None:
        instances = local_stack.task_instances(stack, run_id, local_stack.login(stack))
        return next(ti["state"] for ti in instances if ti.get("rendered_map_index") == ON_A_WORKER)

    @staticmethod
    def _run_id(run: StackRun) -> str | None:
        try:
            return run.last_run().get("run_id")
        except (OSError, ValueError):
            return None


@pytest.mark.slow
def test_worker_scheduler_and_triggerer_crashes_mid_release_deploy_each_tenant_once(tmp_path: Path) -> None:
    fleet = tmp_path / "tenants.yaml"
    fleet.write_text(FLEET)
    settle_file = tmp_path / "settle_seconds"
    settle_file.write_text("0")
    crashes = Crashes(fleet, settle_file)
    with isolated_stack(
        tmp_path / "stack",
        "--timeout",
        "240",
        config=fleet,
        tag=TAG,
        env={moto_compat.SETTLE_FILE_ENV: str(settle_file)},
        during=crashes,
        up_timeout=480,
    ) as run:
        assert crashes.killed_worker is not None
        assert run.returncode == 0, f"local_stack.py up exited {run.returncode}; output above"
        facts = run.last_run()
        run_id = facts["run_id"]
        assert facts["state"] == "success"
        assert facts["dead_components"] == []  # the restarted scheduler and triggerer ran to the end

        stack = local_stack.Stack(state_dir=run.state_dir, api_port=int(option(run, "--api-port")))
        instances = local_stack.task_instances(stack, run_id, local_stack.login(stack))
        assert [ti["state"] for ti in instances if ti["task_id"] == "summary"] == ["success"]
        deploys = {ti["rendered_map_index"]: ti for ti in instances if ti["task_id"] == local_stack.MAPPED_TASK}
        assert {name: ti["state"] for name, ti in deploys.items()} == dict.fromkeys(crashes.targets, "success")
        # The killed worker cost wayne one attempt; the restart cost the triggerer's tenants none.
        assert {name: ti["try_number"] for name, ti in deploys.items()} == {"acme": 1, "globex": 1, "wayne": 2}

        for name in IN_THE_TRIGGERER:
            log = attempt_log(run, run_id, deploys[name]["map_index"], 1)
            # Started by both triggerers, the change set executed by the first only: the second waited on it.
            assert log.count(f"deploying {TAG} (sha256") == 2, name
            assert len(re.findall(r"executing (?:CREATE|UPDATE) change set", log)) == 1, name
            assert log.count(ATTACHED.format(stack=crashes.targets[name].stack_name)) == 2, name
            assert f"{name}: SUCCEEDED" in log, name
        wayne_killed = attempt_log(run, run_id, deploys[ON_A_WORKER]["map_index"], 1)
        assert "executing CREATE change set" not in wayne_killed
        assert "executing CREATE change set" in attempt_log(run, run_id, deploys[ON_A_WORKER]["map_index"], 2)

        # Exactly one stack operation per tenant in this release, as CloudFormation (moto) recorded it.
        for name, target in crashes.targets.items():
            cloudformation = tenant_cloudformation(facts["moto_url"], target)
            events = cloudformation.describe_stack_events(StackName=target.stack_name)["StackEvents"]
            operations = [
                e["ResourceStatus"]
                for e in events
                if e["ResourceType"] == "AWS::CloudFormation::Stack"
                and e["ResourceStatus"] in {"CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS"}
            ]
            assert operations == ["CREATE_IN_PROGRESS"], (name, operations)
            change_sets = cloudformation.list_change_sets(StackName=target.stack_name)["Summaries"]
            assert [c["ExecutionStatus"] for c in change_sets] == ["EXECUTE_COMPLETE"], (name, change_sets)

        # One final result per tenant: this run's SUCCEEDED.
        tooling = load_fleet(fleet).fleet.tooling
        dynamodb = tooling_dynamodb(facts["moto_url"], tooling.region)
        history = ledger.get_many(dynamodb, tooling.history_table, tenants=list(crashes.targets), release=TAG)
        assert {name: (r.status, r.version, r.run_id) for name, r in history.items()} == dict.fromkeys(
            crashes.targets, (Outcome.SUCCEEDED, "1.0.0", run_id)
        )
        # The audit trail: whatever each restart wrote on its way (IN_PROGRESS), one final outcome per tenant.
        trail = {name: ledger.attempts(dynamodb, tooling.attempts_table, tenant=name, release=TAG) for name in crashes.targets}
        print("attempts:", {name: [a.status.value for a in found] for name, found in trail.items()})
        finals = {name: [(a.status, a.run_id) for a in found if a.status != Outcome.IN_PROGRESS] for name, found in trail.items()}
        assert finals == {name: [(Outcome.SUCCEEDED, run_id)] for name in crashes.targets}
        assert all(f"deploy[{name}]: success" in run.output for name in crashes.targets)
