"""Redeploying a release to only the tenants that failed or were skipped in an earlier run, read from the history.

Plain module (a DynamoDB client in): the release DAG's plan (`redeploy_of` param) and `tenant-release redeploy`
select with `failed_tenants`, so what the command prints is what the run deploys. A tenant's outcome in a run is
its history item when that run wrote the latest one, else the newest attempt that run recorded for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tenant_release.aws import ledger
from tenant_release.errors import TargetSelectionError
from tenant_release.models import Outcome, TenantResult, ToolingAccount

# What a redeploy takes again: the tenant did not end at the release in that run. IN_PROGRESS is a tenant whose
# worker was lost and whose run never wrote a final outcome.
REDEPLOY_OUTCOMES = frozenset({Outcome.FAILED, Outcome.ROLLED_BACK, Outcome.SKIPPED, Outcome.IN_PROGRESS})
# Airflow's default `[core] allowed_run_id_pattern`, and the release DAG's `redeploy_of` maxLength.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.~:+-]{1,250}$")
DAG_ID = "tenant_release"


class RedeployError(TargetSelectionError):
    """The earlier run is unknown, or has nothing to redeploy, or the request is malformed."""


@dataclass(frozen=True, kw_only=True)
class RunOutcomes:
    """Every targeted tenant's outcome in one run, and the runs the history knows for the release."""

    release_tag: str
    run_id: str
    outcomes: dict[str, TenantResult]  # tenant -> its outcome in `run_id` (tenants the run did not reach: absent)
    known_runs: tuple[str, ...]  # every run of the release the history knows, oldest first

    def to_redeploy(self) -> dict[str, TenantResult]:
        return {name: result for name, result in self.outcomes.items() if result.status in REDEPLOY_OUTCOMES}


def check_run_id(run_id: str) -> str:
    """An Airflow run id, checked before any AWS call (it is matched against the history)."""
    cleaned = (run_id or "").strip()
    if not RUN_ID_PATTERN.match(cleaned):
        raise RedeployError(
            f"run id {run_id!r} is not an Airflow run id (1-250 letters, digits and _.~:+-, e.g. "
            "manual__2026-12-03T07:15:00.123456+00:00); copy it from the run's summary or the grid"
        )
    return cleaned


def describe(result: TenantResult) -> str:
    """`FAILED: <reason>`: a tenant's earlier outcome, as the CLI prints it and the plan logs it."""
    if result.status == Outcome.IN_PROGRESS:
        return "IN_PROGRESS: never finished in that run (its worker was lost)"
    return f"{result.status.value}: {result.reason}" if result.reason else result.status.value


def run_outcomes(dynamodb: object, tooling: ToolingAccount, release_tag: str, run_id: str, tenants: Sequence[str]) -> RunOutcomes:
    """Each tenant's outcome in `run_id`: its history item if that run wrote the latest, else that run's newest attempt.

    The attempts are read (one query per tenant, concurrently) only for tenants whose latest item is another run's.
    """
    names = list(dict.fromkeys(tenants))
    latest = ledger.get_many(dynamodb, tooling.history_table, tenants=names, release=release_tag)
    outcomes: dict[str, TenantResult] = {}
    seen: dict[str, str] = {}  # run id -> its write order (when it was planned), to list runs oldest first

    def remember(result: TenantResult) -> None:
        order = ledger.write_order(result)
        seen[result.run_id] = min(order, seen.get(result.run_id, order))

    for result in latest.values():
        remember(result)
        if result.run_id == run_id:
            outcomes[result.tenant] = result
    elsewhere = [name for name in names if name not in outcomes]

    def lookup(name: str) -> list[ledger.Attempt]:
        return ledger.attempt_items(dynamodb, tooling.attempts_table, tenant=name, release=release_tag)

    if elsewhere:
        workers = min(ledger.WRITE_CONCURRENCY, len(elsewhere))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="redeploy") as pool:
            found = dict(zip(elsewhere, pool.map(lookup, elsewhere), strict=True))
        for name, attempts in found.items():
            for attempt in attempts:
                remember(attempt.result)
            newest = ledger.newest_of_run(attempts, run_id)
            if newest is not None:
                outcomes[name] = newest.result
    known = tuple(sorted(seen, key=lambda run: (seen[run], run)))
    return RunOutcomes(release_tag=release_tag, run_id=run_id, outcomes=outcomes, known_runs=known)


def failed_tenants(
    dynamodb: object, tooling: ToolingAccount, release_tag: str, run_id: str, tenants: Sequence[str]
) -> dict[str, str]:
    """The tenants among `tenants` that failed, were rolled back, skipped or lost in `run_id`: tenant -> "OUTCOME: reason".

    Refuses a run the history does not know for the release (naming the runs it knows), and a run with nothing to
    redeploy.
    """
    return {name: describe(result) for name, result in selected(dynamodb, tooling, release_tag, run_id, tenants).items()}


def selected(
    dynamodb: object, tooling: ToolingAccount, release_tag: str, run_id: str, tenants: Sequence[str]
) -> dict[str, TenantResult]:
    """`failed_tenants` with each tenant's whole earlier outcome (for a table)."""
    found = run_outcomes(dynamodb, tooling, release_tag, run_id, tenants)
    if not found.outcomes:
        raise RedeployError(
            f"run {run_id} is not a run of {release_tag} that the history knows (for the tenants {release_tag} targets); "
            f"runs of {release_tag} in the history: {', '.join(found.known_runs) or 'none'}. Copy the run id from one of "
            f"them, or from the summary of the run to redeploy"
        )
    chosen = found.to_redeploy()
    if not chosen:
        raise RedeployError(f"run {run_id} of {release_tag} has no failed or skipped tenant; nothing to redeploy")
    return {name: chosen[name] for name in tenants if name in chosen}


@dataclass(frozen=True, kw_only=True)
class PickedRun:
    """The run `tenant-release redeploy TAG --failed` takes when no run is named, and why."""

    release_tag: str
    run_id: str
    failed: dict[str, Outcome]  # its tenants whose latest outcome of the release is one to redeploy
    newer: tuple[str, ...]  # runs planned after it whose tenants' latest outcomes have nothing to redeploy
    older: tuple[str, ...]  # runs planned before it that also left tenants failed or skipped, newest first

    def describe(self) -> str:
        tenants = ", ".join(f"{name} {status.value}" for name, status in self.failed.items())
        text = (
            f"picked run {self.run_id}: the newest run of {self.release_tag} that left tenants failed or skipped "
            f"in the history ({tenants})"
        )
        if self.newer:
            text += f"; newer runs left none: {', '.join(self.newer)}"
        if self.older:
            text += f"; older runs left some too: {', '.join(self.older)} (redeploy them with --run RUN_ID)"
        return text


def run_to_redeploy(dynamodb: object, tooling: ToolingAccount, release_tag: str, tenants: Iterable[str]) -> PickedRun:
    """The newest run (by when it was planned) whose tenants' latest history items of the release are to redeploy.

    Judged on each tenant's latest item: a later run that deployed other tenants (or fixed some) does not hide an
    earlier run whose other tenants still failed. Refuses when no tenant's latest outcome needs a redeploy.
    """
    latest = ledger.get_many(dynamodb, tooling.history_table, tenants=tenants, release=release_tag)
    if not latest:
        raise RedeployError(
            f"the history has no outcome of {release_tag} for the tenants it targets, so there is no run to redeploy; "
            f"see `tenant-release history {release_tag}`"
        )
    order: dict[str, str] = {}  # run id -> its newest write order: runs sort by when they were planned
    failed: dict[str, dict[str, Outcome]] = {}
    for name, result in sorted(latest.items()):
        order[result.run_id] = max(ledger.write_order(result), order.get(result.run_id, ""))
        if result.status in REDEPLOY_OUTCOMES:
            failed.setdefault(result.run_id, {})[name] = result.status
    runs = sorted(order, key=lambda run: order[run], reverse=True)  # newest first
    with_failures = [run for run in runs if run in failed]
    if not with_failures:
        raise RedeployError(
            f"no tenant of {release_tag} failed or was skipped in its latest outcome (the newest run is {runs[0]}); "
            f"nothing to redeploy. See `tenant-release history {release_tag}`, or name a run with --run to redeploy "
            "what failed in it"
        )
    picked = with_failures[0]
    return PickedRun(
        release_tag=release_tag,
        run_id=picked,
        failed=failed[picked],
        newer=tuple(runs[: runs.index(picked)]),
        older=tuple(with_failures[1:]),
    )


def trigger_conf(release_tag: str, run_id: str) -> dict[str, str]:
    """The `tenant_release` trigger conf (REST `conf`, UI form) that redeploys the failed tenants of `run_id`."""
    return {"release_tag": release_tag, "redeploy_of": run_id}


def redeploy_hint(release_tag: str, run_id: str) -> str:
    """What a failed run's summary prints: the command and the trigger payload that redeploy only its failed tenants."""
    conf = json.dumps(trigger_conf(release_tag, run_id))
    return (
        f"redeploy only the failed and skipped tenants of this run: tenant-release redeploy {release_tag} --failed "
        f"--run {run_id}  (or trigger {DAG_ID} with conf {conf})"
    )
