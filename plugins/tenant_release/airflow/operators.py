"""The per-target deploy operator: one task instance per tenant, deferring while its stack settles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from tenant_release import classify
from tenant_release.airflow import runtime
from tenant_release.airflow.triggers import StackSettledTrigger
from tenant_release.deploy import ReleaseRun, TargetDeployment, failure_reason, utc_now
from tenant_release.errors import PermanentAwsError, TenantReleaseError
from tenant_release.models import Artifact, TenantResult
from tenant_release.tags import parse_release_tag


class TenantDeployOperator(BaseOperator):
    """Deploy the release's artifact to one target (a tenant, or dev).

    assume role → copy artifact → change set → (deferred: stack settles) → verify → history.
    Steps retry recoverable AWS errors in-process with jittered backoff; what retrying cannot fix
    fails the task at once with the reason, and never affects another tenant's task.
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

    def _deployment(self, context: Context) -> TargetDeployment:
        loaded, target = runtime.planned_target(tenant=self.tenant, digest=self.target_digest, config_path=self.config_path)
        run = ReleaseRun(
            release=parse_release_tag(self.release_tag),
            run_id=context["run_id"],
            artifact=Artifact.model_validate(self.artifact),
            tooling=loaded.fleet.tooling,
        )
        return TargetDeployment(sessions=runtime.aws_sessions(), run=run, target=target, record_history=self.record_history)

    def execute(self, context: Context) -> dict[str, Any]:
        state: dict[str, Any] = {"started_at": utc_now()}
        deployment = self._guarded(context, state, lambda: self._deployment(context))
        self.log.info(
            "deploying %s %s to %s (account %s, %s) as session %s",
            deployment.run.release.tag,
            deployment.run.artifact.sha256[:12],
            deployment.target.name,
            deployment.target.account_id,
            deployment.target.region,
            deployment.run.session_name,
        )
        state = self._guarded(context, state, lambda: deployment.begin(started_at=state["started_at"]), deployment)
        if state["unchanged"]:
            status = self._guarded(context, state, lambda: deployment.poll().status, deployment)
            return self._finish(context, deployment, state, status)
        deadline = datetime.now(UTC) + self.stack_timeout
        poll_interval = self.poll_interval if self.poll_interval is not None else stack_poll_seconds()
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
        deployment = self._guarded(context, state, lambda: self._deployment(context))
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


def stack_poll_seconds() -> float:
    """`[tenant_release] stack_poll_seconds` (env AIRFLOW__TENANT_RELEASE__STACK_POLL_SECONDS), default 10."""
    from airflow.configuration import conf

    return conf.getfloat("tenant_release", "stack_poll_seconds", fallback=10.0)


def _raise(exc: Exception) -> None:
    raise exc
