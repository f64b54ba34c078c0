"""tenant_release: build once → deploy to dev → deploy every targeted tenant in parallel → summary.

Thin wiring only: the fleet file is read when a run starts (the `plan` task), never at parse time.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from tenant_release.airflow import runtime, steps
from tenant_release.airflow.dag_defaults import DEFAULT_ARGS, release_tag_param, tenants_param
from tenant_release.airflow.operators import ReleaseGateOperator, TenantDeployOperator


@dag(
    dag_id="tenant_release",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["tenant-release", "deploy"],
    doc_md=__doc__,
    params={
        "release_tag": release_tag_param(),
        "tenants": tenants_param("Optional: narrow the run to these tenants of the tag's group."),
        "override_freeze": Param(
            "",
            type="string",
            maxLength=500,
            title="Override a change freeze (reason)",
            description="Empty: a run inside a freeze period is refused. A reason here ships anyway and is recorded.",
        ),
    },
)
def tenant_release() -> None:
    @task(retries=0)
    def plan() -> dict:
        return steps.plan(get_current_context()["params"], now=runtime.utcnow())

    @task
    def build(plan_: dict) -> dict:
        return steps.build(plan_)

    @task(retries=0)
    def tenant_targets(plan_: dict) -> list[dict]:
        return plan_["targets"]

    @task(trigger_rule="all_done", retries=0)
    def summary(plan_: dict) -> dict:
        context = get_current_context()
        ti = context["ti"]
        return steps.summarize(
            plan_,
            ti.xcom_pull(task_ids="build", default=None),
            ti.xcom_pull(task_ids="deploy_dev", default=None),
            ti.xcom_pull(task_ids="approve_release", default=None),
            context["run_id"],
        )

    planned = plan()
    artifact = build(planned)
    deploy_dev = TenantDeployOperator(
        task_id="deploy_dev",
        tenant="dev",
        target_digest="{{ ti.xcom_pull(task_ids='plan')['dev']['target_digest'] }}",
        release_tag="{{ ti.xcom_pull(task_ids='plan')['release_tag'] }}",
        config_path="{{ ti.xcom_pull(task_ids='plan')['config_path'] }}",
        artifact=artifact,
        record_history=False,
        smoke_test=True,
    )
    gate = ReleaseGateOperator(task_id="approve_release")
    deploy = TenantDeployOperator.partial(
        task_id="deploy",
        release_tag="{{ ti.xcom_pull(task_ids='plan')['release_tag'] }}",
        config_path="{{ ti.xcom_pull(task_ids='plan')['config_path'] }}",
        artifact=artifact,
        map_index_template="{{ task.tenant }}",
    ).expand_kwargs(tenant_targets(planned))
    deploy_dev >> gate >> deploy >> summary(planned)


tenant_release()
