"""An operator's pause, resume or abort of one release tag's rollout, kept as one item in the leases table.

The item's key (`tenant`) is `rollout#<tag>`: tenant names cannot contain `#`, so it never meets a tenant's lease.
It holds the current word (`state`, `by`, `reason`, `at`) and, after a resume, the pause it ended (`previous`), so
`tenant-release status` can say who paused and who resumed. The item has no `expires_at`: the table's TTL never
removes it, and an abort keeps stopping the runs planned before it (`RolloutControl.aborts`).

Every deploy of a tag reads this item before it starts (cached for a few seconds per triggerer process); nothing
here needs Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from tenant_release.classify import error_code
from tenant_release.errors import PermanentAwsError, TenantReleaseError
from tenant_release.models import RolloutControl, RolloutState

CONTROL_PREFIX = "rollout#"
# What an operator asks (CLI command, the control DAG's `action`) -> the state it sets.
ACTIONS = {"pause": RolloutState.PAUSED, "resume": RolloutState.RUNNING, "abort": RolloutState.ABORTED}
CONDITION_FAILED = "ConditionalCheckFailedException"
MAX_TEXT = 500  # a reason or a `by` longer than this is not a reason any more: it is a paste accident


class ControlRefused(TenantReleaseError):
    """The control asked for contradicts the rollout's state (resume after an abort, resume of a running rollout)."""


@dataclass(frozen=True, kw_only=True)
class ControlRecord:
    """The rollout's control item: the word in force, and the pause or abort a resume ended (for `status`)."""

    control: RolloutControl
    previous: RolloutControl | None = None

    def describe(self) -> str:
        text = f"{self.control.state.value}: {self.control.describe()}"
        if self.previous is not None:
            text += f" (after: {self.previous.describe()})"
        return text


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _fields(control: RolloutControl) -> dict[str, Any]:
    return {
        "state": {"S": control.state.value},
        "by": {"S": control.by},
        "reason": {"S": control.reason},
        "at": {"S": control.at},
    }


def _control(release: str, fields: dict[str, Any]) -> RolloutControl:
    return RolloutControl(
        release=release,
        state=RolloutState(fields["state"]["S"]),
        by=fields["by"]["S"],
        reason=fields.get("reason", {}).get("S", ""),
        at=fields["at"]["S"],
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
    return ControlRecord(control=_control(release, item), previous=_control(release, previous) if previous else None)


def current(dynamodb: Any, table: str, release: str) -> RolloutControl | None:
    """The word in force on the rollout of `release`, or None (it runs as planned)."""
    found = recorded(dynamodb, table, release)
    return found.control if found is not None else None


def set_control(
    dynamodb: Any, table: str, release: str, state: RolloutState, by: str, reason: str = "", *, at: str | None = None
) -> RolloutControl:
    """Pause, resume (state RUNNING) or abort the rollout of `release`; returns the control now in force.

    Refused (`ControlRefused`, nothing written): a resume after an abort (an abort is final for the runs it
    stopped), a resume of a rollout that is not paused, a pause of an aborted rollout. The write is conditional
    on the state it was decided against, so two operators acting at once cannot undo each other unseen.
    """
    by = check_text("by", by, required=False) or "unknown"
    reason = check_text("reason", reason, required=state == RolloutState.ABORTED)
    before = recorded(dynamodb, table, release)
    now = before.control if before is not None else None
    _refuse_contradiction(release, state, now)
    control = RolloutControl(release=release, state=state, by=by, reason=reason, at=at or _now())
    item: dict[str, Any] = {"tenant": {"S": control_key(release)}, "release": {"S": release}, **_fields(control)}
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
    if state == RolloutState.RUNNING:
        if now is not None and now.state == RolloutState.ABORTED:
            raise ControlRefused(
                f"the rollout of {release} was {now.describe()}; an abort is final for the runs it stopped, so it cannot "
                f"be resumed. To ship {release} to the tenants it skipped, start a new run (e.g. `tenant-release redeploy "
                f"{release} --failed`): runs planned after the abort are not stopped by it"
            )
        if now is None or now.state != RolloutState.PAUSED:
            said = f" (last: {now.describe()})" if now is not None else ""
            raise ControlRefused(f"the rollout of {release} is not paused{said}; nothing to resume")
    if state == RolloutState.PAUSED and now is not None and now.state == RolloutState.ABORTED:
        raise ControlRefused(
            f"the rollout of {release} was {now.describe()}; it is stopped for good, a pause would change nothing. "
            "A new run of the tag is not stopped by that abort: pause the tag once that run starts, if needed"
        )


def _raise_missing_table(exc: ClientError, table: str) -> None:
    if error_code(exc) == "ResourceNotFoundException":
        raise PermanentAwsError(
            f"the leases table {table!r} (which holds rollout controls) does not exist in the tooling account; run "
            "`tenant-release bootstrap` to create it (or set tooling.leases_table in the fleet file to the table's name)"
        ) from None
