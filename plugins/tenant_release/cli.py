"""The `tenant-release` command: check the fleet and tags, bootstrap accounts, approve, queue and follow releases."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tenant_release import report
from tenant_release.aws.approvals import wave_approver
from tenant_release.config import CONFIG_ENV_VAR, LoadedFleet, config_path, load_fleet
from tenant_release.errors import TenantReleaseError
from tenant_release.models import Artifact, Release, Target, ToolingAccount, WaveSpec
from tenant_release.plan import plan_release
from tenant_release.rollout import rollout_of
from tenant_release.tags import parse_release_tag


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_fleet(args.config)
    fleet = loaded.fleet
    _out(f"{loaded.path}: OK")
    _out(f"  tooling account {fleet.tooling.account_id} ({fleet.tooling.region}), dev account {fleet.dev.account_id}")
    _out(f"  {len(fleet.tenants)} tenants; groups: {', '.join(sorted(fleet.groups()))}; default group: {fleet.default_group}")
    _out(f"  gated groups: {', '.join(fleet.gated_groups) or 'none'}")
    _out(f"  application: {_describe_application(loaded)}")
    _out(f"  template parameters: {_check_template(loaded, [loaded.target(fleet.dev.name), *loaded.tenants()])}")
    return 0


def _check_template(loaded: LoadedFleet, targets: list[Target], release: Release | None = None) -> str:
    """Every target's parameters against the template, when it can be read without AWS (else: at build)."""
    from tenant_release.build import check_template_locally

    version = release.version if release else "0.0.0"
    return check_template_locally(loaded.fleet.application, loaded.path, targets, version=version, release=release)


def _describe_application(loaded: LoadedFleet) -> str:
    from tenant_release.build import application_root

    application = loaded.fleet.application
    source = application.source
    if source is None:
        where = f"the bundled sample ({application_root(application, loaded.path)})"
    elif source.git:
        where = f"git {source.git} at ref {source.ref}"
    elif source.archive:
        where = f"the archive CI publishes at {source.archive}"
    else:
        where = f"folder {application_root(application, loaded.path)}"
    build = f", built with `{application.build}`" if application.build else ""
    return f"{where}, template {application.template}{build}, verified by {application.verify_mode.value}"


def _cmd_plan(args: argparse.Namespace) -> int:
    from tenant_release.holds import apply_holds
    from tenant_release.rollout import plan_waves

    loaded = load_fleet(args.config)
    release = parse_release_tag(args.tag)
    plan = plan_release(loaded, release, only_tenants=args.tenants)
    # The run's own decision: a named held tenant is refused here as the run would refuse it.
    holds = apply_holds(
        plan.targets, release, named=plan.tenant_names if args.tenants else (), override_hold=args.override_hold or ""
    )
    checked = _check_template(loaded, [loaded.target(loaded.fleet.dev.name), *holds.deployable], release)
    gated_tenants = [name for name in plan.gated_tenants if name not in holds.held_names]
    gated = f" (gated: needs approval, for {', '.join(gated_tenants)})" if gated_tenants else ""
    _out(f"{release.tag}: version {release.version} to group {plan.group}{gated}")
    _out(f"  source: {_source_for(loaded, release)}")
    _out(f"  template parameters: {checked}")
    held = "; ".join(f"{h.tenant} ({h.reason})" for h in holds.held)
    _out(f"  held back or pinned (recorded SKIPPED, not deployed): {held or 'none'}")
    if holds.overridden:
        _out(f"  hold overridden ({holds.override_reason}): {'; '.join(f'{h.tenant} ({h.reason})' for h in holds.overridden)}")
    waves = plan_waves(loaded.fleet, holds.deployable)
    _out("  waves: " + (", ".join(f"{w.index} {w.name} ({len(w.tenants)})" for w in waves) or "none (no tenant to deploy)"))
    wave_of = {name: f"{wave.index}-{wave.name}" for wave in waves for name in wave.tenants}
    hold_of = {h.tenant: h.reason for h in holds.held} | {h.tenant: f"overridden: {h.reason}" for h in holds.overridden}
    gated_groups = set(loaded.fleet.gated_groups)
    rows = [("TENANT", "ACCOUNT", "REGION", "STACK", "WAVE", "GATE", "APPROVAL", "WINDOW", "HOLD")]
    rows += [
        (
            t.name,
            t.account_id,
            t.region,
            t.stack_name,
            wave_of.get(t.name, "-"),
            ",".join(sorted(gated_groups & set(t.groups))) if t.name in gated_tenants else "-",
            t.approval.value,
            t.maintenance_window or "any time",
            hold_of.get(t.name, "-"),
        )
        for t in plan.targets
    ]
    _table(rows)
    return 0


def _cmd_redeploy(args: argparse.Namespace) -> int:
    """Redeploy a release to the tenants that failed or were skipped in one of its runs (see tenant_release.redeploy)."""
    from tenant_release import airflow_rest, redeploy
    from tenant_release.aws import ledger
    from tenant_release.aws.session import AwsSessions
    from tenant_release.holds import apply_holds

    release = parse_release_tag(args.tag)  # every input checked before AWS
    run_id = redeploy.check_run_id(args.run) if args.run is not None else None
    url = airflow_rest.base_url(args.airflow_url)
    if not args.print_only:
        airflow_rest.check_credentials()
    loaded = load_fleet(args.config)
    tooling = loaded.fleet.tooling
    targeted = plan_release(loaded, release)
    dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
    if run_id is None:
        picked = redeploy.run_to_redeploy(dynamodb, tooling, release.tag, targeted.tenant_names)
        run_id = picked.run_id
        _out(picked.describe())
    chosen = redeploy.selected(dynamodb, tooling, release.tag, run_id, targeted.tenant_names)
    holds = apply_holds([loaded.target(name) for name in chosen], release)
    if not holds.deployable:
        raise redeploy.RedeployError(
            f"every tenant to redeploy from run {run_id} is held back now: "
            f"{'; '.join(f'{h.tenant} ({h.reason})' for h in holds.held)}; nothing to redeploy. Lift the hold in the fleet "
            "file first"
        )
    _out(f"redeploy {release.tag} to {len(holds.deployable)} tenant(s) that failed or were skipped in run {run_id}:")
    still_held = {h.tenant: h.reason for h in holds.held}
    # A later run may have deployed some of them since: say so (their deploy then finds them unchanged).
    latest = ledger.get_many(dynamodb, tooling.history_table, tenants=list(chosen), release=release.tag)
    rows = [("TENANT", "IN THAT RUN", "REASON")]
    for name, result in chosen.items():
        reason = redeploy.describe(result).partition(": ")[2]
        if name in still_held:
            reason += f" [still {still_held[name]}: SKIPPED again]"
        since = latest.get(name)
        if since is not None and since.run_id != run_id:
            reason += f" [since then {since.status.value} in run {since.run_id}]"
        rows.append((name, result.status.value, reason))
    _table(rows)
    conf = redeploy.trigger_conf(release.tag, run_id)
    payload = json.dumps(conf)
    if args.print_only:
        _out(f"trigger payload (POST {url}/api/v2/dags/{redeploy.DAG_ID}/dagRuns):")
        _out(json.dumps({"logical_date": None, "conf": conf}))
        _out(f"or: airflow dags trigger {redeploy.DAG_ID} --conf {shlex.quote(payload)}")
        return 0
    run = airflow_rest.trigger_run(url, redeploy.DAG_ID, conf)
    run_ref = run.get("dag_run_id", "?") if isinstance(run, dict) else "?"
    _out(f"triggered {redeploy.DAG_ID} run {run_ref} with conf {payload}")
    _out(f"  follow it: {url}/dags/{redeploy.DAG_ID}/runs/{urllib.parse.quote(str(run_ref), safe='')}")
    return 0


def _source_for(loaded: LoadedFleet, release: Release) -> str:
    """What the tag builds: a git tag is resolved now, so a tag with no source is refused before any run."""
    from tenant_release.build import git_source
    from tenant_release.source import PublishedArchive

    source = loaded.fleet.application.source
    if source is not None and source.archive:
        bucket, key = PublishedArchive(uri=source.archive).location(tag=release.tag, version=release.version)
        return f"the archive s3://{bucket}/{key} (read when the build runs)"
    git = git_source(loaded.fleet.application, loaded.path)
    if git is None:
        return _describe_application(loaded)
    ref, commit = git.resolve(tag=release.tag, version=release.version)
    return f"{git.url} {ref} at commit {commit}"


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from collections import Counter

    from tenant_release.aws.bootstrap import ORCHESTRATOR_PRINCIPAL_ENV, BootstrapError, bootstrap_fleet
    from tenant_release.aws.session import AwsSessions

    loaded = load_fleet(args.config)
    failures: list[str] = []
    try:
        results = bootstrap_fleet(
            AwsSessions(),
            loaded,
            bootstrap_role_name=args.bootstrap_role,
            tooling_principal_arn=args.orchestrator_principal or os.environ.get(ORCHESTRATOR_PRINCIPAL_ENV, ""),
            concurrency=args.concurrency,
            approver_principal_arn=args.approver_principal or "",
        )
    except BootstrapError as exc:
        results, failures = exc.results, exc.failures
    for result in results:
        if args.verbose or result.action != "UNCHANGED":
            _out(f"{result.stack:<26} {result.account_id}  {result.region:<14} {result.action}")
    counts = Counter(result.action for result in results)
    _out(
        f"{len(results)} stack(s): {counts['CREATED']} created, {counts['UPDATED']} updated, "
        f"{counts['UNCHANGED']} already up to date" + (f", {len(failures)} FAILED" if failures else "")
    )
    for failure in failures:
        _out(f"  FAILED {failure}")
    return 1 if failures else 0


def _cmd_history(args: argparse.Namespace) -> int:
    from tenant_release.aws import ledger
    from tenant_release.aws.session import AwsSessions

    loaded = load_fleet(args.config)
    tooling = loaded.fleet.tooling
    if args.attempts:  # the positional argument names a tenant; --release narrows to one release
        tenant = loaded.target(args.tag).name
        release = parse_release_tag(args.release).tag if args.release else None
        dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
        return _print_attempts(dynamodb, tooling, tenant=tenant, release=release)
    tag = parse_release_tag(args.tag).tag
    dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
    names = [t.name for t in loaded.fleet.tenants]
    found = ledger.get_many(dynamodb, tooling.history_table, tenants=names, release=tag)
    if not found:
        _out(f"no history for {tag}")
        return 1
    _out(report.render_table([found[n] for n in names if n in found]))
    return 0


def _print_attempts(dynamodb: Any, tooling: ToolingAccount, *, tenant: str, release: str | None) -> int:
    """Every recorded outcome of one tenant, oldest first: the audit trail behind its history items."""
    from tenant_release.aws import ledger

    found = ledger.attempts(dynamodb, tooling.attempts_table, tenant=tenant, release=release)
    if not found:
        _out(f"no attempts recorded for tenant {tenant}" + (f" and release {release}" if release else ""))
        return 1
    rows = [("finished", "release", "status", "run", "try", "written by", "reason")]
    for r in found:
        tried = "-" if r.try_number is None else str(r.try_number)
        rows.append((r.finished_at, r.release, r.status.value, r.run_id, tried, r.written_by or "-", r.reason or ""))
    _table(rows)
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        _out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _whoami() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _who(by: str | None) -> str:
    """`--by`, checked before any AWS call (it is recorded as who decided), else the login name."""
    if by is None:
        return _whoami()
    if not by.strip() or len(by) > 128 or any(not ch.isprintable() for ch in by):
        raise TenantReleaseError(f"--by {by!r} must name who decides: 1-128 printable characters, e.g. --by alice")
    return by.strip()


def _cmd_queue_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from tenant_release.aws import release_queue
    from tenant_release.aws.session import AwsSessions
    from tenant_release.windows import ReleaseCalendar

    loaded = load_fleet(args.config)
    tooling = loaded.fleet.tooling
    dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
    statuses = None if args.all else [release_queue.QueueStatus.QUEUED]
    entries = release_queue.list_queue(dynamodb, tooling.queue_table, statuses=statuses)
    opens = ReleaseCalendar.from_schedule(loaded.fleet.schedule).next_release_start(datetime.now(UTC))
    _out(f"next release window: {opens.isoformat() if opens else 'none (no windows outside a freeze)'}")
    if not entries:
        _out("nothing queued" if not args.all else "the queue is empty")
        return 0
    rows = [("RELEASE", "STATUS", "TENANTS", "QUEUED AT", "QUEUED BY", "APPROVED BY", "RUN")]
    rows += [
        (
            e.release,
            e.status.value,
            ",".join(e.tenants) or "whole group",
            e.queued_at[:19],
            e.queued_by,
            e.approved_by or "-",
            e.run_id or "-",
        )
        for e in entries
    ]
    _table(rows)
    return 0


def _cmd_queue_cancel(args: argparse.Namespace) -> int:
    from tenant_release.aws import release_queue
    from tenant_release.aws.session import AwsSessions

    tooling = load_fleet(args.config).fleet.tooling
    tag, who = parse_release_tag(args.tag).tag, _who(args.by)
    dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
    entry = release_queue.cancel(dynamodb, tooling.queue_table, tag, cancelled_by=who)
    _out(entry.describe())
    return 0


def _published_build(s3: object, loaded: LoadedFleet, release: Release) -> Artifact | None:
    """The build of this tag the release build published (its manifest), None before it is built."""
    from tenant_release.build import build_manifest_key, read_manifest

    tooling = loaded.fleet.tooling
    return read_manifest(s3, tooling.artifact_bucket, build_manifest_key(tooling, release))


def _approved_wave(loaded: LoadedFleet, args: argparse.Namespace) -> WaveSpec | None:
    """The wave `--wave` names, checked against the fleet's rollout before any AWS call; None without --wave."""
    if args.wave is None:
        return None
    if args.tenant != "*":
        raise TenantReleaseError("give --wave or --tenant, not both: a wave's approval starts every tenant of that wave")
    waves = rollout_of(loaded.fleet).waves
    found = next((wave for wave in waves if wave.name == args.wave), None)
    if found is None:
        raise TenantReleaseError(
            f"wave {args.wave!r} is not a wave of the rollout in {loaded.path}; waves: {', '.join(w.name for w in waves)}"
        )
    return found


def _cmd_approve(args: argparse.Namespace) -> int:
    from botocore.exceptions import ClientError

    from tenant_release.aws.approvals import RELEASE_WIDE, MalformedApproval, from_dynamodb, put_decision
    from tenant_release.aws.session import AwsSessions
    from tenant_release.build import build_manifest_key

    loaded = load_fleet(args.config)
    release = parse_release_tag(args.tag)
    wave = _approved_wave(loaded, args)
    # Refuse a record no gate would ever read: an unknown group, or a tenant outside the tag's group.
    plan = plan_release(loaded, release, only_tenants=None if args.tenant == RELEASE_WIDE else [args.tenant])
    key = wave_approver(wave.name) if wave is not None else args.tenant
    who = _who(args.by)
    tooling = loaded.fleet.tooling
    given = (args.sha256 or "").strip().lower() or None
    if given is not None and not re.fullmatch(r"[0-9a-f]{64}", given):  # checked before any AWS call
        raise TenantReleaseError(f"--sha256 {args.sha256!r} is not a SHA-256 (64 hex digits); copy it from the approval request")
    sessions = AwsSessions()
    try:
        build = _published_build(sessions.tooling_client("s3", tooling.region), loaded, release)
    except ClientError:
        if given is None:
            raise
        build = None  # the sha256 given is what is approved; the manifest only adds a warning when it differs
    published = build.sha256 if build else None
    sha256 = given or published
    if sha256 is None and not args.reject:
        raise TenantReleaseError(
            f"no build of {release.tag} is published (s3://{tooling.artifact_bucket}/{build_manifest_key(tooling, release)}), "
            "so there is no artifact to approve: an approval binds to one artifact. Approve once the run has built it, "
            f"or name the artifact the approval request shows: tenant-release approve {release.tag} --sha256 <sha256>"
        )
    # Who approves as AWS authenticated them: the approvals table trusts only the approver role's callers.
    identity = sessions.tooling_client("sts", tooling.region).get_caller_identity()["Arn"]
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    try:
        previous = from_dynamodb(dynamodb, tooling.approvals_table, tenant=key, release=release.tag)
    except MalformedApproval:
        previous = None  # replaced by this one
    put_decision(
        dynamodb,
        tooling.approvals_table,
        tenant=key,
        release=release.tag,
        approved=not args.reject,
        decided_by=who,
        sha256=sha256,
        identity=identity,
        note=args.note,
    )
    what = f"the release gate of {release.tag}" if args.tenant == RELEASE_WIDE else f"{release.tag} for tenant {args.tenant}"
    if wave is not None:
        what = f"wave {wave.name} of {release.tag}"
    _out(f"recorded: {'rejected' if args.reject else 'approved'} {what} by {who}" + (f" ({args.note})" if args.note else ""))
    _out(f"  artifact sha256 {sha256 or '(any: a rejection applies to every build)'}; caller {identity}")
    if build is not None and sha256 == published:
        commit = f" at {build.source_commit}" if build.source_commit else ""
        _out(f"  the build published for {release.tag}: {build.source}{commit}")
    if args.sha256 and published and sha256 != published:
        _out(f"  note: the published build of {release.tag} is {published}; a run of that build will not accept this approval")
    if previous is not None:
        _out(f"  replaces the earlier decision: {previous.describe()}")
    if wave is not None:
        if not wave.approval:
            _out(f"  note: wave {wave.name} does not ask for approval (approval: false), so nothing reads this")
    elif args.tenant == RELEASE_WIDE and not plan.gated:
        _out(f"  note: no tenant of group {plan.group} is in a gated group, so no release gate asks for this")
    elif args.tenant != RELEASE_WIDE and plan.targets[0].approval.value != "required":
        _out(f"  note: tenant {args.tenant} does not require its own approval (approval: {plan.targets[0].approval.value})")
    return 0


_CONTROL_STATES = {"pause": "paused", "resume": "running", "abort": "aborted"}
_CONTROL_EFFECTS = {
    "paused": "tenants already deploying finish; no other tenant starts until `tenant-release resume {tag}`",
    "running": "tenants that waited start now (within a poll of their triggerer)",
    "aborted": "tenants already deploying finish; every tenant not yet started in the runs planned before now ends "
    "SKIPPED with this reason. A new run of {tag} is not stopped by it (`tenant-release pause {tag}` holds one)",
}


def _cmd_control(args: argparse.Namespace) -> int:
    """pause / resume / abort: the operator's word on a tag's rollout, recorded with the caller's AWS identity."""
    from tenant_release.aws import controls
    from tenant_release.aws.session import AwsSessions
    from tenant_release.models import RolloutState

    loaded = load_fleet(args.config)
    release = parse_release_tag(args.tag)
    plan_release(loaded, release)  # a tag no run could ship (an unknown group) is refused before AWS
    state = RolloutState(_CONTROL_STATES[args.command])
    reason = controls.check_text("reason", getattr(args, "reason", None), required=state == RolloutState.ABORTED)
    tooling = loaded.fleet.tooling
    sessions = AwsSessions()
    # Who, as AWS authenticated them: the record says who stopped a release, not who claims to have.
    caller = sessions.tooling_client("sts", tooling.region).get_caller_identity()
    # When, by AWS's clock (its answer's Date header), not this host's: workers weigh an abort against their own
    # planned times, and a laptop's clock that is off would stop the wrong runs.
    offset, note = controls.aws_clock_offset(caller, received=controls.local_clock())
    if note:
        sys.stderr.write(f"tenant-release: {note}\n")
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    at = controls.stamp(controls.local_clock() + offset)
    control = controls.set_control(dynamodb, tooling.leases_table, release.tag, state, caller["Arn"], reason, at=at)
    _out(f"rollout of {release.tag} {control.describe()}")
    _out(f"  {_CONTROL_EFFECTS[state.value].format(tag=release.tag)}")
    if control.aborted_at is not None and state != RolloutState.ABORTED:
        _out(f"  the runs planned before the abort ({control.aborted_at}) stay aborted; this steers the runs planned since")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from tenant_release.aws import controls, ledger, release_queue
    from tenant_release.aws.approvals import RELEASE_WIDE, find_decision
    from tenant_release.aws.session import AwsSessions

    loaded = load_fleet(args.config)
    release = parse_release_tag(args.tag)
    tooling = loaded.fleet.tooling
    sessions = AwsSessions()
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    selected = plan_release(loaded, release)
    gated = f" (gated by {', '.join(selected.gated_tenants)})" if selected.gated else ""
    _out(f"{release.tag}: version {release.version} to group {selected.group}{gated}")
    entry = release_queue.get(dynamodb, tooling.queue_table, release.tag)
    _out(f"queue: {entry.describe() if entry else 'not queued'}")
    s3 = sessions.tooling_client("s3", tooling.region)
    build = _published_build(s3, loaded, release)
    published = build.sha256 if build else None
    lookup = find_decision(
        dynamodb,
        s3,
        table=tooling.approvals_table,
        bucket=tooling.artifact_bucket,
        tenant=RELEASE_WIDE,
        release=release.tag,
        sha256=published,
    )
    gate = lookup.decision
    _out(f"release gate: {gate.describe() if gate else 'no decision recorded'}")
    for problem in lookup.problems:
        _out(f"  not accepted: {problem}")
    control = controls.recorded(dynamodb, tooling.leases_table, release.tag)
    _out(f"rollout: {control.describe() if control else 'running (never paused or aborted)'}")
    names = [t.name for t in loaded.fleet.tenants]
    found = ledger.get_many(dynamodb, tooling.history_table, tenants=names, release=release.tag)
    if found:
        _out(report.render_table([found[n] for n in names if n in found]))
    else:
        _out("no tenant has started this release")
    return 0 if (entry or gate or found or control) else 1


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 256")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenant-release", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help=f"fleet file (default: ${CONFIG_ENV_VAR} or {config_path()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log AWS steps")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="check the fleet file and say what is wrong").set_defaults(func=_cmd_validate)
    plan = sub.add_parser("plan", help="print which tenants a release tag targets")
    plan.add_argument("tag", help="e.g. v1.4.0 (default group) or v-1.4.0-qa")
    plan.add_argument("--tenants", nargs="*", default=None, help="narrow to these tenants")
    plan.add_argument(
        "--override-hold", default=None, metavar="REASON", help="as the run's override_hold: deploy named held tenants"
    )
    plan.set_defaults(func=_cmd_plan)
    redeploy = sub.add_parser(
        "redeploy",
        help="redeploy a release to only the tenants that failed or were skipped in one of its runs",
        description="Reads the run's outcomes from the history, prints the tenants, and triggers a tenant_release run "
        "with redeploy_of through Airflow's REST API. Credentials: $TENANT_RELEASE_AIRFLOW_TOKEN, or "
        "$TENANT_RELEASE_AIRFLOW_USER and $TENANT_RELEASE_AIRFLOW_PASSWORD.",
    )
    redeploy.add_argument("tag", help="the release tag, e.g. v1.4.0")
    redeploy.add_argument(
        "--failed", action="store_true", required=True, help="the tenants that failed, rolled back, were skipped or lost"
    )
    redeploy.add_argument(
        "--run",
        default=None,
        help="the earlier run's id (default: the newest run that left tenants failed or skipped)",
    )
    redeploy.add_argument(
        "--airflow-url", default=None, help="Airflow's address (default: $TENANT_RELEASE_AIRFLOW_URL or http://localhost:8080)"
    )
    redeploy.add_argument("--print-only", action="store_true", help="print the trigger payload and command; trigger nothing")
    redeploy.set_defaults(func=_cmd_redeploy)
    boot = sub.add_parser(
        "bootstrap",
        help="deploy the tooling stack, then each target account's bootstrap stack (idempotent)",
        description="Run with credentials of the tooling account that may assume an administrative role "
        "(--bootstrap-role) in every tenant account, e.g. from your organization's management account.",
    )
    boot.add_argument("--bootstrap-role", default="OrganizationAccountAccessRole", help="admin role in tenant accounts")
    boot.add_argument(
        "--orchestrator-principal",
        default=None,
        help="required: ARN of the one IAM role or user (Airflow's workers) that may assume the orchestrator role "
        "(default: $TENANT_RELEASE_ORCHESTRATOR_PRINCIPAL)",
    )
    boot.add_argument(
        "--approver-principal", default=None, help="ARN allowed to assume the approver role (unset: no approver role)"
    )
    boot.add_argument("--concurrency", type=_positive, default=16, help="accounts bootstrapped at once (default 16)")
    boot.add_argument("--verbose", action="store_true", help="list every stack, not only those created or updated")
    boot.set_defaults(func=_cmd_bootstrap)
    history = sub.add_parser("history", help="print the recorded outcome of a release, per tenant")
    history.add_argument("tag", help="the release tag; with --attempts, the tenant")
    history.add_argument("--attempts", action="store_true", help="list every recorded attempt of the tenant TAG names")
    history.add_argument("--release", help="with --attempts: only this release's attempts")
    history.set_defaults(func=_cmd_history)
    queue = sub.add_parser("queue", help="releases waiting for the next release window").add_subparsers(
        dest="queue_command", required=True
    )
    queue_list = queue.add_parser("list", help="print queued releases, oldest (shipped first) first")
    queue_list.add_argument("--all", action="store_true", help="include dispatched and cancelled releases")
    queue_list.set_defaults(func=_cmd_queue_list)
    queue_cancel = queue.add_parser("cancel", help="take a queued release off the queue (it will not ship at a window)")
    queue_cancel.add_argument("tag")
    queue_cancel.add_argument("--by", default=None, help="who cancels (default: your login name)")
    queue_cancel.set_defaults(func=_cmd_queue_cancel)
    approve = sub.add_parser(
        "approve",
        help="record an approval (or --reject) that a waiting or future gate reads",
        description="Without --tenant this answers the release gate (tenant '*'); with it, a tenant's own sign-off.",
    )
    approve.add_argument("tag")
    approve.add_argument("--tenant", default="*", help="the tenant whose sign-off this is (default: * = the release gate)")
    approve.add_argument("--wave", default=None, help="the rollout wave this approval starts (a wave with approval: true)")
    approve.add_argument("--reject", action="store_true", help="record a rejection instead")
    approve.add_argument("--by", default=None, help="who decides (default: your login name)")
    approve.add_argument("--note", default="", help="e.g. the change ticket")
    approve.add_argument(
        "--sha256", default=None, help="the artifact approved (default: the published build of TAG, from its manifest)"
    )
    approve.set_defaults(func=_cmd_approve)
    for command, what in (
        ("pause", "pause a release's rollout: tenants deploying finish, no other tenant starts"),
        ("resume", "resume a paused rollout"),
        ("abort", "abort a rollout: tenants not yet started end SKIPPED with the reason"),
    ):
        control = sub.add_parser(command, help=what)
        control.add_argument("tag")
        if command != "resume":
            control.add_argument(
                "--reason",
                default=None,
                help="why (shown to operators and in each skipped tenant's history)"
                + ("; required" if command == "abort" else ""),
            )
        control.set_defaults(func=_cmd_control)
    status = sub.add_parser(
        "status", help="where a release stands: queue, rollout control, release gate, and each tenant (waits included)"
    )
    status.add_argument("tag")
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from tenant_release.cli_aws import describe_aws_failure, local_emulation

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    endpoint: str | None = None
    try:
        if args.func in _LOCAL_EMULATION_COMMANDS:
            with local_emulation() as endpoint:
                return args.func(args)
        return args.func(args)
    except TenantReleaseError as exc:
        sys.stderr.write(f"tenant-release: {exc}\n")
        return 2
    except Exception as exc:
        # Not reaching AWS, or not being let in, is one line with the fix, not a traceback; anything else is a bug.
        cause: BaseException | None = exc
        while cause is not None:
            line = describe_aws_failure(cause, local_endpoint=endpoint)
            if line:
                sys.stderr.write(f"tenant-release: {line}\n")
                return 3
            cause = cause.__cause__ or cause.__context__
        raise


# The commands the README shows after `make run`: they use its emulation when the shell points nowhere else.
_LOCAL_EMULATION_COMMANDS = (
    _cmd_history,
    _cmd_status,
    _cmd_approve,
    _cmd_queue_list,
    _cmd_queue_cancel,
    _cmd_redeploy,
    _cmd_control,
)


if __name__ == "__main__":
    sys.exit(main())
