"""tenant_release_scheduled: when a release window opens (never inside a freeze), ship the oldest queued release.

The windows and freezes come from the fleet file's `schedule` section, read when this file is parsed (the only
DAG that does so: a timetable is fixed when the DAG is serialized). A changed schedule takes effect at the next
parse. No start_date: unpausing never runs a window that already closed.

take_queued_release re-checks the freeze and the window against the clock at run time and skips, saying why,
when either forbids shipping, when the run started outside its own window (the scheduler was down when it opened:
a missed window is not made up later) or nothing is queued. The release itself runs as its own tenant_release run (with
its own gate, freeze check and summary); this DAG does not wait for it.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, get_current_context, task
from tenant_release.airflow import queue_steps, runtime
from tenant_release.airflow.dag_defaults import DEFAULT_ARGS


@dag(
    dag_id="tenant_release_scheduled",
    schedule=queue_steps.release_window_timetable(),
    catchup=False,
    # One dispatch at a time: each run only hands a queued release to its own tenant_release run and does not wait
    # for it, so this never holds back a release (those runs may overlap; leases keep them off each other's tenants).
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["tenant-release", "deploy", "scheduled"],
    doc_md=__doc__,
)
def tenant_release_scheduled() -> None:
    @task(multiple_outputs=True)
    def take_queued_release() -> dict:
        context = get_current_context()
        # The window occurrence this run was scheduled for (a manual run's interval is a single moment).
        window = (context.get("data_interval_start"), context.get("data_interval_end"))
        return queue_steps.take_queued_release(run_id=context["run_id"], now=runtime.utcnow(), window=window)

    # Runs when the trigger succeeded, and also when it was skipped because a retry found the run it had created.
    @task(trigger_rule="none_failed_min_one_success")
    def mark_dispatched(taken_: dict) -> dict:
        return queue_steps.mark_dispatched(taken_)

    taken = take_queued_release()
    trigger_release = TriggerDagRunOperator(
        task_id="trigger_release",
        trigger_dag_id=queue_steps.RELEASE_DAG_ID,
        trigger_run_id=taken["trigger_run_id"],
        conf=taken["conf"],
        wait_for_completion=False,
        skip_when_already_exists=True,
        openlineage_inject_parent_info=False,  # the release run's conf is exactly what was queued
    )
    trigger_release >> mark_dispatched(taken)


tenant_release_scheduled()
