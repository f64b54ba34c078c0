"""Which tenant a fleet deploy task instance is, found where no worker runs: the scheduler names it, the triggerer deploys it.

The mapped `deploy` task expands over the list of tenants that need a change (one entry per tenant, see
`FleetChanges.deploy_kwargs`). A task instance started in the triggerer never has that entry handed to it, so it
reads it itself: the list is fetched once per triggerer process and release run, not once per tenant (a thousand
tenants would otherwise move the whole list a thousand times). Every entry carries the id of the list it belongs
to (`targets_id`, new each time `tenant_targets` runs), so a cleared and re-planned run can never hand a task
instance an entry from an older list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from tenant_release.errors import TenantReleaseError

log = logging.getLogger(__name__)

TARGETS_ID_KEY = "targets_id"
_KEEP_LISTS = 8


class FleetTargetError(TenantReleaseError):
    """A fleet task instance could not find its own entry in the run's target list."""


def targets_source(task: Any) -> tuple[str, str]:
    """(task_id, XCom key) of the list a mapped task expands over, read from the task's own expand input."""
    try:
        xcom_arg = task.expand_input.value
        return xcom_arg.operator.task_id, xcom_arg.key
    except AttributeError as exc:
        raise FleetTargetError(
            f"task {getattr(task, 'task_id', task)!r} is not mapped over an upstream task's list (expand_kwargs(<task>))"
        ) from exc


def entry_at(entries: Any, map_index: int, targets_id: str | None) -> dict[str, Any]:
    """The entry of task instance `map_index`, checked to belong to the list `targets_id` names."""
    if not isinstance(entries, list) or not 0 <= map_index < len(entries):
        size = len(entries) if isinstance(entries, list) else "no"
        raise FleetTargetError(f"map index {map_index} is outside the run's target list ({size} entries)")
    entry = entries[map_index]
    if not isinstance(entry, dict) or entry.get(TARGETS_ID_KEY) != targets_id:
        raise FleetTargetError(
            f"the target list changed while task instance {map_index} started (list {targets_id}); "
            "clear the task instance to start it again from the current list"
        )
    return entry


class TargetListCache:
    """The last few values (target lists, release gate results) a triggerer process read, by key; concurrent first
    readers share one fetch.

    A caller that passes `since` (a `time.monotonic()` reading) takes only a value whose read began at or after it:
    the release gate's result may change while the run goes on (cleared, answered again), so each tenant must see
    it as it is when that tenant starts, yet the tenants that start together still share one read.
    """

    def __init__(self, keep: int = _KEEP_LISTS) -> None:
        self._keep = keep
        self._lists: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._pending: dict[str, tuple[float, asyncio.Future]] = {}

    async def get(self, targets_id: str, fetch: Any, *, since: float | None = None) -> Any:
        """The value of `targets_id`; `fetch` is an async callable that reads it when this process has not yet."""
        cached = self._lists.get(targets_id)
        if cached is not None and (since is None or cached[0] >= since):
            self._lists.move_to_end(targets_id)
            return cached[1]
        pending = self._pending.get(targets_id)
        if pending is not None and (since is None or pending[0] >= since):
            return await asyncio.shield(pending[1])
        started = time.monotonic()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[targets_id] = (started, future)
        try:
            entries = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it, nobody else must
            raise
        finally:
            if self._pending.get(targets_id, (0.0, None))[1] is future:
                del self._pending[targets_id]
        if targets_id not in self._lists or self._lists[targets_id][0] <= started:  # never replace a newer read
            self._lists[targets_id] = (started, entries)
            self._lists.move_to_end(targets_id)
        while len(self._lists) > self._keep:
            self._lists.popitem(last=False)
        future.set_result(entries)
        return entries


class TenantNames:
    """Tenant names by map index for the scheduler's naming hook, read once per run and list, in the scheduler's session."""

    def __init__(self, keep: int = 64) -> None:
        self._keep = keep
        self._names: OrderedDict[tuple[int, str, str], tuple[Any, list[str]]] = OrderedDict()

    def name_at(self, session: Any, dag_run: Any, task: Any, map_index: int) -> str | None:
        from airflow.models.xcom import XComModel
        from sqlalchemy import select

        task_id, key = targets_source(task)
        where = (
            XComModel.dag_run_id == dag_run.id,
            XComModel.task_id == task_id,
            XComModel.map_index == -1,
            XComModel.key == key,
        )
        stamp = session.scalar(select(XComModel.timestamp).where(*where))
        if stamp is None:
            return None
        cache_key = (dag_run.id, task_id, key)
        cached = self._names.get(cache_key)
        if cached is None or cached[0] != stamp:
            row = session.execute(select(XComModel.value).where(*where)).one_or_none()
            entries = XComModel.deserialize_value(row) if row is not None else None
            names = [e.get("tenant", "") if isinstance(e, dict) else "" for e in entries] if isinstance(entries, list) else []
            cached = (stamp, names)
            self._names[cache_key] = cached
            while len(self._names) > self._keep:
                self._names.popitem(last=False)
        names = cached[1]
        return names[map_index] if 0 <= map_index < len(names) and names[map_index] else None
