"""The deployment history in DynamoDB: the latest result per tenant and release, and every attempt behind it.

`history_table` holds one item per (tenant, release): the latest outcome. It is only ever written with a
condition, so that an older write never replaces a newer one, whatever order the writes arrive in (the summary
of an older run, a retried or cleared summary, a lost worker's late write). "Newer" is the `write_order` key:

    <run started> | <run id> | <attempt started> | <phase>

Runs are ordered by when they were planned; within one run, by when the attempt (a deploy try, the fleet-changes
pass, the summary) started; within one attempt a final outcome comes after its IN_PROGRESS. So the summary of an
older run never replaces a newer run's outcome, an earlier try's IN_PROGRESS never replaces a final outcome, and
a cleared re-run of the same run (a new, later attempt) replaces its own run's earlier outcome.

`attempts_table` is the audit trail: every written outcome is appended there (tenant; sort key: when it was
recorded), whether or not it became the latest, with who wrote it, the run, the try and the reason.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from tenant_release.errors import PermanentAwsError
from tenant_release.models import Outcome, TenantResult

log = logging.getLogger(__name__)

RUN_INDEX = "by-run"
ORDER = "write_order"  # ledger-only attribute of a history item: see the module docstring
ATTEMPT_KEY = "recorded"  # the attempts table's sort key: "<recorded at>#<release>#<unique>"
ATTEMPT_ONLY = "attempt_only"  # an attempt item's flag: written as an attempt only, never to become the latest
_LEDGER_ONLY = (ORDER, ATTEMPT_KEY, "latest", ATTEMPT_ONLY)
# Conditional puts cannot be batched: this many run at once (I/O-bound; boto3 clients are thread-safe).
WRITE_CONCURRENCY = 16
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _instant(value: str | None) -> str:
    """An ISO time as a fixed-width UTC string, so that string order is time order ("" before any time)."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_order(result: TenantResult) -> str:
    """The result's place in time among every write of its (tenant, release) item; larger is newer."""
    phase = "0" if result.status == Outcome.IN_PROGRESS else "1"
    attempt = _instant(result.attempt_started_at or result.started_at)
    return f"{_instant(result.run_started_at)}|{result.run_id}|{attempt}|{phase}"


def _to_item(result: TenantResult) -> dict[str, Any]:
    data = {k: v for k, v in result.model_dump(mode="json").items() if v is not None}
    return {k: _serializer.serialize(v) for k, v in data.items()}


def _from_item(item: dict[str, Any]) -> TenantResult:
    return TenantResult.model_validate({k: _deserializer.deserialize(v) for k, v in item.items() if k not in _LEDGER_ONLY})


def attempt_key(result: TenantResult) -> str:
    """A new attempt item's sort key. Made once per write, so a retried write does not add a second attempt."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{now}#{result.release}#{uuid.uuid4().hex[:12]}"


class _KeptAsAttempt(Exception):
    """The write is an attempt only (see `record`)."""


def record(
    dynamodb: Any,
    table: str,
    result: TenantResult,
    *,
    attempts_table: str | None = None,
    expected: TenantResult | None = None,
    key: str | None = None,
    attempt_only: bool = False,
) -> bool:
    """Make `result` the tenant's latest item unless a newer one is there; append it to the attempts either way.

    `attempt_only`: an outcome that says nothing about the tenant's state (a run that touched nothing because
    another run was deploying it) is kept as an attempt and never becomes the latest result.

    `expected`: the item this write replaces, as the caller read it (a read-modify-write such as the summary's
    annotations); then the write happens only if the item is still exactly that one. Returns whether the result
    became the latest; a refusal is not an error (a newer outcome is already recorded).
    """
    item = {**_to_item(result), ORDER: {"S": write_order(result)}}
    if expected is None:
        condition = f"attribute_not_exists({ORDER}) OR {ORDER} <= :order"
        values = {":order": item[ORDER]}
    else:
        condition = f"(attribute_not_exists({ORDER}) OR {ORDER} = :order) AND run_id = :run AND finished_at = :at AND #s = :s"
        values = {
            ":order": {"S": write_order(expected)},
            ":run": {"S": expected.run_id},
            ":at": {"S": expected.finished_at},
            ":s": {"S": expected.status.value},
        }
    try:
        if attempt_only:
            raise _KeptAsAttempt
        dynamodb.put_item(
            TableName=table,
            Item=item,
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
            **({"ExpressionAttributeNames": {"#s": "status"}} if expected is not None else {}),
        )
        latest = True
    except _KeptAsAttempt:
        latest = False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        latest = False
        log.info(
            "history of %s %s: kept the newer outcome already recorded; this %s of run %s (written by %s) is kept "
            "as an attempt only",
            result.tenant,
            result.release,
            result.status.value,
            result.run_id,
            result.written_by or "?",
        )
    if attempts_table:
        attempt = {**_to_item(result), ATTEMPT_KEY: {"S": key or attempt_key(result)}, "latest": {"BOOL": latest}}
        if attempt_only:  # so that whoever writes this outcome again (the summary) keeps it an attempt only
            attempt[ATTEMPT_ONLY] = {"BOOL": True}
        try:
            dynamodb.put_item(TableName=attempts_table, Item=attempt)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            raise PermanentAwsError(
                f"the attempts table {attempts_table} does not exist, so the history's audit trail cannot be kept "
                "(the latest result was written). Run `tenant-release bootstrap` to update the tooling stack, which "
                "declares it (include/templates/tooling.yaml)"
            ) from None
    return latest


def record_many(
    dynamodb: Any,
    table: str,
    results: Iterable[TenantResult],
    *,
    attempts_table: str | None = None,
    expected: Mapping[str, TenantResult] | None = None,
    retry: Any = None,
    concurrency: int = WRITE_CONCURRENCY,
    attempt_only: Collection[str] = (),
) -> list[str]:
    """`record` for many tenants, `concurrency` at a time (a conditional put cannot be batched).

    `expected`: per tenant, the item its write replaces (see `record`). `retry`: a `RetryPolicy` each write goes
    through on its own. `attempt_only`: the tenants whose result is written as an attempt only (see `record`).
    Returns the other tenants whose write was refused because a newer outcome is recorded.
    """
    pending = list(results)
    if not pending:
        return []
    known = expected or {}

    def write(result: TenantResult) -> bool:
        kwargs = {
            "attempts_table": attempts_table,
            "expected": known.get(result.tenant),
            "key": attempt_key(result),
            "attempt_only": result.tenant in attempt_only,
        }
        if retry is None:
            return record(dynamodb, table, result, **kwargs)
        return retry.call("record history", record, dynamodb, table, result, log=log.warning, **kwargs)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(pending))), thread_name_prefix="history") as pool:
        written = list(pool.map(write, pending))
    return [r.tenant for r, latest in zip(pending, written, strict=True) if not latest and r.tenant not in attempt_only]


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One attempt item: the outcome, whether it became the latest when written, and whether it never may."""

    result: TenantResult
    latest: bool
    attempt_only: bool


def attempts(dynamodb: Any, attempts_table: str, *, tenant: str, release: str | None = None) -> list[TenantResult]:
    """Every recorded attempt of a tenant (of one release, if given), oldest first."""
    return [found.result for found in attempt_items(dynamodb, attempts_table, tenant=tenant, release=release)]


def attempt_items(dynamodb: Any, attempts_table: str, *, tenant: str, release: str | None = None) -> list[Attempt]:
    """`attempts`, with each item's ledger flags."""
    query: dict[str, Any] = {
        "TableName": attempts_table,
        "KeyConditionExpression": "tenant = :tenant",
        "ExpressionAttributeValues": {":tenant": {"S": tenant}},
        "ConsistentRead": True,
    }
    if release is not None:
        query["FilterExpression"] = "#release = :release"
        query["ExpressionAttributeNames"] = {"#release": "release"}
        query["ExpressionAttributeValues"][":release"] = {"S": release}
    found: list[Attempt] = []
    for page in dynamodb.get_paginator("query").paginate(**query):
        found.extend(
            Attempt(
                result=_from_item(item),
                latest=bool(item.get("latest", {}).get("BOOL")),
                attempt_only=bool(item.get(ATTEMPT_ONLY, {}).get("BOOL")),
            )
            for item in page.get("Items", [])
        )
    return found


def run_outcome(dynamodb: Any, attempts_table: str, *, tenant: str, release: str, run_id: str) -> Attempt | None:
    """The newest outcome one run wrote for a tenant, from the attempts (the latest item may be another run's)."""
    return newest_of_run(attempt_items(dynamodb, attempts_table, tenant=tenant, release=release), run_id)


def newest_of_run(items: Iterable[Attempt], run_id: str) -> Attempt | None:
    """Of one tenant's attempt items (oldest first), the newest outcome `run_id` wrote; None: it wrote none."""
    mine = [a for a in items if a.result.run_id == run_id]
    return sorted(mine, key=lambda a: write_order(a.result))[-1] if mine else None  # stable: of equal order, the last


def get(dynamodb: Any, table: str, *, tenant: str, release: str) -> TenantResult | None:
    item = dynamodb.get_item(TableName=table, Key={"tenant": {"S": tenant}, "release": {"S": release}}, ConsistentRead=True).get(
        "Item"
    )
    return _from_item(item) if item else None


def get_many(dynamodb: Any, table: str, *, tenants: Iterable[str], release: str) -> dict[str, TenantResult]:
    """Batch read in chunks of 100 (the BatchGetItem limit), following unprocessed keys."""
    names = list(dict.fromkeys(tenants))
    found: dict[str, TenantResult] = {}
    for start in range(0, len(names), 100):
        keys = [{"tenant": {"S": n}, "release": {"S": release}} for n in names[start : start + 100]]
        request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
        while request:
            response = dynamodb.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(table, []):
                result = _from_item(item)
                found[result.tenant] = result
            request = response.get("UnprocessedKeys") or {}
    return found


def for_run(dynamodb: Any, table: str, run_id: str) -> list[TenantResult]:
    results: list[TenantResult] = []
    paginator = dynamodb.get_paginator("query")
    for page in paginator.paginate(
        TableName=table,
        IndexName=RUN_INDEX,
        KeyConditionExpression="run_id = :run",
        ExpressionAttributeValues={":run": {"S": run_id}},
    ):
        results.extend(_from_item(item) for item in page.get("Items", []))
    return results
