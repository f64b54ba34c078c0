"""Runs that overlap in time: rollbacks refused unless allowed, and a freeze that begins while a run waits. dag.test() on moto.

dag.test() runs one run at a time; two runs on one tenant at once are tested on the deploy layer and the deploy
trigger (tests/aws/test_leases.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.dags.test_gates_and_windows import clock, conf, gated, release_dag  # noqa: F401 (fixtures)
from tests.dags.test_release_dag import approve, deployed_version, history, task_states

CLARK = "444444444444"
FROZEN = "change freeze 12-20..01-05 (year-end change freeze) began while it waited for"


def test_an_older_release_is_refused_per_tenant_unless_the_run_allows_a_rollback(gated, release_dag, clock):  # noqa: F811
    clock(datetime(2027, 3, 2, 12, tzinfo=UTC))
    assert str(release_dag.test(run_conf=conf("v-2.0.0-regulated", tenants=["clark"])).state) == "success"

    refused = release_dag.test(run_conf=conf("v-1.9.0-regulated", tenants=["clark"]))

    assert str(refused.state) == "failed"
    assert deployed_version(CLARK, "us-east-1", "clark") == "2.0.0"
    assert ("wave_1.deploy", "clark") not in task_states(refused)  # refused before its deploy task: no task instance
    clark = history()[("clark", "v-1.9.0-regulated")]
    assert clark.status.value == "FAILED" and clark.rollback_from is None
    assert clark.reason.startswith("stack tenant-app-clark holds 2.0.0, newer than 1.9.0; nothing was deployed.")
    assert "trigger with allow_rollback set to the reason" in clark.reason

    allowed = release_dag.test(
        run_conf=conf("v-1.9.0-regulated", tenants=["clark"], allow_rollback="INC-12: 2.0.0 double-charges")
    )

    assert str(allowed.state) == "success"
    assert deployed_version(CLARK, "us-east-1", "clark") == "1.9.0"
    clark = history()[("clark", "v-1.9.0-regulated")]
    assert (clark.status.value, clark.version_before, clark.rollback_from) == ("SUCCEEDED", "2.0.0", "2.0.0")
    assert "rollback from 2.0.0: INC-12: 2.0.0 double-charges" in clark.note


def test_a_freeze_that_begins_while_a_tenant_waits_for_its_window_stops_its_deploy(gated, release_dag, clock):  # noqa: F811
    # Sunday 2027-12-19 04:30 UTC, the day before the year-end freeze: diana's window (Sun 02:00-05:00 Berlin)
    # has just closed; the next one, Sunday 12-26, is inside the freeze. The clock moves an hour each read.
    clock(datetime(2027, 12, 19, 4, 30, tzinfo=UTC), timedelta(hours=1))
    run = release_dag.test(run_conf=conf("v-2.0.0-windowed", tenants=["diana"]))

    diana = history()[("diana", "v-2.0.0-windowed")]
    assert diana.status.value == "SKIPPED"
    assert diana.reason == f"{FROZEN} its maintenance window; not deployed"
    assert deployed_version("666666666666", "us-east-1", "diana") is None
    assert task_states(run)[("wave_1.deploy", "diana")] == "skipped"


def test_a_run_triggered_with_override_freeze_deploys_a_tenant_that_waited_into_a_freeze(gated, release_dag, clock):  # noqa: F811
    clock(datetime(2027, 12, 19, 4, 30, tzinfo=UTC), timedelta(hours=1))
    run = release_dag.test(run_conf=conf("v-2.0.0-windowed", tenants=["diana"], override_freeze="INC-77 security fix"))

    assert str(run.state) == "success"
    assert history()[("diana", "v-2.0.0-windowed")].status.value == "SUCCEEDED"
    assert deployed_version("666666666666", "us-east-1", "diana") == "2.0.0"


def test_a_freeze_that_begins_while_the_release_gate_waits_skips_every_tenant(gated, release_dag, clock):  # noqa: F811
    # The plan reads the clock on 12-19 23:30 (no freeze yet); the gate, an hour of clock later, on 12-20.
    clock(datetime(2027, 12, 19, 23, 30, tzinfo=UTC), timedelta(hours=1))
    approve("v2.0.0", by="release-manager")
    run = release_dag.test(run_conf=conf("v2.0.0"))

    assert str(run.state) == "failed"  # the summary says the release stopped before any tenant, and why
    states = task_states(run)
    assert states[("approve_release", -1)] == "skipped"
    assert deployed_version("111111111111", "us-east-1", "acme") is None
    acme = history()[("acme", "v2.0.0")]
    assert acme.status.value == "SKIPPED" and acme.reason == f"{FROZEN} the release gate; not deployed"


def test_release_runs_may_overlap_and_the_trigger_form_takes_a_rollback_reason(release_dag):  # noqa: F811
    # Leases keep two runs off one tenant, so a run parked at an approval or a window must not hold back the next.
    assert release_dag.max_active_runs > 1
    params = release_dag.params
    assert params["allow_rollback"] == ""  # the default refuses rollbacks
    params["allow_rollback"] = "INC-12: 2.0.0 double-charges"
    params.validate()


def test_a_freeze_that_begins_while_a_tenant_waits_for_its_approval_stops_its_deploy(gated, release_dag, clock):  # noqa: F811
    # The clock, an hour a read: the plan on 12-19 22:30, the (ungated) release gate 23:30, wayne after its
    # sign-off 00:30 on 12-20, inside the freeze. clark needs no sign-off of its own and was deployed.
    clock(datetime(2027, 12, 19, 22, 30, tzinfo=UTC), timedelta(hours=1))
    approve("v-2.0.0-regulated", "wayne", by="wayne-cto")
    run = release_dag.test(run_conf=conf("v-2.0.0-regulated", tenants=["wayne", "clark"]))

    assert str(run.state) == "success"  # a skipped tenant is not a failure
    wayne = history()[("wayne", "v-2.0.0-regulated")]
    assert (wayne.status.value, wayne.reason) == ("SKIPPED", f"{FROZEN} its approval; not deployed")
    assert deployed_version("222222222222", "us-east-1", "wayne") is None
    assert deployed_version(CLARK, "us-east-1", "clark") == "2.0.0"
