"""The tenant_release_control DAG under dag.test() against moto: the control it records, as whom, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from tenant_release.aws import controls

DAGS = Path(__file__).resolve().parents[2] / "dags"
LEASES = "tenant-release-leases"


@pytest.fixture
def control_dag(airflow_db: None):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "tenant_release_control.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["tenant_release_control"]


def control(dag, action: str, reason: str = "", release_tag: str = "v1.4.0") -> str:
    """Trigger the DAG as the form does (every param given: dag.test() keeps the last run's conf otherwise)."""
    run = dag.test(run_conf={"release_tag": release_tag, "action": action, "reason": reason})
    return run.state


def recorded(release_tag: str = "v1.4.0") -> controls.ControlRecord | None:
    return controls.recorded(boto3.client("dynamodb", region_name="us-east-1"), LEASES, release_tag)


def test_the_form_pauses_resumes_and_aborts_as_the_airflow_user_who_triggered_it(bootstrapped, control_dag):
    assert control(control_dag, "pause", "error rate up in canary") == "success"
    paused = recorded().control
    # dag.test() triggers as user "dag_test"; the UI and REST record the signed-in user the same way.
    assert (paused.state.value, paused.by, paused.reason) == ("paused", "airflow user dag_test", "error rate up in canary")

    assert control(control_dag, "resume") == "success"
    assert (recorded().control.state.value, recorded().previous) == ("running", paused)

    assert control(control_dag, "abort") == "failed"  # an abort must say why
    assert recorded().control.state.value == "running"

    assert control(control_dag, "abort", "bad migration") == "success"
    aborted = recorded().control
    assert (aborted.state.value, aborted.reason) == ("aborted", "bad migration")

    assert control(control_dag, "resume") == "failed"  # an abort is final for the runs it stopped
    assert recorded().control == aborted
    assert recorded("v1.5.0") is None  # only the tag the form named


def test_a_tag_of_a_group_no_tenant_is_in_is_refused_and_records_nothing(bootstrapped, control_dag):
    assert control(control_dag, "pause", release_tag="v-1.4.0-nosuch") == "failed"
    assert recorded("v-1.4.0-nosuch") is None
