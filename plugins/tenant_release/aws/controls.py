"""An operator's pause, resume or abort of one release tag's rollout, kept as one item in the leases table.

The item's key (`tenant`) is `rollout#<tag>`: tenant names cannot contain `#`, so it never meets a tenant's lease.
It holds the current word (`state`, `by`, `reason`, `at`), after a resume the pause it ended (`previous`), and the
latest abort (`aborted_at`, `aborted_by`, `aborted_reason`), kept through later pauses and resumes: the abort stops
the runs planned before it (`RolloutControl.aborts`), while a pause or resume after it steers the runs planned after
it (a redeploy). `tenant-release status` shows them all. The item has no `expires_at`: the table's TTL never
removes it.

Every deploy of a tag reads this item before it starts (cached for a few seconds per triggerer process); nothing
here needs Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from botocore.exceptions import ClientError

from tenant_release.classify import error_code
from tenant_release.errors import PermanentAwsError, TenantReleaseError
from tenant_release.models import RolloutControl, RolloutState

CONTROL_PREFIX = "rollout#"
# What an operator asks (CLI command, the control DAG's `action`) -> the state it sets.
ACTIONS = {"pause": RolloutState.PAUSED, "resume": RolloutState.RUNNING, "abort": RolloutState.ABORTED}
CONDITION_FAILED = "ConditionalCheckFailedException"
CLOCK_SKEW_NOTE = timedelta(seconds=60)  # a CLI host this far off AWS's clock is told so (see `aws_clock_offset`)
MAX_TEXT = 500  # a reason or a `by` longer than this is not a reason any more: it is a paste accident


class ControlRefused(TenantReleaseError):
    """The control asked for contradicts the rollout's state (resume after an abort, resume of a running rollout)."""


@dataclass(frozen=True, kw_only=True)
class ControlRecord:
    """The rollout's control item: the word in force (with the latest abort), and the pause a resume ended (for `status`)."""

    control: RolloutControl
    previous: RolloutControl | None = None

    def describe(self) -> str:
        control = self.control
        text = f"{control.state.value}: {_word(control)}"
        if self.previous is not None:
            text += f" (after: {_word(self.previous)})"
        if control.aborted_at is not None and control.state != RolloutState.ABORTED:
            text += f"; earlier {control.describe_abort()}, still stopping the runs planned before it"
        return text


def _word(control: RolloutControl) -> str:
    """A pause or resume alone, without the abort it may have come after (`ControlRecord.describe` names that once)."""
    if control.state == RolloutState.ABORTED:
        return control.describe()
    return control.model_copy(update={"aborted_at": None, "aborted_by": None, "aborted_reason": ""}).describe()


def control_key(release: str) -> str:
    return f"{CONTROL_PREFIX}{release}"


def check_text(what: str, text: str | None, *, required: bool) -> str:
    """Who (`by`) or why (`reason`), checked before any AWS call: it is shown to operators and recorded as is."""
    text = (text or "").strip()
    if required and not text:
        raise TenantReleaseError(
            f"the {what} is missing; an abort must say why, in a few words (CLI: --{what} 'error rate up in canary'; "
            f"the tenant_release_control DAG: its {what} field)"
        )
    if len(text) > MAX_TEXT or any(not ch.isprintable() for ch in text):
        raise TenantReleaseError(f"the {what} must be at most {MAX_TEXT} printable characters on one line; shorten it")
    return text


def local_clock() -> datetime:
    """This host's clock (one place, so a test can set it wrong)."""
    return datetime.now(UTC)


def _now() -> str:
    return local_clock().isoformat(timespec="microseconds")


def stamp(at: datetime) -> str:
    """A control's time as the item keeps it: ISO, UTC, microseconds (compared as text with runs' planned times)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def aws_clock_offset(response: dict[str, Any], *, received: datetime) -> tuple[timedelta, str | None]:
    """How far AWS's clock is ahead of this host's, from the `Date` header of an AWS answer received at `received`
    (this host's clock); and a note for the operator when the two differ by more than `CLOCK_SKEW_NOTE`.

    An abort is weighed against the workers' planned times (`RolloutControl.aborts`), so a CLI host whose clock is
    off would stop too many or too few runs: the control is stamped with AWS's time instead (AWS keeps its clocks
    right, and so should the workers). The header has second precision: an offset under a second is below what it
    can tell, so the host's clock (and its finer order) is kept then. No usable header: the host's clock (0).
    """
    header = (response.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
    try:
        aws = parsedate_to_datetime(header) if header else None
    except (TypeError, ValueError):
        aws = None
    if aws is None or aws.tzinfo is None:
        return timedelta(0), f"AWS's answer had no usable Date header ({header!r}); the control is stamped with this host's clock"
    offset = aws - received
    if abs(offset) < timedelta(seconds=1):
        return timedelta(0), None
    note = None
    if abs(offset) > CLOCK_SKEW_NOTE:
        direction = "behind" if offset > timedelta(0) else "ahead of"
        note = (
            f"this host's clock is {abs(offset).total_seconds():.0f} s {direction} AWS's; the control is stamped with "
            "AWS's time, which the workers' planned times are compared with. Fix this host's clock (NTP) to silence this"
        )
    return offset, note


def _fields(control: RolloutControl) -> dict[str, Any]:
    return {
        "state": {"S": control.state.value},
        "by": {"S": control.by},
        "reason": {"S": control.reason},
        "at": {"S": control.at},
    }


def _abort_fields(control: RolloutControl) -> dict[str, Any]:
    if control.aborted_at is None:
        return {}
    return {
        "aborted_at": {"S": control.aborted_at},
        "aborted_by": {"S": control.aborted_by or "unknown"},
        "aborted_reason": {"S": control.aborted_reason},
    }


def _control(release: str, fields: dict[str, Any], *, with_abort: bool = True) -> RolloutControl:
    abort = {}
    if with_abort and "aborted_at" in fields:
        abort = {
            "aborted_at": fields["aborted_at"]["S"],
            "aborted_by": fields.get("aborted_by", {}).get("S", "unknown"),
            "aborted_reason": fields.get("aborted_reason", {}).get("S", ""),
        }
    return RolloutControl(
        release=release,
        state=RolloutState(fields["state"]["S"]),
        by=fields["by"]["S"],
        reason=fields.get("reason", {}).get("S", ""),
        at=fields["at"]["S"],
        **abort,
    )


def recorded(dynamodb: Any, table: str, release: str) -> ControlRecord | None:
    """The rollout's control item as it stands, or None when nobody paused, resumed or aborted it."""
    try:
        item = dynamodb.get_item(TableName=table, Key={"tenant": {"S": control_key(release)}}, ConsistentRead=True).get("Item")
    except ClientError as exc:
        _raise_missing_table(exc, table)
        raise
    if not item:
        return None
    previous = item.get("previous", {}).get("M")
    return ControlRecord(
        control=_control(release, item), previous=_control(release, previous, with_abort=False) if previous else None
    )


def current(dynamodb: Any, table: str, release: str) -> RolloutControl | None:
    """The word in force on the rollout of `release`, or None (it runs as planned)."""
    found = recorded(dynamodb, table, release)
    return found.control if found is not None else None


def set_control(
    dynamodb: Any, table: str, release: str, state: RolloutState, by: str, reason: str = "", *, at: str | None = None
) -> RolloutControl:
    """Pause, resume (state RUNNING) or abort the rollout of `release`; returns the control now in force.

    An abort is kept in the item through later pauses and resumes: it goes on stopping the runs planned before
    it, while a pause (and its resume) after it holds the runs planned after it, e.g. a redeploy. A new abort
    replaces an earlier one: it stops every run the earlier one did, and those planned since.
    Refused (`ControlRefused`, nothing written): a resume of a rollout that is not paused (an abort included: it is
    final for the runs it stopped). The write is conditional on the state it was decided against, so two operators
    acting at once cannot undo each other unseen.
    """
    by = check_text("by", by, required=False) or "unknown"
    reason = check_text("reason", reason, required=state == RolloutState.ABORTED)
    before = recorded(dynamodb, table, release)
    now = before.control if before is not None else None
    _refuse_contradiction(release, state, now)
    when = at or _now()
    if state == RolloutState.ABORTED:
        abort = {"aborted_at": when, "aborted_by": by, "aborted_reason": reason}
    elif now is not None and now.aborted_at is not None:
        abort = {"aborted_at": now.aborted_at, "aborted_by": now.aborted_by, "aborted_reason": now.aborted_reason}
    else:
        abort = {}
    control = RolloutControl(release=release, state=state, by=by, reason=reason, at=when, **abort)
    item: dict[str, Any] = {
        "tenant": {"S": control_key(release)},
        "release": {"S": release},
        **_fields(control),
        **_abort_fields(control),
    }
    if state == RolloutState.RUNNING and now is not None:
        item["previous"] = {"M": _fields(now)}  # the pause this resume ends: `status` shows both
    if now is None:
        condition, values = "attribute_not_exists(tenant)", {}
    else:
        condition, values = "#at = :seen", {":seen": {"S": now.at}}
    try:
        dynamodb.put_item(
            TableName=table,
            Item=item,
            ConditionExpression=condition,
            **({"ExpressionAttributeNames": {"#at": "at"}, "ExpressionAttributeValues": values} if values else {}),
        )
    except ClientError as exc:
        _raise_missing_table(exc, table)
        if error_code(exc) == CONDITION_FAILED:
            changed = current(dynamodb, table, release)
            raise ControlRefused(
                f"the rollout of {release} changed while this was recorded ({changed.describe() if changed else 'cleared'}); "
                "nothing was written: check `tenant-release status` and try again"
            ) from None
        raise
    return control


def _refuse_contradiction(release: str, state: RolloutState, now: RolloutControl | None) -> None:
    if state != RolloutState.RUNNING:
        return  # a pause (also after an abort: it holds the runs planned since) or a new abort is always taken
    if now is not None and now.state == RolloutState.ABORTED:
        raise ControlRefused(
            f"the rollout of {release} was {now.describe_abort()}; an abort is final for the runs planned before it, "
            "so it cannot be resumed, and it does not stop the runs planned after it: there is nothing to resume. To "
            f"ship {release} to the tenants it skipped, start a new run (e.g. `tenant-release redeploy {release} "
            f"--failed`); to hold that run, `tenant-release pause {release}`"
        )
    if now is None or now.state != RolloutState.PAUSED:
        said = f" (last: {now.describe()})" if now is not None else ""
        raise ControlRefused(f"the rollout of {release} is not paused{said}; nothing to resume")


def _raise_missing_table(exc: ClientError, table: str) -> None:
    if error_code(exc) == "ResourceNotFoundException":
        raise PermanentAwsError(
            f"the leases table {table!r} (which holds rollout controls) does not exist in the tooling account; run "
            "`tenant-release bootstrap` to create it (or set tooling.leases_table in the fleet file to the table's name)"
        ) from None
