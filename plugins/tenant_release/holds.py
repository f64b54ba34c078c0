"""Which selected tenants a run deploys and which it holds back (`hold`, `pin`), and when a person overrides a hold.

Plain Python on the fleet's models: the release DAG's plan and `tenant-release plan` decide with `apply_holds`, so
what `plan` prints is what a run does. A held tenant stays a planned tenant (the summary reports it SKIPPED with
its reason) but gets no stack read, no wave place and no task instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tenant_release.errors import TargetSelectionError
from tenant_release.models import HeldTenant, Release, RunPlan, Target
from tenant_release.rollout import held_tenants, hold_reason
from tenant_release.tags import parse_release_tag


class HeldTenantError(TargetSelectionError):
    """A `tenants` list names a held or pinned tenant and no override reason was given."""


@dataclass(frozen=True, kw_only=True)
class HoldDecision:
    deployable: tuple[Target, ...]  # what the run deploys, in the selection's order
    held: tuple[HeldTenant, ...]  # recorded SKIPPED with the reason, never deployed
    overridden: tuple[HeldTenant, ...] = ()  # named in `tenants` and deployed anyway, with the hold they override
    override_reason: str = ""  # why, when anything was overridden (recorded in those tenants' history notes)

    @property
    def held_names(self) -> frozenset[str]:
        return frozenset(held.tenant for held in self.held)


def apply_holds(
    targets: Sequence[Target], release: Release, *, named: Iterable[str] = (), override_hold: str = ""
) -> HoldDecision:
    """Split the selected targets into those the run deploys and those it holds back.

    `named`: the tenants the run's `tenants` param lists (empty: the whole group). A named held tenant is refused
    unless `override_hold` gives the reason; then it deploys. A hold is never overridden for a tenant nobody named:
    an override reason without a `tenants` list is refused too, so no one deploys a whole group's holds by accident.
    """
    reason = (override_hold or "").strip()
    wanted = set(named)
    holds = held_tenants(targets, release)
    if reason and not wanted:
        held_here = "; ".join(f"{held.tenant} ({held.reason})" for held in holds) or "none"
        raise HeldTenantError(
            f"override_hold deploys held or pinned tenants that the tenants param names, and it names none (held in "
            f"{release.tag}: {held_here}); list the tenants to deploy anyway in tenants, or leave override_hold empty"
        )
    named_held = [held for held in holds if held.tenant in wanted]
    if named_held and not reason:
        refused = "; ".join(f"tenant {held.tenant} is {held.reason}" for held in named_held)
        raise HeldTenantError(
            f"{refused}; to deploy {'it' if len(named_held) == 1 else 'them'} anyway trigger with override_hold set to the "
            "reason (it is recorded in the history), or leave the tenant out of tenants"
        )
    overridden = tuple(named_held)
    kept = tuple(held for held in holds if held.tenant not in wanted)
    skipped = {held.tenant for held in kept}
    return HoldDecision(
        deployable=tuple(target for target in targets if target.name not in skipped),
        held=kept,
        overridden=overridden,
        override_reason=reason if overridden else "",
    )


def override_note(reason: str, held: HeldTenant) -> str:
    """The history note of a tenant deployed despite its hold: what was overridden and why."""
    return f"hold overridden: {reason} (the tenant is {held.reason})"


def run_override_note(plan: RunPlan, target: Target | None) -> str | None:
    """The note for `target`'s history item in this run, when the run deployed it despite its hold; else None.

    For whoever writes a deployed tenant's outcome with the run's plan at hand (the summary annotates every
    tenant's item, as it does for a freeze override). The hold is read from the target as planned: a tenant whose
    hold or pin changed since the plan is refused by its deploy (its settings digest changed).
    """
    if not plan.override_hold or target is None or target.name in {held.tenant for held in plan.held}:
        return None
    if target.name not in {planned.tenant for planned in plan.targets}:
        return None
    reason = hold_reason(target, parse_release_tag(plan.release_tag))
    return override_note(plan.override_hold, HeldTenant(tenant=target.name, reason=reason)) if reason else None
