"""Turns a release tag and an optional tenant list into the exact set of targets a run deploys."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tenant_release.config import LoadedFleet
from tenant_release.errors import TargetSelectionError
from tenant_release.models import Release, Target


@dataclass(frozen=True, kw_only=True)
class ReleasePlan:
    release: Release
    group: str
    targets: tuple[Target, ...]
    # The selected tenants that belong to a gated group: whatever tag or tenant list reached them, they make
    # the run wait for the release gate.
    gated_tenants: tuple[str, ...] = ()

    @property
    def gated(self) -> bool:
        return bool(self.gated_tenants)

    @property
    def tenant_names(self) -> list[str]:
        return [target.name for target in self.targets]


def plan_release(loaded: LoadedFleet, release: Release, *, only_tenants: Iterable[str] | None = None) -> ReleasePlan:
    """Select the tenants of the tag's group, narrowed to `only_tenants` when given.

    Raises before anything is deployed when the group or a named tenant does not exist, or when the
    selection is empty, and says what does exist.
    """
    fleet = loaded.fleet
    group = release.group or fleet.default_group
    known_groups = sorted(fleet.groups())
    if group not in known_groups:
        raise TargetSelectionError(
            f"release tag {release.tag!r} targets group {group!r}, which no tenant belongs to; "
            f"groups: {', '.join(known_groups)}. Add the group to a tenant in the fleet file or use another tag."
        )
    in_group = [target for target in loaded.tenants() if group in target.groups]
    selected = in_group
    wanted = _clean_names(only_tenants)
    if wanted:
        all_names = {spec.name for spec in fleet.tenants}
        unknown = [name for name in wanted if name not in all_names]
        if unknown:
            raise TargetSelectionError(
                f"unknown tenant(s) {', '.join(repr(n) for n in unknown)}; tenants: {', '.join(sorted(all_names))}"
            )
        outside = [name for name in wanted if name not in {t.name for t in in_group}]
        if outside:
            raise TargetSelectionError(
                f"tenant(s) {', '.join(repr(n) for n in outside)} are not in group {group!r} targeted by "
                f"{release.tag!r}; that group holds: {', '.join(t.name for t in in_group)}"
            )
        selected = [target for target in in_group if target.name in set(wanted)]
    if not selected:
        raise TargetSelectionError(f"release tag {release.tag!r} selects no tenant; groups: {', '.join(known_groups)}")
    gated_groups = set(fleet.gated_groups)
    gated = tuple(target.name for target in selected if gated_groups & set(target.groups))
    return ReleasePlan(release=release, group=group, targets=tuple(selected), gated_tenants=gated)


def _clean_names(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    result: list[str] = []
    for name in names:
        stripped = str(name).strip()
        if stripped and stripped not in result:
            result.append(stripped)
    return result
