"""Per-tenant leases: at most one run deploys a tenant at a time.

DynamoDB table `tooling.leases_table`, key `tenant`; an item names the run holding the tenant (`run_id`, `release`),
since when (`acquired_at`, ISO) and until when (`expires_at`, epoch seconds). A lease is taken with a conditional
PutItem that succeeds only when the tenant is free, when the lease expired (its run died without releasing it),
or when this same run already holds it (a retry, a resumed trigger). A long deploy renews it while it polls; the
deploy's end deletes it, only if this run still holds it. Leases are not audit data (the history is): an item
lives only while a deploy does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from tenant_release.classify import error_code
from tenant_release.errors import PermanentAwsError

CONDITION_FAILED = "ConditionalCheckFailedException"


@dataclass(frozen=True, kw_only=True)
class Lease:
    """Who holds a tenant, since when, until when."""

    tenant: str
    run_id: str
    release: str
    acquired_at: str
    expires_at: float

    def describe(self) -> str:
        return f"run {self.run_id} ({self.release}) since {self.acquired_at}"


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _is_condition_failure(exc: ClientError) -> bool:
    return error_code(exc) == CONDITION_FAILED


def holder(dynamodb: Any, table: str, *, tenant: str) -> Lease | None:
    """The tenant's lease item as it stands (expired or not), or None."""
    item = dynamodb.get_item(TableName=table, Key={"tenant": {"S": tenant}}, ConsistentRead=True).get("Item")
    if not item:
        return None
    return Lease(
        tenant=item["tenant"]["S"],
        run_id=item["run_id"]["S"],
        release=item["release"]["S"],
        acquired_at=item["acquired_at"]["S"],
        expires_at=float(item["expires_at"]["N"]),
    )


def acquire(
    dynamodb: Any, table: str, *, tenant: str, run_id: str, release: str, seconds: float, now: float | None = None
) -> Lease | None:
    """Take (or renew, for this same run) the tenant's lease for `seconds`. None: taken; else the live lease of another run."""
    at = _now(now)
    for _ in range(3):  # the other lease may end between the refused put and the read: try again then
        try:
            dynamodb.put_item(
                TableName=table,
                Item={
                    "tenant": {"S": tenant},
                    "run_id": {"S": run_id},
                    "release": {"S": release},
                    "acquired_at": {"S": datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")},
                    "expires_at": {"N": str(int(at + seconds))},
                },
                ConditionExpression="attribute_not_exists(tenant) OR expires_at < :now OR run_id = :run",
                ExpressionAttributeValues={":now": {"N": str(int(at))}, ":run": {"S": run_id}},
            )
            return None
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":  # an install from before leases: say the fix
                raise PermanentAwsError(
                    f"the leases table {table!r} does not exist in the tooling account; run `tenant-release bootstrap` "
                    "to create it (or set tooling.leases_table in the fleet file to the table's name)"
                ) from None
            if not _is_condition_failure(exc):
                raise
        other = holder(dynamodb, table, tenant=tenant)
        if other is not None and other.run_id != run_id and other.expires_at >= int(at):
            return other
    raise RuntimeError(f"the lease of {tenant} in {table} kept changing while it was taken")  # pragma: no cover


def renew(dynamodb: Any, table: str, *, tenant: str, run_id: str, seconds: float, now: float | None = None) -> bool:
    """Push this run's lease out to now + `seconds`. False: this run no longer holds it (it expired and was taken)."""
    at = _now(now)
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"tenant": {"S": tenant}},
            UpdateExpression="SET expires_at = :until",
            ConditionExpression="run_id = :run",
            ExpressionAttributeValues={":until": {"N": str(int(at + seconds))}, ":run": {"S": run_id}},
        )
    except ClientError as exc:
        if _is_condition_failure(exc):
            return False
        raise
    return True


def release(dynamodb: Any, table: str, *, tenant: str, run_id: str) -> bool:
    """End this run's lease. False: nothing to end (never taken, already ended, or held by another run: left alone)."""
    try:
        dynamodb.delete_item(
            TableName=table,
            Key={"tenant": {"S": tenant}},
            ConditionExpression="run_id = :run",
            ExpressionAttributeValues={":run": {"S": run_id}},
        )
    except ClientError as exc:
        if _is_condition_failure(exc):
            return False
        raise
    return True
