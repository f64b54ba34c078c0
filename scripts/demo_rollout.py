"""A progressive rollout in the real scheduler: `python scripts/demo_rollout.py` (tests/stack/test_rollout.py runs it small).

1. Writes a fleet of canary, early and general tenants in three waves: canary tolerates no failure; early tolerates
   one, bakes for `--bake-minutes` watching each tenant's `tenant-app-<name>-errors` alarm; general takes the rest.
2. `local_stack.py up` ships the release. In wave early one tenant's stack fails (the emulation's fail file) and,
   while the wave bakes, another tenant's alarm goes to ALARM: two failures, tolerance one. The rollout stops there;
   general's tenants end SKIPPED with the rule, and the summary prints the redeploy command.
3. Fixes both (the stack no longer fails, the alarm is OK) and redeploys only the failed and skipped tenants of that
   run (`redeploy_of`); checks that no tenant that succeeded before was touched.
4. Pauses the next release before it starts, shows `tenant-release status`, checks that nothing moved, resumes it,
   and follows it to the end.

Everything it saw goes to <state dir>/rollout_demo.json; the stack stays up (it prints how to stop it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "scripts"))

import local_stack  # noqa: E402

TOOLING = "123456789012"


def fleet_text(canary: int, early: int, general: int, bake_minutes: float) -> tuple[str, dict[str, str]]:
    accounts: dict[str, str] = {}
    lines = [
        f'tooling: {{account_id: "{TOOLING}", region: us-east-1, artifact_bucket: tenant-release-artifacts-{TOOLING}}}',
        f'dev: {{name: dev, account_id: "{TOOLING}"}}',
        'defaults: {region: us-east-1, alarms: ["tenant-app-{name}-errors"]}',
        "default_group: prod",
        "rollout:",
        "  waves:",
        "    - {name: canary, groups: [canary], max_failures: 0}",
        f"    - {{name: early, groups: [early], max_failures: 1, bake_minutes: {bake_minutes}}}",
        "    - {name: general}",
        "tenants:",
    ]
    number = 0
    for wave, count in (("canary", canary), ("early", early), ("general", general)):
        for index in range(1, count + 1):
            number += 1
            name = f"{wave}{index}"
            accounts[name] = f"3{number:011d}"
            groups = "[prod]" if wave == "general" else f"[prod, {wave}]"
            region = "eu-west-1" if number % 4 == 0 else "us-east-1"
            lines.append(f'  - {{name: {name}, account_id: "{accounts[name]}", region: {region}, groups: {groups}}}')
    return "\n".join(lines) + "\n", accounts


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state_dir = Path(args.state_dir).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="tenant-release-rollout-"))
        self.fleet = self.work / "tenants.yaml"
        text, self.accounts = fleet_text(args.canary, args.early, args.general, args.bake_minutes)
        self.fleet.write_text(text)
        self.fail_file = self.work / "failing-stacks.json"
        self.fail_file.write_text("{}")
        self.moto_url = f"http://127.0.0.1:{args.moto_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "TENANT_RELEASE_"))},
            "TENANT_RELEASE_CONFIG": str(self.fleet),
            "TENANT_RELEASE_MOTO_FAIL_FILE": str(self.fail_file),
            "AIRFLOW__TENANT_RELEASE__STACK_POLL_SECONDS": "5",
            "AIRFLOW__TENANT_RELEASE__APPROVAL_POLL_SECONDS": "5",
            "AIRFLOW__TENANT_RELEASE__BAKE_POLL_SECONDS": "5",
            "AIRFLOW__TENANT_RELEASE__CONTROL_POLL_SECONDS": "5",
        }
        self.cli_env = {
            **self.env,
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.facts: dict[str, Any] = {"fleet": str(self.fleet), "runs": {}}
        self.failing = f"early{min(3, args.early)}"
        self.alarmed = f"early{min(2, args.early)}" if args.early >= 2 else "early1"

    # --- AWS, as an operator or a monitoring system sees it -------------------------------------------------

    def client(self, service: str, tenant: str) -> Any:
        import boto3

        aws = {"endpoint_url": self.moto_url, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        creds = boto3.client("sts", region_name="us-east-1", **aws).assume_role(
            RoleArn=f"arn:aws:iam::{self.accounts[tenant]}:role/monitoring", RoleSessionName="demo"
        )["Credentials"]
        return boto3.client(
            service,
            region_name=self.region(tenant),
            endpoint_url=self.moto_url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    def region(self, tenant: str) -> str:
        from tenant_release.config import load_fleet

        return load_fleet(self.fleet).target(tenant).region

    def make_alarms(self) -> None:
        """Each early tenant's own error alarm, as its application's monitoring stack would create it."""
        for tenant in self.accounts:
            if tenant.startswith("early"):
                self.client("cloudwatch", tenant).put_metric_alarm(
                    AlarmName=f"tenant-app-{tenant}-errors",
                    MetricName="Errors",
                    Namespace="AWS/Lambda",
                    Statistic="Sum",
                    Period=60,
                    EvaluationPeriods=1,
                    Threshold=1,
                    ComparisonOperator="GreaterThanOrEqualToThreshold",
                )

    def set_alarm(self, tenant: str, state: str) -> None:
        self.client("cloudwatch", tenant).set_alarm_state(
            AlarmName=f"tenant-app-{tenant}-errors", StateValue=state, StateReason=f"demo: errors {state.lower()}"
        )

    def stack_marks(self) -> dict[str, tuple[str | None, int]]:
        """Per tenant: the version its stack holds and how many events it has (a touched stack gets new ones)."""
        from tenant_release.aws.stacks import TAG_RELEASE_VERSION, describe_stack, stack_tag

        marks = {}
        for tenant in self.accounts:
            cloudformation = self.client("cloudformation", tenant)
            stack = describe_stack(cloudformation, f"tenant-app-{tenant}")
            events = 0
            if stack is not None:
                events = len(cloudformation.describe_stack_events(StackName=f"tenant-app-{tenant}")["StackEvents"])
            marks[tenant] = (stack_tag(stack, TAG_RELEASE_VERSION) if stack else None, events)
        return marks

    def outcomes(self, tag: str, run_id: str) -> dict[str, dict[str, str]]:
        from tenant_release.aws import ledger
        from tenant_release.aws.session import AwsSessions

        os.environ.update({k: self.cli_env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        dynamodb = AwsSessions().tooling_client("dynamodb", "us-east-1")
        found = ledger.get_many(dynamodb, "tenant-release-history", tenants=list(self.accounts), release=tag)
        return {
            name: {"status": result.status.value, "reason": result.reason or "", "run_id": result.run_id}
            for name, result in found.items()
        }

    # --- Airflow --------------------------------------------------------------------------------------------

    def stack(self) -> local_stack.Stack:
        return local_stack.running_stack(self.state_dir)

    def local_stack(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(BIN / "python"), str(ROOT / "scripts" / "local_stack.py"), *args, "--state-dir", str(self.state_dir)],
            env=self.env,
            cwd=ROOT,
        )

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "tenant-release"), *args], env=self.cli_env, cwd=ROOT, capture_output=True, text=True, check=False
        )
        output = (done.stdout + done.stderr).strip()
        print(f"$ tenant-release {' '.join(args)}\n{output}", flush=True)
        if done.returncode != 0:
            raise SystemExit(f"tenant-release {' '.join(args)} exited {done.returncode}")
        return output

    def task_state(self, run_id: str, task_id: str) -> str | None:
        stack = self.stack()
        token = local_stack.login(stack)
        for ti in local_stack.task_instances(stack, run_id, token):
            if ti["task_id"] == task_id and ti["map_index"] == -1:
                return ti["state"]
        return None

    def last_run(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "last_run.json").read_text())

    # --- the story ------------------------------------------------------------------------------------------

    def first_release(self) -> str:
        tag = self.args.tag
        self.fail_file.write_text(json.dumps({f"tenant-app-{self.failing}": "Resource handler returned message: demo failure"}))
        up = self.local_stack(
            "up", "--tag", tag, "--api-port", str(self.args.api_port), "--moto-port", str(self.args.moto_port), "--timeout", "900"
        )
        # The alarms exist before the release, as a tenant's monitoring does; one fires while wave early bakes.
        while not (self.state_dir / "last_run.json").exists() or self.last_run().get("tag") != tag:
            time.sleep(2)
            if up.poll() is not None:
                raise SystemExit(f"local_stack.py up exited {up.returncode} before the run started")
        self.make_alarms()
        run_id = self.last_run()["run_id"]
        while self.task_state(run_id, "wave_2.bake") not in {"deferred", "success", "failed"}:
            time.sleep(3)
            if up.poll() is not None:
                break
        if up.poll() is None:
            print(f"### wave early is baking: {self.alarmed}'s alarm goes to ALARM", flush=True)
            self.set_alarm(self.alarmed, "ALARM")
        up.wait()
        self.facts["runs"]["first"] = {
            "run_id": run_id,
            "state": self.last_run()["state"],
            "outcomes": self.outcomes(tag, run_id),
        }
        return run_id

    def redeploy(self, first_run: str) -> None:
        tag = self.args.tag
        print(
            f"### fix {self.failing}'s stack and {self.alarmed}'s errors, then redeploy only the failed and skipped", flush=True
        )
        self.fail_file.write_text("{}")
        self.set_alarm(self.alarmed, "OK")
        before = self.stack_marks()
        runner = self.local_stack("run", "--tag", tag, "--conf", json.dumps({"redeploy_of": first_run}), "--timeout", "900")
        runner.wait()
        run_id = self.last_run()["run_id"]
        after = self.stack_marks()
        self.facts["runs"]["redeploy"] = {
            "run_id": run_id,
            "state": self.last_run()["state"],
            "outcomes": self.outcomes(tag, run_id),
            "touched": sorted(tenant for tenant in self.accounts if before[tenant] != after[tenant]),
            "versions": {tenant: after[tenant][0] for tenant in self.accounts},
        }

    def paused_release(self) -> None:
        tag = self.args.next_tag
        print(f"### pause {tag} before it starts, look, then resume it", flush=True)
        self.cli("pause", tag, "--reason", "waiting for the support team")
        before = self.stack_marks()
        runner = self.local_stack("run", "--tag", tag, "--timeout", "900")
        while not (self.state_dir / "last_run.json").exists() or self.last_run().get("tag") != tag:
            time.sleep(2)
        run_id = self.last_run()["run_id"]
        held_at = None
        for _ in range(60):
            held_at = self.task_state(run_id, "wave_1.open")
            if held_at == "deferred":
                break
            time.sleep(3)
        time.sleep(self.args.paused_seconds)
        status = self.cli("status", tag)
        during = self.stack_marks()
        self.cli("resume", tag)
        runner.wait()
        self.facts["runs"]["paused"] = {
            "run_id": run_id,
            "wave_1_open_while_paused": held_at,
            "moved_while_paused": sorted(t for t in self.accounts if before[t] != during[t]),
            "status_while_paused": status,
            "state": self.last_run()["state"],
            "outcomes": self.outcomes(tag, run_id),
        }

    def run(self) -> int:
        try:
            first = self.first_release()
            self.redeploy(first)
            self.paused_release()
        finally:
            (self.state_dir / "rollout_demo.json").write_text(json.dumps(self.facts, indent=2))
            print(f"facts: {self.state_dir / 'rollout_demo.json'}", flush=True)
            if self.args.down:
                self.local_stack("down").wait()
            else:
                print(f"stop the stack: python scripts/local_stack.py down --state-dir {self.state_dir}")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="v3.0.0")
    parser.add_argument("--next-tag", default="v3.1.0")
    parser.add_argument("--canary", type=int, default=3)
    parser.add_argument("--early", type=int, default=8)
    parser.add_argument("--general", type=int, default=10)
    parser.add_argument("--bake-minutes", type=float, default=1.0)
    parser.add_argument("--paused-seconds", type=float, default=20.0, help="how long the paused release is left paused")
    parser.add_argument("--state-dir", default=str(ROOT / ".local-rollout"))
    parser.add_argument("--api-port", type=int, default=8092)
    parser.add_argument("--moto-port", type=int, default=5092)
    parser.add_argument("--down", action="store_true", help="stop the stack at the end")
    return Demo(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
