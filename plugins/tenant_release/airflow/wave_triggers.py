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
    nothing) or when the rollout is aborted. The event names each alarmed tenant's first firing alarm, and the
    tenants it could read: a tenant whose alarms could not be read once during the whole bake is not known healthy
    and counts as failed. The tenants are read as the fleet file says now (an edit during the bake, e.g. a hold
    added, does not fail them); a fleet file that cannot be read is tried again at the next look.
    """

    fields = (
        "release_tag",
        "config_path",
        "run_id",
        "run_started_at",
        "wave",
        "tenants",
        "artifact",
        "bake_until",
        "poll_interval",
        "room",
    )

    def __init__(
        self,
        *,
        release_tag: str,
        config_path: str | None,
        run_id: str,
        run_started_at: str | None,
        wave: str,
        tenants: dict[str, str],
        artifact: dict[str, Any],
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
        self.tenants = tenants  # tenant -> its planned settings' digest
        self.artifact = artifact  # once, not per tenant: a thousand tenants' trigger row stays small
        self.bake_until = bake_until
        self.poll_interval = poll_interval
        self.room = room

    def _firing(self, tenant: str) -> str | None:
        deployment = runtime.planned_deployment(
            tenant=tenant,
            digest=self.tenants[tenant],
            config_path=self.config_path,
            release_tag=self.release_tag,
            run_id=self.run_id,
            artifact=self.artifact,
            record_history=True,
            run_started_at=self.run_started_at,
            check_digest=False,
        )
        try:
            firing = deployment.firing_alarms()
        finally:  # a long-lived triggerer must not keep a session per tenant and bake
            deployment.sessions.forget_tenant(deployment.target, session_name=deployment.run.session_name)
        return firing[0].describe() if firing else None

    def _aborted(self) -> str | None:
        from tenant_release.airflow.control_triggers import read_control

        control = read_control(self.config_path, self.release_tag)
        return control.describe_abort() if control is not None and control.aborts(self.run_started_at) else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from tenant_release.errors import FleetConfigError

        started = datetime.now(UTC)
        until = datetime.fromisoformat(self.bake_until)
        alarms: dict[str, str] = {}
        read: set[str] = set()
        problems: dict[str, str] = {}

        async def look(tenant: str) -> None:
            try:
                found = await in_thread(self._firing, tenant)
            except FleetConfigError as exc:  # an edit under way, or the tenant removed: try again at the next look
                self.log.warning("reading %s's alarms: %s; trying again next look", tenant, exc)
                problems[tenant] = str(exc)
                return
            except Exception as exc:
                if not is_retriable(exc):
                    # A tenant whose alarms cannot be read is not known healthy: it counts as failed, with why.
                    alarms[tenant] = f"its health alarms could not be read ({describe(exc)})"
                    return
                self.log.warning("reading %s's alarms: %s; trying again next look", tenant, describe(exc))
                problems[tenant] = describe(exc)
                return
            read.add(tenant)
            if found:
                self.log.error("wave %s: %s: %s", self.wave, tenant, found)
                alarms[tenant] = found

        while True:
            await asyncio.gather(*(look(tenant) for tenant in self.tenants if tenant not in alarms))
            baked = (datetime.now(UTC) - started).total_seconds() / 60
            try:
                aborted = await in_thread(self._aborted)
            except Exception as exc:
                self.log.warning("reading the rollout's control: %s", describe(exc))
                aborted = None
            over = len(alarms) > self.room
            if aborted or over or datetime.now(UTC) >= until:
                if over and datetime.now(UTC) < until:
                    self.log.error(
                        "wave %s: %d tenant(s) alarmed, more than it tolerates; ending the bake", self.wave, len(alarms)
                    )
                if not aborted and not over:
                    for tenant in self.tenants:
                        if tenant not in read and tenant not in alarms:
                            why = problems.get(tenant, "no look finished")
                            alarms[tenant] = f"its health alarms could not be read during the bake ({why})"
                yield TriggerEvent({"alarms": alarms, "read": sorted(read), "baked_minutes": round(baked, 2), "aborted": aborted})
                return
            remaining = (until - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(0.0, min(self.poll_interval, remaining)))
