"""One release (built by `build`): per target assume → copy → change set → (wait) → verify, and record it.

Plain Python over boto3 clients handed out by `AwsSessions`, so every step runs without Airflow. A
target's deploy is split at its one long wait (`begin` / `poll` / `finish`), so the Airflow layer can
wait in the triggerer and hold no worker slot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify, health, naming
from tenant_release.aws import alarms, artifacts, leases, ledger, stacks
from tenant_release.aws.session import AwsSessions
from tenant_release.errors import (
    AlarmRollbackError,
    PermanentAwsError,
    RollbackRefusedError,
    RollbackTriggerError,
    StackBusyError,
    StackFailedError,
    TenantBusyError,
    TenantReleaseError,
    VerificationError,
)
from tenant_release.models import (
    Application,
    Artifact,
    DeployProgress,
    Outcome,
    Release,
    Target,
    TenantResult,
    ToolingAccount,
    VerifyMode,
)
from tenant_release.tags import is_newer

log = logging.getLogger(__name__)

# A tenant's lease lasts this long unless renewed: a holder that died or was cancelled (its task cleared or marked
# failed while its trigger waited) frees the tenant this soon. A live deploy renews it while it waits (every
# LEASE_RENEW_SECONDS: one UpdateItem per tenant every few minutes, not one per poll).
LEASE_SECONDS = 15 * 60.0
LEASE_RENEW_SECONDS = 5 * 60.0
# CloudFormation takes at most this many rollback triggers per stack operation.
MAX_ROLLBACK_TRIGGERS = 5


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def precise_now() -> str:
    """Now to the microsecond: orders writes of one run that fall in the same second (see aws.ledger)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def run_identity(*, release_tag: str, run_id: str, triggered_by: str | None) -> str:
    """Who writes a run's history: the orchestrator session it acts as, and who triggered it."""
    session = naming.session_name(release_tag=release_tag, run_id=run_id)
    return f"session {session}" + (f", triggered by {triggered_by}" if triggered_by else "")


def release_parameters(
    application: Application, target: Target, version: str, *, packaged: bool = True, keys: dict[str, str] | None = None
) -> dict[str, str]:
    """What the release sets on a target, under the names the application's template uses (unnamed: not set).

    The bucket is set only when the build packaged objects: a template with no local code path does not declare it.
    """
    names = application.parameters
    values = {
        **(keys or {}),  # the keys of objects the template takes by parameter (key_parameters)
        names.version: version,
        names.tenant: target.name,
        names.bucket if packaged or keys else None: target.artifact_bucket,
        names.name: target.function_name,
        # The boundary the target's bootstrap created, named by the same prefix it was given.
        names.permissions_boundary: naming.app_permissions_boundary_arn(
            account_id=target.account_id,
            region=target.region,
            prefix=naming.app_name_prefix(target.stack_name, target.function_name),
        ),
    }
    return {name: value for name, value in values.items() if name}


@dataclass(frozen=True, kw_only=True)
class ReleaseRun:
    """What every target's deploy in one run shares."""

    release: Release
    run_id: str
    artifact: Artifact
    tooling: ToolingAccount
    application: Application = field(default_factory=Application)  # unset: the bundled sample
    started_at: str | None = None  # when the run was planned: orders its history writes against other runs'
    triggered_by: str | None = None  # the Airflow user who triggered the run, if known
    allow_rollback: str = ""  # why this run may deploy over a newer version; empty: it may not

    @property
    def session_name(self) -> str:
        return naming.session_name(release_tag=self.release.tag, run_id=self.run_id)

    @property
    def identity(self) -> str:
        return run_identity(release_tag=self.release.tag, run_id=self.run_id, triggered_by=self.triggered_by)

    @property
    def source_identity(self) -> str:
        return naming.source_identity(release_tag=self.release.tag)


@dataclass(kw_only=True)
class TargetDeployment:
    """One target's deploy; its `DeployProgress` travels through Airflow's deferrals and holds no secret."""

    sessions: AwsSessions
    run: ReleaseRun
    target: Target
    retry: classify.RetryPolicy = field(default_factory=classify.RetryPolicy)
    record_history: bool = True  # dev is deployed like a tenant but is not a tenant of the history
    try_number: int | None = None  # the task instance's try, recorded with each outcome
    writer: str = "deploy"
    # Refuse to deploy over a newer version (tenants). Dev takes whatever is released, a hotfix of an older line too.
    guard_rollback: bool = True
    # How long the tenant's lease lasts before another run may take it, and how often a waiting deploy renews it.
    lease_seconds: float = LEASE_SECONDS
    lease_renew_seconds: float = LEASE_RENEW_SECONDS

    def client(self, service: str) -> Any:
        """The tenant's client for `service`; a throttled call is sent again on its own (see `RetryPolicy.around`)."""
        client = self.sessions.tenant_client(
            self.target, service, session_name=self.run.session_name, source_identity=self.run.source_identity
        )
        return self.retry.around(client, log=log.warning)

    def parameters(self) -> dict[str, str]:
        """The target's own parameters and what the release sets, under the names the application's template uses."""
        run, artifact = self.run, self.run.artifact
        release = release_parameters(
            run.application, self.target, artifact.version, packaged=bool(artifact.objects), keys=artifact.key_parameters
        )
        return {**self.target.parameters, **release}

    def digest(self) -> str:
        return naming.deploy_digest(build_sha256=self.run.artifact.sha256, parameters=self.parameters())

    def begin(self, progress: DeployProgress, *, wait_for_change_set: bool = True) -> DeployProgress:
        """Assume the role, copy the artifact in, start the change set. Returns the progress to finish with.

        What the stack held before is read once per run: a retry (or a resumed run) takes it from the
        history item its earlier attempt wrote, so the outcome still says what this run changed, unless another
        run changed the stack since. The rollback check is always made against the stack as it is now.
        """
        progress = progress.model_copy(deep=True)
        artifact, target, call = self.run.artifact, self.target, self.retry.call
        busy = self.take_lease()
        if busy is not None:  # never a competing stack update: the caller may wait for the lease (see the trigger)
            raise TenantBusyError(f"{self.busy_reason(busy)}; nothing was started", holder_release=busy.release)
        earlier = self.earlier_attempt()
        cloudformation = call("assume role", self.client, "cloudformation", log=log.warning)
        current = call("read stack", stacks.describe_stack, cloudformation, target.stack_name, log=log.warning)
        digest = self.digest()
        change_set_name = naming.change_set_name(version=artifact.version, deploy_digest=digest)
        # Before anything is recorded or copied: someone else's stack operation raises StackBusyError, to wait for.
        call(
            "read stack",
            stacks.operation_under_way,
            cloudformation,
            stack_name=target.stack_name,
            stack=current,
            change_set_name=change_set_name,
            log=log.warning,
        )
        before = current
        if before is not None and before.get("StackStatus") in {stacks.FAILED_CREATE_STATE, "REVIEW_IN_PROGRESS"}:
            # Tagged with the version it tried, but it holds no resources: nothing was deployed before.
            before = None
        holds = stacks.stack_tag(before, stacks.TAG_RELEASE_VERSION)
        holds_digest = stacks.stack_tag(before, stacks.TAG_DEPLOY_DIGEST)
        if earlier is not None:
            progress.started_at = earlier.started_at
        if earlier is not None and holds_digest in {earlier.digest_before, digest}:
            # The stack holds what the earlier attempt found, or this run's own build: report what this run changed.
            progress.version_before, progress.digest_before = earlier.version_before, earlier.digest_before
        else:  # first attempt, or another run deployed the stack since the earlier attempt
            progress.version_before, progress.digest_before = holds, holds_digest
        # Against what the stack holds now, never a value an earlier attempt read: another run may have shipped a
        # newer version in between (runs overlap).
        self.check_rollback(progress, holds=holds)
        holds_this_build = (
            current is not None
            and current.get("StackStatus") in stacks.SUCCESS_STATES
            and (stacks.stack_tag(current, stacks.TAG_DEPLOY_DIGEST) == digest)
        )
        # Before anything is copied: a tenant whose rollback alarms cannot be used is not deployed without them (a
        # stack that already holds this build gets no change set, so it needs none).
        rollback_configuration = None if holds_this_build else self.rollback_configuration(current)
        self.record(self.result(progress, status=Outcome.IN_PROGRESS))
        progress.artifact_uri = naming.s3_uri(target.artifact_bucket, artifact.template_key)
        if holds_this_build:
            # The stack already runs this exact build from copies verified when they were made: nothing to copy.
            log.info("%s already holds this build (deploy digest %s): no copy needed", target.stack_name, digest)
        else:
            progress.kms_key_arn = self._copy_artifact()
        first_read = [current]  # read a moment ago, before the copies; a retry of this step reads the stack again

        def start_change_set() -> stacks.StackDeployStart:
            return stacks.start_deploy(
                cloudformation,
                stack_name=target.stack_name,
                template_url=artifacts.template_url(target.artifact_bucket, target.region, artifact.template_key),
                parameters=self.parameters(),
                tags={
                    stacks.TAG_RELEASE_VERSION: artifact.version,
                    stacks.TAG_DEPLOY_DIGEST: digest,
                    stacks.TAG_MANAGED_BY: "tenant-release",
                },
                execution_role_arn=target.execution_role_arn,
                capabilities=[str(c) for c in self.run.application.capabilities],
                rollback_configuration=rollback_configuration,
                change_set_name=change_set_name,
                deploy_digest=digest,
                stack=first_read.pop() if first_read else stacks.NOT_READ,
                wait=wait_for_change_set,
            )

        started = call("start change set", start_change_set, log=log.warning)
        progress.unchanged = started.unchanged
        progress.change_set = started.change_set_name
        progress.change_set_type = started.change_set_type
        progress.change_set_pending = started.pending
        return progress

    def check_rollback(self, progress: DeployProgress, *, holds: str | None = None) -> None:
        """Refuse to replace a newer version unless the run says why; an allowed rollback is noted.

        `holds`: the version the stack holds now (default: the progress's `version_before`).
        """
        rollback_from = self.newer_than_release(progress.version_before if holds is None else holds)
        progress.rollback_from = None
        if rollback_from is None:
            return
        if not self.run.allow_rollback:
            raise RollbackRefusedError(
                f"stack {self.target.stack_name} holds {rollback_from}, newer than {self.run.artifact.version}; nothing "
                "was deployed. To roll back, trigger with allow_rollback set to the reason (it is recorded in the history)."
            )
        progress.note(f"rollback from {rollback_from}: {self.run.allow_rollback}")
        progress.rollback_from = rollback_from

    def newer_than_release(self, version: str | None) -> str | None:
        """`version` (what the target holds), if it is newer than the release (deploying would roll it back)."""
        return version if self.guard_rollback and is_newer(version, self.run.artifact.version) else None

    # --- health alarms: the tenant's own signal that its application is unhealthy ------------------------------

    def firing_alarms(self) -> list[alarms.FiringAlarm]:
        """The tenant's health alarms in ALARM now, read in its own account and region as this run's session."""
        if not self.target.alarms:
            return []
        return self.retry.call(
            "read alarms", alarms.firing_alarms, self.client("cloudwatch"), self.target.alarms, log=log.warning
        )

    def rollback_configuration(self, stack: dict[str, Any] | None) -> dict[str, Any] | None:
        """The change set's RollbackConfiguration: the tenant's matching alarms when it asks for `rollback_on_alarm`.

        A tenant that no longer asks for it has its stack's earlier triggers removed: CloudFormation keeps using the
        last ones it was given otherwise. None: nothing to say (the stack has no triggers and the tenant wants none).
        """
        target = self.target
        if not target.rollback_on_alarm:
            earlier = ((stack or {}).get("RollbackConfiguration") or {}).get("RollbackTriggers")
            return {"RollbackTriggers": []} if earlier else None
        where = f"account {target.account_id} region {target.region}"
        patterns = ", ".join(target.alarms) or "(none)"
        if not target.alarms:
            raise RollbackTriggerError(
                f"tenant {target.name} sets rollback_on_alarm but names no alarms; nothing was deployed. Fix: list its "
                'health alarms in the fleet file (alarms: ["tenant-app-{name}-*"]) or set rollback_on_alarm: false'
            )
        matching = self.retry.call(
            "read alarms", alarms.matching_alarms, self.client("cloudwatch"), target.alarms, log=log.warning
        )
        if not matching:
            raise RollbackTriggerError(
                f"tenant {target.name} asks CloudFormation to roll back on its alarms ({patterns}), but no CloudWatch "
                f"alarm in {where} matches them; nothing was deployed. Fix: create the alarms there, correct the "
                "patterns in the fleet file, or set rollback_on_alarm: false for this tenant"
            )
        if len(matching) > MAX_ROLLBACK_TRIGGERS:
            names = ", ".join(alarm["AlarmName"] for alarm in matching)
            raise RollbackTriggerError(
                f"tenant {target.name}'s alarms ({patterns}) match {len(matching)} alarms in {where}: {names}; "
                f"CloudFormation takes at most {MAX_ROLLBACK_TRIGGERS} rollback triggers, so nothing was deployed. Fix: "
                f"narrow the patterns to at most {MAX_ROLLBACK_TRIGGERS} alarms, or name one composite alarm that "
                "combines them"
            )
        for alarm in matching:
            if alarm.get("StateValue") == alarms.FIRING:  # CloudFormation will undo this deploy as soon as it starts
                log.warning(
                    "%s: %s, before the deploy: CloudFormation will roll it back", target.name, alarms.as_firing(alarm).describe()
                )
        log.info(
            "%s: CloudFormation rolls back on %s (monitoring %d min)",
            target.name,
            ", ".join(alarm["AlarmName"] for alarm in matching),
            target.rollback_monitoring_minutes,
        )
        return {
            "RollbackTriggers": alarms.rollback_triggers(matching),
            "MonitoringTimeInMinutes": target.rollback_monitoring_minutes,
        }

    def raise_for_alarm_rollback(self, progress: DeployProgress, stack_status: str) -> None:
        """A stack rolled back while one of its rollback alarms is firing was rolled back by that alarm: say so."""
        if not (self.target.rollback_on_alarm and stack_status in stacks.ROLLED_BACK_STATES):
            return
        try:
            firing = self.firing_alarms()
        except Exception as exc:  # the rollback is reported from its stack events instead
            log.warning("%s: could not read its alarms after the rollback: %s", self.target.name, failure_reason(exc))
            return
        if not firing:
            return
        described = [alarm.describe() for alarm in firing]
        stack = self.target.stack_name
        if stack_status == stacks.FAILED_CREATE_STATE:
            now = f"The stack {stack} was being created and holds nothing (the next release creates it anew)"
        else:
            now = f"The stack {stack} runs {progress.version_before or 'what it ran before'} again"
        raise AlarmRollbackError(
            f"rolled back by CloudFormation: {'; '.join(described)}. {now}. Fix: find why the alarm fired (it is the "
            "tenant's health signal), then redeploy this tenant",
            stack_status=stack_status,
            alarms=described,
            events=stacks.failure_reasons(self.client("cloudformation"), self.target.stack_name),
        )

    # --- the tenant's lease: one run at a time deploys a target ---------------------------------------------------

    def _lease(self, what: str, step: Any, **more: Any) -> Any:
        """One call on this target's lease, as this run, retried like every AWS call."""
        return self.retry.call(
            what,
            step,
            self.sessions.tooling_client("dynamodb", self.run.tooling.region),
            self.run.tooling.leases_table,
            tenant=self.target.name,
            run_id=self.run.run_id,
            log=log.warning,
            **more,
        )

    def take_lease(self) -> leases.Lease | None:
        """Take (or, in this same run, take again) the target's lease. None: held now; else the other run's lease."""
        return self._lease("take lease", leases.acquire, release=self.run.release.tag, seconds=self.lease_seconds)

    def renew_lease(self) -> None:
        try:
            if not self._lease("renew lease", leases.renew, seconds=self.lease_seconds):
                # The stack operation is under way already: another run finds the stack busy and waits for it.
                log.warning("%s: this run's lease expired and was taken by another run", self.target.name)
        except Exception as exc:  # the deploy goes on; a later renewal may pass before the lease runs out
            log.warning("%s: could not renew the lease: %s", self.target.name, failure_reason(exc))

    def release_lease(self) -> None:
        try:
            self._lease("release lease", leases.release)
        except Exception as exc:  # the deploy's outcome stands; the lease expires by itself
            log.warning("%s: could not release the lease (it expires by itself): %s", self.target.name, failure_reason(exc))

    def busy_reason(self, lease: leases.Lease) -> str:
        return f"tenant {self.target.name} is being deployed by {lease.describe()}"

    def execute_when_ready(self, progress: DeployProgress) -> DeployProgress | None:
        """A change set `begin` left being created: None while it still is, else the progress once it executes."""
        assert progress.change_set is not None
        started = self.retry.call(
            "execute change set",
            stacks.execute_when_ready,
            self.client("cloudformation"),
            stack_name=self.target.stack_name,
            change_set_name=progress.change_set,
            change_set_type=progress.change_set_type,
            log=log.warning,
        )
        if started is None:
            return None
        progress = progress.model_copy(deep=True)
        progress.change_set_pending = False
        progress.unchanged = started.unchanged
        progress.change_set = started.change_set_name
        return progress

    def _copy_artifact(self) -> str:
        """Copy the build into the tenant's bucket under the tenant's key; returns that key's ARN.

        The orchestrator makes the copy: it reads in its own account and writes into the tenant's bucket under
        the tenant's key, which the tenant's bootstrap grants to that one role. So nothing in the tooling account
        names a tenant, and its policies do not grow with the fleet.
        """
        artifact, target, call = self.run.artifact, self.target, self.retry.call
        key_arn = call(
            "resolve tenant key", artifacts.resolve_kms_key_arn, self.client("kms"), target.kms_key_alias, log=log.warning
        )
        s3 = self.retry.around(self.sessions.tooling_client("s3", target.region), log=log.warning)
        for key, sha in artifacts.artifact_files(artifact):
            call(
                "copy artifact",
                artifacts.copy_into_tenant,
                s3,
                source_bucket=artifact.bucket,
                source_key=key,
                sha256=sha,
                target_bucket=target.artifact_bucket,
                target_key=key,
                kms_key_arn=key_arn,
                log=log.warning,
            )
            log.info("copied s3://%s/%s (SSE-KMS %s, SHA-256 verified)", target.artifact_bucket, key, key_arn)
        return key_arn

    def poll(self) -> stacks.StackPoll:
        return self.retry.call(
            "poll stack", stacks.poll_stack, self.client("cloudformation"), self.target.stack_name, log=log.warning
        )

    def finish(self, progress: DeployProgress, *, stack_status: str) -> TenantResult:
        """After the stack settled: explain a failure from its events, or check that it runs the release."""
        cloudformation = self.client("cloudformation")
        if stack_status not in stacks.SUCCESS_STATES:
            self.raise_for_alarm_rollback(progress, stack_status)
            stacks.raise_for_failed_stack(cloudformation, self.target.stack_name, stack_status)
        reported = self.retry.call("verify", self.verify, log=log.warning)
        if self.run.application.health:
            health.check_all(self, self.run.application.health)
        # UNCHANGED means this run found the stack exactly as the release wants it, not merely that the
        # last attempt had nothing left to do.
        unchanged = progress.digest_before == self.digest()
        return self.result(
            progress,
            status=Outcome.UNCHANGED if unchanged else Outcome.SUCCEEDED,
            stack_status=stack_status,
            version_after=reported,
        )

    def verify(self) -> str:
        """The version the target now runs, as the application's verify mode reads it; a mismatch fails it."""
        expected = self.run.artifact.version
        if self.run.application.verify_mode == VerifyMode.STACK:
            stack = stacks.describe_stack(self.client("cloudformation"), self.target.stack_name)
            reported = stacks.stack_tag(stack, stacks.TAG_RELEASE_VERSION)
            if reported != expected or stacks.stack_tag(stack, stacks.TAG_DEPLOY_DIGEST) != self.digest():
                raise VerificationError(
                    f"stack {self.target.stack_name} settled tagged with version {reported!r}, expected {expected!r} "
                    "and this build's deploy digest"
                )
            return reported
        lambda_client = self.client("lambda")
        try:
            config = lambda_client.get_function_configuration(FunctionName=self.target.function_name)
        except ClientError as exc:
            if classify.is_retriable(exc):
                raise
            raise VerificationError(f"function {self.target.function_name} cannot be read: {classify.describe(exc)}") from None
        reported = (config.get("Environment") or {}).get("Variables", {}).get("RELEASE_VERSION")
        if reported != expected:
            raise VerificationError(f"function {self.target.function_name} reports version {reported!r}, expected {expected!r}")
        return reported

    def smoke_test(self) -> None:
        """Invoke the function once; used for dev before any tenant is touched (an application with a function)."""
        if self.run.application.verify_mode != VerifyMode.FUNCTION_VERSION:
            log.info("no smoke test: the application's verify mode is %s", self.run.application.verify_mode)
            return
        response = self.client("lambda").invoke(FunctionName=self.target.function_name, Payload=b"{}")
        if response.get("FunctionError") or response.get("StatusCode") != 200:
            payload = response["Payload"].read()[:500]
            raise VerificationError(
                f"smoke test of {self.target.function_name} failed: {response.get('FunctionError')} {payload!r}"
            )

    def result(self, progress: DeployProgress, *, status: Outcome, **fields: Any) -> TenantResult:
        fields.setdefault("note", "; ".join(progress.notes) or None)
        fields.setdefault("approved_by", progress.approved_by)
        fields.setdefault("approval", progress.approval)  # with its artifact sha256 and identity: the audit trail
        return TenantResult(
            tenant=self.target.name,
            account_id=self.target.account_id,
            region=self.target.region,
            release=self.run.release.tag,
            version=self.run.artifact.version,
            status=status,
            run_id=self.run.run_id,
            started_at=progress.started_at,
            finished_at=utc_now(),
            version_before=progress.version_before,
            digest_before=progress.digest_before,
            artifact_uri=progress.artifact_uri,
            sha256=self.run.artifact.sha256,
            source_commit=self.run.artifact.source_commit,
            run_started_at=self.run.started_at,
            attempt_started_at=progress.attempt_started_at,
            try_number=self.try_number,
            written_by=self.writer,
            identity=self.run.identity,
            # A rollback only when the run allowed one; a refused one deployed nothing.
            rollback_from=progress.rollback_from if self.run.allow_rollback else None,
            **fields,
        )

    def record_failure(self, progress: DeployProgress, exc: BaseException) -> TenantResult:
        """Record why the deploy failed.

        A run refused because another run of the same release holds the tenant touched nothing: its refusal is kept
        as an attempt, never as the tenant's latest outcome of that release (the holding run's result is that).
        """
        result = self.failure(progress, exc)
        same_release = isinstance(exc, TenantBusyError) and exc.holder_release == self.run.release.tag
        self.record(result, attempt_only=same_release)
        return result

    def failure(self, progress: DeployProgress, exc: BaseException) -> TenantResult:
        stack_status = exc.stack_status if isinstance(exc, StackFailedError) else None
        status = Outcome.ROLLED_BACK if isinstance(exc, AlarmRollbackError) else Outcome.FAILED
        return self.result(progress, status=status, reason=failure_reason(exc), stack_status=stack_status)

    def earlier_attempt(self) -> TenantResult | None:
        """This tenant's history item if an earlier attempt of this same run wrote it."""
        if not self.record_history:
            return None
        dynamodb = self.sessions.tooling_client("dynamodb", self.run.tooling.region)
        found = self.retry.call(
            "read history",
            ledger.get,
            dynamodb,
            self.run.tooling.history_table,
            tenant=self.target.name,
            release=self.run.release.tag,
            log=log.warning,
        )
        return found if found is not None and found.run_id == self.run.run_id else None

    def under_way_in_this_run(self) -> str | None:
        """Why this run's deploy of the tenant has begun already (an earlier try or trigger of it started it), or None.

        A pause or abort read now must not stop such a deploy: the tenant would be reported SKIPPED while this
        run's change to its stack runs on, unobserved. Begun: an earlier attempt of this run recorded it
        IN_PROGRESS and made its change set; or the stack has an operation under way carrying this deploy's digest
        (its tag, or this deploy's change set executing). Costs a history read and two or three CloudFormation
        calls: ask it only when a control would stop the tenant.
        """
        if not self.record_history:
            return None
        earlier = self.earlier_attempt()
        call, stack_name = self.retry.call, self.target.stack_name
        cloudformation = call("assume role", self.client, "cloudformation", log=log.warning)
        stack = call("read stack", stacks.describe_stack, cloudformation, stack_name, log=log.warning)
        if stack is None:
            return None
        digest = self.digest()
        change_set = call(
            "read change set",
            stacks.deploy_change_set,
            cloudformation,
            stack_name=stack_name,
            stack=stack,
            change_set_name=naming.change_set_name(version=self.run.artifact.version, deploy_digest=digest),
            deploy_digest=digest,
            digest_before=earlier.digest_before if earlier is not None else None,
            log=log.warning,
        )
        status = stack["StackStatus"]
        executing = change_set is not None and change_set.get("ExecutionStatus") == "EXECUTE_IN_PROGRESS"
        if status.endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
            if executing or stacks.stack_tag(stack, stacks.TAG_DEPLOY_DIGEST) == digest:
                return f"stack {stack_name} is {status} with this deploy's change (deploy digest {digest[:12]})"
        if earlier is not None and earlier.status == Outcome.IN_PROGRESS and change_set is not None:
            return (
                f"an earlier attempt of this run began it at {earlier.attempt_started_at or earlier.started_at} "
                f"(change set {change_set['ChangeSetName']}: {change_set.get('ExecutionStatus')}, stack {status})"
            )
        return None

    def record(self, result: TenantResult, *, attempt_only: bool = False) -> None:
        try:
            if self.record_history:
                record_result(self.sessions, self.run.tooling, result, attempt_only=attempt_only)
        finally:
            if result.status != Outcome.IN_PROGRESS:
                # The deploy ended (success, failure, skip): the tenant is free for the next run, even when its
                # outcome could not be written. Only this run's lease is deleted, so a run that never took it
                # (skipped, or refused as busy) frees nothing.
                self.release_lease()

    def run_to_completion(self, *, poll_interval: float = 5.0, timeout: float = 3600.0, sleep: Any = None) -> TenantResult:
        """The whole deploy in one call, waiting in this thread (outside Airflow: tests, the benchmark's plain script)."""
        import time

        pause = sleep or time.sleep
        progress = DeployProgress(started_at=utc_now())
        try:
            waited = 0.0
            while True:
                try:
                    progress = self.begin(progress)
                    break
                except StackBusyError as busy:
                    if waited >= timeout:
                        raise StackBusyError(
                            f"{busy}; still {busy.stack_status} after {timeout:.0f}s", stack_status=busy.stack_status
                        ) from None
                    log.info("%s", busy)
                    pause(poll_interval)
                    waited += poll_interval
            renewed = waited  # `begin` took the lease just now (each try of it in the busy wait took it again)
            while not (polled := self.poll()).settled:
                if waited >= timeout:
                    raise PermanentAwsError(f"stack {self.target.stack_name} still {polled.status} after {timeout:.0f}s")
                pause(poll_interval)
                waited += poll_interval
                if waited - renewed >= self.lease_renew_seconds:
                    self.renew_lease()
                    renewed = waited
            result = self.finish(progress, stack_status=polled.status)
        except Exception as exc:
            self.record_failure(progress, exc)
            raise
        self.record(result)
        return result


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TenantReleaseError):
        return str(exc)
    if isinstance(exc, ClientError):
        return classify.describe(exc)
    return f"{type(exc).__name__}: {exc}"


def record_result(sessions: AwsSessions, tooling: ToolingAccount, result: TenantResult, *, attempt_only: bool = False) -> bool:
    """Make the result the tenant's latest outcome unless a newer one is recorded; keep it as an attempt either way."""
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    return classify.RetryPolicy().call(
        "record history",
        ledger.record,
        dynamodb,
        tooling.history_table,
        result,
        attempts_table=tooling.attempts_table,
        key=ledger.attempt_key(result),  # once: a retried write adds no second attempt
        attempt_only=attempt_only,
        log=log.warning,
    )


def record_results(
    sessions: AwsSessions,
    tooling: ToolingAccount,
    results: list[TenantResult],
    *,
    expected: dict[str, TenantResult] | None = None,
    attempt_only: frozenset[str] = frozenset(),
) -> list[str]:
    """`record_result` for many tenants at once; returns those whose newer outcome was kept.

    `attempt_only`: tenants whose result is kept as an attempt only (see `ledger.record`).
    """
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    return ledger.record_many(
        dynamodb,
        tooling.history_table,
        results,
        attempts_table=tooling.attempts_table,
        expected=expected,
        retry=classify.RetryPolicy(),
        attempt_only=attempt_only,
    )
