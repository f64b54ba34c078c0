"""The local emulation's failing stacks (scripts/moto_compat.py, `TENANT_RELEASE_MOTO_FAIL_FILE`), which the rollout's
real-scheduler tests use: a listed stack fails as CloudFormation's would, with the reason in its events, and the
next release after it is taken off the list succeeds."""

from __future__ import annotations

import json

import moto_compat
import pytest
from tenant_release.errors import StackFailedError

from tests.aws.test_deploy_aws import GLOBEX, clean_slate, faults, sessions, world  # noqa: F401 (fixtures)


def test_a_stack_listed_as_failing_rolls_back_with_the_reason_and_deploys_once_taken_off(world, sessions, tmp_path, monkeypatch):
    fail_file = tmp_path / "fail.json"
    fail_file.write_text(json.dumps({"tenant-app-globex": "Resource handler returned message: MemorySize too large"}))
    monkeypatch.setenv(moto_compat.FAIL_FILE_ENV, str(fail_file))

    with pytest.raises(StackFailedError) as failed:
        world.deployment(sessions, "globex").run_to_completion(poll_interval=0)
    assert "ended ROLLBACK_COMPLETE" in str(failed.value)
    assert "Function (AWS::Lambda::Function) CREATE_FAILED: Resource handler returned message: MemorySize too large" in str(
        failed.value
    )
    assert world.stack(GLOBEX, "us-east-1", "tenant-app-globex")["StackStatus"] == "ROLLBACK_COMPLETE"

    fail_file.write_text("{}")
    result = world.deployment(sessions, "globex").run_to_completion(poll_interval=0)
    assert result.status.value == "SUCCEEDED"
    assert world.stack(GLOBEX, "us-east-1", "tenant-app-globex")["StackStatus"] == "CREATE_COMPLETE"
