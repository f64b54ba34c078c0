"""Your own application (issue 9): a release tag builds that tag's source from a git repository, with the
application's build command, templates and parameter names, and deploys it to three tenants (moto in-process).

The application (tests/fixtures/orders_app) is unlike the sample: a table, a queue, two functions with code in
two folders (one of them made by the build command), a nested stack whose output feeds a function, and
parameter names of its own.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from tenant_release.aws.bootstrap import bootstrap_fleet
from tenant_release.aws.session import AwsSessions
from tenant_release.aws.stacks import describe_stack, stack_tag
from tenant_release.build import build_release
from tenant_release.config import LoadedFleet, load_fleet
from tenant_release.deploy import ReleaseRun, TargetDeployment
from tenant_release.errors import BuildError, VerificationError
from tenant_release.execution_policy import POLICY_NAME
from tenant_release.models import (
    ApplicationSource,
    Artifact,
    HealthCheck,
    Outcome,
    ReleaseParameterNames,
    StackSpec,
    TenantResult,
)
from tenant_release.source import GitSource, SourceError
from tenant_release.tags import parse_release_tag

from tests.conftest import ORCHESTRATOR_PRINCIPAL, bootstrap, emulated_aws
from tests.faults import Faults
from tests.orders_example import BUILD, commit_api, orders_fleet, orders_repository

TENANTS = ("acme", "globex", "initech")


@dataclass
class Orders:
    repo: Path
    loaded: LoadedFleet
    sessions: AwsSessions
    commits: dict[str, str]

    def build(self, tag: str, **kwargs: Any) -> Artifact:
        application = kwargs.pop("application", self.loaded.fleet.application)
        return build_release(
            self.sessions,
            tooling=self.loaded.fleet.tooling,
            application=application,
            fleet_path=self.loaded.path,
            release=parse_release_tag(tag),
            targets=[self.loaded.target(n) for n in TENANTS],
            **kwargs,
        )

    def deploy(self, tenant: str, artifact: Artifact, *, application: Any = None, parameters: Any = None) -> TenantResult:
        run = ReleaseRun(
            release=parse_release_tag(f"v{artifact.version}"),
            run_id=f"run-{artifact.version}",
            artifact=artifact,
            tooling=self.loaded.fleet.tooling,
            application=application or self.loaded.fleet.application,
            # The module's tests share one world: a stack may hold a later version an earlier test shipped.
            allow_rollback="tests share one moto world across versions",
        )
        target = self.loaded.target(tenant)
        if parameters:
            target = target.model_copy(update={"parameters": {**target.parameters, **parameters}})
        deployment = TargetDeployment(sessions=self.sessions, run=run, target=target)
        return deployment.run_to_completion(sleep=lambda _: None)

    def client(self, service: str, tenant: str) -> Any:
        target = self.loaded.target(tenant)
        creds = boto3.client("sts", region_name="us-east-1").assume_role(
            RoleArn=f"arn:aws:iam::{target.account_id}:role/inspector", RoleSessionName="inspector"
        )["Credentials"]
        return boto3.client(
            service,
            region_name=target.region,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    def tooling_objects(self, prefix: str) -> list[str]:
        s3 = boto3.client("s3", region_name="us-east-1")
        return [
            o["Key"]
            for o in s3.list_objects_v2(Bucket=self.loaded.fleet.tooling.artifact_bucket, Prefix=prefix).get("Contents", [])
        ]


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orders]:
    root = tmp_path_factory.mktemp("orders")
    repo, commits = orders_repository(root)
    fleet_file = orders_fleet(root)
    with pytest.MonkeyPatch.context() as env, emulated_aws(env):
        yield Orders(repo=repo, loaded=bootstrap(fleet_file), sessions=AwsSessions(), commits=commits)


def _zip_member(body: bytes, name: str) -> str:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return archive.read(name).decode()


def _lambda_sha(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def _object(artifact: Artifact, key: str) -> bytes:
    return boto3.client("s3", region_name="us-east-1").get_object(Bucket=artifact.bucket, Key=key)["Body"].read()


def test_a_tag_is_built_from_its_commit_and_reaches_three_tenants_with_its_code_and_parameter_names(orders: Orders) -> None:
    artifact = orders.build("v1.4.0")

    assert (artifact.source, artifact.source_commit) == (f"{orders.repo} refs/tags/v1.4.0", orders.commits["v1.4.0"])
    bodies = {o.key: _object(artifact, o.key) for o in artifact.objects}
    api_key = next(k for k, b in bodies.items() if k.endswith(".zip") and "app.py" in zipfile.ZipFile(io.BytesIO(b)).namelist()
                   and "CODE_VERSION" in _zip_member(b, "app.py"))  # fmt: skip
    assert _zip_member(bodies[api_key], "app.py").startswith('CODE_VERSION = "api 1"')  # made by the build command
    assert len(artifact.objects) == 3  # api code, worker code, the nested events template
    head = boto3.client("s3", region_name="us-east-1").head_object(Bucket=artifact.bucket, Key=api_key)
    assert head["Metadata"]["source-commit"] == orders.commits["v1.4.0"]

    for tenant in TENANTS:
        result = orders.deploy(tenant, artifact)
        assert (result.status, result.version_after) == (Outcome.SUCCEEDED, "1.4.0")
        assert (result.sha256, result.source_commit) == (artifact.sha256, orders.commits["v1.4.0"])  # in the history
        target = orders.loaded.target(tenant)
        stack = describe_stack(orders.client("cloudformation", tenant), target.stack_name)
        assert stack is not None and stack["StackStatus"] in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        assert parameters == {
            "OrdersVersion": "1.4.0",
            "Customer": tenant,
            "ArtifactsBucket": target.artifact_bucket,
            "BillingMode": "PAY_PER_REQUEST",
            "StatusUrl": "https://status.example.com/orders",
            "Boundary": f"arn:aws:iam::{target.account_id}:policy/orders-permissions-boundary",
        }
        assert stack_tag(stack, "ReleaseVersion") == "1.4.0"
        # Its own resources, in its own account: the table, the queue, the nested stack's topic.
        assert orders.client("dynamodb", tenant).describe_table(TableName=f"orders-{tenant}")["Table"]["TableStatus"] == "ACTIVE"
        orders.client("sqs", tenant).get_queue_url(QueueName=f"orders-{tenant}-work")
        topics = [t["TopicArn"] for t in orders.client("sns", tenant).list_topics()["Topics"]]
        topic = next(t for t in topics if t.endswith(f":orders-{tenant}-events"))
        api = orders.client("lambda", tenant).get_function_configuration(FunctionName=f"orders-{tenant}-api")
        assert api["Environment"]["Variables"]["TOPIC"] == topic  # the nested stack's output fed the function
        assert api["Environment"]["Variables"]["VERSION"] == "1.4.0"
        assert api["CodeSha256"] == _lambda_sha(bodies[api_key])  # the tag's packaged code, copied into the tenant
        role = orders.client("iam", tenant).get_role(RoleName=api["Role"].rsplit("/", 1)[1])["Role"]
        assert role["RoleName"].startswith("orders-")  # under the application's name prefix, so its roles may manage it
        assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == parameters["Boundary"]


def test_each_tag_deploys_its_own_code(orders: Orders) -> None:
    older, newer = orders.build("v1.4.0"), orders.build("v1.5.0")

    assert newer.source_commit == orders.commits["v1.5.0"] != older.source_commit
    orders.deploy("globex", older)
    result = orders.deploy("globex", newer)

    assert (result.status, result.version_before, result.version_after) == (Outcome.SUCCEEDED, "1.4.0", "1.5.0")
    api = orders.client("lambda", "globex").get_function_configuration(FunctionName="orders-globex-api")
    shipped = [o for o in newer.objects if o.key.endswith(".zip") and _lambda_sha(_object(newer, o.key)) == api["CodeSha256"]]
    assert len(shipped) == 1 and _zip_member(_object(newer, shipped[0].key), "app.py").startswith('CODE_VERSION = "api 2"')


def test_a_tag_with_no_source_is_refused_before_anything_is_built_naming_the_tags_there(orders: Orders) -> None:
    with pytest.raises(SourceError, match=r"v9\.9\.9.* does not have \(tags there: v1\.5\.0, v1\.4\.0\)"):
        orders.build("v9.9.9")

    assert orders.tooling_objects("releases/9.9.9/") == []


def test_building_a_built_tag_again_reuses_it_without_a_checkout(orders: Orders, monkeypatch: pytest.MonkeyPatch) -> None:
    first = orders.build("v1.4.0")

    def no_checkout(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("checked out a build that exists")

    monkeypatch.setattr(GitSource, "checkout", no_checkout)
    again = orders.build("v1.4.0")

    assert again.reused is True and again.model_copy(update={"reused": False}) == first.model_copy(update={"reused": False})


def test_a_moved_tag_is_refused_unless_the_trigger_asks_to_rebuild(orders: Orders) -> None:
    first = commit_api(orders.repo, "api 3", "v2.0.0")
    original = orders.build("v2.0.0")
    moved = commit_api(orders.repo, "api 3 fixed", "v2.0.0", force=True)  # someone moved the tag

    with pytest.raises(
        SourceError, match=rf"v2\.0\.0 now points at commit {moved[:12]}, but v2\.0\.0 was already built from {first[:12]}"
    ):
        orders.build("v2.0.0")
    rebuilt = orders.build("v2.0.0", rebuild=True)

    assert (original.source_commit, rebuilt.source_commit) == (first, moved)
    assert rebuilt.sha256 != original.sha256 and rebuilt.reused is False


def test_a_failing_build_command_fails_the_build_with_its_output(orders: Orders) -> None:
    failing = orders.loaded.fleet.application.model_copy(update={"build": "echo 'npm ERR! no build script' && exit 7"})

    with pytest.raises(BuildError, match=r"failed with exit code 7; its last lines:\nnpm ERR! no build script"):
        orders.build("v1.5.0", application=failing, rebuild=True)


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        healthy = self.path == "/health"
        body = b"ok: orders is up" if healthy else b"down for maintenance"
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def status_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_health_checks_say_what_healthy_means_and_a_failed_one_fails_the_tenant_with_what_it_saw(
    orders: Orders, status_server: str
) -> None:
    artifact = orders.build("v1.4.0")
    healthy = [
        {"output": "ApiVersion", "equals": "{version}"},
        # moto echoes the event; braces in what to look for are text, only {version} and {tenant} are filled in
        {"output": "ApiFunction", "invoke": True, "payload": {"ping": "1.4.0"}, "contains": '{"ping": "{version}"}'},
        {"output": "StatusUrl", "http": True, "insecure_http": True, "contains": "orders is up"},
    ]
    application = orders.loaded.fleet.application.model_copy(update={"health": tuple(HealthCheck(**c) for c in healthy)})

    passed = orders.deploy("acme", artifact, application=application, parameters={"StatusUrl": f"{status_server}/health"})

    assert passed.status == Outcome.SUCCEEDED
    for check, reason in (
        ({"output": "StatusUrl", "http": True, "insecure_http": True}, "answered 503: 'down for maintenance'"),
        ({"output": "StatusUrl", "http": True}, "not an https URL (set insecure_http: true on the check"),
        (
            {"output": "ApiFunction", "invoke": True, "contains": "api {version}"},
            "'api 1.4.0' not in ",
        ),
        ({"output": "StatusUrl", "http": True, "insecure_http": True}, "resolves to 169.254.169.254, which is never checked"),
        (
            {"output": "NoSuchOutput", "equals": "x"},
            "has no output NoSuchOutput (outputs: ApiFunction, ApiVersion, StatusUrl, TopicArn)",
        ),
    ):
        failing = application.model_copy(update={"health": (HealthCheck(**check),)})
        url = "http://169.254.169.254/latest/meta-data/" if "169.254" in reason else f"{status_server}/down"
        with pytest.raises(VerificationError, match=re.escape(reason)):
            orders.deploy("globex", artifact, application=failing, parameters={"StatusUrl": url})


def _source_zip(repo: Path, api_version: str) -> bytes:
    """The source tree as CI publishes it after building: build output included, no .git."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(repo.rglob("*")):
            if path.is_file() and ".git" not in path.relative_to(repo).parts and "build" not in path.relative_to(repo).parts:
                archive.write(path, path.relative_to(repo).as_posix())
        archive.writestr("build/api/app.py", f'CODE_VERSION = "{api_version}"\n')
    return buffer.getvalue()


def test_an_archive_ci_published_is_built_reused_and_refused_when_missing_or_replaced(orders: Orders) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="tr-ci-builds")
    first = _source_zip(orders.repo, "ci 3")
    s3.put_object(Bucket="tr-ci-builds", Key="orders/3.0.0.zip", Body=first)
    application = orders.loaded.fleet.application.model_copy(
        update={"source": ApplicationSource(archive="s3://tr-ci-builds/orders/{version}.zip"), "build": None}
    )

    artifact = orders.build("v3.0.0", application=application)
    result = orders.deploy("initech", artifact, application=application)

    assert (artifact.source, artifact.source_commit) == ("s3://tr-ci-builds/orders/3.0.0.zip", hashlib.sha256(first).hexdigest())
    assert (result.status, result.version_after) == (Outcome.SUCCEEDED, "3.0.0")
    api = orders.client("lambda", "initech").get_function_configuration(FunctionName="orders-initech-api")
    shipped = [
        o for o in artifact.objects if o.key.endswith(".zip") and _lambda_sha(_object(artifact, o.key)) == api["CodeSha256"]
    ]
    assert len(shipped) == 1 and _zip_member(_object(artifact, shipped[0].key), "app.py") == 'CODE_VERSION = "ci 3"\n'
    assert orders.build("v3.0.0", application=application).reused is True

    with pytest.raises(
        SourceError, match=r"s3://tr-ci-builds/orders/3\.1\.0\.zip, which does not exist \(published there: 3\.0\.0\.zip\)"
    ):
        orders.build("v3.1.0", application=application)

    s3.put_object(Bucket="tr-ci-builds", Key="orders/3.0.0.zip", Body=_source_zip(orders.repo, "ci 3 again"))
    with pytest.raises(
        SourceError, match=r"v3\.0\.0 now points at published archive [0-9a-f]{12}, but v3\.0\.0 was already built"
    ):
        orders.build("v3.0.0", application=application)
    assert orders.build("v3.0.0", application=application, rebuild=True).sha256 != artifact.sha256


def test_each_tenants_execution_role_may_manage_the_applications_resources_and_bootstrap_applies_a_change(
    orders: Orders, tmp_path: Path
) -> None:
    def declared(tenant: str) -> dict[str, list[str]]:
        document = orders.client("iam", tenant).get_role_policy(RoleName="tenant-release-cfn-execution", PolicyName=POLICY_NAME)
        statements = document["PolicyDocument"]["Statement"]
        return {s["Sid"]: s["Resource"] for s in statements}

    for tenant in TENANTS:
        account = orders.loaded.target(tenant).account_id
        resources = declared(tenant)
        assert resources["ManageApplicationTables"] == [f"arn:aws:dynamodb:*:{account}:table/orders-*"]
        assert resources["ManageApplicationQueues"] == [f"arn:aws:sqs:*:{account}:orders-*"]
    again = bootstrap_fleet(orders.sessions, orders.loaded, tooling_principal_arn=ORCHESTRATOR_PRINCIPAL, sleep=lambda _: None)
    assert {r.action for r in again} == {"UNCHANGED"}

    grown = yaml.safe_load(orders.loaded.path.read_text())
    grown["application"]["execution_role"]["resource_types"].append("AWS::Events::Rule")
    path = tmp_path / "grown.yaml"
    path.write_text(yaml.safe_dump(grown, sort_keys=False))
    results = bootstrap_fleet(
        orders.sessions, load_fleet(path), tooling_principal_arn=ORCHESTRATOR_PRINCIPAL, sleep=lambda _: None
    )

    assert {r.action for r in results if r.stack != "tenant-release-tooling"} == {"UPDATED"}
    assert "ManageApplicationRules" in declared("acme")


def test_parameters_that_do_not_fit_the_template_are_refused_at_build_time_naming_tenant_and_rule(orders: Orders) -> None:
    application = orders.loaded.fleet.application
    unset = application.model_copy(update={"parameters": application.parameters.model_copy(update={"tenant": None})})

    with pytest.raises(BuildError, match=r"tenant 'acme': Customer has no Default and is not set"):
        orders.build("v1.4.0", application=unset)
    wrong = orders.loaded.target("acme").model_copy(update={"parameters": {"BillingMode": "PROVISIONED"}})
    with pytest.raises(BuildError, match=r"tenant 'acme': BillingMode='PROVISIONED' is not one of PAY_PER_REQUEST"):
        build_release(
            orders.sessions,
            tooling=orders.loaded.fleet.tooling,
            application=application,
            fleet_path=orders.loaded.path,
            release=parse_release_tag("v1.4.0"),
            targets=[wrong],
        )


def test_a_changed_build_recipe_builds_again_from_the_same_commit(orders: Orders) -> None:
    first = orders.build("v1.5.0")
    changed = orders.loaded.fleet.application.model_copy(update={"build": BUILD + " && echo again"})

    again = orders.build("v1.5.0", application=changed)

    assert again.reused is False and again.source_commit == first.source_commit and again.recipe != first.recipe
    assert again.sha256 == first.sha256  # the same bytes: only the recipe that made them changed


def _folder_app(root: Path, template: str) -> Any:
    root.mkdir()
    (root / "template.yaml").write_text(template)
    return ApplicationSource(path=str(root))


def test_a_transform_without_auto_expand_is_refused_and_a_large_template_is_validated_from_s3(
    orders: Orders, tmp_path: Path
) -> None:
    sam = "Transform: AWS::Serverless-2016-10-31\nResources:\n  Topic:\n    Type: AWS::SNS::Topic\n"
    plain = orders.loaded.fleet.application.model_copy(
        update={"source": _folder_app(tmp_path / "sam", sam), "build": None, "capabilities": ("CAPABILITY_IAM",)}
    )
    with pytest.raises(BuildError, match=r"use a transform .* lacks CAPABILITY_AUTO_EXPAND"):
        orders.build("v7.0.0", application=plain)
    named_role = (
        "Resources:\n  Role:\n    Type: AWS::IAM::Role\n    Properties:\n      RoleName: orders-fixed-name\n"
        "      AssumeRolePolicyDocument: {Version: '2012-10-17', Statement: []}\n"
    )
    named = plain.model_copy(update={"source": _folder_app(tmp_path / "named", named_role)})
    with pytest.raises(BuildError, match=r"IAM resources with names of their own, but .* lacks CAPABILITY_NAMED_IAM"):
        orders.build("v7.0.0", application=named)

    padding = "x" * 60_000  # over CloudFormation's 51,200-byte limit for a template body
    large = f"Metadata:\n  Notes: {padding}\nResources:\n  Topic:\n    Type: AWS::SNS::Topic\n"
    only_bucket = ReleaseParameterNames(version=None, tenant=None, name=None, permissions_boundary=None)
    big = plain.model_copy(update={"source": _folder_app(tmp_path / "large", large), "parameters": only_bucket})
    validated: list[dict[str, Any]] = []
    faults = Faults()
    faults.add(service="cloudformation", operation="validate_template", when=lambda kwargs: validated.append(kwargs) or False)
    sessions = AwsSessions(client_hook=faults.hook)
    artifact = build_release(
        sessions,
        tooling=orders.loaded.fleet.tooling,
        application=big,
        fleet_path=orders.loaded.path,
        release=parse_release_tag("v7.0.0"),
        targets=[],
    )
    (call,) = validated
    assert "TemplateBody" not in call and call["TemplateURL"].endswith(artifact.template_key)


def test_several_stacks_deploy_in_their_order_and_an_output_feeds_a_later_stack(orders: Orders) -> None:
    application = orders.loaded.fleet.application.model_copy(
        update={
            "stacks": (
                StackSpec(name="data", template="stacks/data.yaml"),
                StackSpec(name="api", template="stacks/api.yaml", inputs={"TableName": "data.TableName"}),
            )
        }
    )
    artifact = orders.build("v1.4.0", application=application)  # another recipe: built again, not a moved tag

    root = json.loads(_object(artifact, artifact.template_key))
    assert "DependsOn" not in root["Resources"]["api"]  # its input from data orders them already
    assert root["Resources"]["api"]["Properties"]["Parameters"]["TableName"] == {"Fn::GetAtt": ["data", "Outputs.TableName"]}
    result = orders.deploy("umbrella", artifact, application=application)

    assert (result.status, result.version_after) == (Outcome.SUCCEEDED, "1.4.0")
    stack = describe_stack(orders.client("cloudformation", "umbrella"), "orders-umbrella")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs == {"dataTableName": "orders-umbrella-data", "apiFunction": "orders-umbrella-stacked-api"}
    api = orders.client("lambda", "umbrella").get_function_configuration(FunctionName="orders-umbrella-stacked-api")
    assert api["Environment"]["Variables"] == {"VERSION": "1.4.0", "TABLE": "orders-umbrella-data"}


def test_a_template_that_names_its_code_by_parameters_gets_the_keys_under_those_names(orders: Orders) -> None:
    application = orders.loaded.fleet.application.model_copy(
        update={"template": "keyed.yaml", "key_parameters": {"ApiCodeKey": "build/api"}}
    )
    artifact = orders.build("v1.5.0", application=application)

    (code,) = artifact.objects
    assert artifact.key_parameters == {"ApiCodeKey": code.key} and artifact.template_sha256 != artifact.sha256
    result = orders.deploy("dev", artifact, application=application)  # a target with no orders stack yet

    assert (result.status, result.version_after) == (Outcome.SUCCEEDED, "1.5.0")
    stack = describe_stack(orders.client("cloudformation", "dev"), "orders-dev")
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["ApiCodeKey"] == code.key
    api = orders.client("lambda", "dev").get_function_configuration(FunctionName="orders-dev-keyed-api")
    assert api["CodeSha256"] == _lambda_sha(_object(artifact, code.key))
    assert _zip_member(_object(artifact, code.key), "app.py").startswith('CODE_VERSION = "api 2"')  # v1.5.0's code
