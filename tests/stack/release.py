"""One real release through `scripts/local_stack.py up` on an isolated stack, and the checks both stack tests share."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import local_stack  # scripts/ is on sys.path (tests/conftest.py)
from tenant_release.aws import ledger
from tenant_release.aws.stacks import TAG_RELEASE_VERSION, describe_stack, stack_tag
from tenant_release.config import load_fleet
from tenant_release.models import Outcome, Target
from tenant_release.plan import plan_release
from tenant_release.tags import parse_release_tag

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_stack.py"
CONFIG = ROOT / "config" / "tenants.yaml"
TAG = "v1.0.0"  # a plain tag: the fleet's default group
# Well under the 3 minutes a stack test may take: the follow loop gives up first and says where the run is.
FOLLOW_TIMEOUT = 130
UP_TIMEOUT = 170
# moto settles stacks at once: shorter polls than the defaults for real AWS (10 s, 30 s) keep a run near a
# minute. Not much shorter: an event within a few seconds of deferring races the scheduler (see local_stack.py).
FAST_POLLS = {
    "AIRFLOW__TENANT_RELEASE__STACK_POLL_SECONDS": "5",
    "AIRFLOW__TENANT_RELEASE__APPROVAL_POLL_SECONDS": "5",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(config: Path = CONFIG) -> dict[str, str]:
    """The test process's environment without what the unit-test setup put there (AIRFLOW_HOME, unit-test mode...)."""
    dropped = ("AIRFLOW", "AWS_", "TENANT_RELEASE_", "MOTO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(FAST_POLLS)
    env["TENANT_RELEASE_CONFIG"] = str(config)
    return env


@dataclass
class StackRun:
    state_dir: Path
    args: list[str]
    returncode: int | None = None
    output: str = ""

    @property
    def stack(self) -> local_stack.Stack:
        return local_stack.Stack(state_dir=self.state_dir)

    def last_run(self) -> dict:
        import json

        return json.loads((self.state_dir / "last_run.json").read_text())

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for log in sorted(self.state_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)


def until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll `probe` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = probe()
        except OSError:  # the API server busy for a moment (two cores): look again
            found = None
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f}s")


def option(run: StackRun, name: str) -> str:
    """The value of one of `up`'s options for this stack (its ports)."""
    return run.args[run.args.index(name) + 1]


@contextmanager
def isolated_stack(
    state_dir: Path,
    *extra_args: str,
    config: Path = CONFIG,
    tag: str = TAG,
    env: dict[str, str] | None = None,
    during: Callable[[StackRun], None] | None = None,
    up_timeout: float = UP_TIMEOUT,
) -> Iterator[StackRun]:
    """Run `up` on free ports in `state_dir`; always `down` afterwards and check that no process of it is left.

    `during` runs in this process while `up` starts the stack and follows the release (to break things mid-run).
    """
    args = [
        "up",
        "--tag",
        tag,
        "--timeout",
        str(FOLLOW_TIMEOUT),
        "--state-dir",
        str(state_dir),
        "--api-port",
        str(free_port()),
        "--moto-port",
        str(free_port()),
        "--worker-log-port",
        str(free_port()),
        "--trigger-log-port",
        str(free_port()),
        *extra_args,
    ]
    run = StackRun(state_dir=state_dir, args=args)
    failed = False
    try:
        up_log = state_dir.parent / f"{state_dir.name}-up.log"
        with open(up_log, "w+") as out:
            process = subprocess.Popen(
                [sys.executable, str(SCRIPT), *args],
                env={**clean_environment(config), **(env or {})},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
            deadline = time.monotonic() + up_timeout
            try:
                if during is not None:
                    during(run)
                run.returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # the stack itself is still running: `down` below stops it
                process.kill()
                process.wait()
                out.write(f"\n(local_stack.py up killed after {up_timeout}s)")
            except BaseException:
                process.kill()
                process.wait()
                raise
            finally:
                out.flush()
                out.seek(0)
                run.output = out.read()
                print(run.output)  # pytest shows it when the test fails
        yield run
    except BaseException:
        failed = True
        print(run.log_tails())
        raise
    finally:
        down = subprocess.run(
            [sys.executable, str(SCRIPT), "down", "--state-dir", str(state_dir)],
            env=clean_environment(config),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        print(down.stdout + down.stderr)
        left = local_stack.stragglers(run.stack)
        # Do not hide the test's own failure behind this one.
        assert failed or not left, f"`down` left processes of the stack running: {left}"


def tooling_dynamodb(moto_url: str, region: str) -> Any:
    """A DynamoDB client in the tooling account of the stack's moto server (its history, attempts, approvals)."""
    return boto3.client(
        "dynamodb", region_name=region, endpoint_url=moto_url, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def tenant_cloudformation(moto_url: str, target: Target) -> Any:
    """A CloudFormation client in the tenant's own account of the stack's moto server (as a test reads it)."""
    aws = {"endpoint_url": moto_url, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    sts = boto3.client("sts", region_name="us-east-1", **aws)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{target.account_id}:role/stack-test", RoleSessionName="stack-test")
    return boto3.client(
        "cloudformation",
        region_name=target.region,
        endpoint_url=moto_url,
        aws_access_key_id=creds["Credentials"]["AccessKeyId"],
        aws_secret_access_key=creds["Credentials"]["SecretAccessKey"],
        aws_session_token=creds["Credentials"]["SessionToken"],
    )


def assert_release_succeeded(run: StackRun) -> None:
    """Same outcome whatever the executor and metadata DB: every tenant of the default group on 1.0.0."""
    assert run.returncode == 0, f"local_stack.py up exited {run.returncode}; output above"
    facts = run.last_run()
    run_id = facts["run_id"]

    # Which tenants the release was for: the fleet file's default group, as the DAG's plan task computes it.
    loaded = load_fleet(CONFIG)
    plan = plan_release(loaded, parse_release_tag(TAG))
    assert plan.group == loaded.fleet.default_group
    targets = {t.name: t for t in plan.targets}
    assert targets, "the default group of config/tenants.yaml is empty"

    # Airflow: the DAG run and every tenant's task instance succeeded.
    stack = local_stack.Stack(state_dir=run.state_dir, api_port=int(facts["api_url"].rsplit(":", 1)[1]))
    token = local_stack.login(stack)
    dag_run = local_stack.http("GET", f"{stack.api_url}/api/v2/dags/{local_stack.DAG_ID}/dagRuns/{run_id}", token=token)
    assert dag_run["state"] == "success"
    deploys = [ti for ti in local_stack.task_instances(stack, run_id, token) if ti["task_id"] == local_stack.MAPPED_TASK]
    assert {ti["rendered_map_index"]: ti["state"] for ti in deploys} == dict.fromkeys(targets, "success")

    # A tenant's log, as the UI shows it: the task started and ran in the triggerer (no worker ever ran it), and
    # its steps are in that tenant's log.
    first = min(deploys, key=lambda ti: ti["map_index"])
    log_url = (
        f"{stack.api_url}/api/v2/dags/{local_stack.DAG_ID}/dagRuns/{run_id}/taskInstances/"
        f"{local_stack.MAPPED_TASK}/logs/{first['try_number']}?map_index={first['map_index']}"
    )
    log = json.dumps(local_stack.http("GET", log_url, token=token))
    name = first["rendered_map_index"]
    for step in (
        f"{name}: started in the triggerer by the scheduler",
        f"to {name} (account",
        "copied s3://",
        "executing CREATE change set",
        f"{name}: SUCCEEDED",
    ):
        assert step in log, step
    assert "Found endpoint for" not in log and "Found credentials" not in log  # botocore's chatter stays out
    assert "Worker startup parse complete" not in log

    # History table (tooling account) and each tenant's stack tag (its own account), read straight from moto.
    aws = {
        "endpoint_url": facts["moto_url"],
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    tooling = loaded.fleet.tooling
    dynamodb = boto3.client("dynamodb", region_name=tooling.region, **aws)
    history = ledger.get_many(dynamodb, tooling.history_table, tenants=targets, release=TAG)
    assert {name: (r.status, r.version, r.run_id) for name, r in history.items()} == dict.fromkeys(
        targets, (Outcome.SUCCEEDED, "1.0.0", run_id)
    )
    for name, target in targets.items():
        cloudformation = tenant_cloudformation(facts["moto_url"], target)
        assert stack_tag(describe_stack(cloudformation, target.stack_name), TAG_RELEASE_VERSION) == "1.0.0", name

    # What a person sees: progress in DAG order, then the summary table with every tenant.
    lines = run.output.splitlines()
    progress = [line.strip() for line in lines if line.startswith("  ") and line.rstrip().endswith(": success")]
    assert progress[0] == "plan: success"
    assert progress[-1] == "summary: success"
    assert all(f"{local_stack.MAPPED_TASK}[{name}]: success" in progress for name in targets)
    table = lines[lines.index(next(line for line in lines if line.startswith("TENANT "))) :]
    for name in targets:
        assert any(line.startswith(f"{name} ") and "SUCCEEDED" in line for line in table), name


def attempt_log(run: StackRun, run_id: str, map_index: int, attempt: int) -> str:
    """Every file of one attempt of a mapped deploy: its worker's log and each triggerer's (each writes its own)."""
    folder = (
        run.state_dir
        / "airflow"
        / "logs"
        / f"dag_id={local_stack.DAG_ID}"
        / f"run_id={run_id}"
        / f"task_id={local_stack.MAPPED_TASK}"
        / f"map_index={map_index}"
    )
    return "".join(path.read_text(errors="replace") for path in sorted(folder.glob(f"attempt={attempt}.log*")))
