"""A 100-tenant release through the main command (`scripts/local_stack.py up`), with figures; never pass/fail on time.

    python bench/release_100.py                      # 100 tenants, SQLite + LocalExecutor, own state dir and ports
    python bench/release_100.py --tenants 30 --keep  # leave the stack up afterwards for a look in the UI
    python bench/release_100.py -- --executor celery --sql-alchemy-conn postgresql+psycopg2://... --broker redis://...

Starts from nothing (a fresh state dir: new moto, new metadata DB), generates the fleet with bench/fleet_gen.py,
runs `up` with TENANT_RELEASE_CONFIG pointing at it, then prints: wall time of bootstrap and of the run,
task-instance durations from the REST API (min/median/max per task), retries, and what the component logs
say about "database is locked", tracebacks and task instances failed by a state race.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

import fleet_gen  # noqa: E402
import local_stack  # noqa: E402

# What to look for in the component logs: a name and a pattern per line.
LOG_SIGNS = {
    "database is locked": re.compile(r"database is locked"),
    "Traceback": re.compile(r"^Traceback \(most recent call last\)"),
    "state changed externally": re.compile(r"task-state-changed-externally|state changed externally"),
    "error lines": re.compile(r"\[error\s*\]|\bERROR\b"),
}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return f"min {min(values):6.1f}s  median {statistics.median(values):6.1f}s  max {max(values):6.1f}s"


def run_up(args: argparse.Namespace, fleet: Path, passthrough: list[str]) -> tuple[int, float]:
    env = dict(os.environ)
    env["TENANT_RELEASE_CONFIG"] = str(fleet)
    command = [
        sys.executable,
        str(ROOT / "scripts" / "local_stack.py"),
        "up",
        "--state-dir",
        str(args.state_dir),
        "--api-port",
        str(args.api_port),
        "--moto-port",
        str(args.moto_port),
        "--timeout",
        str(args.timeout),
        *passthrough,
    ]
    output = args.state_dir / "up-output.txt"
    print(f"$ TENANT_RELEASE_CONFIG={fleet} {' '.join(command[1:])}")
    print(f"  (progress in {output})", flush=True)
    started = time.monotonic()
    with open(output, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            # Step headers and warnings only; the per-task progress goes to the file.
            if re.match(r"^\d/5 |^  WARNING|^gave up|^run |^the |.*exited", line):
                print("  " + line.rstrip(), flush=True)
        returncode = process.wait()
    return returncode, time.monotonic() - started


def task_figures(stack: local_stack.Stack, run_id: str) -> None:
    token = local_stack.login(stack)
    instances = local_stack.task_instances(stack, run_id, token)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for ti in instances:
        by_task.setdefault(ti["task_id"], []).append(ti)
    order = local_stack.task_order(stack, token)
    print(f"\nTask instances: {len(instances)}  states: {dict(Counter(ti['state'] for ti in instances))}")
    # Airflow 3 keeps a deferred task's start date: `duration` spans its deferral and its wait for a slot to resume.
    print("Per task (Airflow's `duration`: first start to end, deferral included):")
    for task_id in sorted(by_task, key=lambda t: order.get(t, (99, t))):
        tis = by_task[task_id]
        durations = [ti["duration"] for ti in tis if ti.get("duration") is not None]
        print(f"  {task_id:<16} x{len(tis):<4} {seconds(durations)}")
    retried = [ti for ti in instances if (ti.get("try_number") or 1) > 1]
    print(f"Retries: {len(retried)} task instance(s) ran more than once", end="")
    if retried:
        shown = ", ".join(f"{local_stack.ti_label(ti, [])} (try {ti['try_number']})" for ti in retried[:20])
        print(f": {shown}{' ...' if len(retried) > 20 else ''}")
    else:
        print()
    deploys = [ti for ti in instances if ti["task_id"] == local_stack.MAPPED_TASK]
    starts = [parse_time(ti.get("start_date")) for ti in deploys if ti.get("start_date")]
    ends = [parse_time(ti.get("end_date")) for ti in deploys if ti.get("end_date")]
    if starts and ends:
        span = (max(ends) - min(starts)).total_seconds()
        print(f"Tenant phase: first deploy start to last deploy end {span:.0f}s ({len(deploys) / span * 60:.1f} tenants/min)")


def scan_logs(state_dir: Path) -> None:
    print("\nComponent logs:")
    for log in sorted(state_dir.glob("*.log")):
        counts = Counter()
        for line in log.read_text(errors="replace").splitlines():
            for sign, pattern in LOG_SIGNS.items():
                if pattern.search(line):
                    counts[sign] += 1
        found = ", ".join(f"{sign}: {counts[sign]}" for sign in LOG_SIGNS if counts[sign]) or "clean"
        print(f"  {log.name:<22} {found}")
    task_logs = list((state_dir / "airflow" / "logs").glob("dag_id=*/run_id=*/task_id=*/**/attempt=*.log"))
    failing = [p for p in task_logs if '"level":"error"' in p.read_text(errors="replace")]
    locked = [p for p in task_logs if "database is locked" in p.read_text(errors="replace")]
    print(f"  task logs: {len(task_logs)} files, {len(failing)} with error lines, {len(locked)} with 'database is locked'")
    for path in failing[:5]:
        print(f"    {path.relative_to(state_dir)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--state-dir", type=Path, default=None, help="default: <tmp>/tenant-release-bench-<N>")
    parser.add_argument("--api-port", type=int, default=18280, help="local_stack.py puts the log servers on +1 and +2")
    parser.add_argument("--moto-port", type=int, default=15280)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds `up` follows the run")
    parser.add_argument("--keep", action="store_true", help="leave the stack running (stop: local_stack.py down --state-dir)")
    args = parser.parse_args(argv)
    args.state_dir = (args.state_dir or Path(tempfile.gettempdir()) / f"tenant-release-bench-{args.tenants}").resolve()

    # Start from nothing: a stack left from an earlier run would skip the migration and keep old history.
    local_stack.down(local_stack.Stack(state_dir=args.state_dir))
    shutil.rmtree(args.state_dir, ignore_errors=True)
    args.state_dir.mkdir(parents=True)
    fleet = args.state_dir / "fleet.yaml"
    fleet_gen.main([str(args.tenants), "-o", str(fleet)])
    print(f"fleet: {args.tenants} tenants in {fleet}")

    try:
        returncode, elapsed = run_up(args, fleet, passthrough)
        last_run = args.state_dir / "last_run.json"
        facts = json.loads(last_run.read_text()) if last_run.exists() else {}
        timings = facts.get("timings", {})
        print(f"\n`up` exit code {returncode}, run state {facts.get('state')}, dead components: {facts.get('dead_components')}")
        print(f"Wall time: up {elapsed:.0f}s")
        for step in ("moto", "bootstrap", "airflow_start", "run"):
            if step in timings:
                print(f"  {step:<14} {timings[step]:6.1f}s")
        stack = local_stack.Stack(state_dir=args.state_dir, api_port=args.api_port)
        if facts.get("run_id"):
            task_figures(stack, facts["run_id"])
        scan_logs(args.state_dir)
    finally:
        if args.keep:
            print(f"\nstack left running: {local_stack.Stack(state_dir=args.state_dir, api_port=args.api_port).api_url}")
            print(f"stop it: python scripts/local_stack.py down --state-dir {args.state_dir}")
        else:
            print()
            local_stack.down(local_stack.Stack(state_dir=args.state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
