"""tenant_release: build once → deploy to dev, meanwhile find the tenants that need a change → gate → waves → summary.

Thin wiring only: the fleet file is read when a run starts (the `plan` task), never at parse time. Tenants
already at the release are recorded UNCHANGED by `fleet_changes` and get no task instance; every other
tenant gets one, named after it, in its rollout wave (`wave_1` … `wave_6`: open → deploy → bake), that the
scheduler starts in the triggerer, where its whole deploy runs. Finding the changes only reads the tenants'
stacks, so it runs while dev's stack settles; no tenant is deployed before dev has succeeded and the gate has
passed, and no wave starts before the previous one finished within its failure tolerance and baked.
"""

from __future__ import annotations

from airflow.sdk import Param, TaskGroup, dag, get_current_context, task
from tenant_release.airflow import runtime, steps, waves
from tenant_release.airflow.dag_defaults import DEFAULT_ARGS, release_tag_param, tenants_param
from tenant_release.airflow.deploy_operator import FleetTenantDeployOperator, TenantDeployOperator
from tenant_release.airflow.gate import ReleaseGateOperator
from tenant_release.models import MAX_WAVES

PLAN = "{{ ti.xcom_pull(task_ids='plan')"


@dag(
    dag_id="tenant_release",
    schedule=None,
    catchup=False,
    # Runs may overlap: each tenant's lease (aws/leases.py) keeps two runs off one tenant, so a run waiting days for
    # an approval or a maintenance window does not hold back a hotfix to other tenants.
    max_active_runs=16,
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
        "rebuild": Param(
            False,
            type="boolean",
            title="Rebuild a moved tag",
            description="A git tag moved since this version was built is refused unless this is set: then it is built again.",
        ),
        "override_hold": Param(
            "",
            type="string",
            maxLength=500,
            title="Deploy held or pinned tenants named in tenants (reason)",
            description=(
                "Empty: a tenants list naming a tenant that is held back (hold) or pinned to another line (pin) is refused. "
                "A reason here deploys them anyway; the history records it."
            ),
        ),
        "redeploy_of": Param(
            "",
            type="string",
            maxLength=250,
            title="Redeploy the failed tenants of an earlier run (its run id)",
            description=(
                "Empty: an ordinary release. A run id of an earlier tenant_release run of this release tag: deploy only "
                "the tenants that failed or were skipped in it (read from the history); the others are not touched."
            ),
        ),
        "allow_rollback": Param(
            "",
            type="string",
            maxLength=500,
            title="Allow a rollback (reason)",
            description=(
                "Empty: a tenant whose stack holds a newer version than this release fails and is not touched. "
                "A reason here deploys the older version anyway; the history records the rollback and the reason."
            ),
        ),
    },
)
def tenant_release() -> None:
    @task(retries=0)
    def plan() -> dict:
        from airflow.configuration import conf

        max_map_length = conf.getint("core", "max_map_length", fallback=1024)
        context = get_current_context()
        return steps.plan(
            context["params"],
            now=runtime.utcnow(),
            max_map_length=max_map_length,
            triggered_by=getattr(context.get("dag_run"), "triggering_user_name", None),
        )

    @task
    def build(plan_: dict) -> dict:
        return steps.build(plan_)

    @task
    def fleet_changes(plan_: dict, artifact_: dict) -> dict:
        context = get_current_context()
        return steps.fleet_changes(plan_, artifact_, context["run_id"], try_number=context["ti"].try_number)

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
            try_number=ti.try_number,
            rollout_stop=waves.rollout_stop(ti, steps.RunPlan.model_validate(plan_)),
        )

    planned = plan()
    artifact = build(planned)
    deploy_dev = TenantDeployOperator(
        task_id="deploy_dev",
        tenant=PLAN + "['dev']['tenant'] }}",
        target_digest=PLAN + "['dev']['target_digest'] }}",
        release_tag=PLAN + "['release_tag'] }}",
        config_path=PLAN + "['config_path'] }}",
        artifact=artifact,
        record_history=False,
        smoke_test=True,
    )
    changes = fleet_changes(planned, artifact)
    gate = ReleaseGateOperator(task_id="approve_release")
    [deploy_dev, changes] >> gate
    previous = gate
    summarized = summary(planned)
    for index in range(1, MAX_WAVES + 1):
        with TaskGroup(group_id=waves.group_id(index), tooltip=f"rollout wave {index} (the fleet file names it)"):
            opened = waves.WaveOpenOperator(task_id="open", wave_index=index)
            deploy = FleetTenantDeployOperator.partial(task_id="deploy", map_index_template="{{ task.tenant }}").expand_kwargs(
                opened.output
            )
            baked = waves.WaveBakeOperator(task_id="bake", wave_index=index)
            opened >> deploy >> baked
        previous >> opened
        previous = baked
        # Directly, not only through the last wave: a tenant cleared to re-run (`only_failed`) must hold the summary
        # back, and the tasks between its wave and the summary stay skipped (not cleared) when the rollout stopped.
        [deploy, baked] >> summarized


tenant_release()
