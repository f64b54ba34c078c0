"""Fixtures every release-DAG test uses: the DAG as the DAG processor parses it, and AWS faults around moto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tenant_release.airflow import runtime
from tenant_release.aws.session import AwsSessions

from tests.faults import Faults

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def release_dag(airflow_db: None):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "release.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["tenant_release"]


@pytest.fixture
def faults() -> Iterator[Faults]:
    injected = Faults()
    previous = runtime.use_session_factory(lambda: AwsSessions(client_hook=injected.hook))
    yield injected
    runtime.use_session_factory(previous)
