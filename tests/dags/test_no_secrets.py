"""Assumed-role credentials never reach XCom, trigger rows, task state, the metadata DB or the logs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from tenant_release.airflow import runtime
from tenant_release.aws.session import AwsSessions

from tests.dags.test_release_dag import approve, deployed_version
from tests.faults import Faults


@pytest.fixture
def issued_credentials() -> Iterator[list[dict]]:
    """Record every credential STS hands out during the run (moto issues real-looking ones)."""
    issued: list[dict] = []
    faults = Faults()

    def keep(response: dict, kwargs: dict) -> dict:
        issued.append(dict(response["Credentials"]))
        return response

    faults.add(service="sts", operation="assume_role", rewrite=keep)
    previous = runtime.use_session_factory(lambda: AwsSessions(client_hook=faults.hook))
    yield issued
    runtime.use_session_factory(previous)


def _metadata_dump() -> str:
    """Every text column of every table of the metadata DB, as one string."""
    from airflow.settings import engine

    chunks = []
    with engine.connect() as connection:
        tables = [row[0] for row in connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
        for table in tables:
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                chunks.extend(str(value) for value in row if value is not None)
    return "\n".join(chunks)


def _trigger_kwargs() -> list[str]:
    """Every trigger's arguments as the triggerer reads them.

    Airflow stores them Fernet-encrypted whenever a key is set (as in any real deployment), so the raw dump above
    cannot see a credential in them; decrypted, it can.
    """
    import json

    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [json.dumps(trigger.kwargs, default=str) for trigger in session.scalars(select(Trigger))]


def _log_files() -> str:
    """Every task and trigger log file Airflow wrote (dag.test() logs to the console; a scheduler writes files)."""
    from pathlib import Path

    from airflow.configuration import conf

    folder = Path(conf.get("logging", "base_log_folder"))
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_credentials_stay_in_memory(airflow_db, bootstrapped, issued_credentials, capsys, caplog):
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_release_dag import DAGS

    dag = DagBag(dag_folder=str(DAGS / "release.py")).dags["tenant_release"]
    approve("v3.0.0")
    run = dag.test(run_conf={"release_tag": "v3.0.0", "tenants": [], "override_freeze": ""})
    assert str(run.state) == "success"
    assert deployed_version("111111111111", "eu-central-1", "acme") == "3.0.0"  # the run really used them

    secrets = [c[k] for c in issued_credentials for k in ("SecretAccessKey", "SessionToken", "AccessKeyId")]
    assert len(secrets) >= 9  # dev + three tenants, each assumed at least once
    stored = _metadata_dump()
    triggers = _trigger_kwargs()
    # dev + 3 tenants (the session's DB also holds other tests' triggers: every one of them is scanned below)
    assert sum('"release_tag": "v3.0.0"' in kwargs for kwargs in triggers) >= 4
    captured = capsys.readouterr()
    logged = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records) + _log_files()
    assert "tr-v3.0.0-" in logged  # the session name is logged: the logs were captured
    for secret in secrets:
        assert secret not in stored, "a credential is stored in the metadata DB"
        assert secret not in "\n".join(triggers), "a credential is in a trigger's (encrypted) arguments"
        assert secret not in logged, "a credential is in the logs"
