"""The rollout's waves in the release DAG: task groups `wave_1` … `wave_6`, each `open` → `deploy` (one task instance
per tenant) → `bake`.

`open` starts a wave only when the rollout may go on: not aborted, not paused (it waits, deferred), no change freeze
began meanwhile, and, for a wave with `approval: true`, a person approved this run's artifact for it. It then hands
its tenants' entries to the mapped `deploy`. `bake` runs when every tenant of the wave is done (`all_done`), watches
the deployed tenants' health alarms for the wave's bake time (in the triggerer), records a tenant whose alarm fired
FAILED, and judges the wave against its `max_failures`. A wave over its tolerance fails its `bake`, so no later wave
opens; the summary reports their tenants SKIPPED with the rule that stopped the rollout.

The DAG's shape is fixed at parse time (six wave groups); the fleet file, read when a run starts, says how many a
run uses: the others skip.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator, Context
from airflow.sdk.bases.skipmixin import SkipMixin
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from tenant_release.airflow import runtime, steps
from tenant_release.airflow.control_triggers import read_control
from tenant_release.airflow.fleet_targets import TARGETS_ID_KEY
from tenant_release.airflow.gate import REJECT, approval_from_event, request_approval
from tenant_release.airflow.triggers import report_problems
from tenant_release.aws.approvals import wave_approver
from tenant_release.models import ApprovalDecision, PlannedWave, RunPlan, WaveVerdict
from tenant_release.rollout import judge_wave

WAVE_KEY = "wave"  # XCom of `open`: the PlannedWave it opened (absent: this run has no such wave)
STOPPED_KEY = "stopped"  # XCom of `open`: why the wave did not start (aborted, rejected, frozen)
VERDICT_KEY = "verdict"  # XCom of `bake`: the WaveVerdict, pushed before a tripped wave fails


def group_id(index: int) -> str:
    return f"wave_{index}"


def open_task_id(index: int) -> str:
    return f"{group_id(index)}.open"


def bake_task_id(index: int) -> str:
    return f"{group_id(index)}.bake"


def deploy_task_id(index: int) -> str:
    return f"{group_id(index)}.deploy"


def planned_wave(plan: RunPlan, index: int) -> PlannedWave | None:
    if not plan.waves and index == 1:  # a plan from before waves: every tenant in one wave
        return PlannedWave(index=1, name="all", tenants=tuple(t.tenant for t in plan.targets))
    return next((wave for wave in plan.waves if wave.index == index), None)


class WaveOpenOperator(ApprovalOperator, SkipMixin):
    """Start one wave, or say why it does not start (see the module docstring); returns its tenants' deploy entries."""

    inherits_from_skipmixin = True

    template_fields = ()
    ui_color = "#fff2cc"

    def __init__(self, *, wave_index: int, **kwargs: Any) -> None:
        kwargs.setdefault("subject", f"Start wave {wave_index}")
        # A throttled read of the rollout's control or approval records may pass; a stop (AirflowFailException) is final.
        kwargs.setdefault("retries", 2)
        super().__init__(fail_on_reject=True, defaults=REJECT, **kwargs)
        self.wave_index = wave_index

    def execute(self, context: Context) -> list[dict[str, Any]]:
        ti = context["ti"]
        plan = RunPlan.model_validate(ti.xcom_pull(task_ids="plan"))
        wave = planned_wave(plan, self.wave_index)
        if wave is None:
            # Skip every wave task after this one at once (not the summary): one task runs, not two per unused wave.
            self.log.info(
                "this run's rollout has %d wave(s): no wave %d; skipping the wave tasks after it",
                len(plan.waves),
                self.wave_index,
            )
            later = [task for task in context["task"].get_flat_relatives(upstream=False) if task.task_id != "summary"]
            self.skip(ti=ti, tasks=later)
            return []
        ti.xcom_push(key=WAVE_KEY, value=wave.model_dump(mode="json"))
        self.log.info(
            "wave %s (%d of %d): %d tenant(s): %s; max_failures %s, bake %s min%s",
            wave.name,
            wave.index,
            len(plan.waves) or 1,
            len(wave.tenants),
            ", ".join(wave.tenants),
            wave.max_failures,
            f"{wave.bake_minutes:g}",
            ", approval required" if wave.approval else "",
        )
        return self._proceed(context, plan, wave, decision=None)

    def _proceed(
        self, context: Context, plan: RunPlan, wave: PlannedWave, *, decision: ApprovalDecision | None
    ) -> list[dict[str, Any]]:
        control = read_control(plan.config_path, plan.release_tag)
        if control is not None and control.aborts(plan.planned_at):
            self._stop(context, control.describe_abort())
        if control is not None and control.pauses():
            from tenant_release.airflow.control_triggers import RolloutResumedTrigger

            self.log.warning("rollout of %s %s; wave %s waits for a resume", plan.release_tag, control.describe(), wave.name)
            self.defer(
                trigger=RolloutResumedTrigger(
                    release_tag=plan.release_tag,
                    config_path=plan.config_path,
                    run_started_at=plan.planned_at,
                    poll_interval=runtime.setting("control_poll_seconds", 15.0),
                ),
                method_name="resumed",
                kwargs={"decision": decision.model_dump(mode="json") if decision else None},
            )
        if wave.index > 1:
            self._require_previous_wave_passed(context, plan, wave)
            frozen = runtime.freeze_began(plan.config_path, context.get("params"), waiting_for=f"wave {wave.index - 1}")
            if frozen:
                self._stop(context, f"wave {wave.name}: {frozen}")
        if wave.approval and decision is None:
            decision = self._recorded_decision(context, plan, wave)
            if decision is None:
                self._ask(context, plan, wave)
        if decision is not None and not decision.approved:
            self._stop(context, f"wave {wave.name}: {decision.describe()}")
        if decision is not None:
            self.log.info("wave %s %s (artifact %s)", wave.name, decision.describe(), decision.sha256)
        return self._entries(context, plan, wave)

    def _require_previous_wave_passed(self, context: Context, plan: RunPlan, wave: PlannedWave) -> None:
        """Open only after the previous wave's bake judged it within its tolerance.

        Its task state alone is not enough: a failed bake can be marked success in the UI. Its verdict (XCom) is what
        a real judgement leaves behind, and a bake marked success without running again keeps its failed verdict.
        """
        previous = next((w for w in plan.waves if w.index == wave.index - 1), None)
        if previous is None:
            return
        verdict = context["ti"].xcom_pull(task_ids=bake_task_id(previous.index), key=VERDICT_KEY, default=None)
        if isinstance(verdict, dict) and verdict.get("passed") is True:
            return
        why = verdict.get("stopped") if isinstance(verdict, dict) else "its bake left no verdict (was it marked success?)"
        self._stop(
            context,
            f"wave {wave.name}: the previous wave {previous.name} did not pass ({why}); clear {bake_task_id(previous.index)} "
            "to judge it again",
        )

    def resumed(self, context: Context, event: Any, decision: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Back from a pause (resumed, or aborted meanwhile: `_proceed` reads the control again)."""
        plan, wave = self._read(context)
        return self._proceed(context, plan, wave, decision=ApprovalDecision.model_validate(decision) if decision else None)

    def resume(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Back from the wave's approval request (UI, REST or an approval record)."""
        if "error" in event:
            raise AirflowException(f"waiting for the wave's approval failed: {event['error']}")
        plan, wave = self._read(context)
        decision = approval_from_event(event, sha256=self._sha256(context))
        if decision is None:
            raise AirflowFailException(f"wave {wave.name}'s approval got an answer it does not understand: {event}")
        return self._proceed(context, plan, wave, decision=decision)

    def _read(self, context: Context) -> tuple[RunPlan, PlannedWave]:
        ti = context["ti"]
        plan = RunPlan.model_validate(ti.xcom_pull(task_ids="plan"))
        wave = planned_wave(plan, self.wave_index)
        if wave is None:  # the plan does not change within a run
            raise AirflowFailException(f"the plan of this run has no wave {self.wave_index}")
        return plan, wave

    def _sha256(self, context: Context) -> str:
        sha = (context["ti"].xcom_pull(task_ids="build") or {}).get("sha256")
        if not sha:
            raise AirflowFailException("the build reported no artifact sha256, so no wave approval can be matched to it")
        return str(sha)

    def _recorded_decision(self, context: Context, plan: RunPlan, wave: PlannedWave) -> ApprovalDecision | None:
        tooling = runtime.cached_fleet(plan.config_path).fleet.tooling
        found = runtime.recorded_decision(
            tooling, tenant=wave_approver(wave.name), release=plan.release_tag, sha256=self._sha256(context)
        )
        report_problems(self.log, found.problems)
        return found.decision

    def _ask(self, context: Context, plan: RunPlan, wave: PlannedWave) -> NoReturn:
        ti = context["ti"]
        earlier = [
            WaveVerdict.model_validate(found)
            for index in range(1, wave.index)
            if (found := ti.xcom_pull(task_ids=bake_task_id(index), key=VERDICT_KEY, default=None))
        ]
        lines = [
            f"- wave {v.wave}: {v.size} tenant(s), {len(v.failed)} failed (tolerance {v.tolerance})"
            + (f", baked {v.baked_minutes:g} min" if v.baked_minutes else "")
            + "".join(f"\n  - {tenant}: {why}" for tenant, why in v.failed.items())
            for v in earlier
        ]
        sha256 = self._sha256(context)
        self.subject = f"Start wave {wave.name} of {plan.release_tag} ({len(wave.tenants)} tenant(s))?"
        self.body = (
            f"**Release** {plan.release_tag}, artifact sha256 `{sha256}`\n\n"
            f"**Wave {wave.name}** ({wave.index} of {len(plan.waves)}): {', '.join(wave.tenants)}\n\n"
            f"max_failures {wave.max_failures}, bake {wave.bake_minutes:g} min\n\n"
            + ("**Earlier waves**\n" + "\n".join(lines) if lines else "")
        )
        request_approval(
            self,
            context,
            tenant=wave_approver(wave.name),
            release_tag=plan.release_tag,
            sha256=sha256,
            config_path=plan.config_path,
            subject=self.subject,
            body=self.body,
            timeout_hours=runtime.cached_fleet(plan.config_path).fleet.approval_timeout_hours,
            progress=None,
        )

    def _entries(self, context: Context, plan: RunPlan, wave: PlannedWave) -> list[dict[str, Any]]:
        ti = context["ti"]
        targets_id = uuid.uuid4().hex
        ti.xcom_push(key=TARGETS_ID_KEY, value=targets_id)
        entries = steps.wave_deploy_kwargs(
            ti.xcom_pull(task_ids="fleet_changes"), plan, ti.xcom_pull(task_ids="build"), wave, targets_id=targets_id
        )
        skipped = len(wave.tenants) - len(entries)
        self.log.info(
            "wave %s opens: %d tenant(s) to deploy%s",
            wave.name,
            len(entries),
            f"; {skipped} already at this release or refused before deploying (see fleet_changes)" if skipped else "",
        )
        return entries

    def _stop(self, context: Context, reason: str) -> NoReturn:
        self.log.error("%s", reason)
        context["ti"].xcom_push(key=STOPPED_KEY, value=reason)
        raise AirflowFailException(reason)


class WaveBakeOperator(BaseOperator):
    """When the wave's tenants are done: bake (watch their health alarms), then judge the wave against its tolerance."""

    template_fields = ()
    ui_color = "#e2f0d9"

    def __init__(self, *, wave_index: int, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        kwargs.setdefault("retries", 1)
        super().__init__(**kwargs)
        self.wave_index = wave_index

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        planned = ti.xcom_pull(task_ids="plan", default=None)
        if planned is None:  # the run stopped at its plan: nothing to judge (the summary says why)
            raise AirflowSkipException("the run has no plan: its plan task failed")
        plan = RunPlan.model_validate(planned)
        found = ti.xcom_pull(task_ids=open_task_id(self.wave_index), key=WAVE_KEY, default=None)
        if found is None:
            wave = planned_wave(plan, self.wave_index)
            if wave is None:
                raise AirflowSkipException(f"this run's rollout has {len(plan.waves)} wave(s): no wave {self.wave_index}")
            # Failed, not skipped: clearing the run's failed tasks (`only_failed`) must reach this wave again once the
            # wave that stopped the rollout passes (a skipped task is never cleared by it).
            raise AirflowFailException(f"wave {wave.name} did not start: an earlier wave or the release gate stopped the rollout")
        stopped = ti.xcom_pull(task_ids=open_task_id(self.wave_index), key=STOPPED_KEY, default=None)
        if stopped:
            raise AirflowFailException(stopped)
        wave = PlannedWave.model_validate(found)
        if ti.xcom_pull(task_ids=open_task_id(self.wave_index), key=TARGETS_ID_KEY, default=None) is None:
            # Its `open` pushed the wave but handed no tenants over: it failed, or was marked done, before opening.
            reason = f"wave {wave.name} did not open (its open task ended without starting it; see its log)"
            ti.xcom_push(key=STOPPED_KEY, value=reason)
            raise AirflowFailException(reason)
        artifact = ti.xcom_pull(task_ids="build", default=None)
        outcomes = steps.run_results(plan, context["run_id"], wave.tenants)
        watched = steps.watched_tenants(plan, context["run_id"], wave, outcomes) if artifact else {}
        # A tenant an earlier bake of this wave failed is looked at again, not counted before its look.
        pending = {t for t, r in outcomes.items() if steps.failed_by_bake(r, context["run_id"])}
        verdict = judge_wave(wave, {t: o for t, o in steps.outcome_reasons(outcomes).items() if t not in pending}, {})
        verdict = verdict.model_copy(update={"failed": {t: why for t, why in verdict.failed.items() if t not in pending}})
        if watched and len(verdict.failed) <= verdict.tolerance:
            from tenant_release.airflow.wave_triggers import WaveBakeTrigger

            self.log.info(
                "wave %s: %d of %d failed (tolerance %d); watching the health alarms of %d tenant(s) for %s min",
                wave.name,
                len(verdict.failed),
                len(wave.tenants),
                verdict.tolerance,
                len(watched),
                f"{wave.bake_minutes:g}",
            )
            self.defer(
                trigger=WaveBakeTrigger(
                    release_tag=plan.release_tag,
                    config_path=plan.config_path,
                    run_id=context["run_id"],
                    run_started_at=plan.planned_at,
                    wave=wave.name,
                    tenants=watched,
                    artifact=artifact,
                    bake_until=(datetime.now(UTC) + timedelta(minutes=wave.bake_minutes)).isoformat(),
                    poll_interval=runtime.setting("bake_poll_seconds", 60.0),
                    room=verdict.tolerance - len(verdict.failed),
                ),
                method_name="baked",
            )
        return self._judge(context, plan, wave, {}, baked=0.0)

    def baked(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        ti = context["ti"]
        plan = RunPlan.model_validate(ti.xcom_pull(task_ids="plan"))
        wave = PlannedWave.model_validate(ti.xcom_pull(task_ids=open_task_id(self.wave_index), key=WAVE_KEY))
        if event.get("error"):
            raise AirflowException(f"watching wave {wave.name}'s health alarms failed: {event['error']}")
        alarms: dict[str, str] = event.get("alarms") or {}
        # Only a tenant the bake could read is known healthy (`read`): an earlier bake's failure stands otherwise.
        steps.record_bake(plan, context["run_id"], tuple(event.get("read") or ()), alarms, try_number=ti.try_number)
        baked = float(event.get("baked_minutes") or 0.0)
        if event.get("aborted"):
            self._judge(context, plan, wave, alarms, baked=baked, stop=False)
            ti.xcom_push(key=STOPPED_KEY, value=event["aborted"])  # later waves' tenants: "not started: aborted by …"
            raise AirflowFailException(f"the rollout of {plan.release_tag} was {event['aborted']} during wave {wave.name}'s bake")
        return self._judge(context, plan, wave, alarms, baked=baked)

    def _judge(
        self, context: Context, plan: RunPlan, wave: PlannedWave, alarms: dict[str, str], *, baked: float, stop: bool = True
    ) -> dict[str, Any]:
        outcomes = steps.run_results(plan, context["run_id"], wave.tenants)
        verdict = judge_wave(wave, steps.outcome_reasons(outcomes), alarms, baked_minutes=baked)
        context["ti"].xcom_push(key=VERDICT_KEY, value=verdict.model_dump(mode="json"))
        for tenant, why in verdict.failed.items():
            self.log.warning("wave %s: %s failed: %s", wave.name, tenant, why)
        if not verdict.passed and stop:
            raise AirflowFailException(
                f"{verdict.stopped}: the rollout stops here and no later wave starts. Failed: "
                + "; ".join(f"{tenant} ({why})" for tenant, why in verdict.failed.items())
            )
        self.log.info(
            "wave %s passed: %d of %d failed, %s; baked %s min",
            wave.name,
            len(verdict.failed),
            verdict.size,
            wave.describe_tolerance(),
            f"{baked:g}",
        )
        return verdict.model_dump(mode="json")


def rollout_stop(ti: Any, plan: RunPlan) -> tuple[int, str] | None:
    """Where and why this run's rollout stopped before its last wave: (wave index, reason), or None."""
    for wave in plan.waves:
        stopped = ti.xcom_pull(task_ids=open_task_id(wave.index), key=STOPPED_KEY, default=None)
        if stopped:
            return wave.index, str(stopped)
        not_opened = ti.xcom_pull(task_ids=bake_task_id(wave.index), key=STOPPED_KEY, default=None)
        if not_opened and ti.xcom_pull(task_ids=open_task_id(wave.index), key=TARGETS_ID_KEY, default=None) is None:
            return wave.index, str(not_opened)
        verdict = ti.xcom_pull(task_ids=bake_task_id(wave.index), key=VERDICT_KEY, default=None)
        if verdict and not verdict.get("passed", True):
            return wave.index + 1, str(verdict.get("stopped"))
        aborted = ti.xcom_pull(task_ids=bake_task_id(wave.index), key=STOPPED_KEY, default=None)
        if aborted:
            return wave.index + 1, str(aborted)
    return None
