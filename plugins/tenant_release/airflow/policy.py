"""Airflow cluster policy (entry point `airflow.policy`): fleet deploy task instances are named after their tenant.

A tenant's task instance that starts in the triggerer never runs on a worker, and only a worker renders
`map_index_template`: without this hook the grid would show map indexes instead of tenant names. The scheduler
calls `task_instance_mutation_hook` for each task instance it creates when it expands the mapped deploy task;
the hook reads the tenant list that task expands over (once per run, in the scheduler's own session, as the hook
must: no new session, no commit) and sets the name a worker would have rendered.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.policies import hookimpl

from tenant_release.airflow.fleet_targets import TenantNames

log = logging.getLogger(__name__)

# Operators whose mapped task instances are named here (by class name: the scheduler sees serialized tasks).
NAMED_OPERATORS = frozenset({"FleetTenantDeployOperator"})

_names = TenantNames()


@hookimpl
def task_instance_mutation_hook(task_instance: Any, dag_run: Any) -> None:
    map_index = task_instance.map_index
    if dag_run is None or map_index is None or map_index < 0 or task_instance._rendered_map_index is not None:
        return
    task = getattr(task_instance, "task", None)
    if getattr(task, "task_type", None) not in NAMED_OPERATORS:
        return
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is None:
        return
    try:
        name = _names.name_at(session, dag_run, task, map_index)
    except Exception:
        # A name is a convenience; the scheduler's loop must never fail for it (the worker names a task it runs).
        log.warning("could not name %s map index %s after its tenant", task_instance.task_id, map_index, exc_info=True)
        return
    if name:
        task_instance._rendered_map_index = name
