"""The local stack behind `make run` / `make stop`: moto server + bootstrap + Airflow 3, then one release.

`up` starts what is not running yet, bootstraps the emulated accounts from the templates, triggers
`tenant_release` through Airflow's REST API, follows the run to the end and prints the per-tenant summary
and where each tenant's log is. Airflow stays up for a look around; `down` stops everything `up` started.
Every AWS call reaches the emulation through `AWS_ENDPOINT_URL` alone: unset it (and the fake keys) and
the same code talks to real AWS.

Defaults (what `make run` uses): SQLite + LocalExecutor in `.local/`, API on 8080, moto on 5000.
The scale-out path: PostgreSQL for the metadata DB, CeleryExecutor with one Celery worker on Redis:

    scripts/local_stack.py up --executor celery \\
        --sql-alchemy-conn postgresql+psycopg2://postgres@127.0.0.1:5432/tenant_release \\
        --broker redis://127.0.0.1:6379/1
    scripts/local_stack.py down

`--state-dir` and the ports let a test or a benchmark run its own stack next to a user's `make run`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USERS = {"admin": "admin", "approver": "approver"}
DAG_ID = "tenant_release"
# The mapped deploy task and the task whose return value it is expanded over (for tenant names in the progress).
# The first wave's mapped deploy and the task it expands over; a fleet without `rollout` has only this wave.
MAPPED_TASK, MAP_SOURCE_TASK = "wave_1.deploy", "wave_1.open"


def is_deploy_task(task_id: str) -> bool:
    """A wave's mapped per-tenant deploy task (`wave_<n>.deploy`)."""
    return task_id.startswith("wave_") and task_id.endswith(".deploy")



# Every process `up` starts carries this variable (the state dir): `down` finds stragglers by it.
MARKER_ENV = "TENANT_RELEASE_STACK_DIR"
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass(frozen=True, kw_only=True)
class Stack:
    """Where one stack keeps its state and what it runs: one instance of moto + Airflow."""

    state_dir: Path
    api_port: int = 8080
    moto_port: int = 5000
    worker_log_port: int = 8793  # Airflow's defaults; two stacks on one machine need their own (see --worker-log-port)
    trigger_log_port: int = 8794
    executor: str = "local"
    sql_alchemy_conn: str | None = None  # None: SQLite in the state dir
    broker: str | None = None
    result_backend: str | None = None  # None: derived from a PostgreSQL sql_alchemy_conn
    parallelism: int = 6

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def pids_file(self) -> Path:
        return self.state_dir / "pids.json"

    @property
    def settings_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def endpoint_file(self) -> Path:
        # Read by the `tenant-release` CLI (tenant_release.cli_aws): a shell with no AWS settings then uses this stack.
        return self.state_dir / "aws-endpoint.json"

    @property
    def last_run_file(self) -> Path:
        return self.state_dir / "last_run.json"

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def database_url(self) -> str:
        return self.sql_alchemy_conn or f"sqlite:///{self.airflow_home / 'airflow.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        # Celery's database backend takes the SQLAlchemy URL behind a `db+` prefix, without the driver.
        scheme, _, rest = self.database_url.partition("://")
        return f"db+{scheme.split('+')[0]}://{rest}"

    @property
    def components(self) -> tuple[str, ...]:
        base = ("api-server", "scheduler", "dag-processor", "triggerer")
        return (*base, "celery-worker") if self.executor == "celery" else base

    def describe(self) -> str:
        database = "SQLite" if self.is_sqlite else redact(self.database_url)
        if self.executor == "celery":
            return f"{database}, CeleryExecutor + 1 worker, broker {redact(self.broker or '')}"
        return f"{database}, LocalExecutor"

    def settings(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def redact(url: str) -> str:
    """A URL without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def environment(stack: Stack) -> dict[str, str]:
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    secret_file = stack.state_dir / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(64))  # PyJWT warns below 64 bytes for HS512
    env = dict(os.environ)
    env.update(
        {
            MARKER_ENV: str(stack.state_dir),
            # AWS: the emulation, reached through configuration only.
            "AWS_ENDPOINT_URL": stack.moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TENANT_RELEASE_CONFIG": env.get("TENANT_RELEASE_CONFIG", str(ROOT / "config" / "tenants.yaml")),
            # The one identity the orchestrator role trusts: moto's caller for the fake keys above.
            "TENANT_RELEASE_ORCHESTRATOR_PRINCIPAL": "arn:aws:iam::123456789012:user/moto",
            # Airflow: every component reads the same settings from here (no airflow.cfg edits).
            "AIRFLOW_HOME": str(stack.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[stack.executor],
            "AIRFLOW__CORE__PARALLELISM": str(stack.parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(stack.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,approver:op",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(stack.airflow_home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": stack.database_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(stack.api_port),
            "AIRFLOW__API__BASE_URL": stack.api_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text(),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(stack.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(stack.trigger_log_port),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "600",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A task's supervisor notices that its process deferred only at its next wake-up, up to
    # `min_heartbeat_interval` (5 s) later. If the trigger fires before the scheduler has that
    # executor event, the event arrives for a task instance that is queued again and the scheduler
    # fails it ("state changed externally": a needless retry, seen here with 2 s stack polls).
    # 1 s narrows that window and frees task slots sooner, for one heartbeat per running task a second.
    env.setdefault("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "1")
    # Fleet scale (issue 8): the scheduler queues 16 task instances a loop by default; a thousand tenants
    # need more per loop. Each tenant's deploy is a trigger: the triggerer must hold them all at once.
    env.setdefault("AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY", "512")
    env.setdefault("AIRFLOW__TRIGGERER__CAPACITY", "5000")
    # The triggerer takes on 50 new triggers a loop (about a second) by default: a thousand tenants started by
    # the scheduler at once would wait up to 20 loops for their deploy to begin.
    env.setdefault("AIRFLOW__TRIGGERER__MAX_TRIGGER_TO_SELECT_PER_LOOP", "1000")
    # Load plugins (ours imports the release DAG's modules) when each component starts: LocalExecutor forks its
    # workers from the scheduler, so each tenant's task process inherits boto3, pydantic and our operators
    # instead of importing them again (0.2 s to 1 s a task on two busy cores).
    env.setdefault("AIRFLOW__CORE__LAZY_LOAD_PLUGINS", "False")
    # A tenant's log is read by people: keep it to the release's own steps, not botocore's endpoint chatter.
    env.setdefault("AIRFLOW__LOGGING__NAMESPACE_LEVELS", "botocore=WARNING boto3=WARNING urllib3=WARNING")
    if stack.is_sqlite:
        # SQLite's default 5 s busy timeout kills the scheduler under a many-tenant run ("database is locked").
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "sqlite_args.CONNECT_ARGS"
    else:
        env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)
    if stack.executor == "celery":
        env["AIRFLOW__CELERY__BROKER_URL"] = stack.broker or ""
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = stack.celery_result_backend
        env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(stack.parallelism)
    env.pop("MOTO_ACCOUNT_ID", None)
    # This checkout's code: a virtualenv's editable install may point at another checkout (a git worktree sharing
    # the virtualenv), and its path comes before the plugins folder Airflow adds; PYTHONPATH comes before both.
    plugins = str(ROOT / "plugins")
    if env.get("PYTHONPATH", "").split(os.pathsep)[0] != plugins:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [plugins, env.get("PYTHONPATH")]))
    return env


def prepare_airflow_home(stack: Stack) -> None:
    (stack.airflow_home / "config").mkdir(parents=True, exist_ok=True)
    (stack.airflow_home / "config" / "sqlite_args.py").write_text('CONNECT_ARGS = {"timeout": 30}\n')
    (stack.airflow_home / "passwords.json").write_text(json.dumps(USERS))


# --- processes ------------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a live process from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and brackets
    return fields[0], int(fields[2])


def alive(pid: int) -> bool:
    """Running, not a zombie (this machine's init does not reap orphans, so zombies linger)."""
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in "ZX"
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Some live process is in the group (a leader that died can leave its children running)."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except OSError:
            return False
        return True
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] not in "ZX":
                return True
    return False


def stragglers(stack: Stack) -> list[int]:
    """Live processes started for this state dir (found by the marker variable), wherever their group went."""
    if not Path("/proc").is_dir():
        return []
    marker = f"{MARKER_ENV}={stack.state_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def read_pids(stack: Stack) -> dict[str, int]:
    """Every recorded process group, alive or not."""
    try:
        return {name: int(pid) for name, pid in json.loads(stack.pids_file.read_text()).items()}
    except (OSError, ValueError):
        return {}


def start(stack: Stack, name: str, command: list[str], env: dict[str, str], pids: dict[str, int]) -> None:
    if name in pids and alive(pids[name]):
        return
    log_path = stack.state_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        # A session of its own: `down` stops the component and every child it forked with one killpg.
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    pids[name] = process.pid
    stack.pids_file.write_text(json.dumps(pids))
    say(f"  started {name} (pid {process.pid}, log {log_path})")


def component_command(stack: Stack, name: str) -> list[str]:
    if name == "celery-worker":
        return [
            str(BIN / "airflow"),
            "celery",
            "worker",
            "--concurrency",
            str(stack.parallelism),
            "--celery-hostname",
            f"tenant-release-{stack.api_port}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
    return [str(BIN / "airflow"), name]


# --- HTTP -----------------------------------------------------------------------------------------------------


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def login(stack: Stack, user: str = "admin") -> str:
    return http("POST", f"{stack.api_url}/auth/token", {"username": user, "password": USERS[user]})["access_token"]


def wait_for(stack: Stack, what: str, probe: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        ensure_running(stack)
        try:
            result = probe()
            if result:
                return result
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise SystemExit(f"gave up waiting for {what} after {timeout:.0f}s ({last_error}); see the logs in {stack.state_dir}")


def ensure_running(stack: Stack) -> None:
    """Stop waiting as soon as a component has exited (an import error, a locked database...): say why, from its log."""
    pids = read_pids(stack)
    for name in pids:
        if not alive(pids[name]):
            log = stack.state_dir / f"{name}.log"
            try:
                tail = log.read_text(errors="replace").splitlines()[-15:]
            except OSError:
                tail = []
            say("\n".join("    " + line for line in tail))
            raise SystemExit(f"{name} exited (pid {pids[name]}); last lines of {log} above")


def run_checked(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        say(result.stdout[-3000:])
        say(result.stderr[-3000:])
        raise SystemExit(f"{what} failed (exit {result.returncode})")
    if result.stdout.strip():
        say("\n".join("    " + line for line in result.stdout.strip().splitlines()))


# --- up -------------------------------------------------------------------------------------------------------


def forget_dead(stack: Stack, pids: dict[str, int]) -> dict[str, int]:
    """Drop components that exited since the last `up` (stopping what their group left behind); they start again."""
    for name, pid in list(pids.items()):
        if not alive(pid):
            if group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
            del pids[name]
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    stack.pids_file.write_text(json.dumps(pids))
    return pids


def check_same_stack(stack: Stack, pids: dict[str, int]) -> None:
    """Refuse to add components with other settings to a stack that is still running."""
    if not any(group_alive(pid) for pid in pids.values()):
        return
    try:
        running = json.loads(stack.settings_file.read_text())
    except (OSError, ValueError):
        return
    if running != stack.settings():
        changed = sorted(k for k in stack.settings() if running.get(k) != stack.settings()[k])
        raise SystemExit(
            f"a stack with other settings ({', '.join(changed)}) is running in {stack.state_dir}; "
            f"stop it first: scripts/local_stack.py down --state-dir {stack.state_dir}"
        )


def up(stack: Stack, tag: str, timeout: float) -> int:
    started_at = time.monotonic()
    timings: dict[str, float] = {}
    env = environment(stack)
    prepare_airflow_home(stack)
    pids = forget_dead(stack, read_pids(stack))
    check_same_stack(stack, pids)
    stack.settings_file.write_text(json.dumps(stack.settings(), indent=2))

    say(f"1/5 local AWS emulation (moto server on {stack.moto_url})")
    step = time.monotonic()
    start(
        stack,
        "moto",
        [str(BIN / "python"), str(ROOT / "scripts" / "moto_compat.py"), "-H", "127.0.0.1", "-p", str(stack.moto_port)],
        env,
        pids,
    )
    wait_for(stack, "moto", lambda: http("GET", f"{stack.moto_url}/moto-api/config") is not None, 60, 0.5)
    http("POST", f"{stack.moto_url}/moto-api/config", {"lambda": {"use_docker": False}})
    write_endpoint_file(stack)
    timings["moto"] = time.monotonic() - step

    say("2/5 bootstrap the tooling and tenant accounts from include/templates (idempotent)")
    step = time.monotonic()
    run_checked([str(BIN / "tenant-release"), "bootstrap"], env, "tenant-release bootstrap")
    timings["bootstrap"] = time.monotonic() - step
    say(f"  bootstrap took {timings['bootstrap']:.1f}s")

    say(f"3/5 Airflow 3 ({stack.describe()})")
    step = time.monotonic()
    if not alive(pids.get("api-server", -1)):
        run_checked([str(BIN / "airflow"), "db", "migrate"], env, "airflow db migrate")
    for component in stack.components:
        start(stack, component, component_command(stack, component), env, pids)
    wait_for(stack, "the Airflow API server", lambda: http("GET", f"{stack.api_url}/api/v2/monitor/health"), 180)
    token = login(stack)
    wait_for(stack, f"DAG {DAG_ID} to be parsed", lambda: dag_ready(stack, token), 180, 2)
    http("PATCH", f"{stack.api_url}/api/v2/dags/{DAG_ID}", {"is_paused": False}, token)
    timings["airflow_start"] = time.monotonic() - step

    say(f"4/5 trigger {DAG_ID} with release_tag={tag} (REST: POST /api/v2/dags/{DAG_ID}/dagRuns)")
    step = time.monotonic()
    run = http(
        "POST", f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"release_tag": tag}}, token
    )
    run_id = run["dag_run_id"]
    record_run(stack, run_id=run_id, tag=tag, state="running", timings=timings)
    say(f"  run {run_id}: {stack.api_url}/dags/{DAG_ID}/runs/{run_id}")
    state = follow(stack, run_id, timeout)
    timings["run"] = time.monotonic() - step

    say(f"5/5 release {tag} finished: {state}  (run took {timings['run']:.0f}s)")
    print_summary(stack, tag, run_id, env)
    print_logs(stack, run_id, login(stack))
    dead = report_dead_components(stack, read_pids(stack))
    timings["total"] = time.monotonic() - started_at
    record_run(stack, run_id=run_id, tag=tag, state=state, timings=timings, dead_components=dead)
    say()
    say(f"Airflow UI: {stack.api_url}  (login admin / admin; approver / approver can answer approvals)")
    say(f"Stop everything: {stop_command(stack)}      Run again: make run TAG=v1.1.0      Took {timings['total']:.0f}s")
    return 0 if state == "success" else 1


def run_release(stack: Stack, tag: str, conf: dict[str, Any], timeout: float) -> int:
    """Trigger one more release on a running stack (`up` left it running) and follow it like `up` does."""
    env = environment(stack)
    token = login(stack)
    body = {"logical_date": None, "conf": {"release_tag": tag, **conf}}
    say(f"trigger {DAG_ID} with {json.dumps(body['conf'])} (REST: POST /api/v2/dags/{DAG_ID}/dagRuns)")
    started = time.monotonic()
    run_id = http("POST", f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns", body, token)["dag_run_id"]
    record_run(stack, run_id=run_id, tag=tag, state="running", timings={})
    say(f"  run {run_id}: {stack.api_url}/dags/{DAG_ID}/runs/{run_id}")
    state = follow(stack, run_id, timeout)
    took = time.monotonic() - started
    say(f"release {tag} finished: {state}  (run took {took:.0f}s)")
    print_summary(stack, tag, run_id, env)
    print_logs(stack, run_id, login(stack))
    record_run(stack, run_id=run_id, tag=tag, state=state, timings={"run": took})
    return 0 if state == "success" else 1


def write_endpoint_file(stack: Stack) -> None:
    """Where this stack's AWS emulation listens, for `tenant-release status/history/approve` run from a plain shell."""
    facts = {"endpoint_url": stack.moto_url, "region": "us-east-1", "stop": stop_command(stack)}
    stack.endpoint_file.write_text(json.dumps(facts, indent=2))


def stop_command(stack: Stack) -> str:
    if stack.state_dir == default_state_dir():
        return "make stop"
    return f"python scripts/local_stack.py down --state-dir {stack.state_dir}"


def record_run(stack: Stack, **facts: Any) -> None:
    """What the last `up` did (run id, state, step timings), for a test or a benchmark to read."""
    stack.last_run_file.write_text(json.dumps({"api_url": stack.api_url, "moto_url": stack.moto_url, **facts}, indent=2))


def report_dead_components(stack: Stack, pids: dict[str, int]) -> list[str]:
    dead = [name for name in stack.components if not alive(pids.get(name, -1))]
    for name in dead:
        say(f"  WARNING: {name} is no longer running; see {stack.state_dir / (name + '.log')}")
    return dead


_reported_import_errors: set[str] = set()


def dag_ready(stack: Stack, token: str) -> bool:
    errors = http("GET", f"{stack.api_url}/api/v2/importErrors", token=token)
    for error in (errors or {}).get("import_errors", []):
        if error["filename"].endswith(f"{DAG_ID}.py"):
            say(f"  import error in {error['filename']}:\n{error['stack_trace']}")
            raise SystemExit(f"{DAG_ID} does not import; fix the error above")
        if error["filename"] not in _reported_import_errors:
            _reported_import_errors.add(error["filename"])
            reason = error["stack_trace"].strip().splitlines()[-1]
            say(f"  warning: {error['filename']} does not import (the release does not need it): {reason}")
    try:
        return bool(http("GET", f"{stack.api_url}/api/v2/dags/{DAG_ID}", token=token))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def task_order(stack: Stack, token: str) -> dict[str, tuple[int, str]]:
    """Sort key per task: depth in the DAG (longest path from a root), then name: plan, build, ..., summary."""
    tasks = http("GET", f"{stack.api_url}/api/v2/dags/{DAG_ID}/tasks", token=token)["tasks"]
    downstream = {t["task_id"]: t.get("downstream_task_ids") or [] for t in tasks}
    depth = dict.fromkeys(downstream, 0)
    for _ in range(len(downstream)):  # relax edges; a DAG settles within len(tasks) passes
        for task_id, children in downstream.items():
            for child in children:
                depth[child] = max(depth.get(child, 0), depth[task_id] + 1)
    return {task_id: (d, task_id) for task_id, d in depth.items()}


def follow(stack: Stack, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, int], str] = {}
    order: dict[str, tuple[int, str]] = {}
    names: dict[str, list[str]] = {}  # deploy task -> tenant names by map index
    failures = 0
    while time.monotonic() < deadline:
        ensure_running(stack)
        try:
            token = login(stack)
            order = order or task_order(stack, token)
            run = http("GET", f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", token=token)
            instances = task_instances(stack, run_id, token)
            for ti in instances:
                deploy_task = ti["task_id"].removesuffix(".open") + ".deploy"
                if ti["task_id"].endswith(".open") and ti["state"] == "success" and deploy_task not in names:
                    names[deploy_task] = mapped_names(stack, run_id, token, source=ti["task_id"])
            answer_approvals(stack, run_id)
        except (urllib.error.URLError, OSError) as exc:
            # A busy API server (many tenants, two cores) may time out a poll; the run goes on regardless.
            failures += 1
            if failures >= 10:
                raise SystemExit(f"the Airflow API stopped answering ({exc}); see the logs in {stack.state_dir}") from None
            say(f"  (API poll failed: {exc}; trying again)")
            time.sleep(3)
            continue
        failures = 0
        # One poll can see many changes; print them in DAG order so the summary never comes before the deploys.
        for ti in sorted(instances, key=lambda t: (order.get(t["task_id"], (99, t["task_id"])), t["map_index"])):
            key = (ti["task_id"], ti["map_index"])
            if ti["state"] and seen.get(key) != ti["state"]:
                seen[key] = ti["state"]
                say(f"  {ti_label(ti, names)}: {ti['state']}")
        if run["state"] in {"success", "failed"}:
            return run["state"]
        time.sleep(3)
    raise SystemExit(f"run {run_id} did not finish within {timeout:.0f}s; it goes on in Airflow ({stack.api_url})")


def mapped_names(stack: Stack, run_id: str, token: str, *, source: str = MAP_SOURCE_TASK) -> list[str]:
    """Tenant names by map index, from the list a wave's deploy task is expanded over (names before they render)."""
    url = f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{source}/xcomEntries/return_value"
    try:
        value = http("GET", url, token=token).get("value")
        if isinstance(value, str):
            value = json.loads(value)
        return [str(item["tenant"]) for item in value]
    except (urllib.error.URLError, ValueError, TypeError, KeyError, AttributeError):
        return []


def ti_label(ti: dict[str, Any], names: dict[str, list[str]]) -> str:
    index = ti["map_index"]
    if index < 0:
        return ti["task_id"]
    # Until the template renders, the API shows the plain index as the rendered name.
    label = ti.get("rendered_map_index")
    known = names.get(ti["task_id"], [])
    if (not label or label == str(index)) and is_deploy_task(ti["task_id"]) and index < len(known):
        label = known[index]
    return f"{ti['task_id']}[{label or index}]"


def task_instances(stack: Stack, run_id: str, token: str) -> list[dict[str, Any]]:
    """All of the run's task instances; the API returns at most `[api] maximum_page_limit` (100) per page."""
    instances: list[dict[str, Any]] = []
    while True:
        url = f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(instances)}"
        page = http("GET", url, token=token)
        instances.extend(page["task_instances"])
        if not page["task_instances"] or len(instances) >= page["total_entries"]:
            return instances


_parked_since: dict[tuple[str, str, int], float] = {}


def answer_approvals(stack: Stack, run_id: str) -> None:
    """The demo approves its own gates, as the `approver` user through the REST API a person's tooling would use."""
    token = login(stack, "approver")
    base = f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"
    try:
        pending = http("GET", f"{base}/hitlDetails?response_received=false", token=token)
    except urllib.error.HTTPError:
        return
    for detail in (pending or {}).get("hitl_details", []):
        ti = detail.get("task_instance", {})
        task_id, map_index = ti.get("task_id"), ti.get("map_index", -1)
        # Answer only a request whose task has been parked (deferred) for a while: an answer that races the
        # task's own deferral is lost or costs a retry (field notes). A person is never that fast.
        first_seen = _parked_since.setdefault((run_id, task_id, map_index), time.monotonic())
        if ti.get("state") != "deferred" or time.monotonic() - first_seen < 10:
            continue
        url = f"{base}/taskInstances/{task_id}/{map_index}/hitlDetails"
        try:
            http("PATCH", url, {"chosen_options": ["Approve"]}, token)
            say(f"  approved {task_id} as 'approver' (PATCH {url.removeprefix(stack.api_url)})")
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: answered already
                raise


def print_summary(stack: Stack, tag: str, run_id: str, env: dict[str, str]) -> None:
    os.environ.update(
        {k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    )
    sys.path.insert(0, str(ROOT / "plugins"))
    from tenant_release import report
    from tenant_release.aws import ledger
    from tenant_release.aws.session import AwsSessions
    from tenant_release.config import load_fleet

    loaded = load_fleet(env["TENANT_RELEASE_CONFIG"])
    tooling = loaded.fleet.tooling
    dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
    # Consistent reads of the base table, as the summary task does (a GSI query is only eventually consistent).
    names = [t.name for t in loaded.fleet.tenants]
    found = ledger.get_many(dynamodb, tooling.history_table, tenants=names, release=tag)
    results = [found[name] for name in names if name in found and found[name].run_id == run_id]
    say()
    say(report.render_table(results) if results else "  (no tenant outcome recorded: see the plan/build/deploy_dev logs)")
    say()


def print_logs(stack: Stack, run_id: str, token: str) -> None:
    instances = task_instances(stack, run_id, token)
    deploys = [ti for ti in instances if is_deploy_task(ti["task_id"]) and ti["map_index"] >= 0]
    if not deploys:
        stopped = [
            t["task_id"] for t in instances if t["map_index"] < 0 and t.get("state") == "failed" and t["task_id"] != "summary"
        ]
        if stopped:
            say(f"No tenant was started: {', '.join(stopped)} failed (see its log); nothing was deployed to any tenant.")
        else:
            say("No tenant needed a change: each is recorded in the history, none got a task instance (see fleet_changes' log).")
        return
    say("Per-tenant logs (UI link, file):")
    for ti in sorted(deploys, key=lambda t: (t["task_id"], t["map_index"])):
        attempt = max(ti.get("try_number") or 1, 1)
        path = (
            stack.airflow_home
            / "logs"
            / f"dag_id={DAG_ID}"
            / f"run_id={run_id}"
            / f"task_id={ti['task_id']}"
            / f"map_index={ti['map_index']}"
            / f"attempt={attempt}.log"
        )
        name = ti.get("rendered_map_index") or ti["map_index"]
        link = f"{stack.api_url}/dags/{DAG_ID}/runs/{run_id}/tasks/{ti['task_id']}/mapped/{ti['map_index']}"
        say(f"  {name:<12} {ti['state'] or '-':<16} {link}")
        say(f"  {'':<12} {'':<16} {path}")


# --- down -----------------------------------------------------------------------------------------------------


def down(stack: Stack) -> int:
    """Stop every process group `up` recorded, then anything else that still carries this state dir's marker."""
    pids = read_pids(stack)
    groups = {name: pid for name, pid in pids.items() if group_alive(pid)}
    for name, pgid in groups.items():
        try:
            os.killpg(pgid, signal.SIGTERM)
            say(f"stopping {name} (process group {pgid})")
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(group_alive(pgid) for pgid in groups.values()):
        time.sleep(0.5)
    for name, pgid in groups.items():
        if group_alive(pgid):
            say(f"killing {name} (process group {pgid}: did not stop within 30s)")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
    # A component may have started a process in a session of its own; the marker variable still names it.
    left = stragglers(stack)
    for pid in left:
        say(f"killing stray process {pid} of this stack")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    stack.pids_file.unlink(missing_ok=True)
    stack.endpoint_file.unlink(missing_ok=True)
    say("stopped" if groups or left else "nothing running")
    return 0


# --- restart --------------------------------------------------------------------------------------------------


def _process_environment(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def restart(stack: Stack, names: list[str], sig: signal.Signals) -> int:
    """Kill components (with their whole process group: a scheduler's LocalExecutor workers go too), then start them.

    What a crash and a restart of those components looks like mid-release. Each comes back with the environment
    the old process had (the stack's settings as `up` made them). It leaves `pids.json` first, so a running `up`
    does not take the restart for a component that died.
    """
    pids = read_pids(stack)
    unknown = [name for name in names if name not in pids]
    if unknown:
        raise SystemExit(f"no {', '.join(unknown)} recorded in {stack.pids_file}; start the stack with `up` first")
    environments = {name: _process_environment(pids[name]) or environment(stack) for name in names}
    killed = {name: pids.pop(name) for name in names}
    stack.pids_file.write_text(json.dumps(pids))
    for name, pgid in killed.items():
        say(f"sending {sig.name} to {name} (process group {pgid})")
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(group_alive(pgid) for pgid in killed.values()):
        time.sleep(0.2)
    for name in names:
        start(stack, name, component_command(stack, name), environments[name], pids)
    return 0


# --- command line ---------------------------------------------------------------------------------------------


def default_state_dir() -> Path:
    return (ROOT / ".local").resolve()


def add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(), help="pids, logs, AIRFLOW_HOME (default .local)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start everything and run one release")
    up_parser.add_argument("--tag", default="v1.0.0", help="release tag (default v1.0.0: the default group)")
    up_parser.add_argument("--timeout", type=float, default=1800, help="seconds to follow the run")
    add_location_options(up_parser)
    env = os.environ
    up_parser.add_argument("--api-port", type=int, default=int(env.get("TENANT_RELEASE_API_PORT", "8080")))
    up_parser.add_argument("--moto-port", type=int, default=int(env.get("TENANT_RELEASE_MOTO_PORT", "5000")))
    # Airflow's log servers listen too: two stacks on one machine must not share those ports either.
    up_parser.add_argument(
        "--worker-log-port",
        type=int,
        default=None,
        help="[logging] worker_log_server_port (8793 with API port 8080, else API port + 1)",
    )
    up_parser.add_argument(
        "--trigger-log-port",
        type=int,
        default=None,
        help="[logging] trigger_log_server_port (8794 with API port 8080, else API port + 2)",
    )
    up_parser.add_argument("--executor", choices=sorted(EXECUTORS), default="local")
    up_parser.add_argument(
        "--sql-alchemy-conn",
        default=None,
        help="metadata DB URL, e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/NAME "
        "(the database must exist; default: SQLite in the state dir)",
    )
    up_parser.add_argument("--broker", default=None, help="Celery broker, e.g. redis://127.0.0.1:6379/1 (celery only)")
    up_parser.add_argument("--result-backend", default=None, help="Celery result backend (default: db+ the metadata DB)")
    parallelism = int(env.get("TENANT_RELEASE_PARALLELISM", "6"))
    up_parser.add_argument("--parallelism", type=int, default=parallelism, help="task slots (and Celery worker concurrency)")
    run_parser = sub.add_parser("run", help="trigger one more release on the stack `up` left running, and follow it")
    run_parser.add_argument("--tag", required=True, help="release tag")
    run_parser.add_argument("--conf", default="{}", help='more trigger params as JSON, e.g. \'{"redeploy_of": "<run id>"}\'')
    run_parser.add_argument("--timeout", type=float, default=1800, help="seconds to follow the run")
    add_location_options(run_parser)
    down_parser = sub.add_parser("down", help="stop everything `up` started")
    add_location_options(down_parser)
    restart_parser = sub.add_parser("restart", help="kill components of a running stack and start them again")
    restart_parser.add_argument("components", nargs="+", choices=["scheduler", "triggerer", "dag-processor", "api-server"])
    restart_parser.add_argument("--signal", choices=["TERM", "KILL"], default="TERM", help="TERM: a clean stop; KILL: a crash")
    add_location_options(restart_parser)
    return parser


def stack_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Stack:
    if args.executor == "celery":
        if not args.broker:
            parser.error("--executor celery needs --broker (e.g. redis://127.0.0.1:6379/1)")
        if not args.sql_alchemy_conn or args.sql_alchemy_conn.startswith("sqlite"):
            parser.error("--executor celery needs a --sql-alchemy-conn other than SQLite (Airflow refuses SQLite with Celery)")
    return Stack(
        state_dir=args.state_dir.resolve(),
        api_port=args.api_port,
        moto_port=args.moto_port,
        worker_log_port=args.worker_log_port or (8793 if args.api_port == 8080 else args.api_port + 1),
        trigger_log_port=args.trigger_log_port or (8794 if args.api_port == 8080 else args.api_port + 2),
        executor=args.executor,
        sql_alchemy_conn=args.sql_alchemy_conn,
        broker=args.broker,
        result_backend=args.result_backend,
        parallelism=args.parallelism,
    )


def running_stack(state_dir: Path) -> Stack:
    """The stack `up` started in `state_dir`, with the settings it recorded."""
    try:
        settings = json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"no stack was started in {state_dir} (no readable stack.json)") from None
    return Stack(**{**settings, "state_dir": state_dir})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "down":
        return down(Stack(state_dir=args.state_dir.resolve()))
    if args.command == "run":
        try:
            conf = json.loads(args.conf)
        except ValueError as exc:
            parser.error(f"--conf is not JSON: {exc}")
        if not isinstance(conf, dict):
            parser.error("--conf must be a JSON object of trigger params")
        return run_release(running_stack(args.state_dir.resolve()), args.tag, conf, args.timeout)
    if args.command == "restart":
        return restart(running_stack(args.state_dir.resolve()), args.components, signal.Signals[f"SIG{args.signal}"])
    return up(stack_from_args(parser, args), args.tag, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
