"""The per-target deploy operator: one task instance per tenant (and one for dev), its deploy run by the triggerer.

A tenant with no gate of its own spends a moment on a worker (the task instance gets its tenant name) and
defers at once to `TenantDeployTrigger`, which does the whole deploy in the triggerer and ends the task there.
A tenant that needs its own approval or a maintenance window waits for those first (deferred too), then hands
its deploy to the same trigger. A failure comes back to a worker, which fails the task (or retries it) with the
reason in the tenant's log; it never affects another tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.triggers.base import StartTriggerArgs

from tenant_release.airflow import runtime
from tenant_release.airflow.failures import as_task_failure
from tenant_release.airflow.gate import approval_from_event, request_approval
from tenant_release.airflow.triggers import (
    RELEASE_GATE_TASK,
    FleetTenantStartTrigger,
    TenantDeployTrigger,
    WindowOpenTrigger,
    release_gate_refusal,
    report_problems,
)
from tenant_release.aws import ledger
from tenant_release.deploy import TargetDeployment, failure_reason, utc_now
from tenant_release.errors import HeldSincePlannedError, ReleaseGateError
from tenant_release.models import ApprovalDecision, ApprovalPolicy, DeployProgress, Outcome, OutsideWindowPolicy
from tenant_release.windows import MaintenanceWindow


class TenantDeployOperator(BaseOperator):
    """Deploy the release's artifact to one target (a tenant, or dev).

    [approval] → [maintenance window] → (triggerer) assume role → copy artifact → change set → stack settles
    → verify → history. AWS errors that may pass are retried in-process with jittered backoff; what retrying
    cannot fix fails the task at once with the reason. A rejected or unanswered approval, or a missed window
    (policy `skip`), ends the tenant SKIPPED.
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
        has_own_gate: bool = True,
        poll_interval: float | None = None,
        stack_timeout: timedelta = timedelta(hours=2),
        record_history: bool = True,
        smoke_test: bool = False,
        run_started_at: str | None = None,
        triggered_by: str | None = None,
        allow_rollback: str = "",
        gated: bool = False,
        rollout: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # The wave's caps (a `RolloutCaps`), for the deploy trigger: how many tenants deploy at once.
        self.rollout = rollout
        self.tenant = tenant
        self.target_digest = target_digest
        self.release_tag = release_tag
        self.artifact = artifact
        self.config_path = config_path
        # False only when the plan saw neither an approval nor a window: then the worker reads nothing and
        # defers at once (the trigger checks the tenant's settings against the plan's digest).
        self.has_own_gate = has_own_gate
        self.poll_interval = poll_interval
        self.stack_timeout = stack_timeout
        self.record_history = record_history
        self.smoke_test = smoke_test
        # From the plan: orders this run's history writes against other runs' (see aws.ledger), and says who.
        self.run_started_at = run_started_at
        self.triggered_by = triggered_by
        self.allow_rollback = allow_rollback  # the run's reason to deploy over a newer version (see RunPlan)
        # The run is gated: deploy only an artifact the run's release gate approved (`_require_release_gate`).
        self.gated = gated

    # --- entry points -----------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        progress = DeployProgress(started_at=utc_now())
        if not self.has_own_gate:
            self._require_release_gate(context, progress)
            self._defer_deploy(context, progress)
        return self._pass_gates(context, progress)

    def resume(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Back from an approval or window wait."""
        progress = DeployProgress.model_validate(event.get("progress") or {"started_at": utc_now()})
        if "error" in event:
            self._fail(self._deployment(context), progress, AirflowException(event["error"]))
        # A UI answer is kept in `progress`, so in the tenant's history item (the orchestrator writes no
        # approval record); a retry of this run finds it there (`_earlier_approval`).
        decision = approval_from_event(event, sha256=str(self.artifact.get("sha256") or "") or None)
        if decision is not None:
            progress.approval = decision
        if "window_opened" in event:
            progress.window_waits += 1
        return self._pass_gates(context, progress)

    def execute_complete(self, context: Context, event: Any) -> dict[str, Any]:
        """Back from the deploy trigger: with its result (dev), or because the deploy failed."""
        if isinstance(event, dict) and "result" in event:
            return event["result"]
        if isinstance(event, dict) and "failed" in event:
            if event.get("permanent"):
                raise AirflowFailException(event["failed"])
            raise AirflowException(event["failed"])
        if isinstance(event, dict) and "skipped" in event:  # the rollout was aborted before this deploy started
            raise AirflowSkipException(event["skipped"])
        if event == "skipped":
            # `dag.test()` hands a TaskSkippedEvent back as "skipped": the reason is in the history item the trigger wrote.
            tooling = runtime.cached_fleet(self.config_path).fleet.tooling
            found = ledger.get(
                runtime.shared_sessions().tooling_client("dynamodb", tooling.region),
                tooling.history_table,
                tenant=self.tenant,
                release=self.release_tag,
            )
            raise AirflowSkipException(found.reason if found is not None and found.reason else "skipped by its deploy trigger")
        if event == "success":
            # Only `dag.test()` resumes a task that the trigger ended (it runs triggers inline and hands their
            # TaskSuccessEvent back as "success"): the outcome is the history item the trigger wrote.
            return self._recorded_result(context)
        raise AirflowFailException(f"the deploy of {self.tenant} ended with an event it does not understand: {event!r}")

    # --- steps ------------------------------------------------------------------------------------------------

    def _deployment(self, context: Context, *, check_digest: bool = True) -> TargetDeployment:
        try:
            return runtime.planned_deployment(
                tenant=self.tenant,
                digest=self.target_digest,
                config_path=self.config_path,
                release_tag=self.release_tag,
                run_id=context["run_id"],
                artifact=self.artifact,
                record_history=self.record_history,
                run_started_at=self.run_started_at,
                triggered_by=self.triggered_by,
                try_number=_try_number(context),
                allow_rollback=self.allow_rollback,
                check_digest=check_digest,
            )
        except HeldSincePlannedError as held:
            self._skip(self._deployment(context, check_digest=False), DeployProgress(started_at=utc_now()), held.hold)
        except Exception as exc:
            self.log.error("%s FAILED: %s", self.tenant, failure_reason(exc))
            raise as_task_failure(exc) from None

    def _require_release_gate(
        self, context: Context, progress: DeployProgress, deployment: TargetDeployment | None = None
    ) -> None:
        """In a gated run, fail this tenant for good unless the run's release gate approved the artifact it deploys.

        The gate task alone is not enough: it can be marked success in the UI, or the build cleared and run again
        after it approved another artifact. Its result (XCom) is what a person's approval leaves behind.
        """
        if not self.gated:
            return
        gate = context["ti"].xcom_pull(task_ids=RELEASE_GATE_TASK, map_indexes=-1, default=None)
        refusal = release_gate_refusal(gate, sha256=str(self.artifact.get("sha256") or "") or None)
        if refusal is not None:
            self._fail(deployment or self._deployment(context), progress, ReleaseGateError(refusal))

    def _pass_gates(self, context: Context, progress: DeployProgress) -> dict[str, Any]:
        deployment = self._deployment(context)
        self._require_release_gate(context, progress, deployment)
        target = deployment.target
        if target.approval == ApprovalPolicy.REQUIRED:
            if progress.approval is None:
                decision = self._guarded(deployment, progress, self._earlier_approval, deployment)
                if decision is None:
                    decision = self._guarded(deployment, progress, self._recorded_decision, deployment)
                if decision is None:
                    self._waiting(deployment, progress, "waiting for the tenant's approval")
                    request_approval(
                        self,
                        context,
                        tenant=target.name,
                        release_tag=self.release_tag,
                        sha256=deployment.run.artifact.sha256,
                        config_path=self.config_path,
                        subject=f"Deploy {self.release_tag} to tenant {target.name}?",
                        body=(
                            f"Tenant **{target.name}** (account {target.account_id}, {target.region}) requires its own "
                            f"sign-off.\n\nRelease {self.release_tag}, artifact sha256 `{deployment.run.artifact.sha256}`."
                        ),
                        timeout_hours=runtime.cached_fleet(self.config_path).fleet.approval_timeout_hours,
                        progress=progress,
                    )
                progress.approval = decision
            if not progress.approval.approved:
                self._skip(deployment, progress, progress.approval.describe())
            progress.approved_by = f"{progress.approval.decided_by} ({progress.approval.source})"
            progress.note(progress.approval.describe())
        if target.maintenance_window:
            self._wait_for_window(deployment, progress, MaintenanceWindow.parse(target.maintenance_window))
        waits = [
            *(["its approval"] if target.approval == ApprovalPolicy.REQUIRED else []),
            *(["its maintenance window"] if target.maintenance_window else []),
        ]
        # A freeze may have begun while it waited: check again right before its deploy starts.
        frozen = waits and runtime.freeze_began(self.config_path, context["params"], waiting_for=" and ".join(waits))
        if frozen:
            self._skip(deployment, progress, frozen)
        self._defer_deploy(context, progress)

    def _defer_deploy(self, context: Context, progress: DeployProgress) -> NoReturn:
        poll_interval = self.poll_interval if self.poll_interval is not None else runtime.setting("stack_poll_seconds", 10.0)
        self.log.info("%s: handing the deploy of %s to the triggerer", self.tenant, self.release_tag)
        self.defer(
            trigger=TenantDeployTrigger(
                tenant=self.tenant,
                target_digest=self.target_digest,
                config_path=self.config_path,
                release_tag=self.release_tag,
                run_id=context["run_id"],
                artifact=self.artifact,
                progress=progress.model_dump(mode="json"),
                poll_interval=poll_interval,
                deadline=(datetime.now(UTC) + self.stack_timeout).isoformat(),
                record_history=self.record_history,
                smoke_test=self.smoke_test,
                run_started_at=self.run_started_at,
                triggered_by=self.triggered_by,
                try_number=_try_number(context),
                # dev's result feeds the release gate through XCom: it comes back to a worker to return it
                # (one task instance); a tenant ends in the triggerer.
                end_in_triggerer=self.record_history,
                allow_rollback=self.allow_rollback,
                rollout=self.rollout,
            ),
            method_name="execute_complete",
        )
        raise AssertionError("defer() returns only by raising")  # pragma: no cover

    def _recorded_result(self, context: Context) -> dict[str, Any]:
        loaded = runtime.cached_fleet(self.config_path)
        tooling = loaded.fleet.tooling
        found = ledger.get(
            runtime.shared_sessions().tooling_client("dynamodb", tooling.region),
            tooling.history_table,
            tenant=self.tenant,
            release=self.release_tag,
        )
        if found is None or found.run_id != context["run_id"]:
            raise AirflowFailException(f"the deploy of {self.tenant} reported success but recorded no outcome")
        return found.to_xcom()

    def _recorded_decision(self, deployment: TargetDeployment) -> ApprovalDecision | None:
        """A record that decides (a rejection, or an approval of this run's artifact); says why others do not."""
        found = runtime.recorded_decision(
            deployment.run.tooling, tenant=deployment.target.name, release=self.release_tag, sha256=deployment.run.artifact.sha256
        )
        report_problems(self.log, found.problems)
        return found.decision

    def _earlier_approval(self, deployment: TargetDeployment) -> ApprovalDecision | None:
        """An approval an earlier attempt of this same run got for this same artifact (kept in the history item).

        A retry (or a cleared task) of the run is not asked again; another run, or another build, is.
        """
        earlier = deployment.earlier_attempt()
        sha256 = deployment.run.artifact.sha256
        approval = earlier.approval if earlier is not None else None
        if approval is None or approval.release_gate or not approval.approved:
            return None  # the release gate's answer (kept for the audit trail) is not this tenant's own
        if earlier.sha256 != sha256 or approval.sha256 != sha256:
            return None
        self.log.info("%s: %s in an earlier attempt of this run; not asking again", self.tenant, approval.describe())
        return approval

    def _wait_for_window(self, deployment: TargetDeployment, progress: DeployProgress, window: MaintenanceWindow) -> None:
        now = runtime.utcnow()
        if window.is_open(now):
            waited = "waited for" if progress.window_waits else "inside"
            progress.note(f"{waited} maintenance window {window}; deploy started {now.isoformat(timespec='seconds')}")
            return
        if progress.window_waits and deployment.target.outside_window == OutsideWindowPolicy.SKIP:
            self._skip(deployment, progress, f"missed its maintenance window {window} (outside_window: skip)")
        opens = window.next_open(now)
        self._waiting(deployment, progress, f"waiting for maintenance window {window}, opens {opens.isoformat()}")
        self.log.info("%s: outside its maintenance window %s; deferring until %s", deployment.target.name, window, opens)
        self.defer(
            trigger=WindowOpenTrigger(
                opens_at=opens.isoformat(),
                poll_interval=runtime.setting("window_poll_seconds", 300.0),
                progress=progress.model_dump(mode="json"),
            ),
            method_name="resume",
        )

    def _waiting(self, deployment: TargetDeployment, progress: DeployProgress, what: str) -> None:
        """Say in the history why this tenant is not deploying yet (visible with `tenant-release status`)."""
        try:
            deployment.record(deployment.result(progress, status=Outcome.IN_PROGRESS, reason=what))
        except Exception as exc:
            self.log.warning("could not record the wait in the history table: %s", failure_reason(exc))

    def _skip(self, deployment: TargetDeployment, progress: DeployProgress, reason: str) -> NoReturn:
        self.log.warning("%s SKIPPED: %s", deployment.target.name, reason)
        deployment.record(deployment.result(progress, status=Outcome.SKIPPED, reason=reason))
        raise AirflowSkipException(reason)

    def _guarded(self, deployment: TargetDeployment, progress: DeployProgress, step: Any, *args: Any) -> Any:
        try:
            return step(*args)
        except Exception as exc:
            self._fail(deployment, progress, exc)

    def _fail(self, deployment: TargetDeployment, progress: DeployProgress, exc: BaseException) -> NoReturn:
        """Log why, record the tenant as FAILED, and fail or retry the task."""
        self.log.error("%s FAILED: %s", self.tenant, failure_reason(exc))
        try:
            deployment.record_failure(progress, exc)
        except Exception as history_exc:  # the deploy's own error is the one to report
            self.log.warning("could not record the failure in the history table: %s", failure_reason(history_exc))
        raise as_task_failure(exc) from None


def _try_number(context: Context) -> int | None:
    ti = context.get("ti")
    return getattr(ti, "try_number", None)


class FleetTenantDeployOperator(TenantDeployOperator):
    """The mapped per-tenant deploy of a release run: each task instance starts in the triggerer, with no worker.

    The scheduler defers every task instance straight to `FleetTenantStartTrigger` (`start_from_trigger`), which
    reads the tenant's entry of the run's target list and deploys it; a success ends the task there. The cluster
    policy in `tenant_release.airflow.policy` names each task instance after its tenant as the scheduler creates
    it, since no worker renders `map_index_template` for it. A worker runs only what needs one: a tenant's own
    approval or maintenance window (the trigger sends it back with `gates`), and failing or retrying a tenant
    whose deploy failed. Where nothing starts tasks in the triggerer (`dag.test()`), `execute` deploys as the
    base operator does.
    """

    start_from_trigger = True
    start_trigger_args = StartTriggerArgs(
        trigger_cls=f"{FleetTenantStartTrigger.__module__}.{FleetTenantStartTrigger.__qualname__}",
        trigger_kwargs={},
        next_method="execute_complete",
        next_kwargs=None,
        timeout=None,
    )

    def __init__(self, *, targets_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The id of the target list this entry came from (see `fleet_targets`); the worker has its entry already.
        self.targets_id = targets_id

    def execute_complete(self, context: Context, event: Any) -> dict[str, Any]:
        if isinstance(event, dict) and event.get("gates"):
            return self._pass_gates(context, DeployProgress(started_at=utc_now()))
        if isinstance(event, dict) and not {"failed", "result"} & event.keys():
            # Not an event of this task's deploy. Seen on SQLite: a trigger whose task Airflow had already
            # resumed fired late, and its event went to a new trigger that had taken the same id. The deploy
            # is safe to start again (a stack operation under way is found and waited for), so start it.
            self.log.warning("%s: resumed by an event that is not its deploy's (%s); starting its deploy", self.tenant, event)
            return self._pass_gates(context, DeployProgress(started_at=utc_now()))
        return super().execute_complete(context, event)
