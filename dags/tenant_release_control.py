"""tenant_release_control: pause, resume or abort the rollout of a release tag, from the UI or the REST API.

Pause: tenants already deploying finish, no other tenant of the tag starts until it is resumed. Abort: every
tenant not yet started, in the runs of the tag planned before the abort, ends SKIPPED ("aborted by <who>:
<reason>"); a reason is required. The control is recorded with the Airflow user who triggered this DAG; the
CLI's `tenant-release pause|resume|abort TAG` records the same item with the caller's AWS identity.
Thin wiring only: the fleet file is read when a run starts, never at parse time.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from tenant_release.airflow import control_steps
from tenant_release.airflow.dag_defaults import DEFAULT_ARGS, release_tag_param


@dag(
    dag_id="tenant_release_control",
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,  # a refused control (resume after an abort) fails at once (AirflowFailException)
    tags=["tenant-release", "control"],
    doc_md=__doc__,
    params={
        "release_tag": release_tag_param(),
        "action": Param("pause", type="string", enum=["pause", "resume", "abort"], title="Action"),
        "reason": Param(
            "",
            type="string",
            maxLength=500,
            title="Reason",
            description="Why: shown by `tenant-release status` and, for an abort (required), in each skipped tenant's history.",
        ),
    },
)
def tenant_release_control() -> None:
    @task
    def record() -> dict:
        context = get_current_context()
        return control_steps.record_control(context["params"], by=context["dag_run"].triggering_user_name)

    record()


tenant_release_control()
