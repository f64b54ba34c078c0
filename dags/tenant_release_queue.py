"""tenant_release_queue: queue a release for the next release window (the scheduled DAG ships it).

Checks the tag and tenants as tenant_release does, asks for the release gate now when a tenant is gated (the
scheduled run's gate still checks that a record approves the artifact it builds, or asks), then records the
release in the queue. A change freeze does not block queueing: the release waits for the first window after it.
Thin wiring only: the fleet file is read when a run starts, never at parse time.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task
from tenant_release.airflow import queue_steps, runtime
from tenant_release.airflow.dag_defaults import DEFAULT_ARGS, release_tag_param, tenants_param


@dag(
    dag_id="tenant_release_queue",
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["tenant-release", "queue"],
    doc_md=__doc__,
    params={
        "release_tag": release_tag_param(),
        "tenants": tenants_param(
            "Optional: narrow the release to these tenants of the tag's group (empty: the whole group "
            "as the fleet file lists it when the release ships)."
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
