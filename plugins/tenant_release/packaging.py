"""Packages an application's CloudFormation templates as `aws cloudformation package` does, for many accounts.

Every local path a template references (a function's `Code` or `CodeUri`, a layer's `Content` or `ContentUri`,
an API or state machine definition, a nested stack's `TemplateURL`...) is zipped reproducibly (a folder) or
taken as it is (a file), named by its SHA-256 and rewritten to point at that object. The same source gives the
same bytes, the same keys and the same template, whatever the clock or the checkout's file times say.

Unlike `aws cloudformation package`, the rewritten template names no bucket: each tenant's copy of the objects
lives in the tenant's own bucket (the tooling account grants no tenant anything), so a rewritten reference is
`{"Ref": <bucket parameter>}` plus the object's key, and the release passes each tenant's bucket in that
parameter. The parameter is declared where it is missing, also in nested templates, whose parent stack
resource passes it on.

Pure: reads files and returns bytes. Uploading (once per object) is `publish_packaged` in `aws.artifacts`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenant_release.errors import BuildError

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_NEVER_PACKAGED = {"__pycache__", ".git", ".hg", ".svn", ".DS_Store"}
_ARCHIVES = {".zip", ".jar"}
DEFAULT_BUCKET_PARAMETER = "CodeS3Bucket"


# How a rewritten reference is written, per property: an S3 URI, Lambda's {S3Bucket, S3Key}, the {Bucket, Key}
# of API Gateway and Step Functions, or a nested template's HTTPS URL.
def _s3_uri(bucket: Any, key: str) -> Any:
    return {"Fn::Sub": [f"s3://${{Bucket}}/{key}", {"Bucket": bucket}]}


def _lambda_code(bucket: Any, key: str) -> Any:
    return {"S3Bucket": bucket, "S3Key": key}


def _bucket_key(bucket: Any, key: str) -> Any:
    return {"Bucket": bucket, "Key": key}


def _template_url(bucket: Any, key: str) -> Any:
    return {"Fn::Sub": [f"https://${{Bucket}}.s3.${{AWS::Region}}.${{AWS::URLSuffix}}/{key}", {"Bucket": bucket}]}


@dataclass(frozen=True)
class _Rule:
    path: tuple[str, ...]  # the property, nested keys for e.g. Command.ScriptLocation
    rewrite: Callable[[Any, str], Any]
    zip_files: bool = False  # a single file is zipped (function code), not uploaded as it is
    template: bool = False  # the path is a nested template: packaged in turn


PACKAGEABLE: dict[str, tuple[_Rule, ...]] = {
    "AWS::Serverless::Function": (_Rule(("CodeUri",), _bucket_key, zip_files=True),),
    "AWS::Serverless::LayerVersion": (_Rule(("ContentUri",), _bucket_key, zip_files=True),),
    "AWS::Serverless::Api": (_Rule(("DefinitionUri",), _bucket_key),),
    "AWS::Serverless::HttpApi": (_Rule(("DefinitionUri",), _bucket_key),),
    "AWS::Serverless::StateMachine": (_Rule(("DefinitionUri",), _bucket_key),),
    "AWS::Lambda::Function": (_Rule(("Code",), _lambda_code, zip_files=True),),
    "AWS::Lambda::LayerVersion": (_Rule(("Content",), _lambda_code, zip_files=True),),
    "AWS::CloudFormation::Stack": (_Rule(("TemplateURL",), _template_url, template=True),),
    "AWS::ApiGateway::RestApi": (_Rule(("BodyS3Location",), _bucket_key),),
    "AWS::ApiGatewayV2::Api": (_Rule(("BodyS3Location",), _bucket_key),),
    "AWS::AppSync::Resolver": (
        _Rule(("RequestMappingTemplateS3Location",), _s3_uri),
        _Rule(("ResponseMappingTemplateS3Location",), _s3_uri),
        _Rule(("CodeS3Location",), _s3_uri),
    ),
    "AWS::AppSync::FunctionConfiguration": (
        _Rule(("RequestMappingTemplateS3Location",), _s3_uri),
        _Rule(("ResponseMappingTemplateS3Location",), _s3_uri),
        _Rule(("CodeS3Location",), _s3_uri),
    ),
    "AWS::ElasticBeanstalk::ApplicationVersion": (_Rule(("SourceBundle",), _lambda_code, zip_files=True),),
    "AWS::StepFunctions::StateMachine": (_Rule(("DefinitionS3Location",), _bucket_key),),
    "AWS::AppSync::GraphQLSchema": (_Rule(("DefinitionS3Location",), _s3_uri),),
    "AWS::Glue::Job": (_Rule(("Command", "ScriptLocation"), _s3_uri),),
}


@dataclass(frozen=True)
class PackagedObject:
    """One object the release uploads: its key (named by its hash), bytes and what it was made from."""

    key: str
    body: bytes = field(repr=False)
    sha256: str
    source: str  # "<template>: <resource>.<property> <- <local path>", for logs and errors

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(frozen=True)
class PackagedTemplate:
    """A template with every local path replaced, as JSON, and the objects it now refers to (nested ones too)."""

    text: str
    sha256: str
    objects: tuple[PackagedObject, ...]


def load_template(path: Path) -> dict[str, Any]:
    """A template as plain data, short forms (`!Ref`, `!Sub`...) read as their long forms."""
    from cfnlint.decode import decode_str  # cfn-lint knows CloudFormation's YAML tags; imported only to build

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BuildError(f"cannot read the template {path}: {exc.strerror}") from None
    template, problems = decode_str(text)
    if problems or not isinstance(template, dict):
        detail = problems[0].message if problems else "not a mapping"
        raise BuildError(f"the template {path} cannot be parsed: {detail}")
    # cfn-lint's node types → plain dicts, lists and strings; an unquoted date (AWSTemplateFormatVersion:
    # 2010-09-09) is YAML's date type and goes back to the text it was written as.
    return json.loads(json.dumps(template, default=str))


def package_template(
    path: Path,
    *,
    key_prefix: str,
    bucket_parameter: str = DEFAULT_BUCKET_PARAMETER,
    root: Path | None = None,
    template: dict[str, Any] | None = None,
) -> PackagedTemplate:
    """Package the template at `path` and, depth first, every nested template it references by local path.

    Nothing outside `root` (the source's folder; by default the template's) is read: a path or a symbolic link
    that leads out of it is refused, so a template cannot package the worker's own files into every tenant.
    `template`, if given, is used instead of reading `path` (a template made by the build, e.g. the root of
    declared stacks); its local paths are still relative to `path`'s folder.
    """
    root = (root or path.parent).resolve()
    return _package(
        _inside(root, path, "the template"),
        key_prefix=key_prefix.strip("/"),
        bucket_parameter=bucket_parameter,
        root=root,
        seen=(),
        given=template,
    )


def _inside(root: Path, path: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise BuildError(
            f"{what} {path} leads outside the application's source folder {root} (a path or a link); it is not packaged"
        )
    return resolved


def _package(
    path: Path,
    *,
    key_prefix: str,
    bucket_parameter: str,
    root: Path,
    seen: tuple[Path, ...],
    given: dict[str, Any] | None = None,
) -> PackagedTemplate:
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise BuildError(f"nested templates refer to each other in a loop: {chain}")
    template = copy.deepcopy(given) if given is not None else load_template(path)
    resources = template.get("Resources")
    if not isinstance(resources, dict) or not resources:
        raise BuildError(f"the template {path} has no Resources")
    for section in ("Parameters", "Mappings", "Conditions", "Outputs", "Metadata"):
        if section in template and template[section] is None:
            del template[section]  # written with nothing under it: CloudFormation refuses a null section
    objects: list[PackagedObject] = []
    bucket = {"Ref": bucket_parameter}
    rewritten_any = False
    for logical_id, resource in resources.items():
        if not isinstance(resource, dict):
            continue
        if resource.get("Type") == "AWS::Serverless::Application" and _local_path(
            _get(resource.get("Properties"), ("Location",))
        ):
            # SAM takes no intrinsic function in Location, so it cannot name each tenant's own bucket.
            raise BuildError(
                f"{path.name}: {logical_id} is an AWS::Serverless::Application with a local Location, which cannot be "
                "packaged per tenant. Fix: make it an AWS::CloudFormation::Stack with TemplateURL set to the same path."
            )
        for rule in PACKAGEABLE.get(str(resource.get("Type")), ()):
            properties = resource.get("Properties")
            value = _get(properties, rule.path)
            local = _local_path(value)
            if local is None:
                continue  # absent, already an S3 location, or an intrinsic function: left as it is
            where = f"{path.name}: {logical_id}.{'.'.join(rule.path)}"
            source = _inside(root, path.parent / local, f"{where} path")
            if not source.exists():
                raise BuildError(
                    f"{where} refers to {local}, which does not exist (looked for {source}). "
                    "Fix: build the application first, or correct the path (relative to the template)."
                )
            if rule.template:
                nested = _package(source, key_prefix=key_prefix, bucket_parameter=bucket_parameter, root=root, seen=(*seen, path))
                objects.extend(nested.objects)
                body = nested.text.encode()
                key = f"{key_prefix}/{nested.sha256}.template.json"
                packaged = PackagedObject(key=key, body=body, sha256=nested.sha256, source=f"{where} <- {local}")
                if bucket_parameter in (json.loads(nested.text).get("Parameters") or {}):
                    _pass_bucket_parameter(resource, bucket_parameter)  # only what it declares: AWS refuses others
            else:
                body, suffix = _object_body(source, zip_files=rule.zip_files, root=root)
                digest = hashlib.sha256(body).hexdigest()
                key = f"{key_prefix}/{digest}{suffix}"
                packaged = PackagedObject(key=key, body=body, sha256=digest, source=f"{where} <- {local}")
            objects.append(packaged)
            _set(properties, rule.path, rule.rewrite(copy.deepcopy(bucket), packaged.key))
            rewritten_any = True
    if rewritten_any:
        _declare_bucket_parameter(template, bucket_parameter)
    text = json.dumps(template, indent=1, sort_keys=False, ensure_ascii=False, default=str) + "\n"
    unique = {o.key: o for o in objects}  # the same code referenced twice is one object
    return PackagedTemplate(
        text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), objects=tuple(sorted(unique.values(), key=lambda o: o.key))
    )


def package_path(root: Path, path: str, *, key_prefix: str, name: str) -> PackagedObject:
    """One folder (zipped) or file of the source as an object named by its hash (for `key_parameters`)."""
    source = _inside(root.resolve(), root / path, f"key_parameters.{name} path")
    if not source.exists():
        raise BuildError(f"key_parameters.{name} names {path}, which is not in the source (after the build command)")
    body, suffix = _object_body(source, zip_files=True, root=root.resolve())
    digest = hashlib.sha256(body).hexdigest()
    return PackagedObject(
        key=f"{key_prefix.strip('/')}/{digest}{suffix}", body=body, sha256=digest, source=f"key_parameters.{name} <- {path}"
    )


def _local_path(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    if value.startswith(("s3://", "https://", "http://")):
        return None
    return value


def _object_body(source: Path, *, zip_files: bool, root: Path) -> tuple[bytes, str]:
    if source.is_dir():
        return zip_folder(source, root=root), ".zip"
    if source.suffix.lower() in _ARCHIVES:
        return source.read_bytes(), source.suffix.lower()
    if zip_files:
        return _zip([(source.name, source)]), ".zip"
    return source.read_bytes(), source.suffix


def zip_folder(folder: Path, *, root: Path | None = None) -> bytes:
    """A folder's files, zipped reproducibly: sorted, fixed times, only the executable bit kept.

    A symbolic link is packaged as the file it points to only if that file is inside `root` too.
    """
    root = (root or folder).resolve()
    files = [
        (path.relative_to(folder).as_posix(), _inside(root, path, "the file"))
        for path in folder.rglob("*")
        if path.is_file() and not _NEVER_PACKAGED.intersection(path.relative_to(folder).parts) and path.suffix != ".pyc"
    ]
    if not files:
        raise BuildError(f"{folder} holds no files to package")
    return _zip(sorted(files))


def _zip(files: list[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            executable = os.stat(path).st_mode & stat.S_IXUSR
            info.external_attr = (0o755 if executable else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _get(properties: Any, path: tuple[str, ...]) -> Any:
    value = properties
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _set(properties: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = properties
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _declare_bucket_parameter(template: dict[str, Any], name: str) -> None:
    if not isinstance(template.get("Parameters"), dict):
        template["Parameters"] = {}  # absent, or `Parameters:` written with nothing under it
    parameters = template["Parameters"]
    if name not in parameters:
        parameters[name] = {
            "Type": "String",
            "Description": "The tenant's artifact bucket, which holds this release's packaged code (set by tenant-release)",
        }


def _pass_bucket_parameter(stack_resource: dict[str, Any], name: str) -> None:
    properties = stack_resource.setdefault("Properties", {})
    key = "Parameters"
    passed = properties.setdefault(key, {})
    if isinstance(passed, dict):
        passed.setdefault(name, {"Ref": name})
