"""Operators: the release gate, and the per-target deploy (one task instance per tenant).

Every wait defers to the triggerer, so a tenant waiting for approval, for its maintenance window or
for CloudFormation holds no worker slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from tenant_release import classify
from tenant_release.airflow import runtime
from tenant_release.airflow.triggers import ApprovalRecordTrigger, StackSettledTrigger, WindowOpenTrigger
from tenant_release.aws.approvals import RELEASE_WIDE
from tenant_release.deploy import ReleaseRun, TargetDeployment, failure_reason, utc_now
from tenant_release.errors import PermanentAwsError, TenantReleaseError
from tenant_release.models import ApprovalPolicy, Artifact, Outcome, OutsideWindowPolicy, TenantResult
from tenant_release.tags import parse_release_tag
from tenant_release.windows import MaintenanceWindow

APPROVE, REJECT = ApprovalOperator.APPROVE, ApprovalOperator.REJECT


def _request_approval(
    operator: BaseOperator,
    context: Context,
    *,
    tenant: str,
    release_tag: str,
    config_path: str | None,
    subject: str,
    body: str,
    timeout_hours: float,
    state: dict[str, Any],
) -> NoReturn:
    """Open an approval request in Airflow's UI (a HITL detail) and wait, deferred, for it or for a record."""
    from airflow.sdk.execution_time.hitl import upsert_hitl_detail

    ti_id = context["task_instance"].id
    upsert_hitl_detail(
        ti_id=ti_id, options=[APPROVE, REJECT], subject=subject, body=body, defaults=[REJECT], multiple=False, params={}
    )
    deadline = datetime.now(UTC) + timedelta(hours=timeout_hours)
    operator.log.info("waiting for approval (UI, REST or approval record) until %s: %s", deadline.isoformat(), subject)
    operator.defer(
        trigger=ApprovalRecordTrigger(
            tenant=tenant,
            release_tag=release_tag,
            config_path=config_path,
            ti_id=str(ti_id),
            deadline=deadline.isoformat(),
            poll_interval=runtime.setting("approval_poll_seconds", 30.0),
            state=state,
        ),
        method_name="resume",
    )
    raise AssertionError("defer() returns only by raising")  # pragma: no cover


def approval_from_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """Both shapes of an answer: our trigger's, and Airflow's own when someone answers in the UI/REST."""
    if "approval" in event:
        return dict(event["approval"])
    if "chosen_options" in event:
        user = event.get("responded_by_user") or {}
        timed_out = bool(event.get("timedout")) or not user
        return {
            "approved": APPROVE in event["chosen_options"] and not timed_out,
            "decided_by": user.get("name") or user.get("id") or "nobody",
            "source": "timeout" if timed_out else "ui",
            "note": "",
        }
    return None


def _describe_approval(approval: dict[str, Any]) -> str:
    if approval.get("source") == "timeout":
        return f"approval timed out ({approval.get('note') or 'no answer'})"
    verb = "approved" if approval["approved"] else "rejected"
    note = f": {approval['note']}" if approval.get("note") else ""
    return f"{verb} by {approval['decided_by']} via {approval['source']}{note}"


class ReleaseGateOperator(ApprovalOperator):
    """The production gate: after dev, before any tenant, a person approves or rejects the release.

    Shows the release, the artifact's hash, the dev result and the exact tenant list. Releases to a
    group that the fleet file does not list in `gated_groups` pass straight on. An answer can come from
    the UI, the REST API, or a release-wide approval record (`tenant-release approve TAG`). Reject (or no
    answer within `approval_timeout_hours`) fails the gate, so no tenant is touched.
    """

    # What a rejection means for this run (a subclass gating something other than a deploy says its own).
    rejected_consequence = "no tenant was touched"
    approval_context = "before deploying"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Release gate")
        kwargs.setdefault("retries", 0)
        super().__init__(fail_on_reject=True, defaults=REJECT, **kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        plan = ti.xcom_pull(task_ids="plan")
        if not plan["gated"]:
            self.log.info("group %s is not gated; going on without approval", plan["group"])
            return {"gated": False}
        from tenant_release.config import load_fleet

        fleet = load_fleet(plan["config_path"]).fleet
        recorded = runtime.recorded_decision(fleet.tooling, tenant=RELEASE_WIDE, release=plan["release_tag"])
        if recorded is not None:  # decided ahead, e.g. when the release was queued for a window
            return self.resume(context, {"approval": asdict(recorded)})
        subject, body = self.describe_request(ti, plan)
        self.subject, self.body = subject, body
        _request_approval(
            self,
            context,
            tenant=RELEASE_WIDE,
            release_tag=plan["release_tag"],
            config_path=plan["config_path"],
            subject=subject,
            body=body,
            timeout_hours=fleet.approval_timeout_hours,
            state={},
        )

    def describe_request(self, ti: Any, plan: dict[str, Any]) -> tuple[str, str]:
        """The question shown to the approver (subject, Markdown body), from the run's plan, build and dev XComs."""
        artifact = ti.xcom_pull(task_ids="build") or {}
        dev = ti.xcom_pull(task_ids="deploy_dev") or {}
        tenants = "\n".join(f"- {name}" for name in plan["tenants"])
        subject = f"Ship {plan['release_tag']} to {len(plan['tenants'])} tenant(s) of group {plan['group']}?"
        body = (
            f"**Release** {plan['release_tag']} (version {plan['version']})\n\n"
            f"**Artifact** `s3://{artifact.get('bucket')}/{artifact.get('code_key')}` sha256 `{artifact.get('sha256')}`\n\n"
            f"**Dev** {dev.get('status', 'unknown')}: version {dev.get('version_before') or '-'} -> "
            f"{dev.get('version_after') or '-'}, smoke test passed\n\n"
            f"**Tenants about to be deployed** ({len(plan['tenants'])}):\n{tenants}\n"
        )
        return subject, body

    def resume(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if "error" in event:
            raise AirflowException(f"waiting for the release gate failed: {event['error']}")
        approval = approval_from_event(event)
        if approval is None:
            raise AirflowFailException(f"the release gate got an answer it does not understand: {event}")
        described = _describe_approval(approval)
        if not approval["approved"]:
            raise AirflowFailException(f"release {described}; {self.rejected_consequence}")
        self.log.info("release %s", described)
        if approval["source"] == "ui":  # keep it on record: audit trail, and a re-run or queued run is not asked again
            plan = context["ti"].xcom_pull(task_ids="plan")
            from tenant_release.aws.approvals import put_decision
            from tenant_release.config import load_fleet

            tooling = load_fleet(plan["config_path"]).fleet.tooling
            put_decision(
                runtime.aws_sessions().tooling_client("dynamodb", tooling.region),
                tooling.approvals_table,
                tenant=RELEASE_WIDE,
                release=plan["release_tag"],
                approved=True,
                decided_by=approval["decided_by"],
                note=f"approved in Airflow {self.approval_context} (run {context['run_id']})",
            )
        return {
            "gated": True,
            "approved_by": approval["decided_by"],
            "source": approval["source"],
            "note": approval.get("note", ""),
        }


class TenantDeployOperator(BaseOperator):
    """Deploy the release's artifact to one target (a tenant, or dev).

    [approval] → [maintenance window] → assume role → copy artifact → change set → (stack settles)
    → verify → history. Steps retry recoverable AWS errors in-process with jittered backoff; what
    retrying cannot fix fails the task at once with the reason, and never affects another tenant.
    A rejected or unanswered approval, or a missed window (policy `skip`), ends the tenant SKIPPED.
    """

    template_fields: Sequence[str] = ("tenant", "target_digest", "release_tag", "artifact", "config_path")
    ui_color = "#d6eaff"

    def __init__(
        self,
        *,
        tenant: str,
        target_digest: str,
        release_tag: str,
        artifact: dict[str, Any],
        config_path: str | None = None,
        poll_interval: float | None = None,
        stack_timeout: timedelta = timedelta(hours=2),
        record_history: bool = True,
        smoke_test: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tenant = tenant
        self.target_digest = target_digest
        self.release_tag = release_tag
        self.artifact = artifact
        self.config_path = config_path
        self.poll_interval = poll_interval
        self.stack_timeout = stack_timeout
        self.record_history = record_history
        self.smoke_test = smoke_test

    def _deployment(self, context: Context) -> tuple[TargetDeployment, float]:
        loaded, target = runtime.planned_target(tenant=self.tenant, digest=self.target_digest, config_path=self.config_path)
        run = ReleaseRun(
            release=parse_release_tag(self.release_tag),
            run_id=context["run_id"],
            artifact=Artifact.model_validate(self.artifact),
            tooling=loaded.fleet.tooling,
        )
        deployment = TargetDeployment(sessions=runtime.aws_sessions(), run=run, target=target, record_history=self.record_history)
        return deployment, loaded.fleet.approval_timeout_hours

    def execute(self, context: Context) -> dict[str, Any]:
        return self._advance(context, {"started_at": utc_now()})

    def resume(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Back from an approval or window wait."""
        state = dict(event.get("state") or {})
        if "error" in event:
            self._guarded(context, state, lambda: _raise(AirflowException(event["error"])))
        if (approval := approval_from_event(event)) is not None:
            state["approval"] = approval
            if approval["source"] == "ui":
                self._remember_ui_answer(context, approval)
        if "window_opened" in event:
            state["window_waits"] = state.get("window_waits", 0) + 1
        return self._advance(context, state)

    def _advance(self, context: Context, state: dict[str, Any]) -> dict[str, Any]:
        deployment, timeout_hours = self._guarded(context, state, lambda: self._deployment(context))
        target = deployment.target
        if target.approval == ApprovalPolicy.REQUIRED:
            if "approval" not in state:
                decision = self._guarded(context, state, lambda: self._recorded_decision(deployment), deployment)
                if decision is None:
                    self._waiting(deployment, state, "waiting for the tenant's approval")
                    artifact = deployment.run.artifact
                    _request_approval(
                        self,
                        context,
                        tenant=target.name,
                        release_tag=self.release_tag,
                        config_path=self.config_path,
                        subject=f"Deploy {self.release_tag} to tenant {target.name}?",
                        body=(
                            f"Tenant **{target.name}** (account {target.account_id}, {target.region}) requires its own "
                            f"sign-off.\n\nRelease {self.release_tag}, artifact sha256 `{artifact.sha256}`."
                        ),
                        timeout_hours=timeout_hours,
                        state=state,
                    )
                state["approval"] = decision
            approval = state["approval"]
            if not approval["approved"]:
                self._skip(deployment, state, _describe_approval(approval))
            state["approved_by"] = f"{approval['decided_by']} ({approval['source']})"
            self._note(state, _describe_approval(approval))
        if target.maintenance_window:
            self._wait_for_window(deployment, state, MaintenanceWindow.parse(target.maintenance_window))
        return self._deploy(context, deployment, state)

    def _remember_ui_answer(self, context: Context, approval: dict[str, Any]) -> None:
        """Keep a UI answer as an approval record too: a retry or re-run of this tenant must not ask again."""
        from tenant_release.aws.approvals import put_decision

        deployment, _ = self._guarded(context, {}, lambda: self._deployment(context))
        tooling = deployment.run.tooling
        put_decision(
            deployment.sessions.tooling_client("dynamodb", tooling.region),
            tooling.approvals_table,
            tenant=deployment.target.name,
            release=self.release_tag,
            approved=approval["approved"],
            decided_by=approval["decided_by"],
            note="answered in Airflow",
        )

    def _recorded_decision(self, deployment: TargetDeployment) -> dict[str, Any] | None:
        decision = runtime.recorded_decision(deployment.run.tooling, tenant=deployment.target.name, release=self.release_tag)
        return asdict(decision) if decision is not None else None

    def _wait_for_window(self, deployment: TargetDeployment, state: dict[str, Any], window: MaintenanceWindow) -> None:
        now = runtime.utcnow()
        if window.is_open(now):
            waited = "waited for" if state.get("window_waits") else "inside"
            self._note(state, f"{waited} maintenance window {window}; deploy started {now.isoformat(timespec='seconds')}")
            return
        if state.get("window_waits") and deployment.target.outside_window == OutsideWindowPolicy.SKIP:
            self._skip(deployment, state, f"missed its maintenance window {window} (outside_window: skip)")
        opens = window.next_open(now)
        self._waiting(deployment, state, f"waiting for maintenance window {window}, opens {opens.isoformat()}")
        self.log.info("%s: outside its maintenance window %s; deferring until %s", deployment.target.name, window, opens)
        self.defer(
            trigger=WindowOpenTrigger(
                opens_at=opens.isoformat(), poll_interval=runtime.setting("window_poll_seconds", 300.0), state=state
            ),
            method_name="resume",
        )

    def _deploy(self, context: Context, deployment: TargetDeployment, state: dict[str, Any]) -> dict[str, Any]:
        self.log.info(
            "deploying %s %s to %s (account %s, %s) as session %s",
            deployment.run.release.tag,
            deployment.run.artifact.sha256[:12],
            deployment.target.name,
            deployment.target.account_id,
            deployment.target.region,
            deployment.run.session_name,
        )
        keep = {k: state[k] for k in ("notes", "approved_by") if k in state}
        state = {**self._guarded(context, state, lambda: deployment.begin(started_at=state["started_at"]), deployment), **keep}
        if state["unchanged"]:
            status = self._guarded(context, state, lambda: deployment.poll().status, deployment)
            return self._finish(context, deployment, state, status)
        deadline = datetime.now(UTC) + self.stack_timeout
        poll_interval = self.poll_interval if self.poll_interval is not None else runtime.setting("stack_poll_seconds", 10.0)
        self.log.info(
            "change set %s executing; waiting for %s in the triggerer", state["change_set"], deployment.target.stack_name
        )
        self.defer(
            trigger=StackSettledTrigger(
                tenant=self.tenant,
                target_digest=self.target_digest,
                config_path=self.config_path,
                release_tag=self.release_tag,
                run_id=context["run_id"],
                poll_interval=poll_interval,
                deadline=deadline.isoformat(),
                state=state,
            ),
            method_name="execute_complete",
        )
        raise AssertionError("defer() returns only by raising")  # pragma: no cover

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        state = event.get("state") or {}
        deployment, _ = self._guarded(context, state, lambda: self._deployment(context))
        if "error" in event:
            error = event["error"]
            self._guarded(
                context,
                state,
                lambda: _raise(PermanentAwsError(error) if event.get("timeout") else AirflowException(error)),
                deployment,
            )
        return self._finish(context, deployment, state, event["stack_status"])

    def _finish(self, context: Context, deployment: TargetDeployment, state: dict[str, Any], status: str) -> dict[str, Any]:
        result: TenantResult = self._guarded(context, state, lambda: deployment.finish(state, stack_status=status), deployment)
        if self.smoke_test:
            self._guarded(context, state, deployment.smoke_test, deployment)
        self.log.info(
            "%s: %s (%s -> %s, stack %s)", result.tenant, result.status.value, result.version_before, result.version_after, status
        )
        deployment.record(result)
        return result.to_xcom()

    @staticmethod
    def _note(state: dict[str, Any], text: str) -> None:
        notes = state.setdefault("notes", [])
        if text not in notes:
            notes.append(text)

    def _waiting(self, deployment: TargetDeployment, state: dict[str, Any], what: str) -> None:
        """Say in the history why this tenant is not deploying yet (visible with `tenant-release status`)."""
        try:
            deployment.record(deployment.result(state, status=Outcome.IN_PROGRESS, reason=what))
        except Exception as exc:
            self.log.warning("could not record the wait in the history table: %s", failure_reason(exc))

    def _skip(self, deployment: TargetDeployment, state: dict[str, Any], reason: str) -> NoReturn:
        self.log.warning("%s SKIPPED: %s", deployment.target.name, reason)
        deployment.record(deployment.result(state, status=Outcome.SKIPPED, reason=reason))
        raise AirflowSkipException(reason)

    def _guarded(self, context: Context, state: dict[str, Any], step: Any, deployment: TargetDeployment | None = None) -> Any:
        """Run a step; on failure log why, record the tenant as FAILED, and fail or retry the task."""
        try:
            return step()
        except Exception as exc:
            reason = failure_reason(exc)
            for line in getattr(exc, "events", []) or []:
                self.log.error("stack event: %s", line)
            self.log.error("%s FAILED: %s", self.tenant, reason)
            if deployment is not None:
                try:
                    deployment.record(deployment.failure(state, exc))
                except Exception as history_exc:  # the deploy's own error is the one to report
                    self.log.warning("could not record the failure in the history table: %s", failure_reason(history_exc))
            if isinstance(exc, (TenantReleaseError, AirflowFailException)) and not classify.is_retriable(exc):
                raise AirflowFailException(reason) from None
            if classify.error_code(exc) and not classify.is_retriable(exc):
                raise AirflowFailException(reason) from None
            raise


def _raise(exc: Exception) -> NoReturn:
    raise exc
