"""The scheduler names each fleet deploy task instance after its tenant, though no worker ever renders it.

`FleetTenantDeployOperator` task instances start in the triggerer, so nothing renders `map_index_template` for
them: the cluster policy installed by this package (entry point `airflow.policy`) does it when the scheduler
expands the mapped task. Here the deploy task instances are marked successful without running at all, so any
name they carry came from the policy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG, task
from tenant_release.airflow.deploy_operator import FleetTenantDeployOperator

with DAG(dag_id="tenant_names_by_policy", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:

    @task
    def tenant_targets() -> list[dict]:
        return [
            {"tenant": n, "target_digest": "d", "release_tag": "v1.0.0", "artifact": {}, "targets_id": "x"}
            for n in ("acme", "globex", "umbrella-corp")
        ]

    FleetTenantDeployOperator.partial(task_id="deploy").expand_kwargs(tenant_targets())
"""


@pytest.mark.usefixtures("airflow_db")
def test_mapped_fleet_deploys_are_named_after_their_tenants_without_running(tmp_path: Path) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    (tmp_path / "names_dag.py").write_text(DAG_SOURCE)
    bag = DagBag(dag_folder=str(tmp_path))
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["tenant_names_by_policy"]
    run = dag.test(mark_success_pattern="deploy")
    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.map_index, TaskInstance._rendered_map_index, TaskInstance.state).where(
                TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id, TaskInstance.task_id == "deploy"
            )
        ).all()
    assert sorted((index, name, str(state)) for index, name, state in rows) == [
        (0, "acme", "success"),
        (1, "globex", "success"),
        (2, "umbrella-corp", "success"),
    ]
