"""Held and pinned tenants: which tenants a release reaches, when a named held tenant is refused or overridden,
and what `tenant-release plan` shows before anything runs. No AWS."""

from __future__ import annotations

from pathlib import Path

import pytest
from tenant_release import cli
from tenant_release.config import load_fleet
from tenant_release.holds import HeldTenantError, apply_holds, run_override_note
from tenant_release.models import HeldTenant, PlannedTarget, RunPlan
from tenant_release.plan import plan_release
from tenant_release.rollout import version_matches_pin
from tenant_release.tags import parse_release_tag

HOLD = 'hold: "customer freeze until 2027-01-10"'
WAVES = """rollout:
  waves:
    - {name: canary, groups: [canary], max_failures: 0}
    - {name: general}
"""


@pytest.fixture
def held_fleet(fleet_file: Path) -> Path:
    """The test fleet with acme held back, umbrella pinned to 1.3, and two waves (canary: acme; general: the rest)."""
    text = fleet_file.read_text()
    text = text.replace("  - name: acme\n", f"  - name: acme\n    {HOLD}\n")
    text = text.replace("  - name: umbrella\n", '  - name: umbrella\n    pin: "1.3"\n')
    text = text.replace("tenants:\n", WAVES + "tenants:\n", 1)
    fleet_file.write_text(text)
    return fleet_file


def decide(tag: str, *, named: tuple[str, ...] = (), override: str = ""):
    loaded = load_fleet()
    release = parse_release_tag(tag)
    selected = plan_release(loaded, release, only_tenants=list(named) or None)
    return apply_holds(selected.targets, release, named=named, override_hold=override)


@pytest.mark.parametrize(
    ("version", "pin", "reaches"),
    [
        ("1.3.0", "1.3", True),
        ("1.3", "1.3", True),
        ("1.3.7-rc1", "1.3", True),
        ("1.3.7+build5", "1.3", True),
        ("1.30.0", "1.3", False),
        ("1.4.0", "1.3", False),
        ("1.9.2", "1", True),
        ("10.0.0", "1", False),
        ("1.3.2", "1.3.2", True),
        ("1.3.20", "1.3.2", False),
    ],
)
def test_a_pin_lets_only_its_own_line_through(version: str, pin: str, reaches: bool):
    assert version_matches_pin(version, pin) is reaches


def test_a_group_release_holds_back_held_and_pinned_tenants_with_their_reasons(held_fleet: Path):
    decision = decide("v1.4.0")
    assert [t.name for t in decision.deployable] == ["globex"]
    assert decision.held == (
        HeldTenant(tenant="acme", reason="held back: customer freeze until 2027-01-10"),
        HeldTenant(tenant="umbrella", reason="pinned to 1.3.x: 1.4.0 is not a 1.3 release"),
    )
    assert decision.overridden == () and decision.override_reason == ""


def test_a_release_of_the_pinned_line_reaches_the_pinned_tenant(held_fleet: Path):
    decision = decide("v1.3.5")
    assert [t.name for t in decision.deployable] == ["globex", "umbrella"]
    assert [h.tenant for h in decision.held] == ["acme"]  # a hold holds whatever the version


def test_naming_a_held_tenant_is_refused_with_the_reason_and_the_fix(held_fleet: Path):
    with pytest.raises(HeldTenantError) as refused:
        decide("v1.4.0", named=("acme", "globex"))
    assert str(refused.value) == (
        "tenant acme is held back: customer freeze until 2027-01-10; to deploy it anyway trigger with override_hold set "
        "to the reason (it is recorded in the history), or leave the tenant out of tenants"
    )
    both = r"tenant acme is held back: .*; tenant umbrella is pinned to 1\.3\.x: .*them anyway"
    with pytest.raises(HeldTenantError, match=both):
        decide("v1.4.0", named=("acme", "umbrella"))


def test_an_override_deploys_the_named_held_tenants_and_keeps_the_others_held(held_fleet: Path):
    decision = decide("v1.4.0", named=("acme", "globex"), override="CHG-1234: customer asked for the fix")
    assert [t.name for t in decision.deployable] == ["acme", "globex"]
    assert decision.held == ()  # umbrella was not selected
    assert decision.overridden == (HeldTenant(tenant="acme", reason="held back: customer freeze until 2027-01-10"),)
    assert decision.override_reason == "CHG-1234: customer asked for the fix"
    # Naming only tenants that are not held: the reason overrides nothing and is not recorded.
    assert decide("v1.4.0", named=("globex",), override="CHG-1234").override_reason == ""


def test_an_override_with_no_tenants_named_is_refused(held_fleet: Path):
    with pytest.raises(HeldTenantError, match="override_hold deploys held or pinned tenants that the tenants param names"):
        decide("v1.4.0", override="CHG-1234")


def test_the_history_note_of_an_overridden_tenant(held_fleet: Path):
    loaded = load_fleet()
    plan = RunPlan(
        release_tag="v1.4.0",
        version="1.4.0",
        group="prod",
        gated=True,
        config_path=str(held_fleet),
        tenants=("acme", "globex", "umbrella"),
        targets=(PlannedTarget(tenant="acme", target_digest="x"), PlannedTarget(tenant="globex", target_digest="y")),
        held=(HeldTenant(tenant="umbrella", reason="pinned to 1.3.x: 1.4.0 is not a 1.3 release"),),
        override_hold="CHG-1234",
    )
    assert run_override_note(plan, loaded.target("acme")) == (
        "hold overridden: CHG-1234 (the tenant is held back: customer freeze until 2027-01-10)"
    )
    assert run_override_note(plan, loaded.target("globex")) is None  # not held
    assert run_override_note(plan, loaded.target("umbrella")) is None  # held, not deployed
    assert run_override_note(plan.model_copy(update={"override_hold": ""}), loaded.target("acme")) is None


def columns(out: str) -> dict[str, dict[str, str]]:
    """`plan`'s table as tenant -> column -> cell, cut at the header's column starts (cells may hold spaces)."""
    lines = out.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("TENANT "))
    header = lines[header_at]
    names = header.split()
    starts = [header.index(name) for name in names]
    table = {}
    for line in lines[header_at + 1 :]:
        cells = [line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
        table[cells[0]] = dict(zip(names, cells, strict=True))
    return table


def test_plan_shows_held_and_pinned_tenants_and_each_tenants_wave(held_fleet: Path, capsys):
    code = cli.main(["plan", "v1.4.0"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    lines = out.splitlines()
    # Only globex is deployed; acme's and umbrella's gated group does not make the run wait for them.
    assert lines[0] == "v1.4.0: version 1.4.0 to group prod (gated: needs approval, for globex)"
    assert lines[3] == (
        "  held back or pinned (recorded SKIPPED, not deployed): acme (held back: customer freeze until 2027-01-10); "
        "umbrella (pinned to 1.3.x: 1.4.0 is not a 1.3 release)"
    )
    assert lines[4] == "  waves: 1 general (1)"  # canary's only tenant is held: the wave is left out
    table = columns(out)
    assert list(table) == ["acme", "globex", "umbrella"]
    assert table["acme"]["HOLD"] == "held back: customer freeze until 2027-01-10" and table["acme"]["WAVE"] == "-"
    assert table["umbrella"]["HOLD"] == "pinned to 1.3.x: 1.4.0 is not a 1.3 release"
    assert table["globex"]["HOLD"] == "-" and table["globex"]["WAVE"] == "1-general"


def test_plan_with_an_override_shows_the_named_held_tenant_in_its_wave(held_fleet: Path, capsys):
    code = cli.main(["plan", "v1.4.0", "--tenants", "acme", "globex", "--override-hold", "CHG-1234"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "  hold overridden (CHG-1234): acme (held back: customer freeze until 2027-01-10)" in out.splitlines()
    assert "  waves: 1 canary (1), 2 general (1)" in out.splitlines()
    table = columns(out)
    assert table["acme"]["WAVE"] == "1-canary"
    assert table["acme"]["HOLD"] == "overridden: held back: customer freeze until 2027-01-10"
