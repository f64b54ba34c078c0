"""Glue of the release-queue DAGs: queue a release for the next release window, and ship it when the window opens.

`tenant_release_queue` validates a tag like the release DAG's plan does, asks for the release gate now and
queues the tag; `tenant_release_scheduled` (on `ReleaseWindowTimetable`) takes the oldest queued release at a
window and triggers `tenant_release` for it. The triggered run's gate passes at once only if a release-wide
approval record (tenant `*`) approves the artifact it built; otherwise it asks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tenant_release.airflow import runtime
from tenant_release.airflow.failures import as_task_failure
from tenant_release.airflow.gate import ReleaseGateOperator
from tenant_release.airflow.steps import plan_fields
from tenant_release.airflow.timetables import ReleaseWindowTimetable
from tenant_release.aws import release_queue
from tenant_release.build import check_template_locally
from tenant_release.config import LoadedFleet, config_path, load_fleet
from tenant_release.deploy import record_results
from tenant_release.errors import FleetConfigError, TenantReleaseError
from tenant_release.models import Outcome, QueuedPlan, ReleaseSchedule, TenantResult, ToolingAccount
from tenant_release.plan import plan_release
from tenant_release.rollout import hold_reason
from tenant_release.tags import is_newer, parse_release_tag
from tenant_release.windows import ReleaseCalendar

log = logging.getLogger(__name__)

RELEASE_DAG_ID = "tenant_release"


# --- the scheduled DAG's timetable (read when the DAG file is parsed) -----------------------------------------


def release_window_timetable(path: Path | str | None = None) -> ReleaseWindowTimetable | None:
    """The timetable of `tenant_release_scheduled`, from the fleet file's `schedule` section.

    The only parse-time read of the fleet file: a timetable is fixed when the DAG is serialized, so the
    windows must be known then. A missing or invalid file fails the import with the reason (shown as the
    DAG's import error). A fleet without windows gets None: the DAG exists but is never scheduled.
    """
    source = Path(path) if path is not None else config_path()
    try:
        stat = source.stat()
    except OSError:
        stat = None  # load_fleet says what is wrong with the path, in the same words as everywhere else
    try:
        schedule = _schedule(str(source), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    except FleetConfigError as exc:
        raise FleetConfigError(f"tenant_release_scheduled takes its release windows from the fleet file: {exc}") from None
    if not schedule.windows:
        log.warning("%s lists no release windows (schedule.windows): tenant_release_scheduled will not run", source)
        return None
    return ReleaseWindowTimetable.from_schedule(schedule)


@lru_cache(maxsize=4)
def _schedule(path: str, mtime_ns: int, size: int) -> ReleaseSchedule:
    # Keyed by modification time and size: a re-parse in the same process reads the file again only when it changed.
    return load_fleet(path).fleet.schedule


# --- tenant_release_queue ---------------------------------------------------------------------------------------


def _queue_client(tooling: ToolingAccount) -> Any:
    return runtime.aws_sessions().tooling_client("dynamodb", tooling.region)


def plan_queued(params: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """Check the tag and tenants as `tenant_release`'s plan does, and that the tag can be queued.

    A change freeze does not block queueing (the release waits for the first window after it). The result has
    the keys the release gate reads from a `plan` XCom.
    """
    try:
        loaded = load_fleet()
        release = parse_release_tag(params["release_tag"])
        narrowed = bool(params.get("tenants"))
        selected = plan_release(loaded, release, only_tenants=params.get("tenants") or None)
        targets = [loaded.target(loaded.fleet.dev.name), *selected.targets]
        check_template_locally(
            loaded.fleet.application, loaded.path, targets, version=release.version, release=release
        )  # before AWS
        tooling = loaded.fleet.tooling
        release_queue.check_can_enqueue(_queue_client(tooling), tooling.queue_table, release.tag)
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    calendar = ReleaseCalendar.from_schedule(loaded.fleet.schedule)
    opens = calendar.next_release_start(now)
    if opens is None:
        raise AirflowFailException(
            f"{loaded.path} has no release window that opens outside a freeze in the next two years, so {release.tag} "
            "would never ship; add windows under schedule.windows, or trigger tenant_release directly"
        )
    freeze = calendar.freeze_at(now)
    if freeze is not None:
        log.info("change freeze %s (%s) now: %s waits for the first window after it", freeze, freeze.reason, release.tag)
    log.info(
        "queueing %s (version %s) for group %s: %s; next release window opens %s",
        release.tag,
        release.version,
        selected.group,
        ", ".join(selected.tenant_names) if narrowed else f"every tenant of the group ({len(selected.targets)} now)",
        opens.isoformat(),
    )
    return QueuedPlan(
        **plan_fields(loaded, release, selected),
        requested_tenants=tuple(selected.tenant_names) if narrowed else (),
        next_window=opens.isoformat(),
        windows=tuple(str(window) for window in calendar.windows),
    ).model_dump(mode="json")


class QueuedReleaseGateOperator(ReleaseGateOperator):
    """The release gate, asked when a release is queued rather than when it ships.

    Same semantics as `ReleaseGateOperator` (ungated runs pass, an existing release-wide record decides at
    once, Reject or timeout fails). Nothing has been built yet, so the request shows the plan and the window,
    not an artifact or a dev result, and a release-wide approval of any artifact answers it. An approval here only
    admits the release to the queue: the run that ships asks again at its own gate unless a release-wide record
    approves the artifact it built (the orchestrator cannot write approval records, so an answer given here in
    Airflow is kept only in the queue entry).
    """

    rejected_consequence = "nothing was queued"
    stops_at_freeze = False  # a freeze does not block queueing: the release waits for the first window after it

    def artifact_sha256(self, ti: Any) -> str | None:
        return None  # nothing built yet: the shipping run's gate checks the hash

    def read_plan(self, ti: Any) -> QueuedPlan:
        return QueuedPlan.model_validate(ti.xcom_pull(task_ids="plan"))

    def describe_request(self, ti: Any, plan: QueuedPlan) -> tuple[str, str]:  # type: ignore[override]
        tenants = "\n".join(f"- {name}" for name in plan.tenants)
        narrowed = "only these tenants" if plan.requested_tenants else "every tenant of the group when it ships; now"
        count = len(plan.tenants)
        subject = f"Queue {plan.release_tag} for the next release window ({count} tenant(s) of {plan.group})?"
        body = (
            f"**Release** {plan.release_tag} (version {plan.version}) to group {plan.group}\n\n"
            f"**When** at the next release window outside a freeze, first opening {plan.next_window} "
            f"(windows: {', '.join(plan.windows)})\n\n"
            f"**Tenants** ({narrowed}: {count}):\n{tenants}\n\n"
            "Approving only admits the release to the queue. The run that ships it at the window builds the artifact, "
            "deploys dev, and then asks again at its own release gate for an approval of that build, unless an "
            f"approval record names it (`tenant-release approve {plan.release_tag} --sha256 <the build's sha256>`). "
            "If the build or the dev deploy fails, or the window closes before that gate passes, no tenant is touched."
        )
        return subject, body


def enqueue_planned(plan_: dict[str, Any], gate: dict[str, Any] | None, *, queued_by: str) -> dict[str, Any]:
    approved_by = f"{gate['approved_by']} ({gate['source']})" if gate and gate.get("gated") else None
    try:
        tooling = load_fleet(plan_["config_path"]).fleet.tooling
        entry = release_queue.enqueue(
            _queue_client(tooling),
            tooling.queue_table,
            release_tag=plan_["release_tag"],
            tenants=plan_["requested_tenants"],
            queued_by=queued_by,
            approved_by=approved_by,
        )
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    log.info("%s; ships at the first release window from %s", entry.describe(), plan_["next_window"])
    return entry.to_dict()


# --- tenant_release_scheduled -----------------------------------------------------------------------------------


def _fleet_and_queue() -> tuple[LoadedFleet, Any]:
    """The fleet file as it is now (not as parsed): the scheduled tasks judge freezes and windows by it."""
    try:
        loaded = load_fleet()
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    return loaded, _queue_client(loaded.fleet.tooling)


@dataclass(frozen=True, kw_only=True)
class _QueuedSelection:
    """What a queued release would do if it shipped now, by the fleet file as it reads now."""

    deployable: frozenset[str]  # its tenants, held and pinned ones left out
    held: dict[str, str]  # tenant -> hold or pin reason, for the tenants it names (a named list only)

    @property
    def all_named_held(self) -> bool:
        """A named tenant list whose every tenant is held back or pinned now: nothing it could ship."""
        return bool(self.held) and not self.deployable


def _selection(loaded: LoadedFleet, entry: release_queue.QueuedRelease) -> _QueuedSelection | None:
    """The tenants a queued release would deploy if it shipped now, and the named ones held back; None: unplannable."""
    try:
        release = parse_release_tag(entry.release)
        selected = plan_release(loaded, release, only_tenants=entry.tenants or None)
    except TenantReleaseError as exc:
        log.warning(
            "%s cannot be planned against the fleet file now (%s): it supersedes nothing and is not superseded",
            entry.release,
            exc,
        )
        return None
    reasons = {target.name: hold_reason(target, release) for target in selected.targets}
    return _QueuedSelection(
        deployable=frozenset(name for name, reason in reasons.items() if reason is None),
        # Only a named list is narrowed at dispatch: a whole-group release's run reports its held tenants itself.
        held={name: reason for name, reason in reasons.items() if reason is not None} if entry.tenants else {},
    )


def _deployable_tenants(loaded: LoadedFleet, entry: release_queue.QueuedRelease) -> frozenset[str] | None:
    """The tenants a queued release would deploy if it shipped now (held and pinned ones left out); None: unplannable."""
    selection = _selection(loaded, entry)
    return None if selection is None else selection.deployable


def _missed_window(window: tuple[datetime, datetime] | None, now: datetime) -> tuple[datetime, datetime] | None:
    """The run's own release window when the run starts outside it (a window missed while the scheduler was down)."""
    if window is None or window[0] is None or window[1] is None or not window[0] < window[1]:
        return None  # a manual run of this DAG: its interval is the moment it was triggered, not a window
    opens, closes = window
    return None if opens <= now < closes else (opens, closes)


def _warn_about_newer_dispatched(
    loaded: LoadedFleet,
    entry: release_queue.QueuedRelease,
    tenants: frozenset[str] | None,
    everything: list[release_queue.QueuedRelease],
) -> None:
    """Say so when a newer release was already dispatched to some of this release's tenants.

    Not a reason to hold it back (that run may have failed for them), but those tenants' deploys refuse to go back
    to the older version: they end FAILED with their stacks untouched.
    """
    if not tenants:
        return
    version = release_queue.version_of(entry) or ""
    for other in everything:
        if other.status != release_queue.QueueStatus.DISPATCHED or not is_newer(release_queue.version_of(other), version):
            continue
        shared = tenants & (_deployable_tenants(loaded, other) or frozenset())
        if shared:
            log.warning(
                "%s reaches %s, to which the newer %s was dispatched already (run %s): where that stack holds the newer "
                "version, this deploy refuses to roll it back and the tenant ends FAILED, untouched",
                entry.release,
                ", ".join(sorted(shared)),
                other.release,
                other.run_id,
            )


def take_queued_release(*, run_id: str, now: datetime, window: tuple[datetime, datetime] | None = None) -> dict[str, Any]:
    """The oldest queued release and how to trigger it; skips, saying why, in a freeze, outside a window, or when empty.

    Judged against the fleet file and the clock now, not when the run was scheduled: a freeze added since the DAG
    was parsed, or a run that starts after its window closed, ships nothing. `window` is the run's data interval
    (the window occurrence it was scheduled for): a run the scheduler creates late for a window it missed while it
    was down ships nothing, even when a later window is open by then, because that window has a run of its own: one
    release per window, never one outside a window. Queued releases that a newer queued release covers are passed
    over (`release_queue.supersessions`), so each tenant goes straight to the newest version; they are marked
    SUPERSEDED by `mark_dispatched` when a release covering them is dispatched, not before. A named tenant held back
    or pinned since queueing is left out of the run's `tenants` (and recorded SKIPPED at dispatch); a named list
    whose every tenant is held stays queued.
    """
    loaded, dynamodb = _fleet_and_queue()
    table = loaded.fleet.tooling.queue_table
    try:
        everything = release_queue.list_queue(dynamodb, table)
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    waiting = [e for e in everything if e.status == release_queue.QueueStatus.QUEUED]
    stays = (
        f"{', '.join(e.release for e in waiting)} stay{'s' if len(waiting) == 1 else ''} queued"
        if waiting
        else "nothing is queued anyway"
    )
    calendar = ReleaseCalendar.from_schedule(loaded.fleet.schedule)
    next_start = calendar.next_release_start(now)
    later = f"the next release window opens {next_start.isoformat()}" if next_start else "no release window opens"
    freeze = calendar.freeze_at(now)
    if freeze is not None:
        raise AirflowSkipException(f"inside the change freeze {freeze} ({freeze.reason}): {stays}; {later}")
    missed = _missed_window(window, now)
    if missed is not None:
        open_now = calendar.next_release_interval(now, include_open=True)
        if open_now is not None and open_now[0] <= now:
            after = f"the window open now (since {open_now[0].isoformat()}) has its own run, which ships the oldest"
        else:
            after = later
        reason = (
            f"this run is for the release window {missed[0].isoformat()} to {missed[1].isoformat()}, but it started at "
            f"{now.isoformat(timespec='seconds')}, outside it (was the scheduler down?); a missed window is not made up "
            f"later: {stays}; {after}"
        )
        log.warning("%s", reason)
        raise AirflowSkipException(reason)
    if not any(w.is_open(now) for w in calendar.windows):
        raise AirflowSkipException(
            f"no release window is open at {now.isoformat(timespec='seconds')} (windows: "
            f"{', '.join(str(w) for w in calendar.windows) or 'none'}): {stays}; {later}. To ship now, trigger "
            f"{RELEASE_DAG_ID} directly"
        )
    if not waiting:
        raise AirflowSkipException("nothing queued: queue a release with the tenant_release_queue DAG")
    selections = {entry.release: _selection(loaded, entry) for entry in waiting}
    deploys = {release: (None if found is None else found.deployable) for release, found in selections.items()}

    def tenants_of(entry: release_queue.QueuedRelease) -> frozenset[str] | None:
        return deploys[entry.release]

    # A release that a newer queued one covers does not ship before it; it is marked SUPERSEDED only when a
    # release covering it is dispatched (mark_dispatched), so cancelling the newer one while it waits leaves it queued.
    covered = {s.older.release: s for s in release_queue.supersessions(waiting, tenants_of)}
    for supersession in covered.values():
        log.info("%s", supersession.describe_waiting())
    all_held = {e.release for e in waiting if (found := selections[e.release]) is not None and found.all_named_held}
    for entry in waiting:
        if entry.release in all_held:
            log.warning(
                "%s is not shipped at this window: every tenant it names is held back or pinned now (%s); it stays "
                "queued until a hold is lifted or a pin matches (or cancel it: tenant-release queue cancel %s)",
                entry.release,
                "; ".join(f"{name}: {reason}" for name, reason in selections[entry.release].held.items()),
                entry.release,
            )
    remaining = [e for e in waiting if e.release not in covered and e.release not in all_held]
    if not remaining:
        raise AirflowSkipException(
            f"nothing to ship at this window: {', '.join(e.release for e in waiting)} wait (see the log for why); {later}"
        )
    entry = release_queue.next_to_ship(remaining, tenants_of)
    if entry is not remaining[0]:
        log.info(
            "%s ships before %s, queued earlier: they share tenants, and a tenant takes the older version first",
            entry.release,
            remaining[0].release,
        )
    if len(remaining) > 1:
        log.info(
            "one release ships per window: %s wait for the next windows",
            ", ".join(e.release for e in remaining if e is not entry),
        )
    _warn_about_newer_dispatched(loaded, entry, deploys[entry.release], everything)
    selection = selections[entry.release]
    held = selection.held if selection is not None else {}
    # Never an empty list (that would mean the whole group); a list naming only held tenants was passed over above.
    tenants = [name for name in entry.tenants if name not in held]
    if held:
        log.warning(
            "%s names tenants held back or pinned since it was queued; the run leaves them out (its plan would refuse "
            "them) and they are recorded SKIPPED in the history for run %s when it is dispatched: %s",
            entry.release,
            release_queue.dispatch_run_id(entry),
            "; ".join(f"{name}: {reason}" for name, reason in held.items()),
        )
    supersedes = release_queue.superseded_by(entry, [e for e in waiting if e is not entry], tenants_of)
    log.info(
        "%s takes %s (%d queued tenant(s); approved by %s)",
        run_id,
        entry.describe(),
        len(entry.tenants),
        entry.approved_by or "-",
    )
    return {
        "release_tag": entry.release,
        "tenants": tenants,
        # The release run refuses a freeze on its own; the override stays empty so that check still applies.
        "conf": {"release_tag": entry.release, "tenants": tenants, "override_freeze": ""},
        # Fixed per queue entry: any later attempt to dispatch it finds the run it created instead of making a second.
        "trigger_run_id": release_queue.dispatch_run_id(entry),
        # Named tenants left out because they are held back or pinned now: recorded SKIPPED once the run exists.
        "held": held,
        # Older queued releases this one covers: marked SUPERSEDED once its run exists, not before.
        "supersedes": {s.older.release: list(s.tenants) for s in supersedes},
    }


def mark_dispatched(taken: dict[str, Any]) -> dict[str, Any]:
    """After the run was triggered: supersede what it covers, record its left-out held tenants, mark it DISPATCHED.

    The queue entry is marked last: a dispatch that stops midway leaves it QUEUED, and the next attempt (which finds
    the same run) does each step again; each is idempotent.
    """
    loaded, dynamodb = _fleet_and_queue()
    table = loaded.fleet.tooling.queue_table
    release_tag, run_id = taken["release_tag"], taken["trigger_run_id"]
    try:
        newer = release_queue.get(dynamodb, table, release_tag)
        for older, tenants in (taken.get("supersedes") or {}).items():
            try:
                closed = release_queue.mark_superseded(dynamodb, table, older, by=release_tag)
            except TenantReleaseError as exc:
                log.warning("%s; left as it is", exc)  # cancelled meanwhile: not ours to ship either way
            else:
                if newer is not None:
                    supersession = release_queue.Supersession(older=closed, newer=newer, tenants=tuple(tenants))
                    log.warning("%s", supersession.describe())
        _record_held_at_dispatch(loaded, release_tag, run_id, taken.get("held") or {})
        entry = release_queue.mark_dispatched(dynamodb, table, release_tag, run_id=run_id)
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    log.info("%s", entry.describe())
    return entry.to_dict()


def _record_held_at_dispatch(loaded: LoadedFleet, release_tag: str, run_id: str, held: dict[str, str]) -> None:
    """Record SKIPPED, with the hold or pin, each named tenant the dispatch left out of the run (no tenant silently skipped).

    The run never hears of them (its `tenants` list leaves them out), so the dispatch writes their outcome under that
    run's id: `tenant-release history TAG` shows it, and a redeploy of that run takes them once the hold is lifted.
    """
    if not held:
        return
    release = parse_release_tag(release_tag)
    at = runtime.utcnow().isoformat()
    results = []
    for name, reason in held.items():
        try:
            target = loaded.target(name)
        except TenantReleaseError:
            log.warning("%s is no longer in the fleet file: nothing recorded for it", name)
            continue
        results.append(
            TenantResult(
                tenant=name,
                account_id=target.account_id,
                region=target.region,
                release=release.tag,
                version=release.version,
                status=Outcome.SKIPPED,
                run_id=run_id,
                started_at=at,
                finished_at=at,
                reason=reason,
                note=f"left out of queued release {release.tag}'s tenants when it was dispatched to run {run_id}",
                run_started_at=at,
                attempt_started_at=at,
                written_by="dispatch",
            )
        )
        log.warning("%-24s SKIPPED: %s (left out of run %s)", name, reason, run_id)
    record_results(runtime.aws_sessions(), loaded.fleet.tooling, results)
