"""Health alarms against moto: which alarms a tenant's patterns find, CloudFormation's rollback triggers, ROLLED_BACK.

moto neither evaluates alarms nor rolls stacks back: alarm states are set with `set_alarm_state`, and a rollback is
injected by `tests.faults` making DescribeStacks report the rolled-back status once the change set was executed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tenant_release import classify, cli
from tenant_release.aws import alarms, ledger
from tenant_release.aws.session import AwsSessions
from tenant_release.config import load_fleet
from tenant_release.errors import AlarmRollbackError, FleetConfigError, RollbackTriggerError
from tenant_release.models import Outcome

from tests.aws.test_deploy_aws import (  # noqa: F401 (clean_slate: autouse)
    ACME,
    FLEET,
    GLOBEX,
    HISTORY,
    INITECH,
    UMBRELLA,
    World,
    build,
    clean_slate,
    count,
    deploy,
    recorder,
    with_status,
    world_of,
)
from tests.faults import Faults

# acme and initech ask CloudFormation to roll back on their alarms; globex only has alarms; umbrella has none.
ALARM_FLEET = (
    FLEET.read_text()
    .replace("defaults:\n", 'defaults:\n  alarms: ["tenant-app-{name}-*"]\n', 1)
    .replace(
        "    external_id: acme-ext-0001\n",
        "    external_id: acme-ext-0001\n    rollback_on_alarm: true\n    rollback_monitoring_minutes: 15\n",
        1,
    )
    .replace("    groups: [qa]\n", "    groups: [qa]\n    rollback_on_alarm: true\n", 1)
    .replace("    groups: [qa, prod]\n", "    groups: [qa, prod]\n    alarms: []\n", 1)
)
# Every place a test may create an alarm: each tenant's own account and region, and some that are not theirs.
ALARM_PLACES = (
    (ACME, "eu-central-1"),
    (ACME, "us-east-1"),
    (GLOBEX, "us-east-1"),
    (GLOBEX, "eu-central-1"),
    (INITECH, "eu-west-1"),
    (INITECH, "us-east-1"),
    (UMBRELLA, "us-east-1"),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path = tmp_path_factory.mktemp("alarms") / "tenants.yaml"
    path.write_text(ALARM_FLEET)
    with world_of(path) as world:
        yield world


@pytest.fixture(autouse=True)
def no_alarms_left(world: World) -> Iterator[None]:
    """Remove the alarms a test made (`clean_slate` removes its stacks, copies and history items)."""
    yield
    for account, region in ALARM_PLACES:
        cloudwatch = world.inspect("cloudwatch", account, region)
        names = [a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]]
        if names:
            cloudwatch.delete_alarms(AlarmNames=names)


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def sessions(world: World, faults: Faults) -> AwsSessions:
    return AwsSessions(world.base_session, client_hook=faults.hook)


def make_alarm(world: World, account: str, region: str, name: str, *, firing: bool = False) -> str:
    """An alarm in `account` and `region` (in ALARM when `firing`); returns its ARN."""
    cloudwatch = world.inspect("cloudwatch", account, region)
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        Namespace="TenantApp",
        MetricName="Errors",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    if firing:
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="5 errors in 1 minute")
    return cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["AlarmArn"]


def rolls_back_after_execute(faults: Faults, account: str, status: str) -> None:
    """From the next ExecuteChangeSet on, DescribeStacks reports `status`: CloudFormation undid the deploy."""
    executed_before = count(faults, account, "execute_change_set")
    faults.add(
        service="cloudformation",
        operation="describe_stacks",
        account=account,
        when=lambda _: count(faults, account, "execute_change_set") > executed_before,
        rewrite=with_status(status),
    )


# --- finding a tenant's alarms ----------------------------------------------------------------------------------


def test_a_firing_alarm_is_found_by_pattern_in_the_tenants_own_account_and_region_only(
    world: World, sessions: AwsSessions
) -> None:
    errors = make_alarm(world, ACME, "eu-central-1", "tenant-app-acme-errors", firing=True)
    make_alarm(world, ACME, "eu-central-1", "tenant-app-acme-latency")  # acme's, but OK
    make_alarm(world, ACME, "eu-central-1", "billing-acme-errors", firing=True)  # acme's account, not its pattern
    make_alarm(world, ACME, "us-east-1", "tenant-app-acme-errors-us", firing=True)  # acme's account, another region
    make_alarm(world, GLOBEX, "eu-central-1", "tenant-app-acme-spoof", firing=True)  # another tenant's account
    globex_errors = make_alarm(world, GLOBEX, "us-east-1", "tenant-app-globex-errors", firing=True)

    acme = world.deployment(sessions, "acme").firing_alarms()
    globex = world.deployment(sessions, "globex").firing_alarms()

    (found,) = acme
    assert (found.name, found.arn, found.reason) == ("tenant-app-acme-errors", errors, "5 errors in 1 minute")
    assert f":{ACME}:" in found.arn and ":eu-central-1:" in found.arn
    assert datetime.fromisoformat(found.since).tzinfo is not None
    assert found.describe() == f"alarm tenant-app-acme-errors in ALARM since {found.since}"
    assert [(a.name, a.arn) for a in globex] == [("tenant-app-globex-errors", globex_errors)]


def test_a_tenant_without_alarms_has_none_firing_and_its_alarms_are_never_read(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    make_alarm(world, UMBRELLA, "us-east-1", "tenant-app-umbrella-errors", firing=True)

    assert world.deployment(sessions, "umbrella").firing_alarms() == []
    assert not [call for call in faults.calls if call[0] == "cloudwatch"]


class _PagedCloudWatch:
    """DescribeAlarms in pages (moto returns one page), recording each query."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages, self.queries = pages, []

    def get_paginator(self, operation: str) -> Any:
        assert operation == "describe_alarms"
        return self

    def paginate(self, **query: Any) -> Iterator[dict[str, Any]]:
        self.queries.append(query)
        prefix = query.get("AlarmNamePrefix", "")
        for page in self.pages:
            yield {kind: [a for a in page.get(kind, []) if a["AlarmName"].startswith(prefix)] for kind in page}


def _alarm(name: str, state: str = "OK") -> dict[str, Any]:
    return {"AlarmName": name, "AlarmArn": f"arn:aws:cloudwatch:us-east-1:{ACME}:alarm:{name}", "StateValue": state}


def test_patterns_read_every_page_list_each_prefix_once_and_treat_only_star_as_a_wildcard() -> None:
    cloudwatch = _PagedCloudWatch(
        [
            {"MetricAlarms": [_alarm("tenant-app-acme-errors", "ALARM"), _alarm("ops-[acme]?")], "CompositeAlarms": []},
            {"MetricAlarms": [_alarm("ops-a1", "ALARM")], "CompositeAlarms": [_alarm("tenant-app-acme-db-health", "ALARM")]},
        ]
    )
    patterns = ["tenant-app-acme-*", "tenant-app-acme-db-*", "ops-[acme]?"]

    found = alarms.matching_alarms(cloudwatch, patterns)

    # `[acme]?` is text in an alarm name, not a character class: ops-a1 is not matched.
    assert [(a["AlarmName"], a["AlarmType"]) for a in found] == [
        ("ops-[acme]?", "MetricAlarm"),
        ("tenant-app-acme-db-health", "CompositeAlarm"),
        ("tenant-app-acme-errors", "MetricAlarm"),
    ]
    # The db pattern's listing is covered by the broader prefix; both alarm kinds are asked for.
    assert sorted(q["AlarmNamePrefix"] for q in cloudwatch.queries) == ["ops-[acme]?", "tenant-app-acme-"]
    assert all(q["AlarmTypes"] == ["MetricAlarm", "CompositeAlarm"] for q in cloudwatch.queries)
    assert [a.name for a in alarms.firing_alarms(cloudwatch, patterns)] == ["tenant-app-acme-db-health", "tenant-app-acme-errors"]
    assert alarms.rollback_triggers(found)[1] == {
        "Arn": f"arn:aws:cloudwatch:us-east-1:{ACME}:alarm:tenant-app-acme-db-health",
        "Type": "AWS::CloudWatch::CompositeAlarm",
    }

    everything = _PagedCloudWatch([{"MetricAlarms": [_alarm("a-errors"), _alarm("b-latency")]}])
    assert [a["AlarmName"] for a in alarms.matching_alarms(everything, ["*-errors"])] == ["a-errors"]
    assert "AlarmNamePrefix" not in everything.queries[0]  # a leading `*`: every alarm of the account and region


def test_an_alarm_pattern_with_an_unknown_placeholder_is_refused_naming_the_tenant(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(FLEET.read_text().replace("  - name: globex\n", '  - name: globex\n    alarms: ["app-{tenant}-*"]\n', 1))

    with pytest.raises(FleetConfigError) as refused:
        load_fleet(path)

    message = str(refused.value)
    assert "tenant 'globex'" in message and "unknown placeholder 'tenant'" in message
    assert "{name}, {account_id} and {region}" in message


def test_rollback_on_alarm_without_alarms_is_refused_by_the_fleet_check(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(FLEET.read_text().replace("  - name: globex\n", "  - name: globex\n    rollback_on_alarm: true\n", 1))

    with pytest.raises(FleetConfigError) as refused:
        load_fleet(path)

    assert "tenant 'globex': rollback_on_alarm is set but no alarms are named" in str(refused.value)
    assert "or set rollback_on_alarm: false" in str(refused.value)


# --- rollback triggers --------------------------------------------------------------------------------------------


def test_the_change_set_carries_the_tenants_matching_alarms_as_rollback_triggers_and_its_monitoring_time(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    latency = make_alarm(world, ACME, "eu-central-1", "tenant-app-acme-latency")
    errors = make_alarm(world, ACME, "eu-central-1", "tenant-app-acme-errors")
    make_alarm(world, ACME, "us-east-1", "tenant-app-acme-elsewhere")  # another region: CloudFormation cannot use it
    change_sets: list[dict[str, Any]] = []
    faults.add(service="cloudformation", operation="create_change_set", when=recorder(change_sets))

    acme = deploy(world.deployment(sessions, "acme"))
    globex = deploy(world.deployment(sessions, "globex"))  # has alarms, but no rollback_on_alarm

    assert (acme.status, globex.status) == (Outcome.SUCCEEDED, Outcome.SUCCEEDED)
    acme_call, globex_call = change_sets
    assert acme_call["StackName"] == "tenant-app-acme"
    assert acme_call["RollbackConfiguration"] == {
        "RollbackTriggers": [
            {"Arn": errors, "Type": "AWS::CloudWatch::Alarm"},
            {"Arn": latency, "Type": "AWS::CloudWatch::Alarm"},
        ],
        "MonitoringTimeInMinutes": 15,
    }
    assert "RollbackConfiguration" not in globex_call


def test_a_tenant_that_stopped_asking_for_rollback_has_its_stacks_earlier_triggers_removed(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    deploy(world.deployment(sessions, "globex"))
    earlier = [{"Arn": f"arn:aws:cloudwatch:us-east-1:{GLOBEX}:alarm:tenant-app-globex-errors", "Type": "AWS::CloudWatch::Alarm"}]
    faults.add(
        service="cloudformation",
        operation="describe_stacks",
        account=GLOBEX,
        rewrite=lambda response, _: {
            **response,
            "Stacks": [{**s, "RollbackConfiguration": {"RollbackTriggers": earlier}} for s in response["Stacks"]],
        },
    )
    change_sets: list[dict[str, Any]] = []
    faults.add(service="cloudformation", operation="create_change_set", when=recorder(change_sets))

    assert deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-2")).status == Outcome.SUCCEEDED

    # CloudFormation keeps a stack's last rollback triggers unless told otherwise: an empty list removes them.
    (call,) = change_sets
    assert call["RollbackConfiguration"] == {"RollbackTriggers": []}


@pytest.mark.parametrize(
    ("status", "deployed_before"),
    [("UPDATE_ROLLBACK_COMPLETE", "1.4.0"), ("ROLLBACK_COMPLETE", None)],
    ids=["update rolled back", "create rolled back"],
)
def test_a_stack_rolled_back_while_its_alarm_fires_is_recorded_rolled_back_with_the_alarm_and_not_retried(
    world: World,
    sessions: AwsSessions,
    faults: Faults,
    status: str,
    deployed_before: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_alarm(world, ACME, "eu-central-1", "tenant-app-acme-errors")
    if deployed_before:
        assert deploy(world.deployment(sessions, "acme", version=deployed_before)).status == Outcome.SUCCEEDED
    release = "1.5.0" if deployed_before else "1.4.0"
    rolls_back_after_execute(faults, ACME, status)
    # The new version makes the application unhealthy: its alarm fires while CloudFormation settles the stack.
    world.inspect("cloudwatch", ACME, "eu-central-1").set_alarm_state(
        AlarmName="tenant-app-acme-errors", StateValue="ALARM", StateReason="5 errors in 1 minute"
    )

    with pytest.raises(AlarmRollbackError) as rolled_back:
        deploy(world.deployment(sessions, "acme", version=release, run_id="run-2"))

    recorded = ledger.get(world.history(), HISTORY, tenant="acme", release=f"v{release}")
    assert recorded is not None
    assert (recorded.status, recorded.run_id, recorded.stack_status) == (Outcome.ROLLED_BACK, "run-2", status)
    assert recorded.reason is not None
    assert recorded.reason.startswith("rolled back by CloudFormation: alarm tenant-app-acme-errors in ALARM since ")
    assert (recorded.version_before, recorded.version_after) == (deployed_before, None)
    assert ("runs 1.4.0 again" if deployed_before else "holds nothing (the next release creates it anew)") in recorded.reason
    assert str(rolled_back.value) == recorded.reason
    # What an operator reads: `tenant-release history` shows the outcome and the alarm.
    assert cli.main(["--config", str(world.loaded.path), "history", f"v{release}"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("acme ")]
    assert "ROLLED_BACK" in row and "rolled back by CloudFormation: alarm tenant-app-acme-errors in ALARM since" in row
    # Retrying would deploy into the same unhealthy application: a person decides.
    assert classify.needs_a_person(rolled_back.value)
    from airflow.sdk.exceptions import AirflowFailException
    from tenant_release.airflow.failures import as_task_failure

    assert isinstance(as_task_failure(rolled_back.value), AirflowFailException)


def test_a_rollback_with_no_alarm_firing_is_an_ordinary_failure_from_the_stack_events(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    make_alarm(world, ACME, "eu-central-1", "tenant-app-acme-errors")  # OK throughout
    deploy(world.deployment(sessions, "acme"))
    rolls_back_after_execute(faults, ACME, "UPDATE_ROLLBACK_COMPLETE")

    with pytest.raises(Exception) as failed:
        deploy(world.deployment(sessions, "acme", version="1.5.0", run_id="run-2"))

    assert not isinstance(failed.value, AlarmRollbackError)
    recorded = ledger.get(world.history(), HISTORY, tenant="acme", release="v1.5.0")
    assert recorded is not None and recorded.status == Outcome.FAILED
    assert recorded.reason is not None and "ended UPDATE_ROLLBACK_COMPLETE" in recorded.reason


def test_more_alarms_than_cloudformation_takes_are_refused_naming_them_before_anything_is_copied(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    names = [f"tenant-app-initech-{kind}" for kind in ("cpu", "db", "errors", "latency", "memory", "throttles")]
    for name in names:
        make_alarm(world, INITECH, "eu-west-1", name)

    with pytest.raises(RollbackTriggerError) as refused:
        deploy(world.deployment(sessions, "initech"))

    message = str(refused.value)
    assert "tenant initech's alarms (tenant-app-initech-*) match 6 alarms in account 333333333333 region eu-west-1" in message
    assert all(name in message for name in names)
    assert "at most 5 rollback triggers" in message and "nothing was deployed" in message
    assert "narrow the patterns to at most 5 alarms, or name one composite alarm" in message
    assert count(faults, INITECH, "create_change_set") == 0 and count(faults, "tooling", "copy_object") == 0
    recorded = ledger.get(world.history(), HISTORY, tenant="initech", release="v1.4.0")
    assert recorded is not None and (recorded.status, recorded.reason) == (Outcome.FAILED, message)
    assert world.stack(INITECH, "eu-west-1", "tenant-app-initech") is None


def test_rollback_on_alarms_that_do_not_exist_is_refused_naming_where_it_looked_and_the_fix(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    make_alarm(world, INITECH, "us-east-1", "tenant-app-initech-errors")  # its account, but not its stack's region

    with pytest.raises(RollbackTriggerError) as refused:
        deploy(world.deployment(sessions, "initech"))

    message = str(refused.value)
    assert "tenant initech asks CloudFormation to roll back on its alarms (tenant-app-initech-*)" in message
    assert "no CloudWatch alarm in account 333333333333 region eu-west-1 matches them; nothing was deployed" in message
    assert "create the alarms there, correct the patterns in the fleet file, or set rollback_on_alarm: false" in message
    assert count(faults, INITECH, "create_change_set") == 0
    recorded = ledger.get(world.history(), HISTORY, tenant="initech", release="v1.4.0")
    assert recorded is not None and recorded.status == Outcome.FAILED
