"""The release queue in the tooling account: releases waiting for the next release window (one item per tag).

DynamoDB table `tooling.queue_table`, key `release` (the tag). An item is QUEUED (by `tenant_release_queue`),
then DISPATCHED (the scheduled DAG triggered `tenant_release`; `run_id` names that run), CANCELLED (a person
changed their mind) or SUPERSEDED (a newer version queued for every tenant it would deploy was dispatched instead:
see `supersessions` and `superseded_by`). Items are never deleted: the queue doubles as the record of what was scheduled, by whom.
A tag is queued once: queueing it again while it waits, or after it was dispatched, is refused; after a cancel
or a supersession it may be queued again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from tenant_release import classify
from tenant_release.errors import TenantReleaseError
from tenant_release.tags import is_newer, parse_release_tag, version_key

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
# `release` and `status` are DynamoDB reserved words: every expression names attributes through placeholders.


class ReleaseQueueError(TenantReleaseError):
    """A queue operation that cannot be done as asked (duplicate, unknown or already dispatched release)."""


class QueueStatus(StrEnum):
    QUEUED = "QUEUED"
    DISPATCHED = "DISPATCHED"
    CANCELLED = "CANCELLED"
    SUPERSEDED = "SUPERSEDED"


# A tag in one of these states never shipped from the queue and may be queued again.
_REQUEUEABLE = (QueueStatus.CANCELLED, QueueStatus.SUPERSEDED)


@dataclass(frozen=True, kw_only=True)
class QueuedRelease:
    release: str
    status: QueueStatus
    tenants: tuple[str, ...]  # empty: every tenant of the tag's group, as the fleet file lists them at ship time
    queued_at: str
    queued_by: str
    approved_by: str | None = None
    dispatched_at: str | None = None
    run_id: str | None = None  # the tenant_release run that ships it
    cancelled_at: str | None = None
    cancelled_by: str | None = None
    superseded_by: str | None = None  # the newer queued release that ships instead
    superseded_at: str | None = None

    def describe(self) -> str:
        """One line for logs and error messages."""
        who = f"queued by {self.queued_by} at {self.queued_at}"
        if self.status == QueueStatus.DISPATCHED:
            return f"{self.release} was dispatched at {self.dispatched_at} to tenant_release run {self.run_id} ({who})"
        if self.status == QueueStatus.CANCELLED:
            return f"{self.release} was cancelled by {self.cancelled_by} at {self.cancelled_at} ({who})"
        if self.status == QueueStatus.SUPERSEDED:
            return (
                f"{self.release} was superseded by {self.superseded_by} at {self.superseded_at}, which ships the newer "
                f"version to every tenant it would have deployed; it never shipped ({who})"
            )
        return f"{self.release} is queued ({who})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "status": self.status.value,
            "tenants": list(self.tenants),
            "queued_at": self.queued_at,
            "queued_by": self.queued_by,
            "approved_by": self.approved_by,
            "dispatched_at": self.dispatched_at,
            "run_id": self.run_id,
            "cancelled_at": self.cancelled_at,
            "cancelled_by": self.cancelled_by,
            "superseded_by": self.superseded_by,
            "superseded_at": self.superseded_at,
        }


def _timestamp(now: datetime | None) -> str:
    # Microseconds: the queue is ordered by this text, and two releases may be queued within a second.
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


def _to_item(entry: QueuedRelease) -> dict[str, Any]:
    data = {k: v for k, v in entry.to_dict().items() if v is not None}
    return {k: _serializer.serialize(v) for k, v in data.items()}


def _from_item(item: dict[str, Any]) -> QueuedRelease:
    data = {k: _deserializer.deserialize(v) for k, v in item.items()}
    return QueuedRelease(
        release=data["release"],
        status=QueueStatus(data["status"]),
        tenants=tuple(data.get("tenants") or ()),
        queued_at=data["queued_at"],
        queued_by=data["queued_by"],
        approved_by=data.get("approved_by"),
        dispatched_at=data.get("dispatched_at"),
        run_id=data.get("run_id"),
        cancelled_at=data.get("cancelled_at"),
        cancelled_by=data.get("cancelled_by"),
        superseded_by=data.get("superseded_by"),
        superseded_at=data.get("superseded_at"),
    )


@contextmanager
def _queue_table(table: str) -> Iterator[None]:
    """Name the fix for the one error every call can hit after an upgrade: the table was never created."""
    try:
        yield
    except ClientError as exc:
        if classify.error_code(exc) == "ResourceNotFoundException":
            raise ReleaseQueueError(
                f"the release queue table {table!r} does not exist in the tooling account; run `tenant-release "
                "bootstrap` to create it (or set tooling.queue_table in the fleet file to the table's name)"
            ) from None
        raise


def _is_condition_failure(exc: ClientError) -> bool:
    return classify.error_code(exc) == "ConditionalCheckFailedException"


def get(dynamodb: Any, table: str, release_tag: str) -> QueuedRelease | None:
    with _queue_table(table):
        item = dynamodb.get_item(TableName=table, Key={"release": {"S": release_tag}}, ConsistentRead=True).get("Item")
    return _from_item(item) if item else None


def _refused_enqueue(existing: QueuedRelease | None, release_tag: str) -> str:
    if existing is None:  # cancelled and gone between our write and read: nothing to explain but a retry
        return f"{release_tag} could not be queued because it changed at the same moment; try again"
    if existing.status == QueueStatus.DISPATCHED:
        return (
            f"{existing.describe()}; a queued release ships once. To ship it again trigger tenant_release directly, "
            "or queue a new tag"
        )
    return (
        f"{existing.describe()} and ships at the next release window. To change its tenants, cancel it first "
        f"(tenant-release queue cancel {release_tag}) and queue it again"
    )


def check_can_enqueue(dynamodb: Any, table: str, release_tag: str) -> None:
    """Refuse early (before anyone is asked to approve) a tag that is queued or was dispatched already."""
    existing = get(dynamodb, table, release_tag)
    if existing is not None and existing.status not in _REQUEUEABLE:
        raise ReleaseQueueError(_refused_enqueue(existing, release_tag))


def enqueue(
    dynamodb: Any,
    table: str,
    *,
    release_tag: str,
    tenants: Iterable[str],
    queued_by: str,
    approved_by: str | None,
    now: datetime | None = None,
) -> QueuedRelease:
    """Queue a release for the next window; refuses a tag that is already queued or was dispatched."""
    entry = QueuedRelease(
        release=release_tag,
        status=QueueStatus.QUEUED,
        tenants=tuple(tenants),
        queued_at=_timestamp(now),
        queued_by=queued_by,
        approved_by=approved_by,
    )
    with _queue_table(table):
        try:
            dynamodb.put_item(
                TableName=table,
                Item=_to_item(entry),
                # A cancelled or superseded tag (it never shipped) may be queued again; anything else is refused.
                ConditionExpression="attribute_not_exists(#release) OR #status IN (:cancelled, :superseded)",
                ExpressionAttributeNames={"#release": "release", "#status": "status"},
                ExpressionAttributeValues={
                    ":cancelled": {"S": QueueStatus.CANCELLED.value},
                    ":superseded": {"S": QueueStatus.SUPERSEDED.value},
                },
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            raise ReleaseQueueError(_refused_enqueue(get(dynamodb, table, release_tag), release_tag)) from None
    return entry


def list_queue(dynamodb: Any, table: str, *, statuses: Iterable[QueueStatus] | None = None) -> list[QueuedRelease]:
    """Every item (or those in `statuses`), oldest first. The queue is short: a scan is the right tool."""
    wanted = {QueueStatus(s) for s in statuses} if statuses is not None else None
    entries: list[QueuedRelease] = []
    with _queue_table(table):
        for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            entries.extend(_from_item(item) for item in page.get("Items", []))
    if wanted is not None:
        entries = [e for e in entries if e.status in wanted]
    return sorted(entries, key=lambda e: (e.queued_at, e.release))


def next_queued(dynamodb: Any, table: str) -> QueuedRelease | None:
    """The oldest QUEUED release, or None when nothing waits."""
    waiting = list_queue(dynamodb, table, statuses=[QueueStatus.QUEUED])
    return waiting[0] if waiting else None


@dataclass(frozen=True, kw_only=True)
class Supersession:
    """A queued release that need not ship: a newer queued release deploys every tenant it would deploy.

    Only a fact about the queue as it is: the older release is marked SUPERSEDED when the newer one is dispatched
    (`superseded_by`), never before, so cancelling the newer one while it waits leaves the older one to ship.
    """

    older: QueuedRelease
    newer: QueuedRelease
    tenants: tuple[str, ...]  # the older release's tenants, all of which the newer one deploys

    def describe(self) -> str:
        return (
            f"{self.older.release} is superseded by {self.newer.release} (queued by {self.newer.queued_by} at "
            f"{self.newer.queued_at}): every tenant it would deploy ({', '.join(self.tenants)}) gets the newer version "
            f"from it, so {self.older.release} does not ship (shipping both could only roll a tenant back). To ship it "
            f"anyway, queue it again after {self.newer.release} shipped, or trigger tenant_release directly"
        )

    def describe_waiting(self) -> str:
        """Why the older release is passed over while the newer one has not been dispatched yet."""
        return (
            f"{self.older.release} waits: the newer {self.newer.release} deploys every tenant it would deploy "
            f"({', '.join(self.tenants)}) and supersedes it when {self.newer.release} is dispatched; if "
            f"{self.newer.release} is cancelled first, {self.older.release} ships at a later window"
        )


def version_of(entry: QueuedRelease) -> str | None:
    """The release version a queue entry ships, or None for a tag that is not ours."""
    try:
        return parse_release_tag(entry.release).version
    except TenantReleaseError:
        return None  # not a tag of ours (written by hand): cannot be ordered, so never supersedes nor is superseded


def supersessions(
    waiting: Sequence[QueuedRelease], tenants_of: Callable[[QueuedRelease], frozenset[str] | None]
) -> list[Supersession]:
    """The queued releases that a newer queued release makes pointless, each with the newest one that covers it.

    `tenants_of(entry)` is the set of tenants the entry would deploy as the fleet file reads now (held and pinned
    tenants left out), or None when it cannot be planned (such an entry is left to ship and report its error). A
    release is superseded when another queued release of a newer version deploys every one of its tenants; only the
    newest of those is named, and it is never superseded itself. A partial overlap supersedes nothing: both ship, in
    queue order, one per window. Pure logic on queue entries: a superseded release is not shipped while the newer one
    waits, and is marked (`mark_superseded`) only when a release that covers it is dispatched (`superseded_by`).
    """
    deploys = {entry.release: tenants_of(entry) for entry in waiting}
    found: list[Supersession] = []
    for older in waiting:
        covering = [newer for newer in waiting if _covers(newer, older, deploys)]
        if covering:
            mine = deploys[older.release] or frozenset()
            newest = max(covering, key=lambda entry: (version_key(version_of(entry)), entry.queued_at))
            found.append(Supersession(older=older, newer=newest, tenants=tuple(sorted(mine))))
    return found


def superseded_by(
    newer: QueuedRelease, waiting: Sequence[QueuedRelease], tenants_of: Callable[[QueuedRelease], frozenset[str] | None]
) -> list[Supersession]:
    """The queued releases that dispatching `newer` makes pointless: older versions whose every tenant it deploys.

    Called for the release being dispatched; the dispatch marks these SUPERSEDED once its run was triggered.
    """
    deploys = {entry.release: tenants_of(entry) for entry in (*waiting, newer)}
    return [
        Supersession(older=older, newer=newer, tenants=tuple(sorted(deploys[older.release] or ())))
        for older in waiting
        if _covers(newer, older, deploys)
    ]


def _covers(newer: QueuedRelease, older: QueuedRelease, deploys: dict[str, frozenset[str] | None]) -> bool:
    """`newer` is a newer version that deploys every tenant `older` would (both plannable, `older` deploys some)."""
    mine, theirs, older_version = deploys[older.release], deploys[newer.release], version_of(older)
    return (
        newer.release != older.release
        and bool(mine)
        and theirs is not None
        and older_version is not None
        and mine <= theirs
        and is_newer(version_of(newer), older_version)
    )


def next_to_ship(
    waiting: Sequence[QueuedRelease], tenants_of: Callable[[QueuedRelease], frozenset[str] | None]
) -> QueuedRelease | None:
    """The release to ship now: the oldest queued, unless it shares a tenant with a queued release of an older version.

    Then the older version goes first, so a tenant that both reach gets them in version order and ends on the newer
    one (the other way round, its deploy of the older version would be refused as a rollback). Call it on what is
    left after `supersessions`. Entries that cannot be planned or ordered keep their queue order.
    """
    deploys = {entry.release: tenants_of(entry) for entry in waiting}

    def waits_for_an_older_version(entry: QueuedRelease) -> bool:
        mine, version = deploys[entry.release], version_of(entry)
        return bool(mine) and any(
            other is not entry
            and bool(mine & (deploys[other.release] or frozenset()))
            and is_newer(version, version_of(other) or "")
            for other in waiting
        )

    ready = [entry for entry in waiting if not waits_for_an_older_version(entry)]
    return ready[0] if ready else (waiting[0] if waiting else None)


def _close_queued(
    dynamodb: Any, table: str, release_tag: str, *, status: QueueStatus, by: str, now: datetime | None
) -> QueuedRelease | None:
    """QUEUED → `status`, recording `<status>_by` and `<status>_at`; None when the item is not QUEUED (or absent)."""
    done = status.value.lower()  # cancelled, superseded: the attribute names of who and when
    with _queue_table(table):
        try:
            item = dynamodb.update_item(
                TableName=table,
                Key={"release": {"S": release_tag}},
                UpdateExpression=f"SET #status = :closed, {done}_by = :by, {done}_at = :now",
                ConditionExpression="#status = :queued",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":queued": {"S": QueueStatus.QUEUED.value},
                    ":closed": {"S": status.value},
                    ":by": {"S": by},
                    ":now": {"S": _timestamp(now)},
                },
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            return None
    return _from_item(item)


def mark_superseded(dynamodb: Any, table: str, release_tag: str, *, by: str, now: datetime | None = None) -> QueuedRelease:
    """QUEUED → SUPERSEDED by the newer release `by`; repeating it for the same `by` is a no-op."""
    closed = _close_queued(dynamodb, table, release_tag, status=QueueStatus.SUPERSEDED, by=by, now=now)
    if closed is not None:
        return closed
    existing = get(dynamodb, table, release_tag)
    if existing is not None and existing.status == QueueStatus.SUPERSEDED and existing.superseded_by == by:
        return existing
    state = existing.describe() if existing else f"{release_tag} is not in the release queue"
    raise ReleaseQueueError(f"{state}; it was not marked superseded by {by}")


DISPATCH_RUN_PREFIX = "queued__"  # a tenant_release run with this id prefix ships a queued release at a window


def dispatch_run_id(entry: QueuedRelease) -> str:
    """The id of the tenant_release run that ships this queue entry: the same at every attempt to dispatch it.

    A dispatch that triggered the run and stopped before marking the entry leaves it QUEUED; the next attempt (a
    retry, or the next window's run) triggers the same id, which Airflow refuses to create twice, then marks it. So a
    queued release ships once. The time it was queued tells a tag queued again after a cancel from its first queueing.
    """
    return f"{DISPATCH_RUN_PREFIX}{entry.release}__{entry.queued_at}"


def mark_dispatched(dynamodb: Any, table: str, release_tag: str, *, run_id: str, now: datetime | None = None) -> QueuedRelease:
    """QUEUED → DISPATCHED with the tenant_release run that ships it. Repeating it for the same run is a no-op."""
    with _queue_table(table):
        try:
            item = dynamodb.update_item(
                TableName=table,
                Key={"release": {"S": release_tag}},
                UpdateExpression="SET #status = :dispatched, #run_id = :run, dispatched_at = if_not_exists(dispatched_at, :now)",
                ConditionExpression="#status = :queued OR (#status = :dispatched AND #run_id = :run)",
                ExpressionAttributeNames={"#status": "status", "#run_id": "run_id"},
                ExpressionAttributeValues={
                    ":queued": {"S": QueueStatus.QUEUED.value},
                    ":dispatched": {"S": QueueStatus.DISPATCHED.value},
                    ":run": {"S": run_id},
                    ":now": {"S": _timestamp(now)},
                },
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            existing = get(dynamodb, table, release_tag)
            if existing is None:
                raise ReleaseQueueError(
                    f"{release_tag} is not in the release queue, yet tenant_release run {run_id} was triggered for it; "
                    "check that run, and queue releases only through tenant_release_queue"
                ) from None
            if existing.status in _REQUEUEABLE:
                raise ReleaseQueueError(
                    f"{existing.describe()} while it was being dispatched: tenant_release run {run_id} was already "
                    "triggered; mark that run failed in the Airflow UI if the release must not ship"
                ) from None
            raise ReleaseQueueError(
                f"{existing.describe()}, not to run {run_id}: two runs took the same release; check both"
            ) from None
    return _from_item(item)


def cancel(dynamodb: Any, table: str, release_tag: str, *, cancelled_by: str, now: datetime | None = None) -> QueuedRelease:
    """QUEUED → CANCELLED: the release will not ship at a window (it may be queued again later)."""
    closed = _close_queued(dynamodb, table, release_tag, status=QueueStatus.CANCELLED, by=cancelled_by, now=now)
    if closed is not None:
        return closed
    existing = get(dynamodb, table, release_tag)
    if existing is None:
        waiting = ", ".join(e.release for e in list_queue(dynamodb, table, statuses=[QueueStatus.QUEUED])) or "none"
        raise ReleaseQueueError(f"{release_tag} is not in the release queue; queued releases: {waiting}")
    if existing.status == QueueStatus.DISPATCHED:
        raise ReleaseQueueError(
            f"{existing.describe()}; cancelling the queue entry cannot stop it: mark that tenant_release run "
            "failed in the Airflow UI instead"
        )
    raise ReleaseQueueError(f"{existing.describe()}; nothing to cancel")
