"""Fleet scale, measured side by side (issue 8): our release through the real scheduler beside the plain ways.

    python bench/fleet_scale.py                                     # N = 10 100 500 1000, every mode, both executors
    python bench/fleet_scale.py --sizes 10 100 --executors local    # a subset
    python bench/fleet_scale.py --modes instant noop --settle 60

For each executor (`local`: SQLite + LocalExecutor, the embedded default; `celery`: PostgreSQL + CeleryExecutor
on Redis) one stack runs from nothing (fresh moto server, fresh metadata DB) and, per fleet size N, three
releases are measured:
- `instant`: a new version to N tenants whose stacks settle at once (moto's own behaviour);
- `slow`: a new version with every stack reporting `*_IN_PROGRESS` for `--settle` seconds (60) after its change
  set executes (the moto server of `scripts/moto_compat.py` does this);
- `noop`: the `slow` release again, every tenant already at that version and artifact.
Beside each, on the same moto server and in the same invocation, the same AWS work without Airflow
(`TargetDeployment.run_to_completion`, the library the DAG uses): `sequential`, one tenant after another as a
shell loop or a plain boto3 script does it, and `floor`, a thread pool making the same calls (for `slow`, one
thread per tenant: the floor is the settle time plus the work). A sequential slow release would take N x 60 s;
it is not run but computed (instant sequential + N x settle) and marked `sequential_estimated`.
Bootstrap is measured on the first stack: N_max accounts from nothing, again with nothing changed, and after
adding one tenant. Each run also records where its time went: each unmapped task's start and end from the run's
start (`tasks`), and the CPU seconds each component used (`cpu_s`: moto, scheduler with its LocalExecutor
workers, triggerer, API server, DAG processor, Celery worker).

`--merge` keeps the rows of the results file that this invocation does not measure (each row has
`measured_at`); `--no-plain` measures ours only (iterating on a change).

Printed as a table and written to bench/results/fleet_scale.json. Figures only: it never passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "plugins"))

import fleet_gen  # noqa: E402
import local_stack  # noqa: E402
import moto_compat  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet_scale.json"
POLL_SECONDS = 5.0  # our triggers' and the plain script's stack poll interval, the same for both
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
FINISHED = {"success", "failed", "upstream_failed", "skipped", "removed"}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


# --- one stack (moto + Airflow) for one executor ------------------------------------------------------------


@dataclass(kw_only=True)
class Harness:
    executor: str
    state_dir: Path
    api_port: int
    moto_port: int
    parallelism: int
    stack: local_stack.Stack = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        database = None
        broker = None
        if self.executor == "celery":
            database = PG_URL.format(db="tenant_release_bench")
            broker = "redis://127.0.0.1:6379/7"
        self.stack = local_stack.Stack(
            state_dir=self.state_dir,
            api_port=self.api_port,
            moto_port=self.moto_port,
            worker_log_port=self.api_port + 1,
            trigger_log_port=self.api_port + 2,
            executor=self.executor,
            sql_alchemy_conn=database,
            broker=broker,
            parallelism=self.parallelism,
        )
        self.env = local_stack.environment(self.stack)
        self.env.update(
            {
                "TENANT_RELEASE_CONFIG": str(self.fleet_file),
                moto_compat.SETTLE_FILE_ENV: str(self.settle_file),
                moto_compat.QUIET_ENV: "1",
                "AIRFLOW__TENANT_RELEASE__STACK_POLL_SECONDS": str(POLL_SECONDS),
                "AIRFLOW__TENANT_RELEASE__APPROVAL_POLL_SECONDS": "5",
            }
        )

    @property
    def fleet_file(self) -> Path:
        return self.state_dir / "fleet.yaml"

    @property
    def settle_file(self) -> Path:
        return self.state_dir / "settle_seconds"

    def write_fleet(self, count: int) -> None:
        fleet = fleet_gen.generate(count)
        fleet.pop("schedule", None)  # no release windows or freezes: a benchmark run must never meet a freeze
        self.fleet_file.write_text(yaml.safe_dump(fleet, sort_keys=False))

    def settle(self, seconds: float) -> None:
        self.settle_file.write_text(str(seconds))

    def start_moto(self) -> None:
        local_stack.prepare_airflow_home(self.stack)
        self.settle(0)
        pids = local_stack.forget_dead(self.stack, local_stack.read_pids(self.stack))
        command = [sys.executable, str(ROOT / "scripts" / "moto_compat.py"), "-H", "127.0.0.1", "-p", str(self.moto_port)]
        local_stack.start(self.stack, "moto", command, self.env, pids)
        url = self.stack.moto_url
        local_stack.wait_for(self.stack, "moto", lambda: local_stack.http("GET", f"{url}/moto-api/config") is not None, 60, 0.5)
        local_stack.http("POST", f"{url}/moto-api/config", {"lambda": {"use_docker": False}})

    def bootstrap(self) -> float:
        started = time.monotonic()
        result = subprocess.run(
            [str(local_stack.BIN / "tenant-release"), "bootstrap"], env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"bootstrap failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        print(f"    {result.stdout.strip().splitlines()[-1]}", flush=True)
        return time.monotonic() - started

    def start_airflow(self) -> None:
        if self.executor == "celery":
            subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "tenant_release_bench"], check=False)
            subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", "tenant_release_bench"], check=True)
            subprocess.run(["redis-cli", "-n", "7", "flushdb"], check=False, capture_output=True)
        local_stack.run_checked([str(local_stack.BIN / "airflow"), "db", "migrate"], self.env, "airflow db migrate")
        pids = local_stack.read_pids(self.stack)
        for component in self.stack.components:
            local_stack.start(self.stack, component, local_stack.component_command(self.stack, component), self.env, pids)
        api = self.stack.api_url
        local_stack.wait_for(self.stack, "the API server", lambda: local_stack.http("GET", f"{api}/api/v2/monitor/health"), 180)
        token = local_stack.login(self.stack)
        local_stack.wait_for(self.stack, "the DAG", lambda: local_stack.dag_ready(self.stack, token), 240, 2)
        local_stack.http("PATCH", f"{api}/api/v2/dags/{local_stack.DAG_ID}", {"is_paused": False}, token)

    def approve_once_built(self, tag: str, run_url: str, token: str) -> bool:
        """The release gate, decided by an approval record (as `tenant-release approve TAG` writes it).

        An approval names the artifact it approves (the build manifest's sha256), so it is recorded once the run's
        build task has published it; True once recorded.
        """
        if local_stack.http("GET", f"{run_url}/taskInstances/build", token=token).get("state") != "success":
            return False
        result = subprocess.run(
            [str(local_stack.BIN / "tenant-release"), "approve", tag, "--by", "bench"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"approve failed: {result.stdout}{result.stderr}")
        return True

    def release(self, tag: str, *, timeout: float) -> dict[str, Any]:
        """Trigger one run and follow it to the end, sampling worker slots and memory; returns its figures."""
        api = self.stack.api_url
        token = local_stack.login(self.stack)
        started = time.monotonic()
        run = local_stack.http(
            "POST", f"{api}/api/v2/dags/{local_stack.DAG_ID}/dagRuns", {"logical_date": None, "conf": {"release_tag": tag}}, token
        )
        run_id = run["dag_run_id"]
        cpu_before = cpu_seconds_by_component(self.stack)
        sampler = Sampler(self)
        sampler.start(run_id)
        try:
            deadline = started + timeout
            state = "running"
            run_url = f"{api}/api/v2/dags/{local_stack.DAG_ID}/dagRuns/{run_id}"
            approved = False
            while time.monotonic() < deadline:
                local_stack.ensure_running(self.stack)
                try:
                    approved = approved or self.approve_once_built(tag, run_url, token)
                    # The last task's state, not the run's: Airflow 3.3 answers GET dagRuns/{id} by loading every
                    # task instance of the run (its DAG versions), about 0.2 s of the API server's CPU at a
                    # thousand tenants, which polling each second would take from the release being measured.
                    last = local_stack.http("GET", f"{run_url}/taskInstances/summary", token=token)["state"]
                    state = local_stack.http("GET", run_url, token=token)["state"] if last in FINISHED else "running"
                except urllib.error.HTTPError as exc:
                    if exc.code == 401:  # the token expired: log in again (not every second: it costs the API server)
                        token = local_stack.login(self.stack)
                    state = "running"
                except (urllib.error.URLError, OSError):
                    state = "running"
                if state in {"success", "failed"}:
                    break
                time.sleep(1)
            wall = time.monotonic() - started
        finally:
            sampler.stop()
        cpu_after = cpu_seconds_by_component(self.stack)
        figures = self.run_figures(run_id, started_wall=run.get("start_date") or run.get("queued_at"))
        figures.update(
            cpu_s={name: round(cpu_after[name] - cpu_before.get(name, 0.0), 1) for name in sorted(cpu_after)},
            run_id=run_id,
            state=state,
            wall_s=round(wall, 1),
            worker_slots_busy_max=sampler.busy_max,
            worker_slots_busy_max_while_waiting=sampler.busy_max_waiting,
            peak_rss_mb=round(sampler.rss_max_mb),
        )
        return figures

    def run_figures(self, run_id: str, *, started_wall: str | None) -> dict[str, Any]:
        token = local_stack.login(self.stack)
        instances = local_stack.task_instances(self.stack, run_id, token)
        deploys = [ti for ti in instances if ti["task_id"] == local_stack.MAPPED_TASK and ti["map_index"] >= 0]
        run = local_stack.http("GET", f"{self.stack.api_url}/api/v2/dags/{local_stack.DAG_ID}/dagRuns/{run_id}", token=token)
        run_start = parse_time(run.get("start_date"))
        starts = [parse_time(ti["start_date"]) for ti in deploys if ti.get("start_date")]
        ends = [parse_time(ti["end_date"]) for ti in deploys if ti.get("end_date")]
        first = (min(starts) - run_start).total_seconds() if starts and run_start else None
        # The tenants' part of the run: first tenant's task start to last tenant's end (after build, dev, gate).
        phase = (max(ends) - min(starts)).total_seconds() if starts and ends else None
        return {
            "tasks": task_timeline(instances, run_start),
            "task_instances": len(instances),
            "deploy_task_instances": len(deploys),
            "retries": sum(1 for ti in instances if (ti.get("try_number") or 1) > 1),
            "first_deploy_s": round(first, 1) if first is not None else None,
            "tenant_phase_s": round(phase, 1) if phase is not None else None,
            "worker_executions": self.worker_executions(run_id),
            "outcomes": self.outcomes(run_id),
        }

    def worker_executions(self, run_id: str) -> int:
        """Task executions on a worker: each writes "Worker startup parse complete" to its attempt's log file."""
        run_dir = self.stack.airflow_home / "logs" / f"dag_id={local_stack.DAG_ID}" / f"run_id={run_id}"
        count = 0
        for path in run_dir.glob("task_id=*/**/attempt=*.log"):
            if ".trigger." not in path.name:
                count += path.read_text(errors="replace").count("Worker startup parse complete")
        return count

    def outcomes(self, run_id: str) -> dict[str, int]:
        os.environ.update({k: self.env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        from tenant_release.aws.session import AwsSessions
        from tenant_release.config import load_fleet

        loaded = load_fleet(self.fleet_file)
        tooling = loaded.fleet.tooling
        dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
        counts: dict[str, int] = {}
        for page in dynamodb.get_paginator("query").paginate(
            TableName=tooling.history_table,
            IndexName="by-run",
            KeyConditionExpression="run_id = :run",
            ExpressionAttributeValues={":run": {"S": run_id}},
        ):
            for item in page.get("Items", []):
                status = item["status"]["S"]
                counts[status] = counts.get(status, 0) + 1
        return counts

    def dag_parse_seconds(self) -> float:
        """Parse the release DAG file in a fresh interpreter (what the DAG processor and each task do)."""
        code = (
            "import time, airflow.sdk\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            f"t = time.perf_counter(); bag = DagBag(dag_folder={str(ROOT / 'dags' / 'release.py')!r})\n"
            "assert not bag.import_errors, bag.import_errors\n"
            "print(time.perf_counter() - t)\n"
        )
        # Plugins loaded lazily here: eager loading would import our modules before the clock starts.
        env = {**self.env, "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "True"}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return round(float(result.stdout.strip().splitlines()[-1]), 3)

    def stop(self) -> None:
        local_stack.down(self.stack)


class Sampler:
    """Once a second: task instances running on a worker (slots in use), deferred ones, and the Airflow processes' memory.

    `busy_max_waiting` is the most worker slots in use while tenants wait for their stacks: some tenant's `deploy`
    instance deferred and no task instance left to start (scheduled or queued). A tenant that holds a slot while
    it waits shows up there.
    """

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.busy_max = 0
        self.busy_max_waiting = 0
        self.rss_max_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, run_id: str) -> None:
        self._thread = threading.Thread(target=self._loop, args=(run_id,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _count(self, run_id: str, states: list[str], token: str, *, task_id: str | None = None) -> int:
        stack = self.harness.stack
        query = "&".join(f"state={state}" for state in states)
        instances = f"{stack.api_url}/api/v2/dags/{local_stack.DAG_ID}/dagRuns/{run_id}/taskInstances"
        if task_id is not None:
            instances += f"/{task_id}/listMapped"
        return int(local_stack.http("GET", f"{instances}?{query}&limit=1", token=token)["total_entries"])

    def _loop(self, run_id: str) -> None:
        token = local_stack.login(self.harness.stack)
        while not self._stop.wait(1.0):
            try:
                running = self._count(run_id, ["running"], token)
                # Tenants waiting: `deploy` instances deferred. (dev's own deferral while `fleet_changes` runs
                # on a worker is not a tenant holding a slot.)
                deferred = self._count(run_id, ["deferred"], token, task_id=local_stack.MAPPED_TASK)
                to_start = self._count(run_id, ["scheduled", "queued"], token) if deferred else 0
            except (urllib.error.URLError, OSError, KeyError):
                continue
            self.busy_max = max(self.busy_max, running)
            if deferred and not to_start:
                self.busy_max_waiting = max(self.busy_max_waiting, running)
            self.rss_max_mb = max(self.rss_max_mb, airflow_rss_mb(self.harness.stack))


def task_timeline(instances: list[dict[str, Any]], run_start: datetime | None) -> dict[str, list[float | None]]:
    """Each unmapped task's [start, end] in seconds from the run's start: where the time before the tenants goes."""
    timeline: dict[str, list[float | None]] = {}
    if run_start is None:
        return timeline
    for ti in instances:
        if ti["map_index"] >= 0:
            continue
        start, end = parse_time(ti.get("start_date")), parse_time(ti.get("end_date"))
        timeline[ti["task_id"]] = [
            round((start - run_start).total_seconds(), 1) if start else None,
            round((end - run_start).total_seconds(), 1) if end else None,
        ]
    return timeline


def cpu_seconds_by_component(stack: local_stack.Stack) -> dict[str, float]:
    """CPU seconds used so far by each component (moto, scheduler, triggerer...) with every process it started.

    Each component runs in a session of its own; a live process's own time plus the time of the children it has
    reaped counts every process of that session once (a task process that ended is in its parent's figure).
    """
    sessions = {pid: name for name, pid in local_stack.read_pids(stack).items()}
    ticks = os.sysconf("SC_CLK_TCK")
    used = dict.fromkeys(sessions.values(), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        name = sessions.get(int(fields[3]))  # field 6 of stat: the session id
        if name is not None:
            used[name] += sum(int(value) for value in fields[11:15]) / ticks  # utime stime cutime cstime
    return used


def airflow_rss_mb(stack: local_stack.Stack) -> float:
    """Resident memory of every process of this stack but the AWS emulation."""
    total = 0
    moto = local_stack.read_pids(stack).get("moto")
    for pid in local_stack.stragglers(stack):
        if pid == moto:
            continue
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        total += pages * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


# --- the same AWS work without Airflow ----------------------------------------------------------------------


def plain_release(harness: Harness, version: str, *, threads: int) -> float:
    """Build, deploy dev, then every tenant with `TargetDeployment.run_to_completion`: `threads` at a time."""
    os.environ.update({k: harness.env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    from tenant_release.aws.session import AwsSessions
    from tenant_release.build import build_release
    from tenant_release.config import load_fleet
    from tenant_release.deploy import ReleaseRun, TargetDeployment
    from tenant_release.tags import parse_release_tag

    started = time.monotonic()
    loaded = load_fleet(harness.fleet_file)
    sessions = AwsSessions()
    release = parse_release_tag(f"v{version}")
    targets = loaded.tenants()
    fleet = loaded.fleet
    artifact = build_release(
        sessions, tooling=fleet.tooling, application=fleet.application, fleet_path=loaded.path, release=release, targets=targets
    )
    run = ReleaseRun(
        release=release,
        run_id=f"plain-{version}-{threads}",
        artifact=artifact,
        tooling=fleet.tooling,
        application=fleet.application,
        # The plain runs take versions of their own, measured in any order beside ours: going back is expected.
        allow_rollback="benchmark: the plain way's versions interleave with ours",
    )
    dev = TargetDeployment(sessions=sessions, run=run, target=loaded.target(loaded.fleet.dev.name), record_history=False)
    dev.run_to_completion(poll_interval=POLL_SECONDS)
    failures = []

    def one(target: Any) -> None:
        try:
            TargetDeployment(sessions=sessions, run=run, target=target).run_to_completion(poll_interval=POLL_SECONDS)
        except Exception as exc:
            failures.append(f"{target.name}: {exc}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, targets))
    if failures:
        print(f"    plain release {version}: {len(failures)} failed, e.g. {failures[0]}")
    return time.monotonic() - started


# --- the benchmark ------------------------------------------------------------------------------------------


def measure_bootstrap(harness: Harness, n_max: int) -> dict[str, Any]:
    harness.write_fleet(n_max)
    print(f"  bootstrap of {n_max} tenant accounts (+ tooling, dev) from nothing", flush=True)
    from_nothing = harness.bootstrap()
    print("  bootstrap again, nothing changed", flush=True)
    unchanged = harness.bootstrap()
    harness.write_fleet(n_max + 1)
    print("  bootstrap after adding one tenant", flush=True)
    add_one = harness.bootstrap()
    harness.write_fleet(n_max)
    return {
        "kind": "bootstrap",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "executor": harness.executor,
        "n": n_max,
        "from_nothing_s": round(from_nothing, 1),
        "unchanged_s": round(unchanged, 1),
        "add_one_s": round(add_one, 1),
    }


def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    plain_cache: dict[tuple[int, str], dict[str, Any]] = {}
    n_max = max(args.sizes)
    for index, executor in enumerate(args.executors):
        state_dir = Path(tempfile.mkdtemp(prefix=f"tenant-release-scale-{executor}-"))
        harness = Harness(
            executor=executor,
            state_dir=state_dir,
            api_port=args.api_port + 10 * index,
            moto_port=args.moto_port + index,
            parallelism=args.parallelism,
        )
        print(f"\n== {executor}: {harness.stack.describe()} (state in {state_dir})", flush=True)
        try:
            harness.start_moto()
            if args.no_bootstrap or index > 0:  # measured on the first stack only
                harness.write_fleet(n_max)
                harness.bootstrap()
            else:
                rows.append(measure_bootstrap(harness, n_max))
                print(f"  {rows[-1]}", flush=True)
            harness.start_airflow()
            for n in sorted(args.sizes):
                harness.write_fleet(n)
                parse = harness.dag_parse_seconds()
                # Ours for every mode first, then the plain script for every mode: `noop` must repeat a release
                # with nothing deployed in between (the plain runs deploy versions of their own).
                ours_rows = []
                for mode in args.modes:
                    tag, settle = ours_release(n, mode, index, args)
                    harness.settle(settle)
                    print(f"  N={n} {mode}: ours ({tag})", flush=True)
                    when = datetime.now(UTC).isoformat(timespec="seconds")
                    figures = harness.release(tag, timeout=args.timeout)
                    ours_rows.append({"n": n, "mode": mode, "executor": executor, "measured_at": when, **figures})
                for row in ours_rows:
                    plain = plain_cache.get((n, row["mode"]))
                    if plain is None and not args.plain:
                        plain = {}
                    elif plain is None:
                        plain = measure_plain(harness, n, row["mode"], args, plain_cache)
                        plain_cache[(n, row["mode"])] = plain
                    row.update(plain, dag_parse_s=parse)
                    row["ratio_floor"] = round(row["wall_s"] / row["floor_s"], 2) if row.get("floor_s") else None
                    row["ratio_sequential"] = round(row["wall_s"] / row["sequential_s"], 3) if row.get("sequential_s") else None
                    if row["mode"] == "instant":
                        row["overhead_per_tenant_s"] = round((row["wall_s"] - row["floor_s"]) / n, 3)
                    rows.append(row)
                    print(f"    {summary_line(row)}", flush=True)
                    write_results(rows, args)

        finally:
            if not args.keep:
                harness.stop()
                shutil.rmtree(state_dir, ignore_errors=True)
    return rows


def ours_release(n: int, mode: str, executor_index: int, args: argparse.Namespace) -> tuple[str, float]:
    """(tag, settle seconds) of our release in `mode`: a new version for `instant` and `slow`; `noop` repeats the last."""
    minor = {"instant": 1, "slow": 2}.get(mode) or (2 if "slow" in args.modes else 1)
    settle = args.settle if mode == "slow" or (mode == "noop" and minor == 2) else 0.0
    return f"v{n}.{minor + 10 * executor_index}.0", settle


def measure_plain(harness: Harness, n: int, mode: str, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    """The plain script's figures for this N and mode (once per N and mode; the executor plays no part)."""
    repeat = "slow" if "slow" in args.modes else "instant"
    source = repeat if mode == "noop" else mode
    version = f"{n}.{ {'instant': 101, 'slow': 102}[source] }.0"
    settle = args.settle if source == "slow" else 0.0
    harness.settle(settle)
    threads = min(n, 1000) if settle else 32
    print(f"  N={n} {mode}: plain floor ({threads} threads)", flush=True)
    floor = plain_release(harness, version, threads=threads)
    if mode == "slow":
        instant = cache.get((n, "instant"), {})
        estimated = (instant.get("sequential_s") or floor) + n * settle
        return {"floor_s": round(floor, 1), "sequential_s": round(estimated, 1), "sequential_estimated": True}
    print(f"  N={n} {mode}: plain sequential", flush=True)
    if mode == "instant":
        version = f"{n}.103.0"  # a new version again, so that the sequential run also deploys
    sequential = plain_release(harness, version, threads=1)
    return {"floor_s": round(floor, 1), "sequential_s": round(sequential, 1), "sequential_estimated": False}


def summary_line(row: dict[str, Any]) -> str:
    return (
        f"wall {row['wall_s']}s  tenant phase {row.get('tenant_phase_s')}s  floor {row.get('floor_s')}s  "
        f"sequential {row.get('sequential_s')}s"
        f"{' (est.)' if row.get('sequential_estimated') else ''}  ratio/floor {row.get('ratio_floor')}  "
        f"TIs {row['task_instances']} (deploy {row['deploy_task_instances']})  worker runs {row['worker_executions']}  "
        f"slots max {row['worker_slots_busy_max']} (while waiting {row['worker_slots_busy_max_while_waiting']})  "
        f"rss {row['peak_rss_mb']} MB  state {row['state']}  {row['outcomes']}\n"
        f"      tasks {row.get('tasks')}\n      cpu s {row.get('cpu_s')}"
    )


def row_key(row: dict[str, Any]) -> tuple:
    return (row.get("kind", "release"), row["n"], row.get("mode"), row["executor"])


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and results.exists():
        # Rows this invocation did not measure stay as they were.
        measured = {row_key(r) for r in rows}
        kept = [r for r in json.loads(results.read_text())["rows"] if row_key(r) not in measured]
        order = {"instant": 0, "slow": 1, "noop": 2}
        rows = sorted(
            kept + rows, key=lambda r: (r["executor"], r.get("kind") != "bootstrap", r["n"], order.get(r.get("mode"), -1))
        )
    meta = {
        "command": "python bench/fleet_scale.py " + " ".join(args.argv),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "settle_s": args.settle,
        "poll_s": POLL_SECONDS,
        "parallelism": args.parallelism,
    }
    results.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    runs = [r for r in rows if r.get("kind") != "bootstrap"]
    header = (
        f"{'n':>5} {'mode':<8} {'exec':<7} {'wall_s':>7} {'floor_s':>7} {'seq_s':>8} {'÷floor':>7} {'÷seq':>6} "
        f"{'ovh/ten':>7} {'1st_s':>6} {'phase':>6} {'TIs':>5} {'wrk':>5} {'slots':>5} {'rss_MB':>6} {'parse':>6}  outcomes"
    )
    print("\n" + header)
    for r in runs:
        seq = f"{r.get('sequential_s')}{'*' if r.get('sequential_estimated') else ''}"
        print(
            f"{r['n']:>5} {r['mode']:<8} {r['executor']:<7} {r['wall_s']:>7} {r.get('floor_s', '-'):>7} {seq:>8} "
            f"{r.get('ratio_floor') or '-':>7} {r.get('ratio_sequential') or '-':>6} {r.get('overhead_per_tenant_s', '-'):>7} "
            f"{r.get('first_deploy_s') or '-':>6} {r.get('tenant_phase_s') or '-':>6} "
            f"{r['task_instances']:>5} {r['worker_executions']:>5} "
            f"{r['worker_slots_busy_max_while_waiting']:>5} {r['peak_rss_mb']:>6} {r['dag_parse_s']:>6}  {r['outcomes']}"
        )
    print("  * sequential slow = instant sequential + N x settle (not run: it would take N minutes)")
    print("  slots = most task instances on a worker while tenants waited in the triggerer (none left to start)")
    print("  phase = first tenant's task start to last tenant's end (after build, dev and the gate)")
    for r in rows:
        if r.get("kind") == "bootstrap":
            print(
                f"bootstrap ({r['executor']}) {r['n']} accounts: from nothing {r['from_nothing_s']}s, "
                f"nothing changed {r['unchanged_s']}s, one tenant added {r['add_one_s']}s"
            )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as the README shows them (`--markdown`: from bench/results/fleet_scale.json, nothing is run)."""
    lines = [
        "| N | mode | executor | ours s | floor s | sequential s | ours ÷ floor | ours ÷ sequential | overhead / tenant s "
        "| first deploy s | tenant phase s | task instances | worker runs | slots busy while waiting | peak RSS MB | parse s "
        "| outcomes |",
        "|---" * 17 + "|",
    ]
    for r in rows:
        if r.get("kind") == "bootstrap":
            continue
        seq = r.get("sequential_s")
        seq_text = "" if seq is None else f"{seq:,.1f}{' (est.)' if r.get('sequential_estimated') else ''}"
        cells = [
            r["n"],
            r["mode"],
            r["executor"],
            r["wall_s"],
            r.get("floor_s", ""),
            seq_text,
            r.get("ratio_floor") or "",
            r.get("ratio_sequential") or "",
            r.get("overhead_per_tenant_s", ""),
            r.get("first_deploy_s") if r.get("first_deploy_s") is not None else "-",
            r.get("tenant_phase_s") if r.get("tenant_phase_s") is not None else "-",
            r["task_instances"],
            r["worker_executions"],
            r["worker_slots_busy_max_while_waiting"],
            r["peak_rss_mb"],
            r.get("dag_parse_s", ""),
            ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for r in rows:
        if r.get("kind") == "bootstrap":
            lines.append(
                f"\nBootstrap ({r['executor']}), {r['n']:,} tenant accounts + dev + tooling: {r['from_nothing_s']} s from "
                f"nothing, {r['unchanged_s']} s again with nothing changed, {r['add_one_s']} s after adding one tenant."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500, 1000])
    parser.add_argument("--modes", nargs="+", choices=["instant", "slow", "noop"], default=["instant", "slow", "noop"])
    parser.add_argument("--executors", nargs="+", choices=["local", "celery"], default=["local", "celery"])
    parser.add_argument("--settle", type=float, default=60.0, help="seconds a stack takes to settle in `slow` mode")
    parser.add_argument("--parallelism", type=int, default=8, help="worker slots (LocalExecutor processes, Celery concurrency)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one run")
    parser.add_argument("--api-port", type=int, default=18380)
    parser.add_argument("--moto-port", type=int, default=15380)
    parser.add_argument("--keep", action="store_true", help="leave the stacks running")
    parser.add_argument("--markdown", action="store_true", help="print the last results as a Markdown table; run nothing")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="measure ours only, not the plain script")
    parser.add_argument("--no-bootstrap", action="store_true", help="bootstrap without measuring it (no bootstrap row)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the results (JSON)")
    parser.add_argument("--merge", action="store_true", help="keep the rows of the results file this run does not measure")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.markdown:
        print(markdown_table(json.loads(Path(args.results).read_text())["rows"]))
        return 0
    rows = run_bench(args)
    print_table(rows)
    print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
