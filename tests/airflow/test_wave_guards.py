"""A wave opens only on its previous wave's real verdict, and a bake judges only a wave that really opened: marking a
task success in the UI (or a bake that never ran) does not let a rollout past a tripped wave."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from tenant_release.airflow import waves
from tenant_release.airflow.fleet_targets import TARGETS_ID_KEY
from tenant_release.models import PlannedWave, RunPlan

PLAN = RunPlan(
    release_tag="v2.0.0",
    version="2.0.0",
    group="prod",
    gated=False,
    config_path="/nonexistent/tenants.yaml",
    tenants=("a", "b", "c"),
    planned_at="2026-12-03T07:00:00.000000+00:00",
    waves=(
        PlannedWave(index=1, name="canary", tenants=("a",)),
        PlannedWave(index=2, name="general", tenants=("b", "c")),
    ),
)


class FakeTI:
    """XComs by (task id, key), as a task instance reads and writes them."""

    def __init__(self, xcoms: dict[tuple[str, str], Any]) -> None:
        self.xcoms = dict(xcoms)
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str, key: str = "return_value", default: Any = None, **_: Any) -> Any:
        return self.xcoms.get((task_ids, key), default)

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def open_wave_2(xcoms: dict[tuple[str, str], Any]) -> tuple[FakeTI, pytest.ExceptionInfo]:
    ti = FakeTI(xcoms)
    operator = waves.WaveOpenOperator(task_id="open", wave_index=2)
    with pytest.raises(AirflowFailException) as stopped:
        operator._require_previous_wave_passed({"ti": ti}, PLAN, PLAN.waves[1])
    return ti, stopped


def test_a_wave_does_not_open_after_a_tripped_wave_whose_bake_was_marked_success() -> None:
    tripped = {"passed": False, "stopped": "wave canary: 1 of 1 failed, tolerance 0"}
    ti, stopped = open_wave_2({("wave_1.bake", waves.VERDICT_KEY): tripped})
    assert "wave general: the previous wave canary did not pass (wave canary: 1 of 1 failed, tolerance 0)" in str(stopped.value)
    assert "clear wave_1.bake to judge it again" in str(stopped.value)
    assert ti.pushed[waves.STOPPED_KEY] == str(stopped.value)  # the summary reports the later tenants with it


def test_a_wave_does_not_open_when_the_previous_bake_left_no_verdict() -> None:
    _, stopped = open_wave_2({})
    assert "its bake left no verdict (was it marked success?)" in str(stopped.value)


def test_a_wave_opens_after_a_passing_verdict() -> None:
    operator = waves.WaveOpenOperator(task_id="open", wave_index=2)
    ti = FakeTI({("wave_1.bake", waves.VERDICT_KEY): {"passed": True}})
    operator._require_previous_wave_passed({"ti": ti}, PLAN, PLAN.waves[1])
    assert ti.pushed == {}


def test_a_bake_does_not_judge_a_wave_whose_open_handed_over_no_tenants() -> None:
    ti = FakeTI(
        {
            ("plan", "return_value"): PLAN.model_dump(mode="json"),
            ("wave_2.open", waves.WAVE_KEY): PLAN.waves[1].model_dump(mode="json"),  # open began, then was marked success
        }
    )
    bake = waves.WaveBakeOperator(task_id="bake", wave_index=2)
    with pytest.raises(AirflowFailException, match="wave general did not open"):
        bake.execute({"ti": ti, "run_id": "run-1"})
    assert TARGETS_ID_KEY not in ti.pushed and "did not open" in ti.pushed[waves.STOPPED_KEY]
    assert waves.rollout_stop(ti_with(ti), PLAN) == (2, ti.pushed[waves.STOPPED_KEY])


def ti_with(ti: FakeTI) -> FakeTI:
    """The summary's view: what the bake pushed is now an XCom of wave_2.bake."""
    return FakeTI({**ti.xcoms, **{("wave_2.bake", key): value for key, value in ti.pushed.items()}})
