"""Your own application through the whole release DAG (dag.test() against moto): the orders example, built from
its git tag, reaches the tag's group; after the tag is moved, the next run is refused at the build, before dev."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from tenant_release.aws.stacks import describe_stack, stack_tag

from tests.conftest import bootstrap
from tests.dags.test_release_dag import approve, history, task_states, tenant_client
from tests.orders_example import commit_api, orders_fleet, orders_repository

PROD = {
    "acme": ("111111111111", "eu-central-1"),
    "globex": ("222222222222", "us-east-1"),
    "umbrella": ("044444444444", "us-east-1"),
}


@pytest.fixture
def orders_fleet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: None) -> Path:
    repo, _ = orders_repository(tmp_path)
    path = orders_fleet(tmp_path)
    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(path))
    bootstrap(path)
    return repo


def test_a_tag_of_your_application_reaches_its_group_and_a_moved_tag_is_refused_before_dev(
    orders_fleet_file: Path, airflow_db, capsys, caplog
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "release.py")).dags["tenant_release"]
    approve("v1.4.0")

    run = dag.test(run_conf={"release_tag": "v1.4.0"})

    assert str(run.state) == "success"
    states = task_states(run)
    assert {name: states[("wave_1.deploy", name)] for name in PROD} == dict.fromkeys(PROD, "success")
    for name, (account, region) in PROD.items():
        stack = describe_stack(tenant_client("cloudformation", account, region), f"orders-{name}")
        assert stack is not None and stack_tag(stack, "ReleaseVersion") == "1.4.0"
        assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["Customer"] == name
        tenant_client("dynamodb", account, region).describe_table(TableName=f"orders-{name}")
    records = history()
    assert {t for t, r in records if r == "v1.4.0"} == set(PROD)
    assert {records[(t, "v1.4.0")].status.value for t in PROD} == {"SUCCEEDED"}
    capsys.readouterr()

    moved = commit_api(orders_fleet_file, "api 1, changed under the same name", "v1.4.0", force=True)
    again = dag.test(run_conf={"release_tag": "v1.4.0"})

    assert str(again.state) == "failed"
    states = task_states(again)
    assert states[("build", -1)] == "failed"
    assert states[("deploy_dev", -1)] == "upstream_failed"  # nothing was deployed, not even dev
    dev_stack = describe_stack(boto3.client("cloudformation", region_name="us-east-1"), "orders-dev")
    assert stack_tag(dev_stack, "ReleaseVersion") == "1.4.0"  # dev keeps the first build
    captured = capsys.readouterr()
    logged = captured.out + captured.err + caplog.text
    assert f"release tag v1.4.0 now points at commit {moved[:12]}" in logged and "rebuild=true" in logged
