"""Deploy slots: at most N tenants of one wave of one run deploying at once, across every triggerer (a semaphore).

One item per (run, wave, scope) in the leases table, key (`tenant`) `slots#<run_id>#<wave>#<scope>`; scope `all`
for the wave's `max_parallel`, `region:<region>` for `max_parallel_per_region`. Its `holders` map names each tenant
holding a slot and until when (epoch seconds), like a lease: a holder that died (its trigger cancelled, its
triggerer killed) frees its slot when that passes. Taking a slot rewrites the map (live holders + this tenant)
with an UpdateItem conditional on the `version` it read, so two triggerers can never both take the last slot;
every change bumps `version`. `expires_at` (the latest holder's expiry) lets the table's TTL tidy a finished
run's items away. Slots, like leases, are not audit data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from tenant_release.classify import error_code

SLOT_PREFIX = "slots#"
WHOLE_WAVE = "all"
CONDITION_FAILED = "ConditionalCheckFailedException"
_TRIES = 5  # conditional writes lost to another tenant's write in a row before giving up this look (the caller polls)


@dataclass(frozen=True, kw_only=True)
class SlotScope:
    """One cap of a wave: how many of its tenants (all of them, or one region's) may deploy at once."""

    run_id: str
    wave: str
    scope: str  # WHOLE_WAVE, or region_scope(region)
    limit: int

    @property
    def key(self) -> str:
        return f"{SLOT_PREFIX}{self.run_id}#{self.wave}#{self.scope}"

    def describe(self) -> str:
        where = "" if self.scope == WHOLE_WAVE else f" in {self.scope.removeprefix('region:')}"
        setting = "max_parallel" if self.scope == WHOLE_WAVE else "max_parallel_per_region"
        return f"wave {self.wave}{where}: at most {self.limit} at once ({setting})"


def region_scope(region: str) -> str:
    return f"region:{region}"


def scopes_for(
    *, run_id: str, wave: str, region: str, max_parallel: int | None, max_parallel_per_region: int | None
) -> list[SlotScope]:
    """The caps a tenant must pass, narrowest first: every tenant takes them in this one order, so none deadlocks."""
    found = []
    if max_parallel_per_region:
        found.append(SlotScope(run_id=run_id, wave=wave, scope=region_scope(region), limit=max_parallel_per_region))
    if max_parallel:
        found.append(SlotScope(run_id=run_id, wave=wave, scope=WHOLE_WAVE, limit=max_parallel))
    return found


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def holders(dynamodb: Any, table: str, scope: SlotScope, *, now: float | None = None) -> dict[str, float]:
    """Who holds a slot of `scope` now (expired holders left out): tenant -> expiry (epoch seconds)."""
    live, _ = _read(dynamodb, table, scope, _now(now))
    return live


def _read(dynamodb: Any, table: str, scope: SlotScope, at: float) -> tuple[dict[str, float], int | None]:
    item = dynamodb.get_item(TableName=table, Key={"tenant": {"S": scope.key}}, ConsistentRead=True).get("Item")
    if not item:
        return {}, None
    held = {tenant: float(value["N"]) for tenant, value in item.get("holders", {}).get("M", {}).items()}
    return {tenant: until for tenant, until in held.items() if until >= at}, int(item["version"]["N"])


def acquire(
    dynamodb: Any, table: str, scope: SlotScope, *, tenant: str, seconds: float, now: float | None = None
) -> dict[str, float] | None:
    """Take (or keep, if held already) a slot of `scope` for `tenant`. None: taken; else the live holders (all full).

    Expired holders are dropped from the map in the same write.
    """
    at = _now(now)
    for _ in range(_TRIES):
        live, version = _read(dynamodb, table, scope, at)
        if tenant not in live and len(live) >= scope.limit:
            return live
        live[tenant] = at + seconds
        if version is None:
            condition, values = "attribute_not_exists(tenant)", {}
        else:
            condition, values = "#v = :seen", {":seen": {"N": str(version)}}
        try:
            dynamodb.update_item(
                TableName=table,
                Key={"tenant": {"S": scope.key}},
                UpdateExpression="SET holders = :holders, #v = :next, expires_at = :until, slot_limit = :limit",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={
                    ":holders": {"M": {name: {"N": str(int(until))} for name, until in live.items()}},
                    ":next": {"N": str((version or 0) + 1)},
                    ":until": {"N": str(int(max(live.values())))},
                    ":limit": {"N": str(scope.limit)},
                    **values,
                },
            )
            return None
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
    return holders(dynamodb, table, scope, now=at)  # busy: another tenant's write won each time; the caller looks again


def renew(dynamodb: Any, table: str, scope: SlotScope, *, tenant: str, seconds: float, now: float | None = None) -> bool:
    """Push `tenant`'s slot out to now + `seconds`. False: it holds none (it expired and was dropped)."""
    until = {"N": str(int(_now(now) + seconds))}
    return _change_own_slot(dynamodb, table, scope, tenant, "SET holders.#t = :until, expires_at = :until", {":until": until})


def release(dynamodb: Any, table: str, scope: SlotScope, *, tenant: str) -> bool:
    """Give `tenant`'s slot back. False: it held none. The version moves, so no write read before this resurrects it."""
    return _change_own_slot(dynamodb, table, scope, tenant, "REMOVE holders.#t", {})


def _change_own_slot(dynamodb: Any, table: str, scope: SlotScope, tenant: str, change: str, values: dict[str, Any]) -> bool:
    """Apply `change` to the tenant's own entry if it holds one, moving `version`. False: it holds none."""
    set_version = "#v = #v + :one"
    expression = f"{change}, {set_version}" if change.startswith("SET ") else f"{change} SET {set_version}"
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"tenant": {"S": scope.key}},
            UpdateExpression=expression,
            ConditionExpression="attribute_exists(holders.#t)",
            ExpressionAttributeNames={"#t": tenant, "#v": "version"},
            ExpressionAttributeValues={":one": {"N": "1"}, **values},
        )
    except ClientError as exc:
        if error_code(exc) == CONDITION_FAILED:
            return False
        raise
    return True
