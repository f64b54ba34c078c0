"""scripts/local_stack.py without starting anything: option checks, derived settings, progress order and labels."""

from __future__ import annotations

from pathlib import Path

import local_stack
import pytest


def test_defaults_are_what_make_run_always_used(tmp_path: Path) -> None:
    args = local_stack.build_parser().parse_args(["up"])
    assert args.state_dir == local_stack.ROOT / ".local"
    assert (args.api_port, args.moto_port, args.executor, args.sql_alchemy_conn) == (8080, 5000, "local", None)
    stack = local_stack.Stack(state_dir=tmp_path)  # the defaults, in a tmp dir: environment() writes the JWT secret
    env = local_stack.environment(stack)
    assert (stack.api_url, stack.moto_url) == ("http://127.0.0.1:8080", "http://127.0.0.1:5000")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] == "sqlite_args.CONNECT_ARGS"
    assert stack.components == ("api-server", "scheduler", "dag-processor", "triggerer")


def test_a_second_stack_on_another_api_port_gets_its_own_log_server_ports() -> None:
    parser = local_stack.build_parser()
    default = local_stack.stack_from_args(parser, parser.parse_args(["up"]))
    other = local_stack.stack_from_args(parser, parser.parse_args(["up", "--api-port", "9000", "--state-dir", "/tmp/x"]))
    assert (default.worker_log_port, default.trigger_log_port) == (8793, 8794)  # Airflow's own defaults
    assert (other.worker_log_port, other.trigger_log_port) == (9001, 9002)


def test_celery_on_postgres_gets_a_worker_and_a_database_result_backend(tmp_path: Path) -> None:
    stack = local_stack.Stack(
        state_dir=tmp_path,
        executor="celery",
        sql_alchemy_conn="postgresql+psycopg2://postgres:secret@127.0.0.1:5432/tr",
        broker="redis://127.0.0.1:6379/3",
    )
    env = local_stack.environment(stack)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://postgres:secret@127.0.0.1:5432/tr"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/3"
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS" not in env  # SQLite's timeout argument breaks psycopg2
    assert stack.components[-1] == "celery-worker"
    assert "secret" not in stack.describe()


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--executor", "celery", "--sql-alchemy-conn", "postgresql://x/y"],  # no broker
        ["up", "--executor", "celery", "--broker", "redis://127.0.0.1:6379/1"],  # SQLite
    ],
)
def test_celery_needs_a_broker_and_a_server_database(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        local_stack.main(argv)
    assert exc.value.code == 2


def test_progress_follows_the_dag_not_the_api_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tasks = {
        "summary": [],
        "deploy": ["summary"],
        "approve_release": ["deploy"],
        "deploy_dev": ["approve_release"],
        "tenant_targets": ["deploy"],
        "build": ["deploy_dev", "deploy"],
        "plan": ["build", "tenant_targets", "summary"],
    }
    response = {"tasks": [{"task_id": t, "downstream_task_ids": d} for t, d in tasks.items()]}
    monkeypatch.setattr(local_stack, "http", lambda *args, **kwargs: response)
    order = local_stack.task_order(local_stack.Stack(state_dir=tmp_path), "token")
    assert sorted(tasks, key=order.__getitem__) == [
        "plan",
        "build",
        "tenant_targets",
        "deploy_dev",
        "approve_release",
        "deploy",
        "summary",
    ]


def test_mapped_tasks_are_named_after_their_tenant_before_they_render() -> None:
    names = {"wave_1.deploy": ["acme", "globex"], "wave_2.deploy": ["initech"]}
    label = local_stack.ti_label
    assert label({"task_id": "wave_1.deploy", "map_index": 1, "rendered_map_index": "1"}, names) == "wave_1.deploy[globex]"
    assert label({"task_id": "wave_2.deploy", "map_index": 0, "rendered_map_index": "0"}, names) == "wave_2.deploy[initech]"
    assert label({"task_id": "wave_1.deploy", "map_index": 0, "rendered_map_index": "acme"}, {}) == "wave_1.deploy[acme]"
    assert label({"task_id": "wave_1.deploy", "map_index": 5, "rendered_map_index": None}, names) == "wave_1.deploy[5]"
    assert label({"task_id": "plan", "map_index": -1}, names) == "plan"


def test_up_tells_the_cli_where_its_emulation_is_and_down_forgets_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from tenant_release.cli_aws import state_file

    stack = local_stack.Stack(state_dir=tmp_path, moto_port=5055)
    local_stack.write_endpoint_file(stack)
    monkeypatch.setenv("TENANT_RELEASE_STACK_DIR", str(tmp_path))
    assert state_file() == stack.endpoint_file  # the file the CLI reads is the one `up` writes
    facts = json.loads(stack.endpoint_file.read_text())
    assert facts["endpoint_url"] == "http://127.0.0.1:5055"
    assert facts["stop"] == f"python scripts/local_stack.py down --state-dir {tmp_path}"  # not the default: not `make stop`
    local_stack.down(stack)
    assert not stack.endpoint_file.exists()
