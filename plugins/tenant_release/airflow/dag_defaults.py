"""What every tenant-release DAG shares: default task arguments and the trigger-form params."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param

from tenant_release.tags import TAG_JSON_SCHEMA_PATTERN

DEFAULT_ARGS = {
    "owner": "platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


def release_tag_param() -> Param:
    return Param(
        "v1.0.0",
        type="string",
        pattern=TAG_JSON_SCHEMA_PATTERN,
        title="Release tag",
        description="v1.4.0 ships to the fleet's default group; v-1.4.0-qa ships to the group qa.",
    )


def tenants_param(description: str) -> Param:
    return Param(
        [],
        type="array",
        items={"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
        title="Only these tenants",
        description=description,
    )
