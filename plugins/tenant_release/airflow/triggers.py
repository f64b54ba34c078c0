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


class ApprovalRecordTrigger(BaseTrigger):
    """Waits for a person's answer: in the Airflow UI/REST (the task's HITL detail) or as an approval record.

    Records are a DynamoDB item or an S3 object in the tooling account (see `tenant_release.aws.approvals`).
    An answer in the UI resumes the task directly through Airflow; this trigger also notices it, so
    either path works. No answer before `deadline` counts as a rejection by timeout.
    """

    def __init__(
        self,
        *,
        tenant: str,
        release_tag: str,
        config_path: str | None,
        ti_id: str | None,
        deadline: str,
        poll_interval: float,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.tenant = tenant
        self.release_tag = release_tag
        self.config_path = config_path
        self.ti_id = ti_id
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.state = state or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{TRIGGER_PATH}.ApprovalRecordTrigger",
            {
                "tenant": self.tenant,
                "release_tag": self.release_tag,
                "config_path": self.config_path,
                "ti_id": self.ti_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "state": self.state,
            },
        )

    def _lookup(self) -> Any:
        from tenant_release.config import load_fleet

        tooling = load_fleet(self.config_path).fleet.tooling
        return runtime.recorded_decision(tooling, tenant=self.tenant, release=self.release_tag)

    async def _ui_answer(self) -> dict[str, Any] | None:
        if not self.ti_id:
            return None
        from uuid import UUID

        from airflow.sdk.execution_time.hitl import get_hitl_detail_content_detail

        try:
            response = await asyncio.to_thread(get_hitl_detail_content_detail, ti_id=UUID(self.ti_id))
        except Exception as exc:  # an unreachable API must not end the wait
            self.log.warning("could not read the approval request: %s", exc)
            return None
        if response is None or not (response.response_received and response.chosen_options):
            return None
        user = response.responded_by_user
        return {
            "approved": "Approve" in response.chosen_options,
            "decided_by": (user.name if user else "timeout default"),
            "source": "ui",
            "note": "",
        }

    async def _close_ui_request(self, approved: bool) -> None:
        """Mark the UI request answered, so it does not linger after an approval record decided."""
        if not self.ti_id:
            return
        from uuid import UUID

        from airflow.sdk.execution_time.hitl import update_hitl_detail_response

        try:
            await asyncio.to_thread(
                update_hitl_detail_response,
                ti_id=UUID(self.ti_id),
                chosen_options=["Approve" if approved else "Reject"],
                params_input={},
            )
        except Exception as exc:
            self.log.info("approval request left open in the UI: %s", exc)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        while True:
            # Wait first, as StackSettledTrigger does: the task checked the records just before deferring,
            # and an event within milliseconds of deferring races the scheduler's handling of the deferral.
            await asyncio.sleep(self.poll_interval)
            try:
                decision = await asyncio.to_thread(self._lookup)
            except Exception as exc:
                if not is_retriable(exc):
                    yield TriggerEvent({"error": describe(exc), "state": self.state})
                    return
                self.log.warning("reading approval records: %s; trying again", describe(exc))
                decision = None
            if decision is not None:
                await self._close_ui_request(decision.approved)
                payload = {
                    "approved": decision.approved,
                    "decided_by": decision.decided_by,
                    "source": decision.source,
                    "note": decision.note,
                }
                yield TriggerEvent({"approval": payload, "state": self.state})
                return
            answer = await self._ui_answer()
            if answer is not None:
                yield TriggerEvent({"approval": answer, "state": self.state})
                return
            if datetime.now(UTC) >= deadline:
                await self._close_ui_request(False)
                timeout = {
                    "approved": False,
                    "decided_by": "nobody",
                    "source": "timeout",
                    "note": f"no answer by {self.deadline}",
                }
                yield TriggerEvent({"approval": timeout, "state": self.state})
                return


class WindowOpenTrigger(BaseTrigger):
    """Sleeps in the triggerer until a tenant's maintenance window opens (by `runtime.utcnow`)."""

    def __init__(self, *, opens_at: str, poll_interval: float, state: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.opens_at = opens_at
        self.poll_interval = poll_interval
        self.state = state or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{TRIGGER_PATH}.WindowOpenTrigger",
            {"opens_at": self.opens_at, "poll_interval": self.poll_interval, "state": self.state},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        opens = datetime.fromisoformat(self.opens_at)
        while (remaining := (opens - runtime.utcnow()).total_seconds()) > 0:
            # Wake up now and then instead of sleeping days at once: a clock jump or a triggerer
            # restart then costs at most one interval.
            await asyncio.sleep(min(remaining, self.poll_interval))
        yield TriggerEvent({"window_opened": self.opens_at, "state": self.state})
