"""A wave's bake, in the triggerer: watch the deployed tenants' health alarms until the bake time is over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import TriggerEvent

from tenant_release.airflow import runtime
from tenant_release.airflow.triggers import _Serializable, in_thread
from tenant_release.classify import describe, is_retriable


class WaveBakeTrigger(_Serializable):
    """Looks at each watched tenant's alarms (in its own account, through its deploy role) every `poll_interval`
    seconds until `bake_until`; an alarm in ALARM marks that tenant failed for the wave.

    It ends early when more tenants fired than the wave has `room` for (the wave has failed: waiting longer changes
    nothing) or when the rollout is aborted. The event names each alarmed tenant's first firing alarm.
    """

    fields = ("release_tag", "config_path", "run_id", "run_started_at", "wave", "entries", "bake_until", "poll_interval", "room")

    def __init__(
        self,
        *,
        release_tag: str,
        config_path: str | None,
        run_id: str,
        run_started_at: str | None,
        wave: str,
        entries: list[dict[str, Any]],
        bake_until: str,
        poll_interval: float,
        room: int,
    ) -> None:
        super().__init__()
        self.release_tag = release_tag
        self.config_path = config_path
        self.run_id = run_id
        self.run_started_at = run_started_at
        self.wave = wave
        self.entries = entries
        self.bake_until = bake_until
        self.poll_interval = poll_interval
        self.room = room

    def _firing(self, entry: dict[str, Any]) -> str | None:
        deployment = runtime.planned_deployment(
            tenant=entry["tenant"],
            digest=entry["target_digest"],
            config_path=self.config_path,
            release_tag=self.release_tag,
            run_id=self.run_id,
            artifact=entry["artifact"],
            record_history=True,
            run_started_at=self.run_started_at,
        )
        firing = deployment.firing_alarms()
        return firing[0].describe() if firing else None

    def _aborted(self) -> str | None:
        from tenant_release.aws import controls

        tooling = runtime.cached_fleet(self.config_path).fleet.tooling
        dynamodb = runtime.shared_sessions().tooling_client("dynamodb", tooling.region)
        control = controls.current(dynamodb, tooling.leases_table, release=self.release_tag)
        return control.describe() if control is not None and control.aborts(self.run_started_at) else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        started = datetime.now(UTC)
        until = datetime.fromisoformat(self.bake_until)
        alarms: dict[str, str] = {}

        async def look(entry: dict[str, Any]) -> None:
            try:
                found = await in_thread(self._firing, entry)
            except Exception as exc:
                if not is_retriable(exc):
                    # A tenant whose alarms cannot be read is not known healthy: it counts as failed, with why.
                    alarms[entry["tenant"]] = f"its health alarms could not be read ({describe(exc)})"
                    return
                self.log.warning("reading %s's alarms: %s; trying again next look", entry["tenant"], describe(exc))
                return
            if found:
                self.log.error("wave %s: %s: %s", self.wave, entry["tenant"], found)
                alarms[entry["tenant"]] = found

        while True:
            await asyncio.gather(*(look(entry) for entry in self.entries if entry["tenant"] not in alarms))
            baked = (datetime.now(UTC) - started).total_seconds() / 60
            try:
                aborted = await in_thread(self._aborted)
            except Exception as exc:
                self.log.warning("reading the rollout's control: %s", describe(exc))
                aborted = None
            if aborted or len(alarms) > self.room or datetime.now(UTC) >= until:
                if len(alarms) > self.room and datetime.now(UTC) < until:
                    self.log.error(
                        "wave %s: %d tenant(s) alarmed, more than it tolerates; ending the bake", self.wave, len(alarms)
                    )
                yield TriggerEvent({"alarms": alarms, "baked_minutes": round(baked, 2), "aborted": aborted})
                return
            remaining = (until - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(0.0, min(self.poll_interval, remaining)))
