"""Held and pinned tenants and a redeploy of the failed tenants, in whole release runs under dag.test() against moto.

What a user cares about: a held or pinned tenant ends SKIPPED with the reason and its stack is never read nor
created; a run with `redeploy_of` deploys only the tenant that failed in the earlier run and never touches the
stacks of the tenants that succeeded there.
"""

from __future__ import annotations

from pathlib import Path

from tests.dags.test_release_dag import approve, deployed_version, history, task_states

ACME, GLOBEX, UMBRELLA = "111111111111", "222222222222", "044444444444"
# Every param a run of this module sets, so that dag.test() (which keeps the last run's conf) starts clean.
CLEAN = {"tenants": [], "override_hold": "", "redeploy_of": ""}


def deploy_states(run) -> dict[str, str]:
    """tenant -> state of its deploy task instance (the task id ends in `deploy`, in a wave group or not)."""
    return {
        key[1]: state for key, state in task_states(run).items() if key[0].split(".")[-1] == "deploy" and isinstance(key[1], str)
    }


def calls_to(faults, account: str, since: int) -> list[str]:
    return [f"{service}.{name}" for service, where, name in faults.calls[since:] if where == account]


def test_held_and_pinned_tenants_end_skipped_with_the_reason_and_are_never_touched(
    bootstrapped, fleet_file: Path, release_dag, faults
):
    text = fleet_file.read_text()
    text = text.replace("  - name: acme\n", '  - name: acme\n    hold: "customer freeze until 2027-01-10"\n')
    text = text.replace("  - name: umbrella\n", '  - name: umbrella\n    pin: "1.3"\n')
    fleet_file.write_text(text)
    approve("v1.4.0")  # prod is gated (globex is deployed, so the run asks)

    run = release_dag.test(run_conf={"release_tag": "v1.4.0", **CLEAN})

    assert str(run.state) == "success"
    assert deploy_states(run) == {"globex": "success"}  # no task instance for a held tenant
    records = history()
    assert records[("acme", "v1.4.0")].status.value == "SKIPPED"
    assert records[("acme", "v1.4.0")].reason == "held back: customer freeze until 2027-01-10"
    assert records[("umbrella", "v1.4.0")].status.value == "SKIPPED"
    assert records[("umbrella", "v1.4.0")].reason == "pinned to 1.3.x: 1.4.0 is not a 1.3 release"
    assert records[("acme", "v1.4.0")].run_id == run.run_id and records[("umbrella", "v1.4.0")].run_id == run.run_id
    assert records[("globex", "v1.4.0")].status.value == "SUCCEEDED"
    # Never read, never created: no call at all in the held tenants' accounts.
    assert calls_to(faults, ACME, 0) == [] and calls_to(faults, UMBRELLA, 0) == []
    assert deployed_version(ACME, "eu-central-1", "acme") is None
    assert deployed_version(UMBRELLA, "us-east-1", "umbrella") is None
    assert deployed_version(GLOBEX, "us-east-1", "globex") == "1.4.0"


def test_naming_a_held_tenant_fails_the_plan_unless_overridden(bootstrapped, fleet_file: Path, release_dag, faults):
    fleet_file.write_text(fleet_file.read_text().replace("  - name: acme\n", '  - name: acme\n    hold: "customer freeze"\n'))
    approve("v1.4.0")

    refused = release_dag.test(run_conf={"release_tag": "v1.4.0", **CLEAN, "tenants": ["acme"]})
    assert str(refused.state) == "failed"
    assert task_states(refused)[("plan", -1)] == "failed"
    assert calls_to(faults, ACME, 0) == []

    run = release_dag.test(run_conf={"release_tag": "v1.4.0", **CLEAN, "tenants": ["acme"], "override_hold": "CHG-7: hotfix"})
    assert str(run.state) == "success"
    assert deploy_states(run) == {"acme": "success"}
    assert deployed_version(ACME, "eu-central-1", "acme") == "1.4.0"


def test_a_redeploy_deploys_only_the_failed_tenant_and_leaves_the_others_stacks_alone(bootstrapped, release_dag, faults):
    denied = faults.add(
        service="sts",
        operation="assume_role",
        account="tooling",
        code="AccessDenied",
        message="User is not authorized to perform: sts:AssumeRole on arn:aws:iam::222222222222:role/tenant-release-deploy",
        when=lambda kwargs: kwargs["RoleArn"].startswith(f"arn:aws:iam::{GLOBEX}:"),
    )
    approve("v1.4.0")
    first = release_dag.test(run_conf={"release_tag": "v1.4.0", **CLEAN})
    assert str(first.state) == "failed"
    assert history()[("globex", "v1.4.0")].status.value == "FAILED"
    assert deployed_version(GLOBEX, "us-east-1", "globex") is None

    faults.faults.remove(denied)  # the role is fixed
    since = len(faults.calls)
    second = release_dag.test(run_conf={"release_tag": "v1.4.0", **CLEAN, "redeploy_of": first.run_id})

    assert str(second.state) == "success"
    assert deploy_states(second) == {"globex": "success"}
    assert deployed_version(GLOBEX, "us-east-1", "globex") == "1.4.0"
    records = history()
    assert records[("globex", "v1.4.0")].status.value == "SUCCEEDED" and records[("globex", "v1.4.0")].run_id == second.run_id
    # The tenants that succeeded in the first run: not touched (no stack read, no change set), history unchanged.
    for tenant, account in (("acme", ACME), ("umbrella", UMBRELLA)):
        assert calls_to(faults, account, since) == [], tenant
        assert records[(tenant, "v1.4.0")].run_id == first.run_id
        assert records[(tenant, "v1.4.0")].status.value == "SUCCEEDED"

    # The redeploy run has nothing left to redeploy: a third one is refused before anything is built.
    third = release_dag.test(run_conf={"release_tag": "v1.4.0", **CLEAN, "redeploy_of": second.run_id})
    assert str(third.state) == "failed" and task_states(third)[("plan", -1)] == "failed"
