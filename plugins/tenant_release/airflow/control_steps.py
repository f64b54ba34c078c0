"""The tenant_release_control DAG's one step: record an operator's pause, resume or abort (logic in aws.controls)."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tenant_release.airflow import runtime
from tenant_release.airflow.failures import as_task_failure
from tenant_release.aws import controls
from tenant_release.errors import TenantReleaseError
from tenant_release.plan import plan_release
from tenant_release.tags import parse_release_tag


def record_control(params: dict[str, Any], *, by: str | None) -> dict[str, Any]:
    """Set the rollout control the form asks for, as the Airflow user who triggered it; returns it (XCom)."""
    action = str(params.get("action") or "")
    if action not in controls.ACTIONS:
        raise AirflowFailException(f"action {action!r} is not one of {', '.join(controls.ACTIONS)}; pick one in the form")
    if not by:
        # An anonymous pause or abort cannot be followed up; the form always knows who triggered it.
        raise AirflowFailException("this run has no triggering user to record; trigger it from the UI or the REST API")
    state = controls.ACTIONS[action]
    try:
        loaded = runtime.cached_fleet(None)
        release = parse_release_tag(str(params.get("release_tag") or ""))
        plan_release(loaded, release)  # a tag no run could ship (an unknown group) is refused before AWS
        reason = controls.check_text("reason", params.get("reason"), required=action == "abort")
        tooling = loaded.fleet.tooling
        dynamodb = runtime.aws_sessions().tooling_client("dynamodb", tooling.region)
        control = controls.set_control(dynamodb, tooling.leases_table, release.tag, state, f"airflow user {by}", reason)
    except TenantReleaseError as exc:
        raise as_task_failure(exc) from None
    return control.model_dump(mode="json")
