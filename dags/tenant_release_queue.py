"""tenant_release_queue: queue a release for the next release window (the scheduled DAG ships it).

Checks the tag and tenants as tenant_release does, asks for the release gate now when the group is gated (an
approval here lets the scheduled run pass its gate without asking again), then records the release in the
queue. A change freeze does not block queueing: the release waits for the first window after it.
Thin wiring only: the fleet file is read when a run starts, never at parse time.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from tenant_release.airflow import queue_steps, runtime
from tenant_release.tags import TAG_JSON_SCHEMA_PATTERN

DEFAULT_ARGS = {
    "owner": "platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


@dag(
    dag_id="tenant_release_queue",
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["tenant-release", "queue"],
    doc_md=__doc__,
    params={
        "release_tag": Param(
            "v1.0.0",
            type="string",
            pattern=TAG_JSON_SCHEMA_PATTERN,
            title="Release tag",
            description="v1.4.0 ships to the fleet's default group; v-1.4.0-qa ships to the group qa.",
        ),
        "tenants": Param(
            [],
            type="array",
            items={"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
            title="Only these tenants",
            description="Optional: narrow the release to these tenants of the tag's group (empty: the whole group "
            "as the fleet file lists it when the release ships).",
        ),
    },
)
def tenant_release_queue() -> None:
    @task
    def plan() -> dict:
        return queue_steps.plan_queued(get_current_context()["params"], now=runtime.utcnow())

    @task
    def enqueue(plan_: dict, gate: dict) -> dict:
        dag_run = get_current_context()["dag_run"]
        return queue_steps.enqueue_planned(plan_, gate, queued_by=dag_run.triggering_user_name or "unknown user")

    planned = plan()
    gate = queue_steps.QueuedReleaseGateOperator(task_id="approve_release")
    planned >> gate
    enqueue(planned, gate.output)


tenant_release_queue()
