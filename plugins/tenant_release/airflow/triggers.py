"""Triggers: waits that run in the triggerer and hold no worker slot. They carry names, never credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from tenant_release.airflow import runtime
from tenant_release.classify import describe, is_retriable
from tenant_release.naming import session_name, source_identity

TRIGGER_PATH = "tenant_release.airflow.triggers"


class StackSettledTrigger(BaseTrigger):
    """Polls one tenant's stack until it leaves `*_IN_PROGRESS`.

    The triggerer assumes the tenant role itself (refreshing credentials, from the same fleet-file
    entry the task used), so no credential is ever serialised into the trigger row.
    """

    def __init__(
        self,
        *,
        tenant: str,
        target_digest: str,
        config_path: str | None,
        release_tag: str,
        run_id: str,
        poll_interval: float,
        deadline: str,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.tenant = tenant
        self.target_digest = target_digest
        self.config_path = config_path
        self.release_tag = release_tag
        self.run_id = run_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        # The task's progress so far (names, versions, URIs; never credentials), echoed back in the event.
        self.state = state or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{TRIGGER_PATH}.StackSettledTrigger",
            {
                "tenant": self.tenant,
                "target_digest": self.target_digest,
                "config_path": self.config_path,
                "release_tag": self.release_tag,
                "run_id": self.run_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "state": self.state,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            _, target = await asyncio.to_thread(
                runtime.planned_target, tenant=self.tenant, digest=self.target_digest, config_path=self.config_path
            )
            sessions = await asyncio.to_thread(runtime.aws_sessions)
            cloudformation = await asyncio.to_thread(
                sessions.tenant_client,
                target,
                "cloudformation",
                session_name=session_name(release_tag=self.release_tag, run_id=self.run_id),
                source_identity=source_identity(release_tag=self.release_tag),
            )
        except Exception as exc:
            yield TriggerEvent({"error": describe(exc), "state": self.state})
            return
        from tenant_release.aws.stacks import poll_stack

        deadline = datetime.fromisoformat(self.deadline)
        while True:
            # Wait first: a change set never settles at once on real AWS, and an event fired within
            # milliseconds of deferring races the scheduler's handling of the deferral (seen on
            # LocalExecutor: the resumed task was failed as "state changed externally").
            await asyncio.sleep(self.poll_interval)
            try:
                polled = await asyncio.to_thread(poll_stack, cloudformation, target.stack_name)
            except Exception as exc:
                if not is_retriable(exc):
                    yield TriggerEvent({"error": describe(exc), "state": self.state})
                    return
                self.log.warning("polling %s: %s; trying again", target.stack_name, describe(exc))
            else:
                if polled.settled:
                    yield TriggerEvent({"stack_status": polled.status, "state": self.state})
                    return
                self.log.info("%s: %s", target.stack_name, polled.status)
            if datetime.now(UTC) >= deadline:
                yield TriggerEvent(
                    {
                        "error": f"stack {target.stack_name} did not settle before {self.deadline}",
                        "timeout": True,
                        "state": self.state,
                    }
                )
                return
