"""Bodies of the release DAG's plain tasks: plan, build, summarise. Each turns library errors into task failures."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tenant_release import report
from tenant_release.airflow import runtime
from tenant_release.aws import ledger
from tenant_release.config import load_fleet
from tenant_release.deploy import build_release, utc_now
from tenant_release.errors import TenantReleaseError
from tenant_release.models import Outcome, TenantResult
from tenant_release.plan import plan_release
from tenant_release.tags import parse_release_tag

log = logging.getLogger(__name__)


def plan(params: dict[str, Any]) -> dict[str, Any]:
    """Read the fleet file (now, not at parse time) and fix the run's targets; fail before any deploy."""
    try:
        loaded = load_fleet()
        release = parse_release_tag(params["release_tag"])
        selected = plan_release(loaded, release, only_tenants=params.get("tenants") or None)
        dev = loaded.target(loaded.fleet.dev.name)
    except TenantReleaseError as exc:
        raise AirflowFailException(str(exc)) from None
    log.info(
        "release %s (version %s) to group %s: %d tenant(s): %s",
        release.tag,
        release.version,
        selected.group,
        len(selected.targets),
        ", ".join(selected.tenant_names),
    )
    return {
        "release_tag": release.tag,
        "version": release.version,
        "group": selected.group,
        "gated": selected.gated,
        "config_path": str(loaded.path),
        "tenants": selected.tenant_names,
        "targets": [{"tenant": t.name, "target_digest": runtime.target_digest(t)} for t in selected.targets],
        "dev": {"tenant": dev.name, "target_digest": runtime.target_digest(dev)},
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
    plan_: dict[str, Any], artifact: dict[str, Any] | None, dev_result: dict[str, Any] | None, run_id: str
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
            result = _unreported(loaded.target(name), plan_, artifact, dev_result, run_id, previous=result)
            ledger.record(dynamodb, tooling.history_table, result)
        results.append(result)
    counts = report.count_by_status(results)
    log.info(
        "release %s summary (%s)\n%s",
        plan_["release_tag"],
        ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        report.render_table(results),
    )
    failed = [r.tenant for r in results if r.status == Outcome.FAILED]
    if failed:
        raise AirflowFailException(
            f"{len(failed)} of {len(results)} tenant(s) failed: {', '.join(failed)}. Their task logs (map index named "
            "after the tenant) hold the reason; clear the failed task instances to re-run only them."
        )
    return {"counts": counts, "tenants": {r.tenant: r.status.value for r in results}}


def _unreported(
    target: Any,
    plan_: dict[str, Any],
    artifact: dict[str, Any] | None,
    dev_result: dict[str, Any] | None,
    run_id: str,
    *,
    previous: TenantResult | None,
) -> TenantResult:
    now = utc_now()
    if artifact is None:
        status, reason = Outcome.SKIPPED, "not started: the build failed (see the build task's log)"
    elif dev_result is None:
        status, reason = Outcome.SKIPPED, "not started: the dev deploy or its smoke test failed (see the deploy_dev log)"
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
