"""Bodies of the release DAG's plain tasks: plan, build, summarise. Each turns library errors into task failures."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tenant_release import report
from tenant_release.airflow import runtime
from tenant_release.aws import ledger
from tenant_release.config import LoadedFleet, load_fleet
from tenant_release.deploy import build_release, utc_now
from tenant_release.errors import TenantReleaseError
from tenant_release.models import Outcome, Release, TenantResult
from tenant_release.plan import ReleasePlan, plan_release
from tenant_release.tags import parse_release_tag
from tenant_release.windows import ReleaseCalendar

log = logging.getLogger(__name__)


def plan(params: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """Read the fleet file (now, not at parse time) and fix the run's targets; fail before any deploy."""
    try:
        loaded = load_fleet()
        release = parse_release_tag(params["release_tag"])
        selected = plan_release(loaded, release, only_tenants=params.get("tenants") or None)
        dev = loaded.target(loaded.fleet.dev.name)
    except TenantReleaseError as exc:
        raise AirflowFailException(str(exc)) from None
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
    log.info(
        "release %s (version %s) to group %s: %d tenant(s): %s",
        release.tag,
        release.version,
        selected.group,
        len(selected.targets),
        ", ".join(selected.tenant_names),
    )
    return {
        **plan_fields(loaded, release, selected),
        "targets": [{"tenant": t.name, "target_digest": runtime.target_digest(t)} for t in selected.targets],
        "dev": {"tenant": dev.name, "target_digest": runtime.target_digest(dev)},
        "freeze_override": freeze_note,
    }


def plan_fields(loaded: LoadedFleet, release: Release, selected: ReleasePlan) -> dict[str, Any]:
    """What every plan XCom carries (release and queue DAGs alike): names only, never settings or secrets."""
    return {
        "release_tag": release.tag,
        "version": release.version,
        "group": selected.group,
        "gated": selected.gated,
        "config_path": str(loaded.path),
        "tenants": selected.tenant_names,
    }


def build(plan_: dict[str, Any]) -> dict[str, Any]:
    try:
        loaded = load_fleet(plan_["config_path"])
        targets = [loaded.target(name) for name in plan_["tenants"]]
        artifact = build_release(runtime.aws_sessions(), loaded.fleet.tooling, parse_release_tag(plan_["release_tag"]), targets)
    except TenantReleaseError as exc:
        raise AirflowFailException(str(exc)) from None
    return artifact.model_dump(mode="json")


def summarize(
    plan_: dict[str, Any],
    artifact: dict[str, Any] | None,
    dev_result: dict[str, Any] | None,
    gate: dict[str, Any] | None,
    run_id: str,
) -> dict[str, Any]:
    """Collect every planned tenant's outcome from the history, fill in those that never reported, print the table."""
    loaded = load_fleet(plan_["config_path"])
    tooling = loaded.fleet.tooling
    dynamodb = runtime.aws_sessions().tooling_client("dynamodb", tooling.region)
    recorded = ledger.get_many(dynamodb, tooling.history_table, tenants=plan_["tenants"], release=plan_["release_tag"])
    results: list[TenantResult] = []
    for name in plan_["tenants"]:
        result = recorded.get(name)
        if result is None or result.run_id != run_id or result.status == Outcome.IN_PROGRESS:
            result = _unreported(loaded.target(name), plan_, artifact, dev_result, gate, run_id, previous=result)
            ledger.record(dynamodb, tooling.history_table, result)
        annotated = _annotate(result, plan_, gate)
        if annotated != result:
            ledger.record(dynamodb, tooling.history_table, annotated)
        results.append(annotated)
    counts = report.count_by_status(results)
    log.info(
        "release %s summary (%s)\n%s\n%s",
        plan_["release_tag"],
        ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        _gate_line(plan_, gate),
        report.render_table(results),
    )
    failed = [r.tenant for r in results if r.status == Outcome.FAILED]
    stopped = _stopped_before_tenants(plan_, artifact, dev_result, gate)
    if stopped:
        raise AirflowFailException(f"release {plan_['release_tag']} stopped before any tenant: {stopped}")
    if failed:
        raise AirflowFailException(
            f"{len(failed)} of {len(results)} tenant(s) failed: {', '.join(failed)}. Their task logs (map index named "
            "after the tenant) hold the reason; clear the failed task instances to re-run only them."
        )
    return {"counts": counts, "tenants": {r.tenant: r.status.value for r in results}}


def _stopped_before_tenants(
    plan_: dict[str, Any], artifact: dict[str, Any] | None, dev_result: dict[str, Any] | None, gate: dict[str, Any] | None
) -> str | None:
    if artifact is None:
        return "the build failed"
    if dev_result is None:
        return "the dev deploy or its smoke test failed"
    if gate is None:
        return "the release gate was rejected or timed out"
    return None


def _gate_line(plan_: dict[str, Any], gate: dict[str, Any] | None) -> str:
    lines = []
    if not plan_["gated"]:
        lines.append(f"gate: group {plan_['group']} is not gated")
    elif gate and gate.get("gated"):
        lines.append(f"gate: approved by {gate['approved_by']} via {gate['source']}")
    else:
        lines.append("gate: not approved (rejected, timed out or not reached); no tenant was deployed")
    if plan_.get("freeze_override"):
        lines.append(plan_["freeze_override"])
    return "\n".join(lines)


def _annotate(result: TenantResult, plan_: dict[str, Any], gate: dict[str, Any] | None) -> TenantResult:
    """Record on each tenant's item whether its release was gated, who approved it, and any freeze override."""
    update: dict[str, Any] = {"gated": bool(plan_["gated"])}
    if gate and gate.get("gated") and not result.approved_by:
        update["approved_by"] = f"{gate['approved_by']} ({gate['source']}, release gate)"
    if plan_.get("freeze_override") and plan_["freeze_override"] not in (result.note or ""):
        update["note"] = "; ".join(filter(None, [result.note, plan_["freeze_override"]]))
    return result.model_copy(update=update)


def _unreported(
    target: Any,
    plan_: dict[str, Any],
    artifact: dict[str, Any] | None,
    dev_result: dict[str, Any] | None,
    gate: dict[str, Any] | None,
    run_id: str,
    *,
    previous: TenantResult | None,
) -> TenantResult:
    now = utc_now()
    if artifact is None:
        status, reason = Outcome.SKIPPED, "not started: the build failed (see the build task's log)"
    elif dev_result is None:
        status, reason = Outcome.SKIPPED, "not started: the dev deploy or its smoke test failed (see the deploy_dev log)"
    elif gate is None:
        status, reason = Outcome.SKIPPED, "not started: the release gate was rejected or timed out (see approve_release)"
    else:
        status, reason = Outcome.FAILED, "the tenant's task ended without reporting a result (worker lost?); see its log"
    if previous is not None and previous.run_id == run_id:  # started, then lost: keep what it knew
        return previous.model_copy(update={"status": status, "reason": reason, "finished_at": now})
    return TenantResult(
        tenant=target.name,
        account_id=target.account_id,
        region=target.region,
        release=plan_["release_tag"],
        version=plan_["version"],
        status=status,
        run_id=run_id,
        started_at=now,
        finished_at=now,
        sha256=(artifact or {}).get("sha256"),
        reason=reason,
    )
