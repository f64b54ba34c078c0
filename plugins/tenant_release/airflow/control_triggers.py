"""A wave's wait, in the triggerer, while an operator has paused the rollout of its release tag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import TriggerEvent

from tenant_release.airflow import runtime
from tenant_release.airflow.triggers import _Serializable, in_thread
from tenant_release.classify import describe, is_retriable


def read_control(config_path: str | None, release_tag: str) -> Any:
    """The rollout control of `release_tag` (a `RolloutControl`, or None), from the fleet's leases table."""
    from tenant_release.aws import controls

    tooling = runtime.cached_fleet(config_path).fleet.tooling
    dynamodb = runtime.shared_sessions().tooling_client("dynamodb", tooling.region)
    return controls.current(dynamodb, tooling.leases_table, release_tag)


class RolloutResumedTrigger(_Serializable):
    """Fires as soon as the rollout of `release_tag` is not paused, or is aborted for this run: resumed, never
    controlled, aborted, or paused after an abort that stops the runs planned before it (`run_started_at`).

    The event is `{"control": <RolloutControl JSON> | None}`; the caller decides what an abort means for its run
    (`RolloutControl.aborts(run_started_at)`). `run_started_at` is part of the trigger's identity too, so two runs
    of one tag never share a trigger row.
    """

    fields = ("release_tag", "config_path", "run_started_at", "poll_interval")

    def __init__(self, *, release_tag: str, config_path: str | None, run_started_at: str | None, poll_interval: float) -> None:
        super().__init__()
        self.release_tag = release_tag
        self.config_path = config_path
        self.run_started_at = run_started_at
        self.poll_interval = poll_interval

    async def run(self) -> AsyncIterator[TriggerEvent]:
        said = None
        while True:
            try:
                control = await in_thread(read_control, self.config_path, self.release_tag)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                self.log.warning("reading the rollout control of %s: %s; trying again", self.release_tag, describe(exc))
            else:
                if control is None or not control.pauses() or control.aborts(self.run_started_at):
                    yield TriggerEvent({"control": control.model_dump(mode="json") if control is not None else None})
                    return
                if said != control.at:
                    self.log.info("rollout of %s paused by %s: %s; waiting", self.release_tag, control.by, control.reason)
                    said = control.at
            await asyncio.sleep(self.poll_interval)
