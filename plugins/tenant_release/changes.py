"""Finds, in one concurrent pass over the fleet, which planned tenants already hold the release.

A tenant whose stack is settled and tagged with this release's deploy digest (template, code and every
parameter) is recorded UNCHANGED here, without a change set and without a task instance of its own. Every
other tenant is deployed. A tenant that cannot be read (its role, its stack) is deployed too: its own task
meets the error and reports it in its own log, so no tenant is ever silently skipped.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tenant_release import classify
from tenant_release.aws import stacks
from tenant_release.aws.session import AwsSessions
from tenant_release.deploy import ReleaseRun, TargetDeployment, failure_reason, record_results, utc_now
from tenant_release.models import DeployProgress, FleetChanges, Outcome, PlannedTarget, Target, TenantResult

log = logging.getLogger(__name__)

# Reading a stack is an assume-role and one DescribeStacks: I/O-bound, so threads overlap the waits.
DEFAULT_CONCURRENCY = 16


@dataclass(frozen=True, kw_only=True)
class _Verdict:
    planned: PlannedTarget
    unchanged: TenantResult | None
    why: str


def find_changes(
    sessions: AwsSessions,
    run: ReleaseRun,
    planned: list[tuple[PlannedTarget, Target]],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    try_number: int | None = None,
) -> tuple[FleetChanges, list[TenantResult]]:
    """Split the planned tenants into those to deploy and those already at the release (their UNCHANGED results)."""

    def judge(entry: tuple[PlannedTarget, Target]) -> _Verdict:
        plan_entry, target = entry
        deployment = TargetDeployment(
            sessions=sessions,
            run=run,
            target=target,
            retry=classify.RetryPolicy(attempts=3),
            try_number=try_number,
            writer="fleet_changes",
        )
        started = utc_now()
        try:
            cloudformation = deployment.retry.call(
                "assume role",
                sessions.tenant_reader,
                target,
                "cloudformation",
                session_name=run.session_name,
                source_identity=run.source_identity,
            )
            stack = deployment.retry.call("read stack", stacks.describe_stack, cloudformation, target.stack_name)
            cloudformation.close()
        except Exception as exc:  # the tenant's own task meets this again and reports it
            return _Verdict(planned=plan_entry, unchanged=None, why=f"could not read its stack ({failure_reason(exc)})")
        if stack is None:
            return _Verdict(planned=plan_entry, unchanged=None, why="no stack yet")
        status = stack.get("StackStatus", "")
        if status not in stacks.SUCCESS_STATES:
            return _Verdict(planned=plan_entry, unchanged=None, why=f"stack is {status}")
        digest = deployment.digest()
        if stacks.stack_tag(stack, stacks.TAG_DEPLOY_DIGEST) != digest:
            version = stacks.stack_tag(stack, stacks.TAG_RELEASE_VERSION) or "-"
            return _Verdict(planned=plan_entry, unchanged=None, why=f"holds {version}, not this build")
        version = stacks.stack_tag(stack, stacks.TAG_RELEASE_VERSION)
        result = deployment.result(
            DeployProgress(started_at=started, version_before=version, digest_before=digest),
            status=Outcome.UNCHANGED,
            stack_status=status,
            version_after=version,
            reason="already at this release (same template, code and parameters); no change set",
        )
        return _Verdict(planned=plan_entry, unchanged=result, why="already at this release")

    if not planned:
        return FleetChanges(deploy=()), []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(planned))), thread_name_prefix="fleet-changes") as pool:
        verdicts = list(pool.map(judge, planned))
    deploy = tuple(v.planned for v in verdicts if v.unchanged is None)
    unchanged = [v.unchanged for v in verdicts if v.unchanged is not None]
    for verdict in verdicts:
        log.info("%-24s %s", verdict.planned.tenant, "UNCHANGED" if verdict.unchanged else f"deploy: {verdict.why}")
    return FleetChanges(deploy=deploy, unchanged=tuple(r.tenant for r in unchanged)), unchanged


def record_unchanged(sessions: AwsSessions, run: ReleaseRun, results: list[TenantResult]) -> None:
    if results:
        record_results(sessions, run.tooling, results)
