"""Bodies of the release DAG's plain tasks: plan, build, fleet changes, summarise. Library errors become task failures."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tenant_release import report
from tenant_release.airflow import runtime
from tenant_release.airflow.failures import as_task_failure
from tenant_release.aws import ledger
from tenant_release.build import build_release, check_template_locally
from tenant_release.changes import find_changes, record_unchanged
from tenant_release.config import LoadedFleet, load_fleet
from tenant_release.deploy import ReleaseRun, TargetDeployment, precise_now, record_results, run_identity, utc_now
from tenant_release.errors import FleetConfigError, TenantReleaseError
from tenant_release.holds import apply_holds, override_note, run_override_note
from tenant_release.models import (
    FAILED_OUTCOMES,
    Application,
    ApprovalDecision,
    ApprovalPolicy,
    Artifact,
    DeployProgress,
    FleetChanges,
    Outcome,
    PlannedTarget,
    PlannedWave,
    Release,
    RolloutCaps,
    RunPlan,
    Target,
    TenantResult,
    ToolingAccount,
)
from tenant_release.plan import ReleasePlan, plan_release
from tenant_release.redeploy import RedeployError, check_run_id, failed_tenants, redeploy_hint
from tenant_release.rollout import plan_waves
from tenant_release.tags import parse_release_tag
from tenant_release.windows import ReleaseCalendar

log = logging.getLogger(__name__)


def plan(params: dict[str, Any], *, now: datetime, max_map_length: int, triggered_by: str | None = None) -> dict[str, Any]:
    """Read the fleet file (now, not at parse time) and fix the run's targets; fail before any deploy.

    Held and pinned tenants of the selection stay planned tenants (the summary reports them) but are neither
    targets nor in a wave: `fleet_changes` records them SKIPPED with the reason.
    """
    try:
        loaded = load_fleet()
        release = parse_release_tag(params["release_tag"])
        named = params.get("tenants") or None
        redeploy_of = str(params.get("redeploy_of") or "").strip()
        if redeploy_of:
            named = _redeploy_selection(loaded, release, redeploy_of, named=named, override_hold=params.get("override_hold"))
        selected = plan_release(loaded, release, only_tenants=named)
        holds = apply_holds(
            selected.targets,
            release,
            named=() if redeploy_of else selected.tenant_names if named else (),
            override_hold=str(params.get("override_hold") or ""),
        )
        if redeploy_of and not holds.deployable:
            raise RedeployError(
                f"every tenant to redeploy from run {redeploy_of} is held back now: "
                f"{'; '.join(f'{held.tenant} ({held.reason})' for held in holds.held)}; nothing to redeploy. Lift the hold "
                "in the fleet file, or trigger with tenants naming them and override_hold set to the reason"
            )
        dev = loaded.target(loaded.fleet.dev.name)
        # Parameters the template would refuse fail the run here, for every tenant at once, not tenant by tenant later.
        checked = check_template_locally(
            loaded.fleet.application, loaded.path, [dev, *holds.deployable], version=release.version, release=release
        )
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    log.info("template parameters: %s", checked)
    waves = plan_waves(loaded.fleet, holds.deployable)
    largest = max(waves, key=lambda wave: len(wave.tenants), default=None)
    if largest is not None and len(largest.tenants) > max_map_length:
        raise AirflowFailException(
            f"{release.tag} puts {len(largest.tenants)} tenants in wave {largest.name}, more than Airflow maps in one task "
            f"([core] max_map_length = {max_map_length}); nothing was deployed. Split the fleet into more waves (rollout.waves "
            "in the fleet file), raise the limit (AIRFLOW__CORE__MAX_MAP_LENGTH), or narrow the run with the tenants param."
        )
    override = str(params.get("override_freeze") or "").strip()
    freeze = ReleaseCalendar.from_schedule(loaded.fleet.schedule).freeze_at(now)
    if freeze is not None and not override:
        raise AirflowFailException(
            f"{release.tag} was triggered during the change freeze {freeze} ({freeze.reason}); nothing was deployed. "
            "To ship anyway, trigger again with override_freeze set to the reason (it is recorded in the history)."
        )
    freeze_note = f"shipped during freeze {freeze} ({freeze.reason}), override: {override}" if freeze else None
    if freeze_note:
        log.warning("%s", freeze_note)
    for held in holds.held:
        log.info("%s is not deployed by this run: %s (recorded SKIPPED)", held.tenant, held.reason)
    for held in holds.overridden:
        log.warning("%s: %s", held.tenant, override_note(holds.override_reason, held))
    if params.get("override_hold") and not holds.overridden:
        log.info("override_hold is set but none of the named tenants is held back or pinned; nothing to override")
    log.info(
        "release %s (version %s) to group %s: %d tenant(s) to deploy: %s",
        release.tag,
        release.version,
        selected.group,
        len(holds.deployable),
        ", ".join(target.name for target in holds.deployable) or "none",
    )
    # Only the tenants the run deploys make it gated: a held tenant of a gated group is never touched.
    deployed = replace(selected, gated_tenants=tuple(name for name in selected.gated_tenants if name not in holds.held_names))
    return RunPlan(
        **plan_fields(loaded, release, deployed),
        targets=tuple(planned_target(t, loaded.fleet.application) for t in holds.deployable),
        dev=planned_target(dev, loaded.fleet.application),
        freeze_override=freeze_note,
        rebuild=bool(params.get("rebuild")),
        planned_at=precise_now(),
        triggered_by=triggered_by,
        allow_rollback=str(params.get("allow_rollback") or "").strip(),
        waves=waves,
        held=holds.held,
        override_hold=holds.override_reason,
        redeploy_of=redeploy_of or None,
    ).model_dump(mode="json")


def _redeploy_selection(loaded: LoadedFleet, release: Release, redeploy_of: str, *, named: Any, override_hold: Any) -> list[str]:
    """The tenants of the tag's group that failed or were skipped in run `redeploy_of` (see tenant_release.redeploy)."""
    if named:
        raise RedeployError(
            "redeploy_of selects the tenants itself (those that failed or were skipped in that run); leave tenants empty, "
            "or to deploy named tenants leave redeploy_of empty"
        )
    if str(override_hold or "").strip():
        raise RedeployError(
            "override_hold deploys held tenants named in tenants, and a redeploy_of run names none: a held tenant stays "
            "held (SKIPPED) in a redeploy. Leave override_hold empty, or trigger without redeploy_of with tenants naming "
            "the held tenants and override_hold set to the reason"
        )
    run_id = check_run_id(redeploy_of)
    group = plan_release(loaded, release)  # refuses a tag whose group does not exist, before any AWS call
    tooling = loaded.fleet.tooling
    dynamodb = runtime.aws_sessions().tooling_client("dynamodb", tooling.region)
    chosen = failed_tenants(dynamodb, tooling, release.tag, run_id, group.tenant_names)
    log.info(
        "redeploy of run %s: %d tenant(s) failed or were skipped there:\n%s",
        run_id,
        len(chosen),
        "\n".join(f"  {name}: {outcome}" for name, outcome in chosen.items()),
    )
    return list(chosen)


def planned_target(target: Target, application: Application) -> PlannedTarget:
    return PlannedTarget(
        tenant=target.name,
        region=target.region,
        target_digest=runtime.target_digest(target, application),
        has_own_gate=target.approval == ApprovalPolicy.REQUIRED or bool(target.maintenance_window),
    )


def plan_fields(loaded: LoadedFleet, release: Release, selected: ReleasePlan) -> dict[str, Any]:
    """What every plan XCom carries (release and queue DAGs alike): names only, never settings or secrets."""
    return {
        "release_tag": release.tag,
        "version": release.version,
        "group": selected.group,
        "gated": selected.gated,
        "gated_tenants": selected.gated_tenants,
        "config_path": str(loaded.path),
        "tenants": tuple(selected.tenant_names),
        "tooling": loaded.fleet.tooling,  # the summary finds the history even if the fleet file breaks mid-run
    }


def build(plan_: dict[str, Any]) -> dict[str, Any]:
    plan = RunPlan.model_validate(plan_)
    try:
        loaded = load_fleet(plan.config_path)
        targets = [loaded.target(name) for name in plan.tenants]
        artifact = build_release(
            runtime.aws_sessions(),
            tooling=loaded.fleet.tooling,
            application=loaded.fleet.application,
            fleet_path=loaded.path,
            release=parse_release_tag(plan.release_tag),
            targets=targets,
            rebuild=plan.rebuild,
        )
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    return artifact.model_dump(mode="json")


def fleet_changes(
    plan_: dict[str, Any], artifact: dict[str, Any], run_id: str, *, try_number: int | None = None
) -> dict[str, Any]:
    """Record the tenants already at this release UNCHANGED; return the ones the mapped deploy task deploys."""
    plan = RunPlan.model_validate(plan_)
    try:
        loaded = runtime.cached_fleet(plan.config_path)
        planned = [
            (entry, runtime.planned_target(tenant=entry.tenant, digest=entry.target_digest, config_path=plan.config_path)[1])
            for entry in plan.targets
        ]
        run = ReleaseRun(
            release=parse_release_tag(plan.release_tag),
            run_id=run_id,
            artifact=Artifact.model_validate(artifact),
            tooling=loaded.fleet.tooling,
            application=loaded.fleet.application,
            started_at=plan.planned_at,
            triggered_by=plan.triggered_by,
            allow_rollback=plan.allow_rollback,
        )
        sessions = runtime.aws_sessions()
        concurrency = int(runtime.setting("fleet_changes_concurrency", 16))
        changes, settled = find_changes(sessions, run, planned, concurrency=concurrency, try_number=try_number)
        held = _held_results(sessions, run, loaded, plan, try_number=try_number)
        # UNCHANGED, FAILED for a refused rollback, SKIPPED for a held or pinned tenant: one write path.
        record_unchanged(sessions, run, [*settled, *held])
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    log.info(
        "%d of %d tenant(s) need a change; %d already at %s (recorded UNCHANGED, no task instance); %d held back or "
        "pinned (recorded SKIPPED, never read or deployed)",
        len(changes.deploy),
        len(plan.targets),
        len(changes.unchanged),
        plan.release_tag,
        len(held),
    )
    return changes.model_dump(mode="json")


def wave_deploy_kwargs(
    changes_: dict[str, Any], plan: RunPlan, artifact: dict[str, Any], wave: PlannedWave, *, targets_id: str
) -> list[dict[str, Any]]:
    """The mapped deploy entries of one wave: its tenants that need a change, with the wave's caps."""
    changes = FleetChanges.model_validate(changes_)
    members = set(wave.tenants)
    in_wave = FleetChanges(deploy=tuple(t for t in changes.deploy if t.tenant in members), unchanged=changes.unchanged)
    caps = RolloutCaps(wave=wave.name, max_parallel=wave.max_parallel, max_parallel_per_region=wave.max_parallel_per_region)
    return deploy_kwargs(
        in_wave.model_dump(mode="json"), plan.model_dump(mode="json"), artifact, targets_id=targets_id, rollout=caps
    )


def _held_results(
    sessions: Any, run: ReleaseRun, loaded: LoadedFleet, plan: RunPlan, *, try_number: int | None
) -> list[TenantResult]:
    """A SKIPPED result, with the hold or pin as its reason, for each tenant the plan held back; no AWS call."""
    results = []
    for held in plan.held:
        target = _target_or_none(loaded, held.tenant)
        if target is None:  # removed from the fleet file since the plan: the summary reports it from the history
            continue
        deployment = TargetDeployment(sessions=sessions, run=run, target=target, try_number=try_number, writer="fleet_changes")
        results.append(deployment.result(DeployProgress(started_at=utc_now()), status=Outcome.SKIPPED, reason=held.reason))
        log.info("%-24s SKIPPED: %s", held.tenant, held.reason)
    return results


def deploy_kwargs(
    changes_: dict[str, Any],
    plan_: dict[str, Any],
    artifact: dict[str, Any],
    *,
    targets_id: str,
    rollout: RolloutCaps | None = None,
) -> list[dict[str, Any]]:
    plan = RunPlan.model_validate(plan_)
    entries = FleetChanges.model_validate(changes_).deploy_kwargs(
        release_tag=plan.release_tag,
        config_path=plan.config_path,
        artifact=artifact,
        targets_id=targets_id,
        allow_rollback=plan.allow_rollback,
        gated=plan.gated,
        rollout=rollout,
    )
    # Each tenant's history writes carry the run's planned time and who triggered it (see aws.ledger).
    return [{**entry, "run_started_at": plan.planned_at, "triggered_by": plan.triggered_by} for entry in entries]


def summarize(
    plan_: dict[str, Any],
    artifact: dict[str, Any] | None,
    dev_result: dict[str, Any] | None,
    gate: dict[str, Any] | None,
    run_id: str,
    *,
    try_number: int | None = None,
    rollout_stop: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """Collect every planned tenant's outcome from the history, fill in those that never reported, print the table.

    Safe to run again (a cleared summary) and late (after a newer run): every write is conditional, so this run's
    view never replaces a newer outcome, and what this run reports is its own outcome, from its attempts if a
    newer run's result is the latest. A tenant removed from the fleet file since the plan is reported with what
    the history knows, and so is every tenant when the fleet file became invalid since the plan.

    A run's own outcome that was kept as an attempt only (refused because another run of the same release was
    deploying the tenant) is reported as this run's outcome and written again as an attempt only: it never
    becomes the tenant's latest result, and it is not taken for a lost worker.
    """
    plan = RunPlan.model_validate(plan_)
    loaded, tooling = _fleet_for_summary(plan)
    sessions = runtime.aws_sessions()
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    recorded = ledger.get_many(dynamodb, tooling.history_table, tenants=plan.tenants, release=plan.release_tag)
    stamp = {
        "written_by": "summary",
        "try_number": try_number,
        "identity": run_identity(release_tag=plan.release_tag, run_id=run_id, triggered_by=plan.triggered_by),
    }
    started = precise_now()
    results: list[TenantResult] = []
    changed: list[TenantResult] = []
    expected: dict[str, TenantResult] = {}
    own = _own_outcomes(dynamodb, tooling.attempts_table, plan, run_id, recorded)
    attempt_only = frozenset(name for name, found in own.items() if found.attempt_only)
    for name in plan.tenants:
        result = own[name].result if name in own else recorded.get(name)
        target = _target_or_none(loaded, name) if loaded is not None else None
        removed = loaded is not None and target is None
        unreported = result is None or result.run_id != run_id or result.status == Outcome.IN_PROGRESS
        if unreported:
            result = _unreported(
                name,
                target,
                plan,
                artifact,
                dev_result,
                gate,
                run_id,
                previous=result,
                started=started,
                removed=removed,
                rollout_stop=_stop_for(plan, name, rollout_stop),
            )
        elif recorded.get(name) == result:  # this run's outcome is the latest item: only annotate it, if unchanged
            expected[name] = result
        annotated = _annotate(
            result,
            plan,
            gate,
            removed=_removed_note(loaded) if removed and loaded else None,
            hold_override=run_override_note(plan, target) if result.status != Outcome.SKIPPED else None,
        )
        if unreported or annotated != result:
            changed.append(annotated.model_copy(update=stamp))
        results.append(annotated)
    refused = set(record_results(sessions, tooling, changed, expected=expected, attempt_only=attempt_only))
    if refused:
        log.info(
            "%d tenant(s) have a newer outcome in the history than this summary's (kept; this run's is in the attempts): %s",
            len(refused),
            ", ".join(sorted(refused)),
        )
        newer = ledger.get_many(dynamodb, tooling.history_table, tenants=refused, release=plan.release_tag)
        for index, result in enumerate(results):
            latest = newer.get(result.tenant)
            if result.tenant in refused and latest is not None and latest.run_id == run_id:
                # This run wrote while the summary ran (a tenant finished late): that is the run's true outcome.
                results[index] = latest
    held = {entry.tenant for entry in plan.held}
    counts = report.count_by_status(results)
    log.info(
        "release %s summary (%s)\n%s\n%s%s",
        plan.release_tag,
        ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        _gate_line(plan, gate),
        _waves_line(plan, results, rollout_stop),
        report.render_table(results),
    )
    failed = [r.tenant for r in results if r.status in FAILED_OUTCOMES]
    stopped = _stopped_before_tenants(plan, artifact, dev_result, gate)
    if stopped:
        raise AirflowFailException(f"release {plan.release_tag} stopped before any tenant: {stopped}")
    not_deployed = [r.tenant for r in results if r.status in (*FAILED_OUTCOMES, Outcome.SKIPPED) and r.tenant not in held]
    hint = f"\n{redeploy_hint(plan.release_tag, run_id)}" if not_deployed else ""
    if hint:
        log.info("to redeploy only the %d failed or skipped tenant(s) in a new run:%s", len(not_deployed), hint)
    if rollout_stop is not None:
        skipped = [r.tenant for r in results if r.status == Outcome.SKIPPED and r.tenant not in held]
        log.error("rollout of %s stopped: %s", plan.release_tag, rollout_stop[1])
        raise AirflowFailException(
            f"release {plan.release_tag} stopped: {rollout_stop[1]}. {len(failed)} tenant(s) failed"
            f"{': ' + ', '.join(failed) if failed else ''}; {len(skipped)} not started. "
            f"To redeploy only the failed and skipped tenants once the cause is fixed:{hint}"
        )
    if failed:
        raise AirflowFailException(
            f"{len(failed)} of {len(results)} tenant(s) failed: {', '.join(failed)}. Their task logs (map index named "
            "after the tenant) hold the reason; clear the failed task instances to re-run only them in this run, or "
            f"redeploy them in a new run:{hint}"
        )
    return {"counts": counts, "tenants": {r.tenant: r.status.value for r in results}}


def _fleet_for_summary(plan: RunPlan) -> tuple[LoadedFleet | None, ToolingAccount]:
    """The fleet file as it is now, and the tooling account; None when the file became invalid since the plan.

    Then the summary still reports the plan's tenants from the history, in the tooling account the plan recorded.
    """
    try:
        loaded = load_fleet(plan.config_path)
    except TenantReleaseError as exc:
        if plan.tooling is None:  # a plan made before plans carried it
            raise AirflowFailException(
                f"the fleet file {plan.config_path} is invalid now, so the summary cannot find the history table: "
                f"{exc}. Fix the file, then clear this summary task to run it again."
            ) from None
        log.warning(
            "the fleet file %s is invalid now (%s); reporting the plan's %d tenant(s) from what the history knows. "
            "Fix the file before the next run.",
            plan.config_path,
            exc,
            len(plan.tenants),
        )
        return None, plan.tooling
    return loaded, loaded.fleet.tooling


def run_results(plan: RunPlan, run_id: str, tenants: tuple[str, ...]) -> dict[str, TenantResult]:
    """This run's own outcome of each of `tenants` that has one: the latest history item when it is this run's
    final one, else this run's newest attempt (a newer run may have written the latest item since)."""
    tooling = plan.tooling or runtime.cached_fleet(plan.config_path).fleet.tooling
    dynamodb = runtime.aws_sessions().tooling_client("dynamodb", tooling.region)
    recorded = ledger.get_many(dynamodb, tooling.history_table, tenants=tenants, release=plan.release_tag)
    own = _own_outcomes(dynamodb, tooling.attempts_table, plan, run_id, recorded, names=tenants)
    results = {name: found.result for name, found in own.items()}
    for name in tenants:
        result = recorded.get(name)
        if name not in results and result is not None and result.run_id == run_id:
            results[name] = result
    return results


def outcome_reasons(results: dict[str, TenantResult]) -> dict[str, tuple[Outcome, str]]:
    return {name: (result.status, result.reason or result.note or "") for name, result in results.items()}


def failed_by_bake(result: TenantResult | None, run_id: str) -> bool:
    """An outcome a wave's bake wrote: its tenant deployed, then its health alarm fired. A bake run again looks again."""
    return result is not None and result.run_id == run_id and result.status == Outcome.FAILED and result.written_by == "bake"


def watched_tenants(plan: RunPlan, run_id: str, wave: PlannedWave, results: dict[str, TenantResult]) -> dict[str, str]:
    """The wave's tenants that run this release after this run (deployed, found already at it, or failed by an
    earlier bake of this wave) and name health alarms: the bake watches them. Tenant -> its planned settings' digest."""
    loaded = runtime.cached_fleet(plan.config_path)
    digests = {entry.tenant: entry.target_digest for entry in plan.targets}
    watched = {}
    for name in wave.tenants:
        result = results.get(name)
        running = result is not None and result.run_id == run_id and result.status in (Outcome.SUCCEEDED, Outcome.UNCHANGED)
        if not running and not failed_by_bake(result, run_id):
            continue
        target = _target_or_none(loaded, name)
        if target is not None and target.alarms and name in digests:
            watched[name] = digests[name]
    return watched


def record_bake(
    plan: RunPlan, run_id: str, watched: tuple[str, ...], alarms: dict[str, str], *, try_number: int | None = None
) -> None:
    """Record what the bake saw: each watched tenant whose health alarm fired FAILED, with the alarm as the reason;
    a tenant an earlier bake of this wave failed whose alarms stayed quiet this time SUCCEEDED again."""
    results = run_results(plan, run_id, tuple(dict.fromkeys((*watched, *alarms))))
    stamp = {
        "written_by": "bake",
        "try_number": try_number,
        "identity": run_identity(release_tag=plan.release_tag, run_id=run_id, triggered_by=plan.triggered_by),
        "attempt_started_at": precise_now(),
        "finished_at": utc_now(),
    }
    changed = []
    for name, result in results.items():
        if name in alarms and (result.status in (Outcome.SUCCEEDED, Outcome.UNCHANGED) or failed_by_bake(result, run_id)):
            update = {"status": Outcome.FAILED, "reason": f"{alarms[name]} during its wave's bake"}
        elif name in watched and name not in alarms and failed_by_bake(result, run_id):
            note = f"healthy in its wave's bake again (earlier: {result.reason})"
            update = {"status": Outcome.SUCCEEDED, "reason": None, "note": note}
        else:
            continue
        changed.append(result.model_copy(update={**stamp, **update}))
    if changed:
        tooling = plan.tooling or runtime.cached_fleet(plan.config_path).fleet.tooling
        record_results(runtime.aws_sessions(), tooling, changed)


def _own_outcomes(
    dynamodb: Any,
    attempts_table: str,
    plan: RunPlan,
    run_id: str,
    recorded: dict[str, TenantResult],
    *,
    names: tuple[str, ...] | None = None,
) -> dict[str, ledger.Attempt]:
    """This run's own newest outcome (from the attempts) of each tenant whose latest item is not this run's final one.

    That is: another run wrote the latest item, or none was written (this run's outcome may be an attempt only),
    or this run's latest item is still IN_PROGRESS (a later try of it may have been refused as busy).
    """
    names = [
        name
        for name in (plan.tenants if names is None else names)
        if (result := recorded.get(name)) is None or result.run_id != run_id or result.status == Outcome.IN_PROGRESS
    ]
    if not names:
        return {}

    def lookup(name: str) -> ledger.Attempt | None:
        return ledger.run_outcome(dynamodb, attempts_table, tenant=name, release=plan.release_tag, run_id=run_id)

    with ThreadPoolExecutor(max_workers=min(ledger.WRITE_CONCURRENCY, len(names)), thread_name_prefix="attempts") as pool:
        found = dict(zip(names, pool.map(lookup, names), strict=True))
    return {name: result for name, result in found.items() if result is not None}


def _target_or_none(loaded: LoadedFleet, name: str) -> Target | None:
    try:
        return loaded.target(name)
    except FleetConfigError:  # removed from the fleet file after the plan: reported from the history
        return None


def _removed_note(loaded: LoadedFleet) -> str:
    return f"removed from the fleet file {loaded.path} after this run was planned"


def _stopped_before_tenants(
    plan: RunPlan, artifact: dict[str, Any] | None, dev_result: dict[str, Any] | None, gate: dict[str, Any] | None
) -> str | None:
    if artifact is None:
        return "the build failed"
    if dev_result is None:
        return "the dev deploy or its smoke test failed"
    if gate is None:
        return "the release gate was rejected or timed out"
    if gate.get("frozen"):
        return f"the {gate['frozen']}"
    return None


def _stop_for(plan: RunPlan, tenant: str, rollout_stop: tuple[int, str] | None) -> str | None:
    """Why the tenant was never started, when the rollout stopped at or before its wave."""
    if rollout_stop is None:
        return None
    wave = next((w for w in plan.waves if tenant in w.tenants), None)
    if wave is None or wave.index < rollout_stop[0]:
        return None
    return f"not started: {rollout_stop[1]}"


def _waves_line(plan: RunPlan, results: list[TenantResult], rollout_stop: tuple[int, str] | None) -> str:
    """One line per wave: its tenants' outcomes, and where the rollout stopped."""
    if len(plan.waves) <= 1 and rollout_stop is None:
        return ""
    by_tenant = {r.tenant: r.status for r in results}
    lines = []
    for wave in plan.waves:
        counts: dict[str, int] = {}
        for tenant in wave.tenants:
            status = by_tenant.get(tenant)
            counts[status.value if status else "?"] = counts.get(status.value if status else "?", 0) + 1
        lines.append(
            f"wave {wave.index} {wave.name} ({len(wave.tenants)}; max_failures {wave.max_failures}): "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
    if rollout_stop is not None:
        lines.append(f"rollout stopped: {rollout_stop[1]}")
    return "\n".join(lines) + "\n"


def _gate_line(plan: RunPlan, gate: dict[str, Any] | None) -> str:
    lines = []
    if not plan.gated:
        lines.append(f"gate: group {plan.group} is not gated")
    elif gate and gate.get("gated"):
        lines.append(f"gate: approved by {gate['approved_by']} via {gate['source']}")
    else:
        lines.append("gate: not approved (rejected, timed out or not reached); no tenant was deployed")
    if plan.freeze_override:
        lines.append(plan.freeze_override)
    return "\n".join(lines)


def _annotate(
    result: TenantResult,
    plan: RunPlan,
    gate: dict[str, Any] | None,
    *,
    removed: str | None = None,
    hold_override: str | None = None,
) -> TenantResult:
    """Record on each tenant's item whether its release was gated, who approved it, and any freeze override."""
    update: dict[str, Any] = {"gated": bool(plan.gated)}
    if gate and gate.get("gated") and not result.approved_by:
        update["approved_by"] = f"{gate['approved_by']} ({gate['source']}, release gate)"
    if gate and gate.get("gated") and result.approval is None and gate.get("sha256") and gate["sha256"] == result.sha256:
        # The authenticated approver and the artifact approved, for the audit trail (the free text above is not).
        update["approval"] = ApprovalDecision(
            approved=True,
            decided_by=gate["approved_by"],
            source=gate["source"],
            note=gate.get("note") or "",
            sha256=gate["sha256"],
            identity=gate.get("identity"),
            release_gate=True,
        )
    notes = [result.note]
    for extra in (plan.freeze_override, removed, hold_override):
        if extra and extra not in (result.note or "") and extra not in (result.reason or ""):
            notes.append(extra)
    if len(notes) > 1:
        update["note"] = "; ".join(filter(None, notes))
    return result.model_copy(update=update)


def _unreported(
    name: str,
    target: Target | None,
    plan: RunPlan,
    artifact: dict[str, Any] | None,
    dev_result: dict[str, Any] | None,
    gate: dict[str, Any] | None,
    run_id: str,
    *,
    previous: TenantResult | None,
    started: str,
    removed: bool = False,
    rollout_stop: str | None = None,
) -> TenantResult:
    now = utc_now()
    started_here = previous is not None and previous.run_id == run_id
    held = next((entry.reason for entry in plan.held if entry.tenant == name), None)
    if held is not None:  # held back or pinned: whatever stopped the run, that is why this tenant was not deployed
        status, reason = Outcome.SKIPPED, held
    elif artifact is None:
        status, reason = Outcome.SKIPPED, "not started: the build failed (see the build task's log)"
    elif dev_result is None:
        status, reason = Outcome.SKIPPED, "not started: the dev deploy or its smoke test failed (see the deploy_dev log)"
    elif gate is None:
        status, reason = Outcome.SKIPPED, "not started: the release gate was rejected or timed out (see approve_release)"
    elif removed and not started_here:
        status, reason = Outcome.SKIPPED, "not deployed: removed from the fleet file after this run was planned"
    elif gate.get("frozen"):
        status, reason = Outcome.SKIPPED, gate["frozen"]
    elif rollout_stop is not None and not started_here:
        status, reason = Outcome.SKIPPED, rollout_stop
    else:
        status, reason = Outcome.FAILED, "the tenant's task ended without reporting a result (worker lost?); see its log"
    if started_here:  # started, then lost: keep what it knew, as that attempt's outcome (its own late write wins)
        return previous.model_copy(update={"status": status, "reason": reason, "finished_at": now})
    return TenantResult(
        tenant=name,
        account_id=target.account_id if target else previous.account_id if previous else "unknown",
        region=target.region if target else previous.region if previous else "unknown",
        release=plan.release_tag,
        version=plan.version,
        status=status,
        run_id=run_id,
        started_at=now,
        finished_at=now,
        sha256=(artifact or {}).get("sha256"),
        reason=reason,
        run_started_at=plan.planned_at,
        attempt_started_at=started,
    )
