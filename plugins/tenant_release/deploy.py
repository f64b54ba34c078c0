"""One release: build once, then per target assume → copy → change set → (wait) → verify, and record it.

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

from tenant_release import classify, naming
from tenant_release.aws import artifacts, ledger, stacks
from tenant_release.aws.session import AwsSessions
from tenant_release.errors import BuildError, PermanentAwsError, StackFailedError, TenantReleaseError, VerificationError
from tenant_release.models import Artifact, DeployProgress, Outcome, Release, Target, TenantResult, ToolingAccount

log = logging.getLogger(__name__)

# Set by the release itself; a tenant's `parameters` may not override them.
RELEASE_PARAMETERS = (
    "ApplicationName",
    "TenantName",
    "CodeS3Bucket",
    "CodeS3Key",
    "ReleaseVersion",
    "PermissionsBoundaryArn",
)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_release(sessions: AwsSessions, tooling: ToolingAccount, release: Release, targets: list[Target]) -> Artifact:
    """Package, lint, validate and publish the application once; the same tag and code reuse the artifact."""
    template_text = artifacts.APP_TEMPLATE.read_text(encoding="utf-8")
    code = artifacts.package_application()
    retry = classify.RetryPolicy()
    s3 = sessions.tooling_client("s3", tooling.region)
    planned = artifacts.planned_artifact(
        bucket=tooling.artifact_bucket,
        release_prefix=tooling.release_prefix,
        version=release.version,
        code=code,
        template_text=template_text,
    )
    if retry.call("look for the build", artifacts.already_published, s3, planned, log=log.warning):
        # The same bytes under the same keys: this build was linted and validated when it was published. The
        # fleet's parameters may have changed since, so they are checked again.
        check_parameters(targets, artifacts.declared_parameters(template_text))
        artifact = planned.model_copy(update={"reused": True})
    else:
        artifacts.lint_template(template_text)
        cloudformation = sessions.tooling_client("cloudformation", tooling.region)
        retry.call("validate template", artifacts.validate_template, cloudformation, template_text, log=log.warning)
        check_parameters(targets, artifacts.declared_parameters(template_text))
        kms = sessions.tooling_client("kms", tooling.region)
        key_arn = retry.call("resolve tooling key", artifacts.resolve_kms_key_arn, kms, tooling.kms_key_alias, log=log.warning)
        artifact = retry.call(
            "publish artifact",
            artifacts.publish_artifact,
            s3,
            bucket=tooling.artifact_bucket,
            kms_key_id=key_arn,
            release_prefix=tooling.release_prefix,
            version=release.version,
            code=code,
            template_text=template_text,
            log=log.warning,
        )
    log.info(
        "%s artifact %s sha256=%s",
        "reused" if artifact.reused else "published",
        naming.s3_uri(artifact.bucket, artifact.code_key),
        artifact.sha256,
    )
    return artifact


def check_parameters(targets: list[Target], declared: list[str]) -> None:
    problems = []
    for target in targets:
        reserved = sorted(set(target.parameters) & set(RELEASE_PARAMETERS))
        unknown = sorted(set(target.parameters) - set(declared))
        if reserved:
            problems.append(f"tenant {target.name!r} sets {', '.join(reserved)}, which the release sets itself; remove them")
        if unknown:
            problems.append(
                f"tenant {target.name!r} sets parameter(s) {', '.join(unknown)} that the application template does not "
                f"declare (it declares: {', '.join(sorted(declared))})"
            )
    if problems:
        raise BuildError("the fleet file's parameters do not fit the template: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class ReleaseRun:
    """What every target's deploy in one run shares."""

    release: Release
    run_id: str
    artifact: Artifact
    tooling: ToolingAccount

    @property
    def session_name(self) -> str:
        return naming.session_name(release_tag=self.release.tag, run_id=self.run_id)

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

    def client(self, service: str) -> Any:
        return self.sessions.tenant_client(
            self.target, service, session_name=self.run.session_name, source_identity=self.run.source_identity
        )

    def parameters(self) -> dict[str, str]:
        artifact = self.run.artifact
        return {
            **self.target.parameters,
            "ApplicationName": self.target.function_name,
            "TenantName": self.target.name,
            "CodeS3Bucket": self.target.artifact_bucket,
            "CodeS3Key": artifact.code_key,
            "ReleaseVersion": artifact.version,
            # The boundary the target's bootstrap created, named by the same prefix it was given.
            "PermissionsBoundaryArn": naming.app_permissions_boundary_arn(
                account_id=self.target.account_id,
                region=self.target.region,
                prefix=naming.app_name_prefix(self.target.stack_name, self.target.function_name),
            ),
        }

    def digest(self) -> str:
        return naming.deploy_digest(
            template_sha256=self.run.artifact.template_sha256,
            code_sha256=self.run.artifact.sha256,
            parameters=self.parameters(),
        )

    def begin(self, progress: DeployProgress) -> DeployProgress:
        """Assume the role, copy the artifact in, start the change set. Returns the progress to finish with.

        What the stack held before is read once per run: a retry (or a resumed run) takes it from the
        history item its earlier attempt wrote, so the outcome still says what this run changed.
        """
        progress = progress.model_copy(deep=True)
        artifact, target, call = self.run.artifact, self.target, self.retry.call
        earlier = self.earlier_attempt()
        cloudformation = call("assume role", self.client, "cloudformation", log=log.warning)
        current = call("read stack", stacks.describe_stack, cloudformation, target.stack_name, log=log.warning)
        if earlier is not None:
            progress.started_at = earlier.started_at
            progress.version_before, progress.digest_before = earlier.version_before, earlier.digest_before
        else:
            before = current
            if before is not None and before.get("StackStatus") in {stacks.FAILED_CREATE_STATE, "REVIEW_IN_PROGRESS"}:
                # Tagged with the version it tried, but it holds no resources: nothing was deployed before.
                before = None
            progress.version_before = stacks.stack_tag(before, stacks.TAG_RELEASE_VERSION)
            progress.digest_before = stacks.stack_tag(before, stacks.TAG_DEPLOY_DIGEST)
        self.record(self.result(progress, status=Outcome.IN_PROGRESS))
        digest = self.digest()
        progress.artifact_uri = naming.s3_uri(target.artifact_bucket, artifact.code_key)
        if current is not None and current.get("StackStatus") in stacks.SUCCESS_STATES and (
            stacks.stack_tag(current, stacks.TAG_DEPLOY_DIGEST) == digest
        ):
            # The stack already runs this exact build from copies verified when they were made: nothing to copy.
            log.info("%s already holds this build (deploy digest %s): no copy needed", target.stack_name, digest)
        else:
            progress.kms_key_arn = self._copy_artifact()
        first_read = [current]  # read a moment ago, before the copies; a retry of this step reads the stack again

        def start_change_set() -> stacks.StackDeployStart:
            return stacks.start_deploy(
                cloudformation,
                stack_name=target.stack_name,
                template_url=template_url(target.artifact_bucket, target.region, artifact.template_key),
                parameters=self.parameters(),
                tags={
                    stacks.TAG_RELEASE_VERSION: artifact.version,
                    stacks.TAG_DEPLOY_DIGEST: digest,
                    stacks.TAG_MANAGED_BY: "tenant-release",
                },
                execution_role_arn=target.execution_role_arn,
                change_set_name=naming.change_set_name(version=artifact.version, deploy_digest=digest),
                deploy_digest=digest,
                stack=first_read.pop() if first_read else stacks.NOT_READ,
            )

        started = call("start change set", start_change_set, log=log.warning)
        progress.unchanged = started.unchanged
        progress.change_set = started.change_set_name
        progress.change_set_type = started.change_set_type
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
        s3 = self.sessions.tooling_client("s3", target.region)
        for key, sha in ((artifact.code_key, artifact.sha256), (artifact.template_key, artifact.template_sha256)):
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
        """After the stack settled: explain a failure from its events, or verify the function's version."""
        cloudformation = self.client("cloudformation")
        if stack_status not in stacks.SUCCESS_STATES:
            stacks.raise_for_failed_stack(cloudformation, self.target.stack_name, stack_status)
        reported = self.retry.call("verify", self.verify, log=log.warning)
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
        lambda_client = self.client("lambda")
        try:
            config = lambda_client.get_function_configuration(FunctionName=self.target.function_name)
        except ClientError as exc:
            if classify.is_retriable(exc):
                raise
            raise VerificationError(f"function {self.target.function_name} cannot be read: {classify.describe(exc)}") from None
        reported = (config.get("Environment") or {}).get("Variables", {}).get("RELEASE_VERSION")
        if reported != self.run.artifact.version:
            raise VerificationError(
                f"function {self.target.function_name} reports version {reported!r}, expected {self.run.artifact.version!r}"
            )
        return reported

    def smoke_test(self) -> None:
        """Invoke the function once; used for dev before any tenant is touched."""
        response = self.client("lambda").invoke(FunctionName=self.target.function_name, Payload=b"{}")
        if response.get("FunctionError") or response.get("StatusCode") != 200:
            payload = response["Payload"].read()[:500]
            raise VerificationError(
                f"smoke test of {self.target.function_name} failed: {response.get('FunctionError')} {payload!r}"
            )

    def result(self, progress: DeployProgress, *, status: Outcome, **fields: Any) -> TenantResult:
        fields.setdefault("note", "; ".join(progress.notes) or None)
        fields.setdefault("approved_by", progress.approved_by)
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
            **fields,
        )

    def failure(self, progress: DeployProgress, exc: BaseException) -> TenantResult:
        stack_status = exc.stack_status if isinstance(exc, StackFailedError) else None
        return self.result(progress, status=Outcome.FAILED, reason=failure_reason(exc), stack_status=stack_status)

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

    def record(self, result: TenantResult) -> None:
        if self.record_history:
            record_result(self.sessions, self.run.tooling, result)

    def run_to_completion(self, *, poll_interval: float = 5.0, timeout: float = 3600.0, sleep: Any = None) -> TenantResult:
        """The whole deploy in one call, waiting in this thread (outside Airflow: tests, the benchmark's plain script)."""
        import time

        pause = sleep or time.sleep
        progress = DeployProgress(started_at=utc_now())
        try:
            progress = self.begin(progress)
            waited = 0.0
            while not (polled := self.poll()).settled:
                if waited >= timeout:
                    raise PermanentAwsError(f"stack {self.target.stack_name} still {polled.status} after {timeout:.0f}s")
                pause(poll_interval)
                waited += poll_interval
            result = self.finish(progress, stack_status=polled.status)
        except Exception as exc:
            self.record(self.failure(progress, exc))
            raise
        self.record(result)
        return result


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TenantReleaseError):
        return str(exc)
    if isinstance(exc, ClientError):
        return classify.describe(exc)
    return f"{type(exc).__name__}: {exc}"


def template_url(bucket: str, region: str, key: str) -> str:
    suffix = "amazonaws.com.cn" if naming.partition_for(region) == "aws-cn" else "amazonaws.com"
    return f"https://{bucket}.s3.{region}.{suffix}/{key}"


def record_result(sessions: AwsSessions, tooling: ToolingAccount, result: TenantResult) -> None:
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    classify.RetryPolicy().call("record history", ledger.record, dynamodb, tooling.history_table, result, log=log.warning)


def record_results(sessions: AwsSessions, tooling: ToolingAccount, results: list[TenantResult]) -> None:
    dynamodb = sessions.tooling_client("dynamodb", tooling.region)
    classify.RetryPolicy().call("record history", ledger.record_many, dynamodb, tooling.history_table, results, log=log.warning)
