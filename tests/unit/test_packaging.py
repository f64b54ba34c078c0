"""Packaging an application's templates (issue 9): every local code path zipped, named by its hash and rewritten.

Pure: files in, a template and objects out. The rewritten templates are checked with cfn-lint, which expands
SAM the way CloudFormation would (moto does not), so the rewrite is valid where it will be deployed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from tenant_release.errors import BuildError
from tenant_release.packaging import package_template, zip_folder

SAM_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage:
    Type: String
    Default: prod
Resources:
  Api:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/api
      Layers: [!Ref Deps]
      Environment:
        Variables:
          STAGE: !Sub "${Stage}-${AWS::Region}"
          QUEUE: !GetAtt Queue.Outputs.QueueUrl
  Deps:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: layer/
      CompatibleRuntimes: [python3.12]
  Legacy:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: s3://already-published/legacy.zip
  Queue:
    Type: AWS::CloudFormation::Stack
    Properties:
      TemplateURL: nested/queue.yaml
      Parameters:
        Stage: !Ref Stage
"""

NESTED_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Stage:
    Type: String
Resources:
  Queue:
    Type: AWS::SQS::Queue
  WorkerRole:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Principal: {Service: lambda.amazonaws.com}
            Action: sts:AssumeRole
  Worker:
    Type: AWS::Lambda::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      Role: !GetAtt WorkerRole.Arn
      Code: ../src/api
  Cron:
    Type: AWS::Lambda::Function
    Properties:
      Runtime: python3.12
      Handler: cron.handler
      Role: !GetAtt WorkerRole.Arn
      Code: cron.py
  Inline:
    Type: AWS::Lambda::Function
    Properties:
      Runtime: python3.12
      Handler: index.handler
      Role: !GetAtt WorkerRole.Arn
      Code:
        ZipFile: "def handler(event, context): return 1"
Outputs:
  QueueUrl:
    Value: !Ref Queue
"""


def _app(root: Path) -> Path:
    (root / "src" / "api").mkdir(parents=True)
    (root / "src" / "api" / "app.py").write_text("def handler(event, context):\n    return 'api'\n")
    (root / "src" / "api" / "bootstrap").write_text("#!/bin/sh\nexec python app.py\n")
    (root / "src" / "api" / "bootstrap").chmod(0o755)
    (root / "src" / "api" / "__pycache__").mkdir()
    (root / "src" / "api" / "__pycache__" / "app.cpython-312.pyc").write_bytes(b"\x00stale")
    (root / "layer" / "python").mkdir(parents=True)
    (root / "layer" / "python" / "deps.py").write_text("VERSION = 1\n")
    (root / "nested").mkdir()
    (root / "nested" / "queue.yaml").write_text(NESTED_TEMPLATE)
    (root / "nested" / "cron.py").write_text("def handler(event, context):\n    return 'cron'\n")
    (root / "template.yaml").write_text(SAM_TEMPLATE)
    return root / "template.yaml"


def _lint_errors(text: str) -> list[str]:
    from cfnlint.api import lint

    return [f"{m.rule.id}: {m.message}" for m in lint(text) if str(m.rule.id).startswith("E")]


def test_every_local_path_is_zipped_named_by_its_hash_and_rewritten_to_the_tenants_bucket(tmp_path: Path) -> None:
    packaged = package_template(_app(tmp_path), key_prefix="releases/1.4.0")
    template = json.loads(packaged.text)
    resources = template["Resources"]

    api_zip = zip_folder(tmp_path / "src" / "api")
    api_key = f"releases/1.4.0/{hashlib.sha256(api_zip).hexdigest()}.zip"
    assert resources["Api"]["Properties"]["CodeUri"] == {"Bucket": {"Ref": "CodeS3Bucket"}, "Key": api_key}
    layer_key = resources["Deps"]["Properties"]["ContentUri"]["Key"]
    assert resources["Legacy"]["Properties"]["CodeUri"] == "s3://already-published/legacy.zip"  # already in S3
    # The short forms survive as their long forms; the bucket is a parameter the release sets per tenant.
    assert resources["Api"]["Properties"]["Environment"]["Variables"]["STAGE"] == {"Fn::Sub": "${Stage}-${AWS::Region}"}
    assert template["Parameters"]["CodeS3Bucket"]["Type"] == "String"
    assert template["Parameters"]["Stage"] == {"Type": "String", "Default": "prod"}

    objects = {o.key: o for o in packaged.objects}
    with zipfile.ZipFile(io.BytesIO(objects[api_key].body)) as archive:
        names = {i.filename: i for i in archive.infolist()}
    assert set(names) == {"app.py", "bootstrap"}  # no __pycache__
    assert names["bootstrap"].external_attr >> 16 == 0o755 and names["app.py"].external_attr >> 16 == 0o644
    assert objects[layer_key].source == "template.yaml: Deps.ContentUri <- layer/"
    assert all(o.sha256 == hashlib.sha256(o.body).hexdigest() for o in packaged.objects)


def test_a_nested_template_is_packaged_in_turn_and_receives_the_bucket_parameter(tmp_path: Path) -> None:
    packaged = package_template(_app(tmp_path), key_prefix="releases/1.4.0")
    parent = json.loads(packaged.text)["Resources"]
    objects = {o.key: o for o in packaged.objects}

    stack = parent["Queue"]["Properties"]
    url, variables = stack["TemplateURL"]["Fn::Sub"]
    nested_key = url.split("${AWS::URLSuffix}/", 1)[1]
    assert url.startswith("https://${Bucket}.s3.${AWS::Region}.") and variables == {"Bucket": {"Ref": "CodeS3Bucket"}}
    assert stack["Parameters"] == {"Stage": {"Ref": "Stage"}, "CodeS3Bucket": {"Ref": "CodeS3Bucket"}}
    nested = json.loads(objects[nested_key].body)
    assert nested["Parameters"]["CodeS3Bucket"]["Type"] == "String"
    worker, cron = nested["Resources"]["Worker"]["Properties"]["Code"], nested["Resources"]["Cron"]["Properties"]["Code"]
    # The same folder referenced from two templates is one object, uploaded once.
    assert worker == {"S3Bucket": {"Ref": "CodeS3Bucket"}, "S3Key": parent["Api"]["Properties"]["CodeUri"]["Key"]}
    with zipfile.ZipFile(io.BytesIO(objects[cron["S3Key"]].body)) as archive:
        assert archive.namelist() == ["cron.py"]  # a single code file is zipped for Lambda
    assert nested["Resources"]["Inline"]["Properties"]["Code"] == {"ZipFile": "def handler(event, context): return 1"}
    assert len(packaged.objects) == 4  # api code, layer, cron code, nested template
    assert _lint_errors(packaged.text) == [] and _lint_errors(objects[nested_key].body.decode()) == []


def test_the_same_source_gives_the_same_bytes_and_one_changed_file_changes_only_its_object(tmp_path: Path) -> None:
    template = _app(tmp_path)
    first = package_template(template, key_prefix="releases/1.4.0")
    for path in tmp_path.rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))  # a fresh checkout: other file times
    again = package_template(template, key_prefix="releases/1.4.0")
    assert (again.text, again.sha256, again.objects) == (first.text, first.sha256, first.objects)

    (tmp_path / "layer" / "python" / "deps.py").write_text("VERSION = 2\n")
    changed = package_template(template, key_prefix="releases/1.4.0")
    assert changed.sha256 != first.sha256
    assert {o.key for o in first.objects} - {o.key for o in changed.objects} == {
        json.loads(first.text)["Resources"]["Deps"]["Properties"]["ContentUri"]["Key"]
    }


def test_a_missing_path_names_the_template_resource_property_and_the_fix(tmp_path: Path) -> None:
    template = _app(tmp_path)
    (tmp_path / "nested" / "cron.py").unlink()

    with pytest.raises(BuildError, match=r"queue\.yaml: Cron\.Code refers to cron\.py, which does not exist .* Fix: build"):
        package_template(template, key_prefix="releases/1.4.0")


def test_nested_templates_that_refer_to_each_other_are_refused(tmp_path: Path) -> None:
    loop = "Resources:\n  Again:\n    Type: AWS::CloudFormation::Stack\n    Properties:\n      TemplateURL: {other}\n"
    (tmp_path / "a.yaml").write_text(loop.format(other="b.yaml"))
    (tmp_path / "b.yaml").write_text(loop.format(other="a.yaml"))

    with pytest.raises(BuildError, match=r"in a loop: a\.yaml -> b\.yaml -> a\.yaml"):
        package_template(tmp_path / "a.yaml", key_prefix="releases/1.4.0")


def test_a_sam_application_with_a_local_location_is_refused_with_the_alternative(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text("Resources:\n  Q:\n    Type: AWS::SQS::Queue\n")
    (tmp_path / "template.yaml").write_text(
        "Transform: AWS::Serverless-2016-10-31\nResources:\n  Child:\n    Type: AWS::Serverless::Application\n"
        "    Properties:\n      Location: child.yaml\n"
    )

    with pytest.raises(BuildError, match=r"Child is an AWS::Serverless::Application .* AWS::CloudFormation::Stack"):
        package_template(tmp_path / "template.yaml", key_prefix="releases/1.4.0")


def test_a_bucket_parameter_the_template_already_declares_is_kept(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "index.py").write_text("x = 1\n")
    (tmp_path / "template.yaml").write_text(
        "Parameters:\n  ArtifactBucket:\n    Type: String\n    Description: mine\n"
        "Resources:\n  Role:\n    Type: AWS::IAM::Role\n    Properties:\n      AssumeRolePolicyDocument: {}\n"
        "  Fn:\n    Type: AWS::Lambda::Function\n    Properties:\n      Runtime: python3.12\n      Handler: index.h\n"
        "      Role: !GetAtt Role.Arn\n      Code: src\n"
    )

    packaged = package_template(tmp_path / "template.yaml", key_prefix="r", bucket_parameter="ArtifactBucket")
    template = json.loads(packaged.text)

    assert template["Parameters"] == {"ArtifactBucket": {"Type": "String", "Description": "mine"}}
    assert template["Resources"]["Fn"]["Properties"]["Code"]["S3Bucket"] == {"Ref": "ArtifactBucket"}


def test_a_nested_template_without_local_code_is_not_passed_the_bucket_parameter(tmp_path: Path) -> None:
    # CloudFormation refuses a nested stack a parameter its template does not declare.
    (tmp_path / "topic.yaml").write_text("Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n")
    (tmp_path / "template.yaml").write_text(
        "Resources:\n  Events:\n    Type: AWS::CloudFormation::Stack\n    Properties:\n      TemplateURL: topic.yaml\n"
    )

    packaged = package_template(tmp_path / "template.yaml", key_prefix="r")
    parent = json.loads(packaged.text)
    (nested,) = packaged.objects

    assert "Parameters" not in parent["Resources"]["Events"]["Properties"]
    assert "Parameters" not in json.loads(nested.body)
    assert parent["Parameters"]["CodeS3Bucket"]["Type"] == "String"  # the parent still finds the nested template by it


def test_nothing_outside_the_source_folder_is_packaged_by_a_path_or_a_link(tmp_path: Path) -> None:
    app, secret = tmp_path / "app", tmp_path / "secret.txt"
    app.mkdir()
    secret.write_text("the worker's own file")
    lambda_with = "Resources:\n  Fn:\n    Type: AWS::Lambda::Function\n    Properties:\n      Code: {code}\n"
    (app / "up.yaml").write_text(lambda_with.format(code="../secret.txt"))
    (app / "absolute.yaml").write_text(lambda_with.format(code="/proc/self/environ"))
    (app / "code").mkdir()
    (app / "code" / "ok.py").write_text("x = 1\n")
    (app / "code" / "link.txt").symlink_to(secret)
    (app / "linked.yaml").write_text(lambda_with.format(code="code"))

    for template in ("up.yaml", "absolute.yaml", "linked.yaml"):
        with pytest.raises(BuildError, match="leads outside the application's source folder"):
            package_template(app / template, key_prefix="r", root=app)
    (app / "code" / "link.txt").unlink()
    (app / "code" / "inside.txt").symlink_to(app / "code" / "ok.py")  # a link within the source is followed
    packaged = package_template(app / "linked.yaml", key_prefix="r", root=app)
    with zipfile.ZipFile(io.BytesIO(packaged.objects[0].body)) as archive:
        assert archive.read("inside.txt") == b"x = 1\n"


def test_an_unquoted_date_and_an_empty_parameters_section_are_packaged(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text(
        "AWSTemplateFormatVersion: 2010-09-09\nParameters:\nResources:\n  Topic:\n    Type: AWS::SNS::Topic\n"
    )

    template = json.loads(package_template(tmp_path / "template.yaml", key_prefix="r").text)

    assert template["AWSTemplateFormatVersion"] == "2010-09-09"
    assert "Parameters" not in template  # an empty section is dropped (CloudFormation refuses null); nothing to declare


def test_declared_stacks_nest_in_one_root_in_their_order_passing_parameters_and_outputs(tmp_path: Path) -> None:
    from tenant_release.build import stacks_root_template
    from tenant_release.models import Application, ApplicationSource, StackSpec

    stack = "Parameters:\n{params}Resources:\n  Q:\n    Type: AWS::SQS::Queue\nOutputs:\n  Url:\n    Value: !Ref Q\n"
    (tmp_path / "a.yaml").write_text(stack.format(params="  Customer: {Type: String}\n"))
    (tmp_path / "b.yaml").write_text(stack.format(params="  Customer: {Type: String}\n  FromA: {Type: String}\n"))
    (tmp_path / "c.yaml").write_text(stack.format(params="  Level: {Type: Number, Default: 3}\n"))
    application = Application(
        source=ApplicationSource(path=str(tmp_path)),
        stacks=(
            StackSpec(name="a", template="a.yaml"),
            StackSpec(name="b", template="b.yaml", inputs={"FromA": "a.Url"}),
            StackSpec(name="c", template="c.yaml"),
        ),
    )

    root = stacks_root_template(application, tmp_path)

    assert list(root["Resources"]) == ["a", "b", "c"]
    assert root["Parameters"] == {"Customer": {"Type": "String"}, "Level": {"Type": "Number", "Default": 3}}
    b, c = root["Resources"]["b"], root["Resources"]["c"]
    assert b["Properties"]["Parameters"] == {"Customer": {"Ref": "Customer"}, "FromA": {"Fn::GetAtt": ["a", "Outputs.Url"]}}
    assert "DependsOn" not in b and c["DependsOn"] == ["b"]  # b waits for a through its input; c after b
    assert root["Outputs"]["cUrl"] == {"Value": {"Fn::GetAtt": ["c", "Outputs.Url"]}}
    packaged = package_template(tmp_path / "(declared stacks)", key_prefix="r", root=tmp_path, template=root)
    assert len(packaged.objects) == 3 and _lint_errors(packaged.text) == []
