"""The release summary: a plain-text table a person reads in the task log."""

from __future__ import annotations

from collections.abc import Iterable

from tenant_release.models import Outcome, TenantResult

_COLUMNS = ("tenant", "account", "region", "version", "outcome", "reason")


def _version_change(result: TenantResult) -> str:
    before = result.version_before or "-"
    after = result.version_after or (result.version_before if result.status != Outcome.SUCCEEDED else None) or "-"
    return f"{before} -> {after}"


def render_table(results: Iterable[TenantResult], *, reason_width: int = 120) -> str:
    rows = []
    for r in results:
        reason = r.reason or r.note or ""
        if len(reason) > reason_width:
            reason = reason[: reason_width - 1] + "…"
        rows.append((r.tenant, r.account_id, r.region, _version_change(r), r.status.value, reason))
    widths = [max(len(str(c)) for c in column) for column in zip(_COLUMNS, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*(c.upper() for c in _COLUMNS)), line.format(*("-" * w for w in widths))]
    out.extend(line.format(*row) for row in rows)
    return "\n".join(line_.rstrip() for line_ in out)


def count_by_status(results: Iterable[TenantResult]) -> dict[str, int]:
    counts = {outcome.value: 0 for outcome in Outcome}
    for result in results:
        counts[result.status.value] += 1
    return counts
