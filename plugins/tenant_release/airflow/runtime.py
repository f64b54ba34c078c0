"""How Airflow tasks and triggers get their AWS sessions and their slice of the fleet file."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenant_release.aws.approvals import Lookup, find_decision
from tenant_release.aws.session import AwsSessions
from tenant_release.config import LoadedFleet, load_fleet
from tenant_release.errors import FleetConfigError
from tenant_release.models import Application, Target, ToolingAccount

if TYPE_CHECKING:
    from tenant_release.deploy import TargetDeployment

_session_factory: Callable[[], AwsSessions] = AwsSessions
_shared: tuple[Callable[[], AwsSessions], AwsSessions] | None = None
_fleet_cache: dict[tuple[str, int, int], LoadedFleet] = {}
_lock = threading.Lock()
_clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def utcnow() -> datetime:
    """The time maintenance windows are judged by (a test can move it)."""
    return _clock()


def use_clock(clock: Callable[[], datetime]) -> Callable[[], datetime]:
    global _clock
    previous, _clock = _clock, clock
    return previous


def setting(name: str, fallback: float) -> float:
    """`[tenant_release] <name>` from Airflow's configuration (env AIRFLOW__TENANT_RELEASE__<NAME>)."""
    from airflow.configuration import conf

    return conf.getfloat("tenant_release", name, fallback=fallback)


def aws_sessions() -> AwsSessions:
    """Base credentials come from the standard AWS chain of the worker (and `AWS_ENDPOINT_URL` when set)."""
    return _session_factory()


def shared_sessions() -> AwsSessions:
    """One `AwsSessions` per process (the triggerer runs every tenant's deploy): clients and tenant sessions are reused.

    A new boto3 session costs about 0.1 s; a thousand deploys in one triggerer must not pay it a thousand times.
    """
    global _shared
    with _lock:
        if _shared is None or _shared[0] is not _session_factory:
            _shared = (_session_factory, _session_factory())
        return _shared[1]


def cached_fleet(config_path: str | None) -> LoadedFleet:
    """The fleet file, parsed once per version of the file in this process (a 1,000-tenant file takes 0.3 s)."""
    from tenant_release.config import config_path as default_path

    path = Path(config_path) if config_path else default_path()
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return load_fleet(path)  # says what is wrong with the path
    with _lock:
        cached = _fleet_cache.get(key)
    if cached is None:
        cached = load_fleet(path)
        with _lock:
            _fleet_cache.clear()
            _fleet_cache[key] = cached
    return cached


def freeze_began(config_path: str | None, params: Any, *, waiting_for: str) -> str | None:
    """Why a deploy that waited must not start now: a change freeze is in force and the run did not override it.

    The plan refused a run triggered inside a freeze; this is checked again where a run waited (an approval, a
    maintenance window), since a freeze may have begun meanwhile. None: go on.
    """
    from tenant_release.windows import ReleaseCalendar

    if str((params or {}).get("override_freeze") or "").strip():
        return None
    freeze = ReleaseCalendar.from_schedule(cached_fleet(config_path).fleet.schedule).freeze_at(utcnow())
    if freeze is None:
        return None
    return f"change freeze {freeze} ({freeze.reason}) began while it waited for {waiting_for}; not deployed"


def release_window_closed(config_path: str | None, *, release_tag: str, waiting_for: str) -> str | None:
    """Why a run the scheduled DAG dispatched at a release window must not deploy now: no release window is open.

    None: a window is open (or the fleet file lists none any more, so there is nothing to keep to).
    """
    from tenant_release.windows import ReleaseCalendar

    windows = ReleaseCalendar.from_schedule(cached_fleet(config_path).fleet.schedule).windows
    now = utcnow()
    if not windows or any(window.is_open(now) for window in windows):
        return None
    return (
        f"release window it was dispatched for closed while it waited for {waiting_for} (windows: "
        f"{', '.join(str(w) for w in windows)}); not deployed. A dispatched release is not queued again: trigger "
        f"tenant_release for {release_tag} directly inside a window"
    )


def use_session_factory(factory: Callable[[], AwsSessions]) -> Callable[[], AwsSessions]:
    """Swap how sessions are made (tests wrap clients with fault injectors); returns the previous factory."""
    global _session_factory
    previous, _session_factory = _session_factory, factory
    return previous


def recorded_decision(tooling: ToolingAccount, *, tenant: str, release: str, sha256: str | None) -> Lookup:
    """The approval records for this tenant (or `*`: the release gate) and release, from DynamoDB or S3.

    An approval answers only if it names `sha256` (see `tenant_release.aws.approvals.find_decision`).
    """
    sessions = aws_sessions()
    return find_decision(
        sessions.tooling_client("dynamodb", tooling.region),
        sessions.tooling_client("s3", tooling.region),
        table=tooling.approvals_table,
        bucket=tooling.artifact_bucket,
        tenant=tenant,
        release=release,
        sha256=sha256,
    )


def target_digest(target: Target, application: Application) -> str:
    """The tenant's settings and the application's, as one run must use them from plan to summary."""
    settings = {"target": target.model_dump(mode="json"), "application": application.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def planned_target(
    *, tenant: str, digest: str, config_path: str | None, check_digest: bool = True, release_tag: str | None = None
) -> tuple[LoadedFleet, Target]:
    """The tenant's settings as planned; refuses to deploy a tenant whose settings changed mid-run.

    `check_digest=False`: the tenant as the fleet file says now, for what only reads (a wave's bake reading alarms).
    """
    loaded = cached_fleet(config_path)
    target = loaded.target(tenant)
    if check_digest and target_digest(target, loaded.fleet.application) != digest:
        if release_tag is not None:
            from tenant_release.errors import HeldSincePlannedError
            from tenant_release.rollout import hold_reason
            from tenant_release.tags import parse_release_tag

            held = hold_reason(target, parse_release_tag(release_tag))
            if held is not None:  # the customer's own freeze came in mid-rollout: not deployed, and not a failure
                raise HeldSincePlannedError(
                    f"tenant {tenant!r} is {held} since this run was planned; not deployed",
                    hold=f"{held} (since this run was planned)",
                )
        raise FleetConfigError(
            f"tenant {tenant!r} or the application changed in {loaded.path} after this run was planned; "
            "re-trigger the release so that the whole run uses one version of the fleet file"
        )
    return loaded, target


def planned_deployment(
    *,
    tenant: str,
    digest: str,
    config_path: str | None,
    release_tag: str,
    run_id: str,
    artifact: dict[str, Any],
    record_history: bool,
    run_started_at: str | None = None,
    triggered_by: str | None = None,
    try_number: int | None = None,
    allow_rollback: str = "",
    check_digest: bool = True,
) -> TargetDeployment:
    """One target's deploy in one run, as the worker and the triggerer both rebuild it from names (never secrets)."""
    from tenant_release.deploy import ReleaseRun, TargetDeployment
    from tenant_release.models import Artifact
    from tenant_release.tags import parse_release_tag

    loaded, target = planned_target(
        tenant=tenant, digest=digest, config_path=config_path, check_digest=check_digest, release_tag=release_tag
    )
    run = ReleaseRun(
        release=parse_release_tag(release_tag),
        run_id=run_id,
        artifact=Artifact.model_validate(artifact),
        tooling=loaded.fleet.tooling,
        application=loaded.fleet.application,
        started_at=run_started_at,
        triggered_by=triggered_by,
        allow_rollback=allow_rollback,
    )
    return TargetDeployment(
        sessions=shared_sessions(),
        run=run,
        target=target,
        record_history=record_history,
        try_number=try_number,
        # Dev (not recorded in the history) takes any release, an older line's hotfix too: only tenants refuse a rollback.
        guard_rollback=record_history,
    )
