"""Approval records written by people or external systems: a DynamoDB item or an S3 object in the tooling account.

DynamoDB: table `approvals_table`, key (`tenant`, `release`), attributes `decision` (`approve`/`reject`),
`decided_by`, `decided_at`, `note`. S3: `s3://<artifact bucket>/approvals/<release>/<tenant>.json` holding
`{"decision": "approve", "decided_by": "ticket-4711"}`. Either is accepted; a rejection anywhere wins.
The release-wide production gate uses the tenant name `*`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify
from tenant_release.models import ApprovalDecision

RELEASE_WIDE = "*"
APPROVALS_PREFIX = "approvals"
_APPROVE = {"approve", "approved", "yes"}
_REJECT = {"reject", "rejected", "no"}


def approval_key(*, tenant: str, release: str) -> str:
    return f"{APPROVALS_PREFIX}/{release}/{tenant}.json"


def put_decision(
    dynamodb: Any, table: str, *, tenant: str, release: str, approved: bool, decided_by: str, note: str = ""
) -> None:
    dynamodb.put_item(
        TableName=table,
        Item={
            "tenant": {"S": tenant},
            "release": {"S": release},
            "decision": {"S": "approve" if approved else "reject"},
            "decided_by": {"S": decided_by},
            "decided_at": {"S": datetime.now(UTC).isoformat(timespec="seconds")},
            "note": {"S": note},
        },
    )


def _parse(decision: Any, decided_by: Any, source: str, note: Any = "") -> ApprovalDecision | None:
    word = str(decision or "").strip().lower()
    if word in _APPROVE or word in _REJECT:
        return ApprovalDecision(
            approved=word in _APPROVE, decided_by=str(decided_by or "unknown"), source=source, note=str(note or "")
        )
    return None


def from_dynamodb(dynamodb: Any, table: str, *, tenant: str, release: str) -> ApprovalDecision | None:
    item = dynamodb.get_item(TableName=table, Key={"tenant": {"S": tenant}, "release": {"S": release}}, ConsistentRead=True).get(
        "Item"
    )
    if not item:
        return None
    value = {k: next(iter(v.values())) for k, v in item.items()}
    return _parse(value.get("decision"), value.get("decided_by"), "dynamodb", value.get("note"))


def from_s3(s3: Any, bucket: str, *, tenant: str, release: str) -> ApprovalDecision | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=approval_key(tenant=tenant, release=release))["Body"].read()
    except ClientError as exc:
        if classify.error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    try:
        record = json.loads(body)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    return _parse(record.get("decision"), record.get("decided_by"), "s3", record.get("note"))


def find_decision(dynamodb: Any, s3: Any, *, table: str, bucket: str, tenant: str, release: str) -> ApprovalDecision | None:
    """Look in both places; a rejection in either wins, since either party may say no."""
    found = [
        d
        for d in (
            from_dynamodb(dynamodb, table, tenant=tenant, release=release),
            from_s3(s3, bucket, tenant=tenant, release=release),
        )
        if d is not None
    ]
    rejected = [d for d in found if not d.approved]
    return rejected[0] if rejected else (found[0] if found else None)
