"""Approval records written by people or external systems: a DynamoDB item or an S3 object in the tooling account.

An approval is for one release AND one artifact: a record names the `sha256` of the build it approves (the
packaged template's hash, `Artifact.sha256`, shown in every approval request and in the build manifest), and
an approval whose `sha256` is missing or names another build does not pass; the gate keeps waiting and says
why. A rejection applies whatever hash it names (anyone may say no).

DynamoDB: table `approvals_table`, key (`tenant`, `release`) — one current decision per tenant and release, the
sha it approves inside the item (a new approval of a rebuilt artifact replaces the old one) — with attributes
`decision`, `decided_by`, `sha256`, `identity` (the authenticated approver: the caller ARN of `tenant-release
approve`), `decided_at`, `note`. S3: `s3://<artifact bucket>/approvals/<release>/<tenant>.json` holding
`{"decision": "approve", "decided_by": "ticket-4711", "sha256": "<artifact sha256>"}`. Either is read; a
rejection anywhere wins. The release-wide production gate uses the tenant name `*`.

Only the approver role of the tooling stack may write records; the orchestrator (the identity that deploys)
can read them and nothing more, so it cannot approve its own release.

`decision` may be any word a person would use (`APPROVE_WORDS`, `REJECT_WORDS`; case and spacing do not
matter; JSON true/false/1/0 too). A record that cannot be read as a decision (not JSON, not an object, an
unknown word, no `decided_by`) does not decide anything: it is reported as a problem naming the record and
what to write instead (the waiting task logs it as an ERROR, once per distinct record), and the request stays
open — it may be a rejection written wrongly, so it also holds back an approval in the other place until it is
fixed; a readable rejection still applies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify, naming
from tenant_release.models import ApprovalDecision

RELEASE_WIDE = "*"
WAVE_PREFIX = "wave:"  # a wave's approval is recorded under the tenant key "wave:<name>" (tenant names have no ':')


def wave_approver(wave: str) -> str:
    """The approvals-table key a wave's approval is recorded under (`tenant-release approve TAG --wave NAME`)."""
    return f"{WAVE_PREFIX}{wave}"


APPROVALS_PREFIX = naming.APPROVALS_PREFIX
APPROVE_WORDS = frozenset({"approve", "approved", "yes", "y", "ok", "okay", "lgtm", "accept", "accepted", "true", "1", "go"})
REJECT_WORDS = frozenset(
    {
        "reject",
        "rejected",
        "deny",
        "denied",
        "decline",
        "declined",
        "refuse",
        "refused",
        "no",
        "n",
        "nope",
        "veto",
        "vetoed",
        "block",
        "blocked",
        "stop",
        "cancel",
        "cancelled",
        "canceled",
        "not approved",
        "false",
        "0",
        "disapprove",
        "disapproved",
        "nack",
    }
)
_EXAMPLE = '{"decision": "approve" or "reject", "decided_by": "<who>", "sha256": "<artifact sha256>"}'


def approval_key(*, tenant: str, release: str) -> str:
    return f"{APPROVALS_PREFIX}/{release}/{tenant}.json"


def decision_word(value: Any) -> bool | None:
    """True for an approval, False for a rejection, None for a word that is neither."""
    if isinstance(value, bool):
        return value
    word = re.sub(r"[\s_-]+", " ", str(value if value is not None else "")).strip().lower()
    if word in APPROVE_WORDS:
        return True
    if word in REJECT_WORDS:
        return False
    return None


class MalformedApproval(ValueError):
    """A record that is there but cannot be read as a decision; the message names it and the fix."""


def put_decision(
    dynamodb: Any,
    table: str,
    *,
    tenant: str,
    release: str,
    approved: bool,
    decided_by: str,
    sha256: str | None,
    identity: str | None = None,
    note: str = "",
) -> None:
    """Write the current decision (needs the approver role: the orchestrator cannot write here)."""
    item = {
        "tenant": {"S": tenant},
        "release": {"S": release},
        "decision": {"S": "approve" if approved else "reject"},
        "decided_by": {"S": decided_by},
        "decided_at": {"S": datetime.now(UTC).isoformat(timespec="seconds")},
        "note": {"S": note},
    }
    if sha256:
        item["sha256"] = {"S": sha256}
    if identity:
        item["identity"] = {"S": identity}
    dynamodb.put_item(TableName=table, Item=item)


def _parse(record: dict[str, Any], *, source: str, where: str) -> ApprovalDecision:
    if "decision" not in record:
        raise MalformedApproval(f"{where} has no `decision`; write {_EXAMPLE}")
    approved = decision_word(record.get("decision"))
    if approved is None:
        raise MalformedApproval(
            f"{where} says decision {record.get('decision')!r}, which is neither an approval nor a rejection; write "
            f"`approve` (or yes, ok, lgtm, accepted) or `reject` (or no, denied, declined, vetoed, not approved)"
        )
    decided_by = str(record.get("decided_by") or "").strip()
    if not decided_by:
        raise MalformedApproval(f"{where} names no `decided_by`: say who decides, e.g. {_EXAMPLE}")
    sha = str(record.get("sha256") or "").strip().lower() or None
    return ApprovalDecision(
        approved=approved,
        decided_by=decided_by,
        source=source,
        note=str(record.get("note") or ""),
        sha256=sha,
        identity=str(record["identity"]) if record.get("identity") else None,
    )


def dynamodb_location(table: str, *, tenant: str, release: str) -> str:
    return f"approval record tenant={tenant!r} release={release!r} in DynamoDB table {table}"


def from_dynamodb(dynamodb: Any, table: str, *, tenant: str, release: str) -> ApprovalDecision | None:
    """The item's decision, None if there is none; `MalformedApproval` if it cannot be read as one."""
    item = dynamodb.get_item(TableName=table, Key={"tenant": {"S": tenant}, "release": {"S": release}}, ConsistentRead=True).get(
        "Item"
    )
    if not item:
        return None
    value = {k: next(iter(v.values())) for k, v in item.items()}
    return _parse(value, source="dynamodb", where=dynamodb_location(table, tenant=tenant, release=release))


def from_s3(s3: Any, bucket: str, *, tenant: str, release: str) -> ApprovalDecision | None:
    """The object's decision, None if there is none; `MalformedApproval` if it cannot be read as one."""
    key = approval_key(tenant=tenant, release=release)
    where = f"approval record s3://{bucket}/{key}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if classify.error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    try:
        record = json.loads(body)
    except ValueError:
        raise MalformedApproval(f"{where} is not JSON ({body[:60]!r}); write {_EXAMPLE}") from None
    if not isinstance(record, dict):
        raise MalformedApproval(f"{where} is a JSON {type(record).__name__}, not an object; write {_EXAMPLE}")
    return _parse(record, source="s3", where=where)


@dataclass(frozen=True)
class Lookup:
    """What the records say for one request: the decision that answers it, if any, and why others do not."""

    decision: ApprovalDecision | None = None
    problems: tuple[str, ...] = field(default=())


def find_decision(dynamodb: Any, s3: Any, *, table: str, bucket: str, tenant: str, release: str, sha256: str | None) -> Lookup:
    """Look in both places; a rejection in either wins, since either party may say no.

    An approval answers only if it names `sha256`, the artifact this run deploys. `sha256=None` is for a
    request made before anything is built (the queue DAG's gate): an approval of any build answers it, and the
    run that ships checks the hash again at its own gate.
    """
    found: list[ApprovalDecision] = []
    problems: list[str] = []
    for read in (
        lambda: from_dynamodb(dynamodb, table, tenant=tenant, release=release),
        lambda: from_s3(s3, bucket, tenant=tenant, release=release),
    ):
        try:
            decision = read()
        except MalformedApproval as exc:
            problems.append(f"{exc}; the request stays open")
            continue
        if decision is not None:
            found.append(decision)
    rejected = [d for d in found if not d.approved]
    if rejected:
        return Lookup(decision=rejected[0], problems=tuple(problems))
    if problems:  # an unreadable record may be a rejection written wrongly: it holds back an approval elsewhere
        return Lookup(problems=tuple(problems))
    for decision in found:
        if sha256 is None or decision.sha256 == sha256.lower():
            return Lookup(decision=decision, problems=tuple(problems))
        problems.append(stale_approval(decision, release=release, tenant=tenant, sha256=sha256))
    return Lookup(problems=tuple(problems))


def stale_approval(decision: ApprovalDecision, *, release: str, tenant: str, sha256: str) -> str:
    """Why an approval of another (or no named) artifact does not pass, and the command that would."""
    approved = f"approved artifact {decision.sha256[:12]}…" if decision.sha256 else "names no artifact sha256"
    command = f"tenant-release approve {release} --sha256 {sha256}" + ("" if tenant == RELEASE_WIDE else f" --tenant {tenant}")
    return (
        f"approval for {release} by {decision.decided_by} via {decision.source} {approved}, this run built "
        f"{sha256[:12]}…; approve again: {command}"
    )
