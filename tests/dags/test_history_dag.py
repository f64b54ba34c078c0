"""The history's audit trail through real DAG runs (dag.test() on moto): each write says who wrote it, in which
run and try, ordered by the run's plan; a cleared summary of an older run leaves the newer run's outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from tenant_release import naming
from tenant_release.airflow import steps
from tenant_release.aws import ledger
from tenant_release.models import Outcome

DAGS = Path(__file__).resolve().parents[2] / "dags"
HISTORY = "tenant-release-history"
ATTEMPTS = "tenant-release-attempts"


@pytest.fixture
def release_dag(airflow_db: None):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "release.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["tenant_release"]


def xcom(run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key="return_value", map_index=-1)
            .one()
        )
        return XComModel.deserialize_value(row)


def test_every_write_of_a_run_is_an_attempt_and_an_older_runs_cleared_summary_keeps_the_newer_outcome(
    bootstrapped, release_dag
) -> None:
    from tests.dags.test_release_dag import approve

    approve("v-1.4.0-qa")  # umbrella (qa and prod) gates the qa release: approved ahead, for the build it ships
    first = release_dag.test(run_conf={"release_tag": "v-1.4.0-qa"})
    second = release_dag.test(run_conf={"release_tag": "v-1.4.0-qa"})
    assert (str(first.state), str(second.state)) == ("success", "success")
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    plan = xcom(first, "plan")

    trail = ledger.attempts(dynamodb, ATTEMPTS, tenant="initech", release="v-1.4.0-qa")
    assert [(r.run_id, r.status, r.written_by, r.try_number) for r in trail] == [
        (first.run_id, Outcome.IN_PROGRESS, "deploy", 1),
        (first.run_id, Outcome.SUCCEEDED, "deploy", 1),
        (first.run_id, Outcome.SUCCEEDED, "summary", 1),  # the gated run's summary adds who approved it
        (second.run_id, Outcome.UNCHANGED, "fleet_changes", 1),
        (second.run_id, Outcome.UNCHANGED, "summary", 1),
    ]
    assert {r.run_started_at for r in trail[:2]} == {plan["planned_at"]}  # the plan's time reached the triggerer
    assert trail[0].identity.startswith(f"session {naming.session_name(release_tag='v-1.4.0-qa', run_id=first.run_id)}")
    assert trail[3].run_started_at == xcom(second, "plan")["planned_at"] > plan["planned_at"]

    # The first run's summary is cleared and runs again, after the second run.
    summary = steps.summarize(
        plan, xcom(first, "build"), xcom(first, "deploy_dev"), xcom(first, "approve_release"), first.run_id, try_number=2
    )

    assert summary["tenants"] == {"initech": "SUCCEEDED", "umbrella": "SUCCEEDED"}  # the first run's own outcome
    for tenant in ("initech", "umbrella"):
        latest = ledger.get(dynamodb, HISTORY, tenant=tenant, release="v-1.4.0-qa")
        assert (latest.run_id, latest.status) == (second.run_id, Outcome.UNCHANGED)
