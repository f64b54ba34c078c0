"""Progressive rollout: which wave each targeted tenant is in, which tenants a release does not reach, how a wave ends.

Plain Python on the fleet's models: the release DAG's plan, `tenant-release plan` and the wave tasks all decide
with these functions, so what `plan` prints is what a run does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from tenant_release.models import (
    FAILED_OUTCOMES,
    Fleet,
    HeldTenant,
    Outcome,
    PlannedWave,
    Release,
    RolloutSpec,
    Target,
    WaveSpec,
    WaveVerdict,
)

# The one wave of a fleet that declares no rollout: every targeted tenant at once, as before waves.
DEFAULT_WAVE = WaveSpec(name="all")


def rollout_of(fleet: Fleet) -> RolloutSpec:
    return fleet.rollout or RolloutSpec(waves=(DEFAULT_WAVE,))


def wave_of(rollout: RolloutSpec, target: Target) -> WaveSpec | None:
    """The tenant's wave: the one it names itself (`wave:`), else the first wave that selects it; None: no wave does."""
    if target.wave is not None:
        return next((wave for wave in rollout.waves if wave.name == target.wave), None)
    for wave in rollout.waves:
        if wave.selects_rest or target.name in wave.tenants or set(wave.groups) & set(target.groups):
            return wave
    return None


def plan_waves(fleet: Fleet, targets: Sequence[Target]) -> tuple[PlannedWave, ...]:
    """The run's waves in order, each with its targeted tenants; waves no targeted tenant is in are left out.

    Every target lands in exactly one wave (the fleet checks refuse a fleet where one would land in none).
    """
    rollout = rollout_of(fleet)
    members: dict[str, list[str]] = {wave.name: [] for wave in rollout.waves}
    for target in targets:
        wave = wave_of(rollout, target)
        if wave is None:  # the fleet checks make this impossible; never drop a tenant silently
            raise ValueError(f"tenant {target.name} is in no wave of the rollout")
        members[wave.name].append(target.name)
    planned = []
    for wave in rollout.waves:
        if not members[wave.name]:
            continue
        planned.append(
            PlannedWave(
                index=len(planned) + 1,
                name=wave.name,
                tenants=tuple(members[wave.name]),
                max_failures=wave.max_failures,
                bake_minutes=wave.bake_minutes,
                approval=wave.approval,
                max_parallel=wave.max_parallel or rollout.max_parallel,
                max_parallel_per_region=wave.max_parallel_per_region or rollout.max_parallel_per_region,
            )
        )
    return tuple(planned)


def unplaced_tenants(fleet: Fleet, targets: Iterable[Target]) -> list[str]:
    """Problems: tenants no wave selects, and tenants naming a wave that does not exist."""
    if fleet.rollout is None:
        return []
    names = [wave.name for wave in fleet.rollout.waves]
    problems = []
    for target in targets:
        if target.wave is not None and target.wave not in names:
            problems.append(
                f"tenant {target.name}: wave {target.wave!r} is not a wave of rollout.waves ({', '.join(names)}); "
                "fix the tenant's wave or add the wave"
            )
        elif wave_of(fleet.rollout, target) is None:
            problems.append(
                f"tenant {target.name} (groups {', '.join(target.groups) or 'none'}) is in no wave of the rollout; add a last "
                "wave that takes every tenant left (- {name: general}), or add its group to a wave"
            )
    return problems


def version_matches_pin(version: str, pin: str) -> bool:
    """`1.3` takes 1.3, 1.3.0 and 1.3.7-rc1; not 1.30 or 1.4."""
    core = version.split("-", 1)[0].split("+", 1)[0]
    return core == pin or core.startswith(pin + ".")


def hold_reason(target: Target, release: Release) -> str | None:
    """Why this release must not reach the tenant (held back, or pinned to another line); None: it may."""
    if target.hold:
        return f"held back: {target.hold}"
    if target.pin and not version_matches_pin(release.version, target.pin):
        return f"pinned to {target.pin}.x: {release.version} is not a {target.pin} release"
    return None


def held_tenants(targets: Iterable[Target], release: Release) -> tuple[HeldTenant, ...]:
    return tuple(HeldTenant(tenant=target.name, reason=reason) for target in targets if (reason := hold_reason(target, release)))


def judge_wave(
    wave: PlannedWave,
    outcomes: Mapping[str, tuple[Outcome, str]],
    alarms: Mapping[str, str],
    *,
    baked_minutes: float = 0.0,
) -> WaveVerdict:
    """The wave's verdict from its tenants' outcomes (tenant -> (outcome, reason)) and the alarms that fired
    during its bake (tenant -> "alarm X in ALARM since ...").

    A tenant counts once, failed or alarmed; a tenant with no outcome at all counts as failed (its task ended
    without reporting, see the summary). Held and skipped tenants do not count either way.
    """
    failed: dict[str, str] = {}
    for tenant in wave.tenants:
        outcome, reason = outcomes.get(tenant, (None, "no outcome recorded (task lost?)"))
        if outcome is None or outcome in FAILED_OUTCOMES or outcome == Outcome.IN_PROGRESS:
            failed[tenant] = f"{outcome.value if outcome else 'NO OUTCOME'}: {reason}"
        elif tenant in alarms:
            failed[tenant] = alarms[tenant]
    tolerance = wave.tolerance()
    passed = len(failed) <= tolerance
    stopped = None
    if not passed:
        stopped = f"wave {wave.name}: {len(failed)} of {len(wave.tenants)} failed, {wave.describe_tolerance()}"
    return WaveVerdict(
        wave=wave.name,
        index=wave.index,
        size=len(wave.tenants),
        failed=failed,
        tolerance=tolerance,
        baked_minutes=baked_minutes,
        passed=passed,
        stopped=stopped,
    )
