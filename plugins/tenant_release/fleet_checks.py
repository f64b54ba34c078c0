"""Checks across the whole fleet file that single fields cannot make: every problem found, each with its fix.

Run by `config.parse_fleet` after the fields validated, so `tenant-release validate`, `plan` and a run's first task
refuse a fleet file that would fail (or deploy to the wrong place) later, before any AWS call.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from datetime import date

from tenant_release import naming
from tenant_release.errors import FleetConfigError
from tenant_release.models import Fleet, Target, TargetSpec

# CloudFormation: a letter first, then letters, digits and hyphens, at most 128.
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
# Lambda: the plain function name (no ARN, no qualifier) is 1-64 letters, digits, hyphens and underscores.
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# S3 general purpose buckets: 3-63 lowercase letters, digits, dots and hyphens, starting and ending alphanumeric.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
_KMS_ALIAS = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")

# A freeze longer than this is almost always start and end written the wrong way round.
MAX_FREEZE_DAYS = 62


def fleet_problems(fleet: Fleet) -> list[str]:
    """Every cross-field problem of a fleet that passed field validation; empty when there is none."""
    from tenant_release.config import resolve_target  # config imports this module

    problems: list[str] = []
    problems += _account_problems(fleet)
    problems += _group_problems(fleet)
    problems += _schedule_problems(fleet)
    problems += _tooling_problems(fleet)
    buckets: dict[str, dict[str, str]] = defaultdict(dict)  # bucket -> target name -> account
    prefix_clashes: dict[str, list[tuple[str, str]]] = {}  # prefix -> (target, problem)
    for spec in (fleet.dev, *fleet.tenants):
        who = _who(fleet, spec)
        try:
            target = resolve_target(fleet, spec)
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(
                f"{who}: a name pattern uses an unknown placeholder {exc}; "
                "patterns may use {name}, {account_id} and {region}"
            )
            continue
        problems += [f"{who}: {problem}" for problem in target_name_problems(target)]
        if target.rollback_on_alarm and not target.alarms:  # else every deploy of it fails, naming no alarm
            problems.append(
                f"{who}: rollback_on_alarm is set but no alarms are named. Fix: list its health alarms "
                '(alarms: ["tenant-app-{name}-*"]) or set rollback_on_alarm: false'
            )
        clash = app_prefix_problem(fleet, target)
        if clash:  # one line per prefix: the fleet defaults usually give every target the same one
            prefix_clashes.setdefault(clash[0], []).append((who, clash[1]))
        if spec.maintenance_window:
            from tenant_release.windows import MaintenanceWindow  # windows imports models only

            try:
                MaintenanceWindow.parse(spec.maintenance_window)
            except ValueError as exc:
                problems.append(f"{who} field maintenance_window: {exc}")
        buckets[target.artifact_bucket][spec.name] = target.account_id
    problems += [f"{', '.join(who for who, _ in found)}: {found[0][1]}" for found in prefix_clashes.values()]
    problems += _rollout_problems(fleet)
    for bucket, users in buckets.items():
        names = list(users)
        if len(set(users.values())) > 1:  # a shared account is reported above
            problems.append(
                f"targets {', '.join(names)} all use the artifact bucket {bucket!r}, but an S3 bucket name is global and "
                "each target account needs its own bucket. Fix: put {account_id} (and {region}) in the artifact_bucket pattern"
            )
    return problems


def _who(fleet: Fleet, spec: TargetSpec) -> str:
    return f"dev target {spec.name!r}" if spec is fleet.dev else f"tenant {spec.name!r}"


def target_name_problems(target: Target) -> list[str]:
    """What CloudFormation, Lambda, S3, IAM or KMS would refuse in one target's rendered names."""
    problems: list[str] = []
    if not _STACK_NAME.match(target.stack_name):
        problems.append(
            f"stack name {target.stack_name!r} would be refused by CloudFormation: it must start with a letter and hold "
            "only letters, digits and hyphens, at most 128. Fix: change stack_name (or the defaults pattern)"
        )
    if not _FUNCTION_NAME.match(target.function_name):
        problems.append(
            f"function name {target.function_name!r} would be refused by Lambda: 1-64 letters, digits, '-' or '_'. "
            "Fix: change function_name (or the defaults pattern) to a shorter or plainer one"
        )
    bucket = bucket_name_problem(target.artifact_bucket)
    if bucket:
        problems.append(f"artifact bucket {bucket}. Fix: change artifact_bucket (or the defaults pattern)")
    for kind, arn in (("deploy", target.deploy_role_arn), ("execution", target.execution_role_arn)):
        role = arn.rsplit("/", 1)[-1]
        if not _ROLE_NAME.match(role):
            problems.append(
                f"{kind} role name {role!r} is not a valid IAM role name (1-64 letters, digits and +=,.@_-). "
                f"Fix: change {kind}_role_name"
            )
    if not _KMS_ALIAS.match(target.kms_key_alias) or target.kms_key_alias.startswith("alias/aws/"):
        problems.append(
            f"kms_key_alias {target.kms_key_alias!r} is not a KMS alias of your own: write alias/<name> with letters, "
            "digits, '/', '_' or '-' (alias/aws/ is reserved for AWS)"
        )
    return problems


def bucket_name_problem(name: str) -> str | None:
    """None when S3 accepts `name` as a general purpose bucket name, else what is wrong with it."""
    if not _BUCKET_NAME.match(name):
        return (
            f"{name!r} is not a valid S3 bucket name: 3-63 lowercase letters, digits, '.' or '-', starting and "
            "ending with a letter or digit"
        )
    if ".." in name or ".-" in name or "-." in name:
        return f"{name!r} is not a valid S3 bucket name: no '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return f"{name!r} is not a valid S3 bucket name: it looks like an IP address"
    for prefix in _BUCKET_PREFIXES:
        if name.startswith(prefix):
            return f"{name!r} is not a valid S3 bucket name: the prefix {prefix!r} is reserved"
    for suffix in _BUCKET_SUFFIXES:
        if name.endswith(suffix):
            return f"{name!r} is not a valid S3 bucket name: the suffix {suffix!r} is reserved"
    return None


def _account_problems(fleet: Fleet) -> list[str]:
    """Tenant accounts are single-tenant: one tenant per account, and none in the tooling account.

    Dev may share the tooling account (the local emulation does), but not a tenant's account: its deploys would
    land next to that customer's stack.
    """
    problems: list[str] = []
    owners: dict[str, list[str]] = defaultdict(list)
    for tenant in fleet.tenants:
        owners[tenant.account_id].append(tenant.name)
    for account, names in owners.items():
        if len(names) > 1:
            problems.append(
                f"tenants {', '.join(names)} share the account {account}; each tenant has an account of its own "
                "(their stacks, roles and bucket would collide). Fix: give each its own account_id, or list the "
                "customer once"
            )
        if account == fleet.tooling.account_id:
            problems.append(
                f"tenant(s) {', '.join(names)} use the tooling account {account}, which builds and approves releases; "
                "a tenant must not be able to reach it. Fix: give the tenant its own account_id"
            )
        if account == fleet.dev.account_id:
            problems.append(
                f"tenant(s) {', '.join(names)} use the dev account {account}: every release would reach that customer "
                "before its smoke test. Fix: give dev or the tenant another account_id"
            )
    return problems


def _group_problems(fleet: Fleet) -> list[str]:
    groups = fleet.groups()
    unknown = [group for group in fleet.gated_groups if group not in groups]
    if not unknown:
        return []
    return [
        f"gated_groups names {', '.join(repr(g) for g in unknown)}, which no tenant belongs to, so it gates nothing "
        f"(a misspelt group silently removes the gate). Groups in use: {', '.join(sorted(groups)) or 'none'}. "
        "Fix: correct the name, or add the group to the tenants it should gate"
    ]


def freeze_days(start: tuple[int, int], end: tuple[int, int]) -> int:
    """How many days a freeze start..end (inclusive, wrapping the year end) covers, counted in a common year."""
    first = date(2027, *start) if start != (2, 29) else date(2027, 2, 28)
    last = date(2027, *end) if end != (2, 29) else date(2027, 3, 1)
    if last < first:
        last = last.replace(year=2028)
    return (last - first).days + 1


def _schedule_problems(fleet: Fleet) -> list[str]:
    from tenant_release.windows import FreezePeriod, ReleaseCalendar, WeeklyWindow

    problems: list[str] = []
    for index, text in enumerate(fleet.schedule.windows):
        try:
            WeeklyWindow.parse(text)
        except ValueError as exc:
            problems.append(f"schedule.windows[{index}]: {exc}")
    for index, freeze in enumerate(fleet.schedule.freezes):
        try:
            period = FreezePeriod(start=freeze.start, end=freeze.end, reason=freeze.reason)
        except ValueError as exc:
            problems.append(f"schedule.freezes[{index}]: {exc}")
            continue
        days = freeze_days(period._start, period._end)  # the parsed month and day
        if days > MAX_FREEZE_DAYS:
            swap = f"start: {freeze.end!r}, end: {freeze.start!r}"
            problems.append(
                f"schedule.freezes[{index}] {freeze.start}..{freeze.end} ({freeze.reason}) spans {days} days, which "
                f"stops releases for most of the year (at most {MAX_FREEZE_DAYS} days). If a freeze across the year end "
                f"was meant, swap start and end ({swap}); otherwise shorten it"
            )
    if problems or not fleet.schedule.windows:
        return problems
    from datetime import UTC, datetime

    calendar = ReleaseCalendar.from_schedule(fleet.schedule)
    if calendar.next_release_start(datetime.now(UTC)) is None:
        problems.append(
            "schedule: every release window opens inside a freeze for the next two years, so a queued release would "
            "never ship. Fix: shorten the freezes or add windows outside them"
        )
    return problems


_RELEASE_PREFIX = re.compile(r"^[a-zA-Z0-9_.-]+$")  # as the tooling template's ReleasePrefix allows


def _tooling_problems(fleet: Fleet) -> list[str]:
    tooling = fleet.tooling
    problems: list[str] = []
    bucket = bucket_name_problem(tooling.artifact_bucket)
    if bucket:
        problems.append(f"tooling.artifact_bucket {bucket}")
    tables = {field: name for field, name in tooling if field.endswith("_table")}
    for field, name in tables.items():
        if not _TABLE_NAME.match(name):
            problems.append(f"tooling.{field} {name!r} is not a DynamoDB table name: 3-255 letters, digits, '_', '-' or '.'")
    shared = [name for name in set(tables.values()) if list(tables.values()).count(name) > 1]
    for name in sorted(shared):
        fields = ", ".join(f"tooling.{field}" for field, value in tables.items() if value == name)
        problems.append(f"{fields} all name the table {name!r}; each needs a table of its own")
    if not _RELEASE_PREFIX.match(tooling.release_prefix):
        problems.append(
            f"tooling.release_prefix {tooling.release_prefix!r} must be one key segment of letters, digits, '_', '-' or '.'"
            " (no '/'), e.g. releases"
        )
    elif tooling.release_prefix == naming.APPROVALS_PREFIX:
        # The orchestrator may write under the release prefix: there it could approve its own release.
        problems.append(
            f"tooling.release_prefix may not be {naming.APPROVALS_PREFIX!r}: approval records live there and the orchestrator, "
            "which writes releases, must never write one. Use e.g. releases"
        )
    if not _ROLE_NAME.match(tooling.orchestrator_role_name):
        problems.append(f"tooling.orchestrator_role_name {tooling.orchestrator_role_name!r} is not a valid IAM role name")
    if not _KMS_ALIAS.match(tooling.kms_key_alias) or tooling.kms_key_alias.startswith("alias/aws/"):
        problems.append(f"tooling.kms_key_alias {tooling.kms_key_alias!r} must be alias/<name> of your own (not alias/aws/)")
    return problems


def app_prefix_problem(fleet: Fleet, target: Target) -> tuple[str, str] | None:
    """(prefix, problem) when the target's application name prefix would reach tenant-release's own resources.

    The tenant's CloudFormation execution role may manage whatever is named with that prefix (bootstrap parameter
    AppNamePrefix): roles, stacks, buckets... A prefix that also starts the deploy role's or the bootstrap stack's
    name would let an application template rewrite the roles that deploy it. (The application's permissions
    boundary policy is named with the prefix on purpose; the execution role has no rights on policies.)
    """
    try:
        prefix = naming.app_name_prefix(target.stack_name, target.function_name)
    except FleetConfigError as exc:
        return f"no prefix: {exc}", str(exc)
    tooling = fleet.tooling
    own_names = {
        "deploy role": target.deploy_role_arn.rsplit("/", 1)[1],
        "CloudFormation execution role": target.execution_role_arn.rsplit("/", 1)[1],
        "orchestrator role": tooling.orchestrator_role_name,
        "bootstrap stack": naming.TENANT_STACK,
        "tooling stack": naming.TOOLING_STACK,
        "artifact bucket": target.artifact_bucket,
        "tooling artifact bucket": tooling.artifact_bucket,
        "KMS key alias": target.kms_key_alias.removeprefix("alias/"),
        "tooling KMS key alias": tooling.kms_key_alias.removeprefix("alias/"),
        **{f"{field.removesuffix('_table')} table": value for field, value in tooling if field.endswith("_table")},
    }
    clashes = naming.app_prefix_clashes(prefix, own_names)
    if not clashes:
        return None
    return prefix, (
        f"the application name prefix {prefix!r} (shared by stack_name and function_name, e.g. {target.stack_name!r} "
        f"and {target.function_name!r}) also starts tenant-release's own {', '.join(clashes)}; the CloudFormation "
        f"execution role may manage everything named {prefix}*, so it could change them. Give the application a prefix "
        "of its own, e.g. stack_name and function_name 'tenant-app-{name}' in the fleet defaults"
    )


def _rollout_problems(fleet: Fleet) -> list[str]:
    """Waves that name unknown groups or tenants, tenants in no wave, a dev target that names a wave."""
    from tenant_release.config import resolve_target
    from tenant_release.rollout import unplaced_tenants

    problems: list[str] = []
    if fleet.dev.wave or fleet.dev.hold or fleet.dev.pin:
        problems.append("dev: wave, hold and pin apply to tenants only; every release goes to dev first. Remove them from dev")
    if fleet.rollout is None:
        named = sorted({spec.wave for spec in fleet.tenants if spec.wave})
        if named:
            problems.append(
                f"tenants name wave(s) {', '.join(named)} but the fleet file declares no rollout; add rollout.waves "
                '(see README "Progressive rollout") or remove the tenants\' wave'
            )
        return problems
    groups = fleet.groups()
    tenants = {spec.name for spec in fleet.tenants}
    waves = fleet.rollout.waves
    for index, wave in enumerate(waves[:-1]):
        if wave.selects_rest:
            later = ", ".join(w.name for w in waves[index + 1 :])
            problems.append(
                f"rollout wave {wave.name} names no groups and no tenants, so it takes every tenant left and the waves "
                f"after it ({later}) get only tenants that name them with `wave:`. Give it groups or tenants (check the "
                "spelling: groups, not group), or make it the last wave"
            )
            break
    for wave in fleet.rollout.waves:
        unknown_groups = [group for group in wave.groups if group not in groups]
        if unknown_groups:
            problems.append(
                f"rollout wave {wave.name}: group(s) {', '.join(unknown_groups)} are no tenant's group; groups in use: "
                f"{', '.join(sorted(groups))}"
            )
        unknown_tenants = [name for name in wave.tenants if name not in tenants]
        if unknown_tenants:
            problems.append(f"rollout wave {wave.name}: tenant(s) {', '.join(unknown_tenants)} are not in the fleet file")
    targets = []
    for spec in fleet.tenants:
        try:
            targets.append(resolve_target(fleet, spec))
        except (KeyError, IndexError, ValueError):
            continue  # reported above, as a name pattern problem
    problems += unplaced_tenants(fleet, targets)
    return problems
