"""The run's first task refuses what `tenant-release validate` refuses, for every tenant at once, before any AWS call."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from tenant_release.airflow import steps

NOW = datetime(2027, 3, 2, 2, 30, tzinfo=UTC)  # outside the fixture's (absent) freezes


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(self, operation_name, api_params):
        calls.append(operation_name)
        raise AssertionError(f"an AWS call was made: {operation_name}")

    monkeypatch.setattr("botocore.client.BaseClient._make_api_call", refuse)
    return calls


def test_plan_refuses_parameters_the_template_does_not_allow(fleet_file: Path, no_aws: list[str]) -> None:
    text = fleet_file.read_text().replace("MemorySize: 256", "MemorySize: 300").replace("LogLevel: DEBUG", "LogLevel: LOUD")
    fleet_file.write_text(text)
    with pytest.raises(AirflowFailException) as refused:
        steps.plan({"release_tag": "v-1.4.0-qa"}, now=NOW, max_map_length=1024)
    message = str(refused.value)
    assert "tenant 'initech': LogLevel='LOUD' is not one of DEBUG, INFO, WARNING, ERROR" in message
    assert no_aws == []
    # acme is not in group qa, but a prod release names it too: the check covers the tenants the run would touch.
    with pytest.raises(AirflowFailException, match="tenant 'acme': MemorySize='300' is not one of 128, 256"):
        steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=1024)


def test_plan_refuses_a_fleet_file_with_a_key_written_twice(fleet_file: Path, no_aws: list[str]) -> None:
    fleet_file.write_text(fleet_file.read_text() + "gated_groups: []\n")
    with pytest.raises(AirflowFailException, match="key 'gated_groups' appears twice in one mapping, at line 15 and line 36"):
        steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=1024)
    assert no_aws == []


def test_plan_passes_the_fixture(fleet_file: Path, no_aws: list[str]) -> None:
    plan = steps.plan({"release_tag": "v1.4.0"}, now=NOW, max_map_length=1024)
    assert plan["tenants"] == ["acme", "globex", "umbrella"] and no_aws == []
