"""The local stack behind `make run` / `make stop`: moto server + bootstrap + Airflow 3 (SQLite, LocalExecutor).

`up` starts what is not running yet, bootstraps the emulated accounts from the templates, triggers
`tenant_release` through Airflow's REST API, follows the run to the end and prints the per-tenant summary
and where each tenant's log is. Airflow stays up for a look around; `down` stops everything.
Every AWS call reaches the emulation through `AWS_ENDPOINT_URL` alone: unset it (and the fake keys) and
the same code talks to real AWS.
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
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".local"
AIRFLOW_HOME = STATE / "airflow"
PIDS = STATE / "pids.json"
BIN = Path(sys.executable).parent
MOTO_PORT = int(os.environ.get("TENANT_RELEASE_MOTO_PORT", "5000"))
API_PORT = int(os.environ.get("TENANT_RELEASE_API_PORT", "8080"))
MOTO_URL = f"http://127.0.0.1:{MOTO_PORT}"
API_URL = f"http://127.0.0.1:{API_PORT}"
USERS = {"admin": "admin", "approver": "approver"}
DAG_ID = "tenant_release"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def say(text: str = "") -> None:
    print(text, flush=True)


def environment() -> dict[str, str]:
    STATE.mkdir(exist_ok=True)
    secret_file = STATE / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
    env = dict(os.environ)
    env.update(
        {
            # AWS: the emulation, reached through configuration only.
            "AWS_ENDPOINT_URL": MOTO_URL,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TENANT_RELEASE_CONFIG": env.get("TENANT_RELEASE_CONFIG", str(ROOT / "config" / "tenants.yaml")),
            # Airflow: SQLite + LocalExecutor, tuned so that a 100-tenant run does not lock the database.
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": env.get("TENANT_RELEASE_PARALLELISM", "6"),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": env.get("TENANT_RELEASE_PARALLELISM", "6"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{API_URL}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,approver:op",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(AIRFLOW_HOME / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "sqlite_args.CONNECT_ARGS",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(API_PORT),
            "AIRFLOW__API__BASE_URL": API_URL,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text(),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "600",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("MOTO_ACCOUNT_ID", None)
    return env


def prepare_airflow_home() -> None:
    (AIRFLOW_HOME / "config").mkdir(parents=True, exist_ok=True)
    # SQLite's default 5 s busy timeout kills the scheduler under a many-tenant run ("database is locked").
    (AIRFLOW_HOME / "config" / "sqlite_args.py").write_text('CONNECT_ARGS = {"timeout": 30}\n')
    (AIRFLOW_HOME / "passwords.json").write_text(json.dumps(USERS))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def read_pids() -> dict[str, int]:
    try:
        pids = json.loads(PIDS.read_text())
    except (OSError, ValueError):
        return {}
    return {name: pid for name, pid in pids.items() if alive(pid)}


def start(name: str, command: list[str], env: dict[str, str], pids: dict[str, int]) -> None:
    if name in pids:
        return
    log = open(STATE / f"{name}.log", "ab")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    pids[name] = process.pid
    PIDS.write_text(json.dumps(pids))
    say(f"  started {name} (pid {process.pid}, log {STATE / (name + '.log')})")


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


def wait_for(what: str, probe: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise SystemExit(f"gave up waiting for {what} after {timeout:.0f}s ({last_error}); see the logs in {STATE}")


def run_checked(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        say(result.stdout[-3000:])
        say(result.stderr[-3000:])
        raise SystemExit(f"{what} failed (exit {result.returncode})")
    if result.stdout.strip():
        say("\n".join("    " + line for line in result.stdout.strip().splitlines()))


def up(tag: str, timeout: float) -> int:
    started_at = time.monotonic()
    env = environment()
    prepare_airflow_home()
    pids = read_pids()
    say("1/5 local AWS emulation (moto server)")
    start(
        "moto",
        [str(BIN / "python"), str(ROOT / "scripts" / "moto_compat.py"), "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
        env,
        pids,
    )
    wait_for("moto", lambda: http("GET", f"{MOTO_URL}/moto-api/config") is not None, 60, 0.5)
    http("POST", f"{MOTO_URL}/moto-api/config", {"lambda": {"use_docker": False}})

    say("2/5 bootstrap the tooling and tenant accounts from include/templates (idempotent)")
    run_checked([str(BIN / "tenant-release"), "bootstrap"], env, "tenant-release bootstrap")

    say("3/5 Airflow 3 (SQLite, LocalExecutor)")
    if "api-server" not in pids:
        run_checked([str(BIN / "airflow"), "db", "migrate"], env, "airflow db migrate")
    for component in COMPONENTS:
        start(component, [str(BIN / "airflow"), component], env, pids)
    wait_for("the Airflow API server", lambda: http("GET", f"{API_URL}/api/v2/monitor/health"), 180)
    token = http("POST", f"{API_URL}/auth/token", {"username": "admin", "password": USERS["admin"]})["access_token"]
    wait_for(f"DAG {DAG_ID} to be parsed", lambda: dag_ready(token), 180, 2)
    http("PATCH", f"{API_URL}/api/v2/dags/{DAG_ID}", {"is_paused": False}, token)

    say(f"4/5 trigger {DAG_ID} with release_tag={tag} (REST: POST /api/v2/dags/{DAG_ID}/dagRuns)")
    run = http("POST", f"{API_URL}/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"release_tag": tag}}, token)
    run_id = run["dag_run_id"]
    say(f"  run {run_id}: {API_URL}/dags/{DAG_ID}/runs/{run_id}")
    state = follow(run_id, timeout)

    say(f"5/5 release {tag} finished: {state}")
    print_summary(tag, run_id, env)
    print_logs(run_id, token)
    say()
    say(f"Airflow UI: {API_URL}  (login admin / admin; approver / approver can answer approvals)")
    say(f"Stop everything: make stop      Run again: make run TAG=v1.1.0      Took {time.monotonic() - started_at:.0f}s")
    return 0 if state == "success" else 1


def dag_ready(token: str) -> bool:
    errors = http("GET", f"{API_URL}/api/v2/importErrors", token=token)
    if errors and errors.get("total_entries"):
        for error in errors["import_errors"]:
            say(f"  import error in {error['filename']}:\n{error['stack_trace']}")
        raise SystemExit("the DAG files do not import; fix the errors above")
    try:
        return bool(http("GET", f"{API_URL}/api/v2/dags/{DAG_ID}", token=token))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def follow(run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, int], str] = {}
    while time.monotonic() < deadline:
        token = http("POST", f"{API_URL}/auth/token", {"username": "admin", "password": USERS["admin"]})["access_token"]
        run = http("GET", f"{API_URL}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", token=token)
        for ti in task_instances(run_id, token):
            key = (ti["task_id"], ti["map_index"])
            if ti["state"] and seen.get(key) != ti["state"]:
                seen[key] = ti["state"]
                label = ti.get("rendered_map_index") or (ti["map_index"] if ti["map_index"] >= 0 else "")
                say(f"  {ti['task_id']}{'[' + str(label) + ']' if label != '' else ''}: {ti['state']}")
        answer_approvals(run_id)
        if run["state"] in {"success", "failed"}:
            return run["state"]
        time.sleep(3)
    raise SystemExit(f"run {run_id} did not finish within {timeout:.0f}s; it goes on in Airflow ({API_URL})")


def task_instances(run_id: str, token: str) -> list[dict[str, Any]]:
    url = f"{API_URL}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000"
    return http("GET", url, token=token)["task_instances"]


def answer_approvals(run_id: str) -> None:
    """The demo approves its own gates, as the `approver` user through the REST API a person's tooling would use."""
    token = http("POST", f"{API_URL}/auth/token", {"username": "approver", "password": USERS["approver"]})["access_token"]
    try:
        pending = http("GET", f"{API_URL}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/hitlDetails?response_received=false", token=token)
    except urllib.error.HTTPError:
        return
    for detail in (pending or {}).get("hitl_details", []):
        ti = detail.get("task_instance", {})
        task_id, map_index = ti.get("task_id"), ti.get("map_index", -1)
        # An answer sent within a second of the task parking is lost (field notes): give it a moment.
        time.sleep(3)
        url = f"{API_URL}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"
        try:
            http("PATCH", url, {"chosen_options": ["Approve"]}, token)
            say(f"  approved {task_id} as 'approver' (PATCH {url.removeprefix(API_URL)})")
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: answered already
                raise


def print_summary(tag: str, run_id: str, env: dict[str, str]) -> None:
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
    results = [r for r in ledger.for_run(dynamodb, tooling.history_table, run_id)]
    order = {t.name: i for i, t in enumerate(loaded.fleet.tenants)}
    results.sort(key=lambda r: order.get(r.tenant, len(order)))
    say()
    say(report.render_table(results) if results else "  (no tenant outcome recorded: see the plan/build/deploy_dev logs)")
    say()


def print_logs(run_id: str, token: str) -> None:
    say("Per-tenant logs (UI link, file):")
    for ti in sorted(task_instances(run_id, token), key=lambda t: (t["task_id"], t["map_index"])):
        if ti["task_id"] != "deploy":
            continue
        attempt = max(ti.get("try_number") or 1, 1)
        path = (
            AIRFLOW_HOME
            / "logs"
            / f"dag_id={DAG_ID}"
            / f"run_id={run_id}"
            / "task_id=deploy"
            / f"map_index={ti['map_index']}"
            / f"attempt={attempt}.log"
        )
        name = ti.get("rendered_map_index") or ti["map_index"]
        say(f"  {name:<12} {ti['state'] or '-':<16} {API_URL}/dags/{DAG_ID}/runs/{run_id}/tasks/deploy/mapped/{ti['map_index']}")
        say(f"  {'':<12} {'':<16} {path}")


def down() -> int:
    pids = read_pids()
    if not pids:
        say("nothing running")
        return 0
    for name, pid in pids.items():
        try:
            os.killpg(pid, signal.SIGTERM)
            say(f"stopping {name} (pid {pid})")
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in pids.values()):
        time.sleep(0.5)
    for pid in pids.values():
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    PIDS.unlink(missing_ok=True)
    say("stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start everything and run one release")
    up_parser.add_argument("--tag", default="v1.0.0", help="release tag (default v1.0.0: the default group)")
    up_parser.add_argument("--timeout", type=float, default=1800, help="seconds to follow the run")
    sub.add_parser("down", help="stop everything `up` started")
    args = parser.parse_args()
    return up(args.tag, args.timeout) if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
