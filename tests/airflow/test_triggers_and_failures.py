"""Triggers survive their trip through the metadata DB, carry no secret, and library errors map to Airflow's one way."""

from __future__ import annotations

import importlib

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from botocore.exceptions import ClientError
from tenant_release.airflow.failures import as_task_failure
from tenant_release.airflow.triggers import ApprovalRecordTrigger, TenantDeployTrigger, WindowOpenTrigger
from tenant_release.errors import FleetConfigError, PermanentAwsError, RecoverableAwsError
from tenant_release.models import DeployProgress

PROGRESS = DeployProgress(started_at="2026-12-01T10:00:00+00:00", version_before="1.3.0", notes=["inside window"])
TRIGGERS = [
    TenantDeployTrigger(
        tenant="acme",
        target_digest="0123456789abcdef",
        config_path="/etc/fleet.yaml",
        release_tag="v1.4.0",
        run_id="manual__1",
        artifact={"version": "1.4.0", "sha256": "a" * 64, "bucket": "b", "template_key": "t", "objects": [], "source": "x"},
        progress=PROGRESS.model_dump(mode="json"),
        poll_interval=5.0,
        deadline="2026-12-01T12:00:00+00:00",
        record_history=True,
        smoke_test=False,
        end_in_triggerer=True,
    ),
    ApprovalRecordTrigger(
        tenant="*",
        release_tag="v1.4.0",
        sha256="a" * 64,
        config_path=None,
        ti_id="0190a1b2-0000-7000-8000-000000000000",
        deadline="2026-12-04T10:00:00+00:00",
        poll_interval=30.0,
        progress=PROGRESS.model_dump(mode="json"),
    ),
    WindowOpenTrigger(opens_at="2026-12-06T01:00:00+00:00", poll_interval=300.0, progress=PROGRESS.model_dump(mode="json")),
]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_serialize_round_trips_to_an_equal_trigger(trigger) -> None:
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert type(rebuilt) is type(trigger)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert DeployProgress.model_validate(kwargs["progress"]) == PROGRESS


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_serialized_triggers_hold_names_never_credentials(trigger) -> None:
    _, kwargs = trigger.serialize()
    text = repr(kwargs).lower()
    for secret in ("secretaccesskey", "sessiontoken", "aws_secret", "accesskeyid", "credentials"):
        assert secret not in text


def _client_error(code: str, message: str = "x") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "AnyOperation")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PermanentAwsError("stack needs a person"), AirflowFailException),
        (FleetConfigError("bad fleet file"), AirflowFailException),
        (_client_error("AccessDenied"), AirflowFailException),
        (_client_error("ValidationError", "Template format error"), AirflowFailException),
        (RecoverableAwsError("stack busy"), AirflowException),
        (_client_error("Throttling", "Rate exceeded"), AirflowException),
        (RuntimeError("a bug, or a lost connection"), AirflowException),
    ],
)
def test_errors_that_retrying_cannot_fix_fail_the_task_at_once_and_the_rest_retry(error, expected) -> None:
    mapped = as_task_failure(error)
    assert type(mapped) is expected
    assert str(mapped)  # the reason a person reads


def test_an_airflow_exception_passes_through_unchanged() -> None:
    original = AirflowFailException("already decided")
    assert as_task_failure(original) is original
