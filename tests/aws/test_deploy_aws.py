"""The AWS layer against moto: build once, then per tenant assume → copy → change set → verify, and the history.

No Airflow. One moto world per module (bootstrap and the two builds cost seconds); every test starts from
bootstrapped accounts with no application stack, no tenant copy and an empty history. moto cannot throttle,
deny, roll back or corrupt a copy, so `tests.faults` injects those around the real moto clients.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import moto_compat
import pytest
from tenant_release import naming
from tenant_release.aws import ledger
from tenant_release.aws.artifacts import SAMPLE_APP_DIR
from tenant_release.aws.bootstrap import bootstrap_fleet
from tenant_release.aws.session import AwsSessions
from tenant_release.aws.stacks import describe_stack, stack_tag
from tenant_release.build import build_release
from tenant_release.changes import find_changes
from tenant_release.classify import RetryPolicy
from tenant_release.config import LoadedFleet, load_fleet
from tenant_release.deploy import ReleaseRun, TargetDeployment
from tenant_release.errors import (
    RollbackRefusedError,
    StackFailedError,
)
from tenant_release.models import Artifact, DeployProgress, Outcome, PlannedTarget, TenantResult
from tenant_release.tags import parse_release_tag

from tests.conftest import ORCHESTRATOR_PRINCIPAL, bootstrap, emulated_aws
from tests.faults import Faults

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet.yaml"
TOOLING = "123456789012"
ACME, GLOBEX, INITECH, UMBRELLA = "111111111111", "222222222222", "333333333333", "044444444444"
TOOLING_KEY_ALIAS = "alias/tenant-release-artifacts"
TENANT_KEY_ALIAS = "alias/tenant-release-tenant"
HISTORY = "tenant-release-history"


@dataclass
class World:
    loaded: LoadedFleet
    artifacts: dict[str, Artifact]
    base_session: boto3.Session  # shared: a new session reloads every service model (~0.1 s each)
    _clients: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    def inspect(self, service: str, account: str, region: str) -> Any:
        """A plain client acting in `account`, outside the code under test (moto lets any role be assumed)."""
        key = (service, account, region)
        if key not in self._clients:
            if account == TOOLING:
                self._clients[key] = boto3.client(service, region_name=region)
            else:
                creds = boto3.client("sts", region_name="us-east-1").assume_role(
                    RoleArn=f"arn:aws:iam::{account}:role/inspector", RoleSessionName="inspector"
                )["Credentials"]
                self._clients[key] = boto3.client(
                    service,
                    region_name=region,
                    aws_access_key_id=creds["AccessKeyId"],
                    aws_secret_access_key=creds["SecretAccessKey"],
                    aws_session_token=creds["SessionToken"],
                )
        return self._clients[key]

    def deployment(
        self,
        sessions: AwsSessions,
        tenant: str,
        *,
        version: str = "1.4.0",
        run_id: str = "run-1",
        retry: RetryPolicy | None = None,
        allow_rollback: str = "",
    ) -> TargetDeployment:
        run = ReleaseRun(
            release=parse_release_tag(f"v{version}"),
            run_id=run_id,
            artifact=self.artifacts[version],
            tooling=self.loaded.fleet.tooling,
            allow_rollback=allow_rollback,
        )
        return TargetDeployment(
            sessions=sessions,
            run=run,
            target=self.loaded.target(tenant),
            retry=retry or RetryPolicy(sleep=_no_sleep),
        )

    def stack(self, account: str, region: str, name: str) -> dict[str, Any] | None:
        return describe_stack(self.inspect("cloudformation", account, region), name)

    def function_config(self, tenant: str) -> dict[str, Any]:
        target = self.loaded.target(tenant)
        client = self.inspect("lambda", target.account_id, target.region)
        return client.get_function_configuration(FunctionName=target.function_name)

    def key_arn(self, account: str, region: str, alias: str) -> str:
        return self.inspect("kms", account, region).describe_key(KeyId=alias)["KeyMetadata"]["Arn"]

    def history(self) -> Any:
        return self.inspect("dynamodb", TOOLING, self.loaded.fleet.tooling.region)


def _no_sleep(_: float) -> None:
    return None


def build(sessions: AwsSessions, loaded: Any, version: str) -> Artifact:
    return build_release(
        sessions,
        tooling=loaded.fleet.tooling,
        application=loaded.fleet.application,
        fleet_path=loaded.path,
        release=parse_release_tag(f"v{version}"),
        targets=loaded.tenants(),
    )


def deploy(deployment: TargetDeployment) -> TenantResult:
    return deployment.run_to_completion(sleep=_no_sleep)


def count(faults: Faults, account: str, operation: str) -> int:
    return sum(1 for _, acct, name in faults.calls if (acct, name) == (account, operation))


def with_status(status: str) -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    def rewrite(response: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**response, "Stacks": [{**stack, "StackStatus": status} for stack in response["Stacks"]]}

    return rewrite


def recorder(into: list[dict[str, Any]]) -> Callable[[dict[str, Any]], bool]:
    """A `when=` that never injects anything, only remembers each call's arguments."""

    def when(kwargs: dict[str, Any]) -> bool:
        into.append(kwargs)
        return False

    return when


@contextmanager
def world_of(fleet: Path) -> Iterator[World]:
    """Emulated AWS with `fleet` bootstrapped and releases 1.4.0 and 1.5.0 built."""
    with pytest.MonkeyPatch.context() as env, emulated_aws(env):
        loaded = bootstrap(fleet)
        base_session = boto3.Session()
        sessions = AwsSessions(base_session)
        artifacts = {version: build(sessions, loaded, version) for version in ("1.4.0", "1.5.0")}
        yield World(loaded=loaded, artifacts=artifacts, base_session=base_session)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with world_of(FLEET) as world:
        yield world


@pytest.fixture(autouse=True)
def clean_slate(world: World) -> Iterator[None]:
    """Remove what a test deployed: application stacks, tenant copies, history items."""
    yield
    for target in [world.loaded.target("dev"), *world.loaded.tenants()]:
        cloudformation = world.inspect("cloudformation", target.account_id, target.region)
        if describe_stack(cloudformation, target.stack_name) is not None:
            cloudformation.delete_stack(StackName=target.stack_name)
        s3 = world.inspect("s3", target.account_id, target.region)
        listed = s3.list_object_versions(Bucket=target.artifact_bucket, Prefix="releases/")
        doomed = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]
        ]
        if doomed:
            s3.delete_objects(Bucket=target.artifact_bucket, Delete={"Objects": doomed})
    dynamodb = world.history()
    for item in dynamodb.scan(TableName=HISTORY)["Items"]:
        dynamodb.delete_item(TableName=HISTORY, Key={"tenant": item["tenant"], "release": item["release"]})


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def sessions(world: World, faults: Faults) -> AwsSessions:
    return AwsSessions(world.base_session, client_hook=faults.hook)


# --- build ---------------------------------------------------------------------------------------------------


def test_build_publishes_one_encrypted_artifact_per_version_and_reuses_it(world: World, sessions: AwsSessions) -> None:
    tooling = world.loaded.fleet.tooling
    artifact = world.artifacts["1.4.0"]
    s3 = world.inspect("s3", TOOLING, tooling.region)
    tooling_key = world.key_arn(TOOLING, tooling.region, TOOLING_KEY_ALIAS)

    assert artifact.bucket == tooling.artifact_bucket
    (code,) = artifact.objects  # the sample's one function: its src folder, zipped
    assert re.fullmatch(r"releases/1\.4\.0/[0-9a-f]{64}\.zip", code.key)
    assert artifact.template_key == f"releases/1.4.0/{artifact.sha256}.template.json"
    assert artifact.source == f"folder {SAMPLE_APP_DIR}" and artifact.source_commit is None
    for key, sha in ((code.key, code.sha256), (artifact.template_key, artifact.sha256)):
        head = s3.head_object(Bucket=artifact.bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", tooling_key)
        body = s3.get_object(Bucket=artifact.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha == head["Metadata"]["sha256"]
    template = json.loads(s3.get_object(Bucket=artifact.bucket, Key=artifact.template_key)["Body"].read())
    function = template["Resources"]["Function"]["Properties"]
    assert function["Code"] == {"S3Bucket": {"Ref": "CodeS3Bucket"}, "S3Key": code.key}

    def versions() -> int:
        return len(s3.list_object_versions(Bucket=artifact.bucket, Prefix="releases/1.4.0/").get("Versions", []))

    stored = versions()
    again = build(sessions, world.loaded, "1.4.0")

    assert again.reused is True
    assert again.model_copy(update={"reused": False}) == artifact
    assert versions() == stored == 3  # code, template and the build's manifest, each written once
    assert world.artifacts["1.5.0"].template_key.startswith("releases/1.5.0/")


# --- per tenant deploy ---------------------------------------------------------------------------------------


def test_each_tenant_gets_its_own_encrypted_copy_and_stack_in_its_own_account(world: World, sessions: AwsSessions) -> None:
    tooling_key = world.key_arn(TOOLING, "us-east-1", TOOLING_KEY_ALIAS)
    artifact = world.artifacts["1.4.0"]

    results = {name: deploy(world.deployment(sessions, name)) for name in ("acme", "globex", "initech")}

    for name, result in results.items():
        target = world.loaded.target(name)
        account, region = target.account_id, target.region
        assert (result.status, result.version_before, result.version_after) == (Outcome.SUCCEEDED, None, "1.4.0")

        bucket = f"tenant-release-{account}-{region}"
        assert result.artifact_uri == f"s3://{bucket}/{artifact.template_key}"
        tenant_key = world.key_arn(account, region, TENANT_KEY_ALIAS)
        assert f":{account}:" in tenant_key
        for key, sha in [(o.key, o.sha256) for o in artifact.objects] + [(artifact.template_key, artifact.sha256)]:
            copy = world.inspect("s3", account, region).head_object(Bucket=bucket, Key=key)
            assert copy["SSEKMSKeyId"] == tenant_key != tooling_key
            assert copy["Metadata"]["sha256"] == sha

        stack = world.stack(account, region, f"tenant-app-{name}")
        assert stack is not None and stack["StackStatus"] == "CREATE_COMPLETE"
        assert stack_tag(stack, "ReleaseVersion") == "1.4.0"
        assert stack["RoleARN"] == f"arn:aws:iam::{account}:role/tenant-release-cfn-execution"
        assert world.function_config(name)["Environment"]["Variables"]["RELEASE_VERSION"] == "1.4.0"

    # Nowhere else: not in the tooling account, not in another tenant's account sharing the region.
    for account, region in ((TOOLING, "eu-central-1"), (TOOLING, "us-east-1"), (GLOBEX, "eu-central-1")):
        assert world.stack(account, region, "tenant-app-acme") is None
    assert world.stack(UMBRELLA, "us-east-1", "tenant-app-globex") is None
    assert world.stack(TOOLING, "us-east-1", "tenant-app-globex") is None

    # Parameters: defaults merged with the tenant's own.
    assert world.function_config("acme")["MemorySize"] == 256
    assert world.function_config("globex")["MemorySize"] == 128
    assert world.function_config("initech")["Environment"]["Variables"]["LOG_LEVEL"] == "DEBUG"


def test_same_version_again_is_unchanged_and_a_new_version_updates(world: World, sessions: AwsSessions, faults: Faults) -> None:
    first = deploy(world.deployment(sessions, "globex", run_id="run-1"))
    assert first.status == Outcome.SUCCEEDED
    # The orchestrator (tooling account) makes the copies into the tenant's bucket.
    change_sets, copies = count(faults, GLOBEX, "create_change_set"), count(faults, "tooling", "copy_object")

    again = deploy(world.deployment(sessions, "globex", run_id="run-2"))

    assert (again.status, again.version_before, again.version_after) == (Outcome.UNCHANGED, "1.4.0", "1.4.0")
    assert count(faults, GLOBEX, "create_change_set") == change_sets  # no change set for nothing to do
    assert count(faults, "tooling", "copy_object") == copies  # the verified copy is reused

    newer = deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-3"))

    assert (newer.status, newer.version_before, newer.version_after) == (Outcome.SUCCEEDED, "1.4.0", "1.5.0")
    assert stack_tag(world.stack(GLOBEX, "us-east-1", "tenant-app-globex"), "ReleaseVersion") == "1.5.0"
    assert world.function_config("globex")["Environment"]["Variables"]["RELEASE_VERSION"] == "1.5.0"
    recorded = ledger.get(world.history(), HISTORY, tenant="globex", release="v1.5.0")
    assert recorded is not None and (recorded.status, recorded.run_id) == (Outcome.SUCCEEDED, "run-3")


# --- faults --------------------------------------------------------------------------------------------------


def test_throttled_copy_is_retried_with_backoff(world: World, sessions: AwsSessions, faults: Faults) -> None:
    throttle = faults.add(
        service="s3",
        operation="copy_object",
        account="tooling",  # the orchestrator copies into the tenant's bucket
        when=lambda kwargs: kwargs["Bucket"].startswith(f"tenant-release-{ACME}-"),
        code="ThrottlingException",
        message="Rate exceeded",
        times=2,
    )
    sleeps: list[float] = []
    retry = RetryPolicy(base_delay=1.0, sleep=sleeps.append, rng=random.Random(3))

    result = deploy(world.deployment(sessions, "acme", retry=retry))

    assert result.status == Outcome.SUCCEEDED
    assert throttle.hits == 2
    assert count(faults, "tooling", "copy_object") == 4  # code: 2 throttled + 1, template: 1
    assert len(sleeps) == 2 and 0 < sleeps[0] <= 1.0 and 0 < sleeps[1] <= 2.0


# --- history -------------------------------------------------------------------------------------------------


def history_item(tenant: str, release: str, run_id: str, status: Outcome, **fields: Any) -> TenantResult:
    return TenantResult(
        tenant=tenant,
        account_id={"acme": ACME, "globex": GLOBEX}[tenant],
        region="us-east-1",
        release=release,
        version=release.removeprefix("v"),
        status=status,
        run_id=run_id,
        started_at="2026-11-23T10:00:00+00:00",
        finished_at="2026-11-23T10:02:00+00:00",
        **fields,
    )


def test_history_round_trips_and_finds_a_run_by_its_id(world: World) -> None:
    dynamodb = world.history()
    started = history_item("acme", "v1.4.0", "run-a", Outcome.IN_PROGRESS)
    acme = history_item("acme", "v1.4.0", "run-a", Outcome.SUCCEEDED, version_after="1.4.0", sha256="ab" * 32)
    globex = history_item("globex", "v1.4.0", "run-a", Outcome.FAILED, reason="AccessDenied: nope")
    older = history_item("acme", "v1.3.0", "run-b", Outcome.UNCHANGED, version_before="1.3.0", version_after="1.3.0")
    for result in (started, acme, globex, older):
        ledger.record(dynamodb, HISTORY, result)

    assert ledger.get(dynamodb, HISTORY, tenant="acme", release="v1.4.0") == acme  # the later write wins
    assert ledger.get(dynamodb, HISTORY, tenant="acme", release="v1.3.0") == older
    assert ledger.get(dynamodb, HISTORY, tenant="initech", release="v1.4.0") is None
    assert ledger.get_many(dynamodb, HISTORY, tenants=["acme", "globex", "initech"], release="v1.4.0") == {
        "acme": acme,
        "globex": globex,
    }
    assert sorted(ledger.for_run(dynamodb, HISTORY, "run-a"), key=lambda r: r.tenant) == [acme, globex]
    assert ledger.for_run(dynamodb, HISTORY, "run-b") == [older]
    assert ledger.for_run(dynamodb, HISTORY, "run-z") == []


# --- sessions ------------------------------------------------------------------------------------------------


def test_tenant_sessions_act_in_the_tenant_account_under_a_named_traceable_session(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    assumed: list[dict[str, Any]] = []
    faults.add(service="sts", operation="assume_role", account="tooling", when=recorder(assumed))
    acme = world.deployment(sessions, "acme", run_id="manual__2026-11-23T10:00:00+00:00")
    globex = world.deployment(sessions, "globex", run_id="manual__2026-11-23T10:00:00+00:00")

    identity = acme.client("sts").get_caller_identity()
    acme.client("s3")
    acme.client("cloudformation")
    globex.client("sts")

    assert identity["Account"] == ACME
    assert identity["Arn"] == f"arn:aws:sts::{ACME}:assumed-role/tenant-release-deploy/{acme.run.session_name}"
    assert [call["RoleArn"] for call in assumed] == [  # one assume per tenant, shared by its clients
        f"arn:aws:iam::{ACME}:role/tenant-release-deploy",
        f"arn:aws:iam::{GLOBEX}:role/tenant-release-deploy",
    ]
    acme_call, globex_call = assumed
    assert acme_call["RoleSessionName"] == acme.run.session_name
    assert acme_call["SourceIdentity"] == naming.source_identity(release_tag="v1.4.0") == globex_call["SourceIdentity"]
    assert acme_call["ExternalId"] == "acme-ext-0001"
    assert "ExternalId" not in globex_call


# --- which tenants need a change (fleet_changes) -------------------------------------------------------------


def _planned(world: World, *names: str) -> list[tuple[PlannedTarget, Any]]:
    from tenant_release.airflow.runtime import target_digest

    return [
        (
            PlannedTarget(tenant=n, target_digest=target_digest(world.loaded.target(n), world.loaded.fleet.application)),
            world.loaded.target(n),
        )
        for n in names
    ]


def test_tenants_already_at_the_release_are_unchanged_without_a_change_set(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-1"))
    deploy(world.deployment(sessions, "acme", run_id="run-1"))  # acme holds another (older) build
    run = world.deployment(sessions, "globex", version="1.5.0", run_id="run-2").run
    before = len(faults.calls)

    changes, unchanged = find_changes(sessions, run, _planned(world, "globex", "acme", "initech"), concurrency=4)

    assert [t.tenant for t in changes.deploy] == ["acme", "initech"]  # plan order kept; initech has no stack yet
    assert changes.unchanged == ("globex",)
    (globex,) = unchanged
    assert (globex.status, globex.version_before, globex.version_after, globex.run_id) == (
        Outcome.UNCHANGED,
        "1.5.0",
        "1.5.0",
        "run-2",
    )
    reads = {name for _, _, name in faults.calls[before:] if name != "close"}  # close: the reader's connections
    assert reads <= {"assume_role", "describe_stacks"}  # one read per tenant: no change set, copy or history write


def test_the_fleet_pass_reads_each_tenant_under_the_runs_named_session_and_keeps_no_session(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    assumed: list[dict[str, Any]] = []
    faults.add(service="sts", operation="assume_role", account="tooling", when=recorder(assumed))
    run = world.deployment(sessions, "acme", run_id="manual__2026-11-23T10:00:00+00:00").run

    reader = sessions.tenant_reader(
        world.loaded.target("acme"), "sts", session_name=run.session_name, source_identity=run.source_identity
    )
    identity = reader.get_caller_identity()
    find_changes(sessions, run, _planned(world, "globex"))

    assert identity["Arn"] == f"arn:aws:sts::{ACME}:assumed-role/tenant-release-deploy/{run.session_name}"
    assert [(c["RoleArn"], c["RoleSessionName"], c["SourceIdentity"]) for c in assumed] == [
        (f"arn:aws:iam::{ACME}:role/tenant-release-deploy", run.session_name, run.source_identity),
        (f"arn:aws:iam::{GLOBEX}:role/tenant-release-deploy", run.session_name, run.source_identity),
    ]
    assert assumed[0]["ExternalId"] == "acme-ext-0001"
    assert sessions.open_tenant_sessions() == 0  # a read leaves no tenant session behind in the process


def test_a_tenant_whose_stack_cannot_be_read_is_deployed_so_its_own_task_reports_why(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    deploy(world.deployment(sessions, "globex", run_id="run-1"))
    faults.add(service="cloudformation", operation="describe_stacks", account=GLOBEX, code="AccessDenied", message="denied")
    run = world.deployment(sessions, "globex", run_id="run-2").run

    changes, unchanged = find_changes(sessions, run, _planned(world, "globex"))

    assert [t.tenant for t in changes.deploy] == ["globex"] and unchanged == []


def test_a_stack_that_is_not_settled_is_never_reported_unchanged(world: World, sessions: AwsSessions, faults: Faults) -> None:
    deploy(world.deployment(sessions, "globex", run_id="run-1"))
    faults.add(
        service="cloudformation",
        operation="describe_stacks",
        account=GLOBEX,
        rewrite=with_status("UPDATE_ROLLBACK_FAILED"),
    )
    run = world.deployment(sessions, "globex", run_id="run-2").run

    changes, _ = find_changes(sessions, run, _planned(world, "globex"))

    assert [t.tenant for t in changes.deploy] == ["globex"]


# --- bootstrap at fleet scale --------------------------------------------------------------------------------


def test_bootstrap_again_touches_no_account_and_a_new_tenant_only_its_own(
    world: World, sessions: AwsSessions, faults: Faults, tmp_path: Path
) -> None:
    again = bootstrap_fleet(sessions, world.loaded, tooling_principal_arn=ORCHESTRATOR_PRINCIPAL, sleep=_no_sleep, concurrency=4)

    assert {r.action for r in again} == {"UNCHANGED"}
    writes = [(acct, name) for _, acct, name in faults.calls if name in {"create_stack", "update_stack"}]
    assert writes == []

    grown = FLEET.read_text() + ('  - name: newco\n    account_id: "999999999999"\n    region: us-east-1\n    groups: [qa]\n')
    path = tmp_path / "grown.yaml"
    path.write_text(grown)
    results = bootstrap_fleet(
        sessions, load_fleet(path), tooling_principal_arn=ORCHESTRATOR_PRINCIPAL, sleep=_no_sleep, concurrency=4
    )

    assert {(r.account_id, r.action) for r in results if r.action != "UNCHANGED"} == {("999999999999", "CREATED")}
    writes = [(acct, name) for _, acct, name in faults.calls if name in {"create_stack", "update_stack"}]
    assert writes == [("999999999999", "create_stack")]  # the tooling stack and the other accounts are left alone


def test_going_back_to_an_earlier_build_is_refused_unless_the_run_allows_a_rollback(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    """1.4.0 → 1.5.0 → 1.4.0: refused without allow_rollback; with it, the first 1.4.0 change set is spent and the
    third deploy must not mistake it for its own."""
    deploy(world.deployment(sessions, "globex", run_id="run-1"))
    deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-2"))

    with pytest.raises(RollbackRefusedError) as refused:
        deploy(world.deployment(sessions, "globex", run_id="run-3"))
    assert "holds 1.5.0, newer than 1.4.0" in str(refused.value) and "allow_rollback" in str(refused.value)
    assert stack_tag(world.stack(GLOBEX, "us-east-1", "tenant-app-globex"), "ReleaseVersion") == "1.5.0"
    assert count(faults, GLOBEX, "create_change_set") == 2  # the two forward deploys only
    failed = ledger.get(world.history(), HISTORY, tenant="globex", release="v1.4.0")
    assert (failed.status, failed.run_id, failed.rollback_from) == (Outcome.FAILED, "run-3", None)

    back = deploy(world.deployment(sessions, "globex", run_id="run-4", allow_rollback="INC-7: 1.5.0 corrupts orders"))

    assert (back.status, back.version_before, back.version_after) == (Outcome.SUCCEEDED, "1.5.0", "1.4.0")
    recorded = ledger.get(world.history(), HISTORY, tenant="globex", release="v1.4.0")
    assert recorded.rollback_from == "1.5.0" and "rollback from 1.5.0: INC-7: 1.5.0 corrupts orders" in recorded.note
    assert world.function_config("globex")["Environment"]["Variables"]["RELEASE_VERSION"] == "1.4.0"
    assert stack_tag(world.stack(GLOBEX, "us-east-1", "tenant-app-globex"), "ReleaseVersion") == "1.4.0"
    again = deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-5"))  # and forth once more
    assert (again.status, again.version_after) == (Outcome.SUCCEEDED, "1.5.0")


def test_a_retry_checks_the_rollback_against_the_stack_as_it_is_now_not_its_earlier_attempts_reading(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    """Run B (1.4.0) fails after recording IN_PROGRESS; run A then ships 1.5.0; B's retry must not deploy over it."""
    denied = faults.add(service="kms", operation="describe_key", account=GLOBEX, code="AccessDenied", message="denied")
    with pytest.raises(Exception, match="denied"):
        deploy(world.deployment(sessions, "globex", run_id="run-b"))
    first = ledger.get(world.history(), HISTORY, tenant="globex", release="v1.4.0")
    assert (first.status, first.run_id, first.version_before) == (Outcome.FAILED, "run-b", None)
    faults.faults.remove(denied)
    deploy(world.deployment(sessions, "globex", version="1.5.0", run_id="run-a"))  # runs overlap: A ships 1.5.0

    with pytest.raises(RollbackRefusedError, match=r"holds 1\.5\.0, newer than 1\.4\.0"):
        deploy(world.deployment(sessions, "globex", run_id="run-b"))  # B's retry (or a cleared task)

    assert stack_tag(world.stack(GLOBEX, "us-east-1", "tenant-app-globex"), "ReleaseVersion") == "1.5.0"
    assert count(faults, GLOBEX, "create_change_set") == 1  # A's only
    back = deploy(world.deployment(sessions, "globex", run_id="run-b", allow_rollback="INC-9"))
    assert (back.version_before, back.rollback_from, back.version_after) == ("1.5.0", "1.5.0", "1.4.0")


def test_a_change_set_still_being_created_is_executed_once_ready_without_a_thread_waiting_for_it(
    world: World, sessions: AwsSessions, faults: Faults
) -> None:
    # CloudFormation takes seconds to make a change set; moto makes it at once. The first look says it is not ready.
    faults.add(
        service="cloudformation",
        operation="describe_change_set",
        account=GLOBEX,
        rewrite=lambda response, kwargs: {**response, "Status": "CREATE_IN_PROGRESS", "ExecutionStatus": "UNAVAILABLE"},
        when=lambda kwargs: count(faults, GLOBEX, "execute_change_set") == 0 and count(faults, GLOBEX, "create_change_set") == 1,
        times=1,
    )
    deployment = world.deployment(sessions, "globex")

    progress = deployment.begin(DeployProgress(started_at="2026-12-03T00:00:00+00:00"), wait_for_change_set=False)

    assert progress.change_set_pending and progress.change_set and count(faults, GLOBEX, "execute_change_set") == 0
    assert deployment.execute_when_ready(progress) is None
    ready = deployment.execute_when_ready(progress)
    assert ready is not None and not ready.change_set_pending and count(faults, GLOBEX, "execute_change_set") == 1
    assert deployment.poll().settled
    result = deployment.finish(ready, stack_status=deployment.poll().status)
    assert (result.status, result.version_after) == (Outcome.SUCCEEDED, "1.4.0")


def test_a_stack_listed_as_failing_rolls_back_with_the_reason_and_deploys_once_taken_off(world, sessions, tmp_path, monkeypatch):
    fail_file = tmp_path / "fail.json"
    fail_file.write_text(json.dumps({"tenant-app-globex": "Resource handler returned message: MemorySize too large"}))
    monkeypatch.setenv(moto_compat.FAIL_FILE_ENV, str(fail_file))

    with pytest.raises(StackFailedError) as failed:
        world.deployment(sessions, "globex").run_to_completion(poll_interval=0)
    assert "ended ROLLBACK_COMPLETE" in str(failed.value)
    assert "Function (AWS::Lambda::Function) CREATE_FAILED: Resource handler returned message: MemorySize too large" in str(
        failed.value
    )
    assert world.stack(GLOBEX, "us-east-1", "tenant-app-globex")["StackStatus"] == "ROLLBACK_COMPLETE"

    fail_file.write_text("{}")
    result = world.deployment(sessions, "globex").run_to_completion(poll_interval=0)
    assert result.status.value == "SUCCEEDED"
    assert world.stack(GLOBEX, "us-east-1", "tenant-app-globex")["StackStatus"] == "CREATE_COMPLETE"
