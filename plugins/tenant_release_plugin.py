"""Registers tenant_release's Airflow extensions (the release-window timetable) with every Airflow component."""

from __future__ import annotations

# Imported here, once per Airflow process, on purpose: LocalExecutor forks its workers from the scheduler and
# every task process from a worker, so a task inherits these modules (boto3, pydantic, the operators) instead
# of importing them again. That is most of the cost of parsing the release DAG in each of a thousand tenants'
# task processes (about 0.2 s each on an idle machine, 1 s on a busy one).
import tenant_release.airflow.deploy_operator
import tenant_release.airflow.steps  # noqa: F401
from airflow.plugins_manager import AirflowPlugin
from tenant_release.airflow.timetables import ReleaseWindowTimetable


class TenantReleasePlugin(AirflowPlugin):
    name = "tenant_release"
    # Airflow only deserializes a custom timetable it finds registered here (by import path).
    timetables = [ReleaseWindowTimetable]
