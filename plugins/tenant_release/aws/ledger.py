"""The deployment history in DynamoDB: one item per tenant and release."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from tenant_release.errors import RecoverableAwsError
from tenant_release.models import TenantResult

RUN_INDEX = "by-run"
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_item(result: TenantResult) -> dict[str, Any]:
    data = {k: v for k, v in result.model_dump(mode="json").items() if v is not None}
    return {k: _serializer.serialize(v) for k, v in data.items()}


def _from_item(item: dict[str, Any]) -> TenantResult:
    return TenantResult.model_validate({k: _deserializer.deserialize(v) for k, v in item.items()})


def record(dynamodb: Any, table: str, result: TenantResult) -> None:
    """Write (or overwrite, on a re-run of the same release) the tenant's item."""
    dynamodb.put_item(TableName=table, Item=_to_item(result))


def record_many(dynamodb: Any, table: str, results: Iterable[TenantResult]) -> None:
    """Write many items, 25 per BatchWriteItem (its limit), re-sending what DynamoDB left unprocessed."""
    items = [{"PutRequest": {"Item": _to_item(result)}} for result in results]
    for start in range(0, len(items), 25):
        request: dict[str, Any] = {table: items[start : start + 25]}
        for attempt in range(10):
            request = dynamodb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
            if not request:
                break
            time.sleep(min(2.0, 0.05 * 2**attempt))  # throttled: back off before sending the rest again
        else:
            raise RecoverableAwsError(f"DynamoDB left {len(request.get(table, []))} history item(s) unwritten in {table}")


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
