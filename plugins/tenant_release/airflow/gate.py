"""Approval requests (a HITL detail in Airflow's UI, answered there, over REST or by an approval record) and the release gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from tenant_release.airflow import runtime
from tenant_release.airflow.triggers import ApprovalRecordTrigger, report_problems, ui_identity
from tenant_release.aws.approvals import RELEASE_WIDE
from tenant_release.aws.release_queue import DISPATCH_RUN_PREFIX
from tenant_release.models import ApprovalDecision, DeployProgress, RunPlan

APPROVE, REJECT = ApprovalOperator.APPROVE, ApprovalOperator.REJECT


def request_approval(
    operator: BaseOperator,
    context: Context,
    *,
    tenant: str,
    release_tag: str,
    sha256: str | None,
    config_path: str | None,
    subject: str,
    body: str,
    timeout_hours: float,
    progress: DeployProgress | None,
) -> NoReturn:
    """Open an approval request in Airflow's UI (a HITL detail) and wait, deferred, for it or for a record.

    A record answers only if it approves `sha256`, the artifact this run deploys (None: nothing is built yet,
    the queue DAG's gate).
    """
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
            sha256=sha256,
            config_path=config_path,
            ti_id=str(ti_id),
            deadline=deadline.isoformat(),
            poll_interval=runtime.setting("approval_poll_seconds", 30.0),
            progress=progress.model_dump(mode="json") if progress else {},
        ),
        method_name="resume",
    )
    raise AssertionError("defer() returns only by raising")  # pragma: no cover


def approval_from_event(event: dict[str, Any], *, sha256: str | None) -> ApprovalDecision | None:
    """Both shapes of an answer: our trigger's, and Airflow's own when someone answers in the UI/REST.

    A UI answer was given to a request that showed this run's artifact, so it approves `sha256`.
    """
    if "approval" in event:
        return ApprovalDecision.model_validate(event["approval"])
    if "chosen_options" in event:
        user = event.get("responded_by_user") or {}
        timed_out = bool(event.get("timedout")) or not user
        return ApprovalDecision(
            approved=APPROVE in event["chosen_options"] and not timed_out,
            decided_by=user.get("name") or user.get("id") or "nobody",
            source="timeout" if timed_out else "ui",
            sha256=None if timed_out else sha256,
            identity=None if timed_out else ui_identity(user),
        )
    return None


class ReleaseGateOperator(ApprovalOperator):
    """The production gate: after dev, before any tenant, a person approves or rejects the release.

    Shows the release, the artifact's hash, the dev result, the exact tenant list and which tenants make it
    gated. A run is gated when any selected tenant belongs to a group in `gated_groups`, whatever tag or
    tenant list reached it; otherwise it passes straight on. An answer can come from the UI, the REST API,
    or a release-wide approval record (`tenant-release approve TAG`) that names this run's artifact sha256.
    Reject (or no answer within `approval_timeout_hours`) fails the gate, so no tenant is touched.
    """

    # What a rejection means for this run (a subclass gating something other than a deploy says its own).
    rejected_consequence = "no tenant was touched"
    # A change freeze that began while the run waited stops it here (not so when a release is only being queued).
    stops_at_freeze = True

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Release gate")
        kwargs.setdefault("retries", 0)
        super().__init__(fail_on_reject=True, defaults=REJECT, **kwargs)

    def read_plan(self, ti: Any) -> RunPlan:
        return RunPlan.model_validate(ti.xcom_pull(task_ids="plan"))

    def artifact_sha256(self, ti: Any) -> str | None:
        """The artifact an approval must name: the build's."""
        sha = (ti.xcom_pull(task_ids="build") or {}).get("sha256")
        if not sha:
            raise AirflowFailException("the build reported no artifact sha256, so no approval can be matched to it")
        return str(sha)

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        plan = self.read_plan(ti)
        if not plan.gated:
            self.log.info("no selected tenant belongs to a gated group; going on without approval")
            return self._unless_frozen(context, plan, {"gated": False}, waited_for="the build and the dev deploy")
        self.log.info("gated because these tenants belong to a gated group: %s", ", ".join(plan.gated_tenants))
        fleet = runtime.cached_fleet(plan.config_path).fleet
        sha256 = self.artifact_sha256(ti)
        found = runtime.recorded_decision(fleet.tooling, tenant=RELEASE_WIDE, release=plan.release_tag, sha256=sha256)
        report_problems(self.log, found.problems)
        if found.decision is not None:  # decided ahead, e.g. when the release was queued for a window
            return self.resume(context, {"approval": found.decision.model_dump(mode="json")})
        subject, body = self.describe_request(ti, plan)
        self.subject, self.body = subject, body
        request_approval(
            self,
            context,
            tenant=RELEASE_WIDE,
            release_tag=plan.release_tag,
            sha256=sha256,
            config_path=plan.config_path,
            subject=subject,
            body=body,
            timeout_hours=fleet.approval_timeout_hours,
            progress=None,
        )

    def describe_request(self, ti: Any, plan: RunPlan) -> tuple[str, str]:
        """The question shown to the approver (subject, Markdown body), from the run's plan, build, dev and changes."""
        artifact = ti.xcom_pull(task_ids="build") or {}
        dev = ti.xcom_pull(task_ids="deploy_dev") or {}
        changes = ti.xcom_pull(task_ids="fleet_changes") or {}
        deploying = [entry["tenant"] for entry in changes.get("deploy", [])] if changes else list(plan.tenants)
        unchanged = list(changes.get("unchanged", [])) if changes else []
        tenants = "\n".join(f"- {name}" for name in deploying)
        subject = f"Ship {plan.release_tag} to {len(deploying)} tenant(s) of group {plan.group}?"
        body = (
            f"**Release** {plan.release_tag} (version {plan.version})\n\n"
            f"**Artifact** `s3://{artifact.get('bucket')}/{artifact.get('template_key')}` sha256 `{artifact.get('sha256')}`, "
            f"built from {artifact.get('source')}"
            f"{' at commit ' + str(artifact.get('source_commit')) if artifact.get('source_commit') else ''}\n\n"
            f"**Dev** {dev.get('status', 'unknown')}: version {dev.get('version_before') or '-'} -> "
            f"{dev.get('version_after') or '-'}, smoke test passed\n\n"
            f"**Tenants about to be deployed** ({len(deploying)}):\n{tenants}\n"
        )
        if unchanged:
            body += f"\n**Already at this release, not touched** ({len(unchanged)}): {', '.join(unchanged)}\n"
        body += f"\n**Gated** because these tenants belong to a gated group: {', '.join(plan.gated_tenants)}\n"
        return subject, body

    def resume(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if "error" in event:
            raise AirflowException(f"waiting for the release gate failed: {event['error']}")
        decision = approval_from_event(event, sha256=self.artifact_sha256(context["ti"]))
        if decision is None:
            raise AirflowFailException(f"the release gate got an answer it does not understand: {event}")
        if not decision.approved:
            raise AirflowFailException(f"release {decision.describe()}; {self.rejected_consequence}")
        self.log.info("release %s (identity %s, artifact %s)", decision.describe(), decision.identity, decision.sha256)
        # The run keeps the answer (this XCom; the summary writes it on each tenant's history item). The
        # orchestrator cannot write approval records: the identity that deploys does not approve.
        passed = {
            "gated": True,
            "approved_by": decision.decided_by,
            "source": decision.source,
            "note": decision.note,
            "identity": decision.identity,
            "sha256": decision.sha256,
        }
        return self._unless_frozen(context, self.read_plan(context["ti"]), passed, waited_for="the release gate")

    def _unless_frozen(self, context: Context, plan: RunPlan, passed: dict[str, Any], *, waited_for: str) -> dict[str, Any]:
        """The gate's result, or stop here: a change freeze began meanwhile (and the run did not override it), or the
        release window a run of the scheduled DAG was dispatched for closed meanwhile.

        The result then says why (`frozen`), so that the summary records every tenant SKIPPED with that reason.
        """
        if not self.stops_at_freeze:
            return passed
        frozen = runtime.freeze_began(plan.config_path, context.get("params"), waiting_for=waited_for)
        if frozen is None and str(context["run_id"]).startswith(DISPATCH_RUN_PREFIX):
            frozen = runtime.release_window_closed(plan.config_path, release_tag=plan.release_tag, waiting_for=waited_for)
        if frozen is None:
            return passed
        self.log.warning("%s: %s", plan.release_tag, frozen)
        context["ti"].xcom_push(key="return_value", value={**passed, "frozen": frozen})
        raise AirflowSkipException(frozen)
