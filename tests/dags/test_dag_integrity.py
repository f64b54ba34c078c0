"""Every DAG imports cleanly, carries tags and retries, and does no I/O at parse time."""

from __future__ import annotations

import copy
import itertools
import socket
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
# The scheduled DAG reads the fleet file's `schedule` section when parsed: its timetable needs the windows
# (tests/dags/test_scheduled_release.py covers how it parses).
READS_FLEET_AT_PARSE = {"tenant_release_scheduled"}


def _parse(path: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(path))


@pytest.fixture(scope="module")
def dagbag(airflow_db: None):
    return _parse(DAGS)


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    assert "tenant_release" in dagbag.dags


def test_every_dag_has_tags_retries_and_a_doc(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert dag.default_args.get("retries", 0) >= 1, f"{dag_id} has no default retries"


def test_release_dag_shape(dagbag):
    dag = dagbag.dags["tenant_release"]
    order = ["plan", "build", "deploy_dev", "approve_release", "wave_1.open", "wave_1.deploy", "wave_1.bake", "wave_2.open"]
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids, f"{upstream} -> {downstream}"
    # Finding the changes reads stacks only: it runs beside dev, and both must succeed before the gate.
    assert dag.get_task("fleet_changes").upstream_task_ids == {"plan", "build"}
    assert dag.get_task("approve_release").upstream_task_ids == {"deploy_dev", "fleet_changes"}
    assert dag.get_task("summary").trigger_rule == "all_done"
    # Six waves in a row, each open -> deploy (one task instance per tenant) -> bake.
    for index in range(1, 7):
        deploy = dag.get_task(f"wave_{index}.deploy")
        assert deploy.map_index_template == "{{ task.tenant }}"
        assert dag.get_task(f"wave_{index}.bake").trigger_rule == "all_done"
        if index > 1:
            assert dag.get_task(f"wave_{index}.open").upstream_task_ids == {f"wave_{index - 1}.bake"}
    # The summary waits for every wave's tenants and bake directly: a tenant cleared to run again (only_failed) holds
    # it back even when the tasks between its wave and the summary stay skipped (tests/stack/test_rerun_failed.py).
    waves = {f"wave_{index}.{step}" for index in range(1, 7) for step in ("deploy", "bake")}
    assert dag.get_task("summary").upstream_task_ids == {"plan", *waves}
    params = dag.params
    assert set(params.keys()) >= {"release_tag", "tenants", "override_freeze", "override_hold", "redeploy_of"}


def test_release_tag_param_rejects_a_bad_tag_before_a_run_exists(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["tenant_release"].params)
    params.validate()  # the default is valid
    for good in ("v1.4.0", "v-1.4.0-qa"):
        params["release_tag"] = good
        params.validate()
    for bad in ("1.4", "v1.4", "v-1.4.0-QA", "v1.4.0; rm -rf /"):
        with pytest.raises(ParamValidationError, match="does not match"):
            params["release_tag"] = bad  # the trigger form validates each value as it is set
            params.validate()


def test_parsing_opens_no_connection_and_reads_no_fleet_file(monkeypatch, airflow_db, tmp_path):
    import botocore.session
    import tenant_release.config as config

    touched: list[str] = []

    def no_connect(self, address):
        touched.append(f"socket connect {address}")
        raise OSError("no network at parse time")

    def no_fleet(*args, **kwargs):
        touched.append("fleet file read")
        raise AssertionError("fleet file read at parse time")

    def no_client(*args, **kwargs):
        touched.append("boto3 client created")
        raise AssertionError("AWS client at parse time")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(config, "load_fleet", no_fleet)
    monkeypatch.setattr(config, "parse_fleet", no_fleet)
    monkeypatch.setattr(botocore.session.Session, "create_client", no_client)
    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(tmp_path / "does-not-exist.yaml"))

    parsed = []
    for path in sorted(DAGS.glob("*.py")):
        if path.stem in READS_FLEET_AT_PARSE:
            continue
        bag = _parse(path)
        parsed.append(path.stem)
        assert bag.import_errors == {}, path.name
        assert bag.dags, path.name
    assert touched == []
    assert {"release", "tenant_release_queue"} <= set(parsed)
