"""Registers tenant_release's Airflow extensions (the release-window timetable) with every Airflow component."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from tenant_release.airflow.timetables import ReleaseWindowTimetable


class TenantReleasePlugin(AirflowPlugin):
    name = "tenant_release"
    # Airflow only deserializes a custom timetable it finds registered here (by import path).
    timetables = [ReleaseWindowTimetable]
