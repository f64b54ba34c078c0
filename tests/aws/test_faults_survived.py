"""Faults a release must survive, one test each, on in-process moto with injected faults.

moto cannot throttle, deny, roll back, corrupt a copy or expire a session, so `tests.faults` injects those around
the real moto clients. The moto world (bootstrapped accounts and two builds) is the one of `test_deploy_aws`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tenant_release.aws.session import AwsSessions
from tenant_release.classify import RetryPolicy
from tenant_release.models import Outcome

from tests.aws.test_deploy_aws import (  # noqa: F401  (its module-scoped moto world and fixtures serve here too)
    ACME,
    GLOBEX,
    INITECH,
    UMBRELLA,
    World,
    clean_slate,
    count,
    deploy,
    faults,
    recorder,
    sessions,
    with_status,
    world,
)
from tests.faults import Faults

TENANTS = {"acme": ACME, "globex": GLOBEX, "initech": INITECH, "umbrella": UMBRELLA}


def stack_updates(world: World, tenant: str) -> int:
    """How many updates CloudFormation started on the tenant's stack, from its own events."""
    target = world.loaded.target(tenant)
    cloudformation = world.inspect("cloudformation", target.account_id, target.region)
    pages = cloudformation.get_paginator("describe_stack_events").paginate(StackName=target.stack_name)
    events = [event for page in pages for event in page["StackEvents"]]
    return sum(
        1
        for event in events
        if event["ResourceType"] == "AWS::CloudFormation::Stack" and event["ResourceStatus"] == "UPDATE_IN_PROGRESS"
    )


def test_throttling_storm(world: World, sessions: AwsSessions, faults: Faults) -> None:
    """A third of CloudFormation, STS, S3 and KMS calls throttled: every tenant ships, each stack updated once."""
    for tenant in TENANTS:
        assert deploy(world.deployment(sessions, tenant, run_id="run-1")).status == Outcome.SUCCEEDED
    throttled: list[int] = []  # indexes into faults.calls of the calls answered with a throttle

    def every_third_call() -> Any:
        seen = iter(range(1, 1_000_000))
        return lambda kwargs: next(seen) % 3 == 0 and not throttled.append(len(faults.calls) - 1)

    codes = {"cloudformation": "Throttling", "sts": "RequestLimitExceeded", "s3": "SlowDown", "kms": "ThrottlingException"}
    for service, code in codes.items():
        faults.add(service=service, operation="*", code=code, message="Rate exceeded", when=every_third_call())
    first_call = len(faults.calls)
    sleeps: list[float] = []

    results = {
        tenant: deploy(world.deployment(sessions, tenant, version="1.5.0", run_id="run-2", retry=RetryPolicy(sleep=sleeps.append)))
        for tenant in TENANTS
    }

    assert {tenant: (r.status, r.version_after) for tenant, r in results.items()} == {
        tenant: (Outcome.SUCCEEDED, "1.5.0") for tenant in TENANTS
    }
    stormed = Counter(service for service, _, _ in faults.calls[first_call:] if service in codes)
    hit = Counter(faults.calls[index][0] for index in throttled)
    assert all(hit[service] == stormed[service] // 3 > 0 for service in codes), (hit, stormed)  # a third of each
    assert len(sleeps) == len(throttled)  # each throttled call waited, then was sent again
    reached = Counter(call for index, call in enumerate(faults.calls) if index >= first_call and index not in throttled)
    for tenant, account in TENANTS.items():
        assert reached["cloudformation", account, "execute_change_set"] == 1, tenant
        assert reached["cloudformation", account, "update_stack"] == 0, tenant
        assert stack_updates(world, tenant) == 1, tenant
