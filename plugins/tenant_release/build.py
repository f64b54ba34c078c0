"""Builds a release once: the application's source at the tag, its build command, packaged, checked, published.

The release tag names a build. For a git source it maps to a ref (by default the tag itself); a tag with no such
ref is refused with the refs that exist, and a tag that moved to another commit since that version was built is
refused unless the trigger asks to rebuild. A published archive (a zip CI put in S3 under a key naming the
version) is fetched and unpacked, its SHA-256 standing for the commit. A folder source is packaged as it is.
Building the same source again reuses the published build (same bytes, same keys), without checking out or
building anything.

Each build leaves a manifest beside its objects (`<release prefix>/<version>/build-<tag>.json`): the artifact as the
release uses it, with the source and commit it came from. It is written last, after every check passed, so a
build that has a manifest was linted and validated when it was published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tenant_release import classify
from tenant_release.aws import artifacts
from tenant_release.aws.session import AwsSessions
from tenant_release.errors import BuildError
from tenant_release.models import Application, Artifact, ArtifactObject, Capability, Release, Target, ToolingAccount
from tenant_release.packaging import PackagedTemplate, load_template, package_path, package_template
from tenant_release.source import GitSource, PublishedArchive, SourceError, build_environment, refuse_moved_tag, run_build

log = logging.getLogger(__name__)

TEMPLATE_BODY_MAX_BYTES = 51_200  # larger templates reach CloudFormation through S3


@dataclass(frozen=True)
class _Checkout:
    root: Path
    description: str
    commit: str | None


def application_root(application: Application, fleet_path: Path | None) -> Path:
    """The folder a folder source names, relative to the fleet file's folder (the bundled sample if unset)."""
    if application.source is None:
        return artifacts.SAMPLE_APP_DIR
    assert application.source.path is not None
    folder = Path(application.source.path).expanduser()
    if not folder.is_absolute():
        folder = (fleet_path.parent if fleet_path else Path.cwd()) / folder
    return folder.resolve()


def build_release(
    sessions: AwsSessions,
    *,
    tooling: ToolingAccount,
    application: Application,
    fleet_path: Path | None,
    release: Release,
    targets: list[Target],
    rebuild: bool = False,
    log_line: Callable[[str], None] = log.info,
) -> Artifact:
    """Build (or find again) the release's artifact and check it against every target's parameters."""
    retry = classify.RetryPolicy()
    s3 = sessions.tooling_client("s3", tooling.region)
    key_prefix = f"{tooling.release_prefix.strip('/')}/{release.version}"
    manifest_key = build_manifest_key(tooling, release)
    recipe = build_recipe(application)
    built = retry.call("read the build manifest", read_manifest, s3, tooling.artifact_bucket, manifest_key, log=log.warning)
    git = git_source(application, fleet_path)
    archive = PublishedArchive(uri=application.source.archive) if application.source and application.source.archive else None
    published: bytes | None = None
    identity, what = None, "commit"
    resolved: tuple[str, str] | None = None
    if git is not None:
        ref, identity = resolved = git.resolve(tag=release.tag, version=release.version)
    elif archive is not None:
        bucket, key = archive.location(tag=release.tag, version=release.version)
        published = retry.call("fetch the published archive", archive.fetch, s3, tag=release.tag, version=release.version)
        ref, identity, what = f"s3://{bucket}/{key}", hashlib.sha256(published).hexdigest(), "published archive"
    if identity is not None:
        built_from = built.source_commit if built else None
        refuse_moved_tag(tag=release.tag, commit=identity, built_from=built_from, rebuild=rebuild, what=what)
        if built is not None and built_from == identity and built.recipe == recipe and not rebuild and _present(s3, built, retry):
            check_parameters(
                targets,
                application,
                declared=_declared(s3, built, retry),
                version=release.version,
                packaged=bool(built.objects),
                keys=built.key_parameters,
            )
            log_line(f"build: {release.tag} is {ref} ({what} {identity[:12]}), built before as sha256 {built.sha256}: reused")
            return built.model_copy(update={"reused": True})
    with _checked_out(
        application, fleet_path, git, release, published=published, archive=archive, resolved=resolved, identity=identity
    ) as checkout:
        if application.build:
            run_build(
                application.build,
                cwd=checkout.root,
                env=build_environment(
                    application.build_env,
                    {"RELEASE_TAG": release.tag, "RELEASE_VERSION": release.version, "SOURCE_COMMIT": checkout.commit or ""},
                ),
                timeout_seconds=application.build_timeout_minutes * 60,
                log_line=log_line,
            )
        bucket_parameter = application.parameters.bucket or ""
        if application.stacks:
            # Several stacks in order: one tenant stack nesting them, made here, so that CloudFormation deploys them
            # in that order and passes each one's outputs on (the deploy, history and checks see one stack).
            packaged = package_template(
                checkout.root / STACKS_ROOT_NAME,
                key_prefix=key_prefix,
                bucket_parameter=bucket_parameter,
                root=checkout.root,
                template=stacks_root_template(application, checkout.root),
            )
        else:
            template_path = checkout.root / application.template
            if not template_path.is_file():
                raise BuildError(
                    f"the application template {application.template} is not in {checkout.description}. "
                    "Fix: set application.template to its path inside the source folder."
                )
            packaged = package_template(
                template_path, key_prefix=key_prefix, bucket_parameter=bucket_parameter, root=checkout.root
            )
        keyed = {
            name: package_path(checkout.root, path, key_prefix=key_prefix, name=name)
            for name, path in application.key_parameters.items()
        }
    objects = {o.key: o for o in (*packaged.objects, *keyed.values())}
    key_parameters = {name: obj.key for name, obj in keyed.items()}
    # The build's identity covers the objects named by parameters too (the template alone does not name them).
    identity_sha = packaged.sha256
    if key_parameters:
        identity_sha = hashlib.sha256(json.dumps([packaged.sha256, key_parameters], sort_keys=True).encode()).hexdigest()
    artifact = Artifact(
        version=release.version,
        sha256=identity_sha,
        bucket=tooling.artifact_bucket,
        template_key=f"{key_prefix}/{packaged.sha256}.template.json",
        template_sha256=packaged.sha256,
        key_parameters=key_parameters,
        objects=tuple(ArtifactObject(key=o.key, sha256=o.sha256) for o in sorted(objects.values(), key=lambda o: o.key)),
        source=checkout.description,
        source_commit=checkout.commit,
        recipe=recipe,
    )
    for obj in objects.values():
        log_line(f"build: {obj.key} ({obj.size} bytes) <- {obj.source}")
    if built is not None and built.sha256 == artifact.sha256 and built.recipe == recipe and _present(s3, built, retry):
        check_parameters(
            targets,
            application,
            declared=declared_parameters(packaged.text),
            version=release.version,
            packaged=bool(packaged.objects),
            keys=key_parameters,
        )
        log_line(f"build: sha256 {artifact.sha256} was built and checked before: reused")
        return built.model_copy(update={"reused": True})
    check_build(packaged, application, targets, version=release.version, keys=key_parameters)
    kms = sessions.tooling_client("kms", tooling.region)
    key_arn = retry.call("resolve tooling key", artifacts.resolve_kms_key_arn, kms, tooling.kms_key_alias, log=log.warning)
    uploads = [(o.key, o.body, o.sha256) for o in objects.values()]
    uploads.append((artifact.template_key, packaged.text.encode(), packaged.sha256))
    for key, body, sha in uploads:
        retry.call(
            "publish", artifacts.put_once, s3, bucket=tooling.artifact_bucket, key=key, body=body, sha256=sha,
            kms_key_id=key_arn, version=release.version, source_commit=artifact.source_commit, log=log.warning,
        )  # fmt: skip
    cloudformation = sessions.tooling_client("cloudformation", tooling.region)
    retry.call("validate template", validate, cloudformation, packaged, artifact, tooling.region, log=log.warning)
    manifest = json.dumps(artifact.model_dump(mode="json", exclude={"reused"}), indent=1).encode()
    retry.call(
        "write the build manifest", artifacts.put_object, s3, bucket=tooling.artifact_bucket, key=manifest_key,
        body=manifest, kms_key_id=key_arn, log=log.warning,
    )  # fmt: skip
    log_line(f"build: published {artifact.version} sha256 {artifact.sha256} from {artifact.source}")
    return artifact


STACKS_ROOT_NAME = "(declared stacks)"


def stacks_root_template(application: Application, root: Path) -> dict[str, Any]:
    """The tenant's one stack for `application.stacks`: each declared stack nested in it, after the one before.

    Each nested stack gets, by name, the parameters it declares (the root declares them once, from the first
    stack that does), except its `inputs`, which are outputs of earlier stacks. Every output of every stack is an
    output of the root too, named <stack><Output> (e.g. apiUrl), for health checks.
    """
    parameters: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    previous: str | None = None
    for stack in application.stacks:
        path = root / stack.template
        if not path.is_file():
            raise BuildError(f"stacks: {stack.name}'s template {stack.template} is not in the source. Fix: correct its path.")
        declared = load_template(path)
        own = declared.get("Parameters") or {}
        passed: dict[str, Any] = {}
        for name, spec in own.items():
            if name in stack.inputs:
                origin, _, output = stack.inputs[name].partition(".")
                passed[name] = {"Fn::GetAtt": [origin, f"Outputs.{output}"]}
                continue
            if name in parameters and parameters[name].get("Type", "String") != spec.get("Type", "String"):
                raise BuildError(f"stacks: parameter {name} has type {spec.get('Type')} in {stack.name}, another type before")
            parameters.setdefault(name, spec)
            passed[name] = {"Ref": name}
        unknown = sorted(set(stack.inputs) - set(own))
        if unknown:
            raise BuildError(f"stacks: {stack.name}.inputs names {', '.join(unknown)}, which {stack.template} does not declare")
        resource: dict[str, Any] = {"Type": "AWS::CloudFormation::Stack", "Properties": {"TemplateURL": stack.template}}
        if passed:
            resource["Properties"]["Parameters"] = passed
        if previous and previous not in {source.partition(".")[0] for source in stack.inputs.values()}:
            resource["DependsOn"] = [previous]  # an input from it already orders them (cfn-lint W3005)
        resources[stack.name] = resource
        for output in declared.get("Outputs") or {}:
            outputs[f"{stack.name}{output}"] = {"Value": {"Fn::GetAtt": [stack.name, f"Outputs.{output}"]}}
        previous = stack.name
    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "tenant-release: the application's stacks, nested in the order they are declared",
        "Resources": resources,
    }
    if parameters:
        template["Parameters"] = parameters
    if outputs:
        template["Outputs"] = outputs
    return template


def build_recipe(application: Application) -> str:
    """What, besides the source, decides a build's bytes: a change to it builds again instead of reusing."""
    fields = application.model_dump(
        mode="json", include={"source", "build", "build_env", "template", "stacks", "parameters", "key_parameters"}
    )
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def git_source(application: Application, fleet_path: Path | None) -> GitSource | None:
    """The application's git source; a relative local repository path is relative to the fleet file's folder."""
    source = application.source
    if source is None or source.git is None:
        return None
    url = source.git
    remote = "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url)
    if not remote and not Path(url).expanduser().is_absolute():
        url = str(((fleet_path.parent if fleet_path else Path.cwd()) / url).resolve())
    return GitSource(url=url, ref=source.ref)


@contextmanager
def _checked_out(
    application: Application,
    fleet_path: Path | None,
    git: GitSource | None,
    release: Release,
    *,
    published: bytes | None,
    archive: PublishedArchive | None,
    resolved: tuple[str, str] | None,
    identity: str | None,
) -> Iterator[_Checkout]:
    if archive is not None and published is not None:
        bucket, key = archive.location(tag=release.tag, version=release.version)
        with tempfile.TemporaryDirectory(prefix="tenant-release-build-") as work:
            root = Path(work) / "source"
            PublishedArchive.unpack(published, root)
            yield _Checkout(root=root, description=f"s3://{bucket}/{key}", commit=identity)
        return
    if git is None:
        root = application_root(application, fleet_path)
        if not root.is_dir():
            raise BuildError(
                f"the application source folder {root} does not exist. Fix: set application.source.path "
                "(relative to the fleet file's folder)."
            )
        yield _Checkout(root=root, description=f"folder {root}", commit=None)
        return
    with tempfile.TemporaryDirectory(prefix="tenant-release-build-") as work:
        revision = git.checkout(tag=release.tag, version=release.version, into=Path(work) / "source", expected=resolved)
        yield _Checkout(root=revision.checkout, description=f"{revision.url} {revision.ref}", commit=revision.commit)


def build_manifest_key(tooling: ToolingAccount, release: Release) -> str:
    """Where the build of a tag leaves its manifest (`tenant-release approve` reads the sha256 to approve there)."""
    # One manifest per tag: v1.4.0 and v-1.4.0-qa share a version but may name different refs.
    return f"{tooling.release_prefix.strip('/')}/{release.version}/build-{release.tag}.json"


def read_manifest(s3: Any, bucket: str, key: str) -> Artifact | None:
    body = artifacts.get_object(s3, bucket=bucket, key=key)
    if body is None:
        return None
    try:
        return Artifact.model_validate_json(body)
    except ValueError:
        log.warning("the build manifest s3://%s/%s cannot be read; building again", bucket, key)
        return None


def _present(s3: Any, artifact: Artifact, retry: classify.RetryPolicy) -> bool:
    return retry.call("look for the build", artifacts.already_published, s3, artifact, log=log.warning)


def _declared(s3: Any, artifact: Artifact, retry: classify.RetryPolicy) -> dict[str, dict[str, Any]]:
    body = retry.call("read the template", artifacts.get_object, s3, bucket=artifact.bucket, key=artifact.template_key)
    return declared_parameters((body or b"{}").decode())


def declared_parameters(packaged_text: str) -> dict[str, dict[str, Any]]:
    """The template's parameters, each with its declaration (Type, Default, AllowedValues...)."""
    declared = json.loads(packaged_text).get("Parameters") or {}
    return {name: spec if isinstance(spec, dict) else {} for name, spec in sorted(declared.items())}


def check_build(
    packaged: PackagedTemplate, application: Application, targets: list[Target], *, version: str, keys: dict[str, str]
) -> None:
    """Once per build: cfn-lint on every template, the capabilities they need, the parameters each target sets."""
    nested = [o for o in packaged.objects if o.key.endswith(".template.json")]
    artifacts.lint_template(packaged.text)
    for template in nested:
        artifacts.lint_template(template.body.decode(), name=template.source)
    texts = [packaged.text, *(t.body.decode() for t in nested)]
    templates = [json.loads(text) for text in texts]
    resources = [r for t in templates for r in (t.get("Resources") or {}).values() if isinstance(r, dict)]
    iam = [r for r in resources if str(r.get("Type", "")).startswith("AWS::IAM::")]
    named = [
        r
        for r in iam
        if any(
            k in (r.get("Properties") or {})
            for k in ("RoleName", "UserName", "GroupName", "ManagedPolicyName", "InstanceProfileName")
        )
    ]
    capabilities = set(application.capabilities)
    if named and Capability.NAMED_IAM not in capabilities:
        raise BuildError(
            "the application's templates create IAM resources with names of their own, but application.capabilities "
            "lacks CAPABILITY_NAMED_IAM. Fix: add it to application.capabilities."
        )
    if iam and not capabilities & {Capability.IAM, Capability.NAMED_IAM}:
        raise BuildError(
            "the application's templates create IAM resources, but application.capabilities lacks CAPABILITY_IAM. "
            "Fix: add it to application.capabilities."
        )
    if any("Transform" in t for t in templates) and Capability.AUTO_EXPAND not in capabilities:
        raise BuildError(
            "the application's templates use a transform (e.g. AWS::Serverless-2016-10-31) but application.capabilities "
            "lacks CAPABILITY_AUTO_EXPAND. Fix: add it to application.capabilities."
        )
    check_parameters(
        targets,
        application,
        declared=declared_parameters(packaged.text),
        version=version,
        packaged=bool(packaged.objects),
        keys=keys,
    )


def check_template_locally(
    application: Application,
    fleet_path: Path | None,
    targets: list[Target],
    *,
    version: str = "0.0.0",
    release: Release | None = None,
) -> str:
    """`check_parameters` before any AWS call, when the template can be read here: the sample or a folder source,
    or (given the release) a git repository on this machine, at the commit the release tag names.

    Raises `BuildError` naming every target whose parameters the template would refuse; returns what was checked.
    A remote repository or a published archive is read only when the release is built, so it is checked then.
    """
    source = application.source
    git = git_source(application, fleet_path)
    if git is not None and release is not None and not application.stacks and Path(git.url).is_dir():
        text = _template_at_tag(git, application.template, release)
        if text is not None:
            with tempfile.TemporaryDirectory(prefix="tenant-release-check-") as work:
                path = Path(work) / PurePosixPath(application.template).name
                path.write_text(text, encoding="utf-8")
                return _check_against(
                    load_template(path), application, targets, version, f"{application.template} at {release.tag}"
                )
    if source is not None and (source.git or source.archive):
        kind = "git repository" if source.git else "published archive"
        return f"checked when the release is built (the {kind} is not read before)"
    root = application_root(application, fleet_path)
    if application.stacks:
        template, what = stacks_root_template(application, root), "the declared stacks"
    else:
        path = root / application.template
        if not path.is_file():
            if application.build:
                return f"checked when the release is built ({application.template} does not exist before the build)"
            raise BuildError(
                f"the application template {path} does not exist. Fix: set application.template to its path inside {root}"
            )
        template, what = load_template(path), str(path)
    return _check_against(template, application, targets, version, what)


def _check_against(template: dict[str, Any], application: Application, targets: list[Target], version: str, what: str) -> str:
    declared = {name: spec if isinstance(spec, dict) else {} for name, spec in (template.get("Parameters") or {}).items()}
    # Whether the build packages local code is known only then; a template that takes the bucket expects it.
    packaged = application.parameters.bucket in declared
    keys = {name: f"releases/{version}/{name}" for name in application.key_parameters}
    check_parameters(targets, application, declared=declared, version=version, packaged=packaged, keys=keys)
    return f"the parameters of {len(targets)} target(s) fit {what}"


def _template_at_tag(git: GitSource, template: str, release: Release) -> str | None:
    """The template as committed at the release's ref of a repository on this machine; None: leave it to the build."""
    try:
        _, commit = git.resolve(tag=release.tag, version=release.version)
        done = subprocess.run(  # noqa: S603 (fixed program; arguments are never run by a shell)
            ["git", "-C", git.url, "show", f"{commit}:{PurePosixPath(template)}"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (SourceError, OSError, subprocess.TimeoutExpired):
        return None  # the build says what is wrong with the source, in its own words
    return done.stdout if done.returncode == 0 else None


def check_parameters(
    targets: list[Target],
    application: Application,
    *,
    declared: dict[str, dict[str, Any]],
    version: str,
    packaged: bool,
    keys: dict[str, str] | None = None,
) -> None:
    """Before anything is deployed: every target's parameter values exist in the template and fit its constraints.

    Every name the release sets is declared; no target sets one of them or one the template does not declare;
    each parameter with no Default gets a value; each value fits its AllowedValues, AllowedPattern, lengths and
    numeric bounds, as CloudFormation would check it (after AWS calls, tenant by tenant) at deploy time.
    """
    from tenant_release.deploy import release_parameters

    keys = keys or {}
    release_names = application.parameters.names()
    if not packaged and not keys:
        release_names.pop("bucket", None)  # nothing was packaged: the template need not take the bucket
    release_names.update({f"key_parameters.{name}": name for name in keys})
    problems = [
        f"application.{role if role.startswith('key_parameters.') else 'parameters.' + role} names {name}, "
        "which the template does not declare"
        for role, name in release_names.items()
        if name not in declared
    ]
    for target in targets:
        reserved = sorted(set(target.parameters) & set(release_names.values()))
        unknown = sorted(set(target.parameters) - set(declared))
        if reserved:
            problems.append(f"tenant {target.name!r} sets {', '.join(reserved)}, which the release sets itself; remove them")
        if unknown:
            problems.append(
                f"tenant {target.name!r} sets parameter(s) {', '.join(unknown)} that the application template does not "
                f"declare (it declares: {', '.join(declared)})"
            )
        values = {**target.parameters, **release_parameters(application, target, version, packaged=packaged, keys=keys)}
        for name, spec in declared.items():
            problem = _misfit(name, spec, values.get(name))
            if problem:
                problems.append(f"tenant {target.name!r}: {problem}")
    if problems:
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise BuildError("the fleet file's parameters do not fit the template: " + "; ".join(problems[:20]) + more)


def _misfit(name: str, spec: dict[str, Any], value: str | None) -> str | None:
    if value is None:
        return None if "Default" in spec else f"{name} has no Default and is not set (set it in the tenant's parameters)"
    allowed = spec.get("AllowedValues")
    if isinstance(allowed, list) and value not in [str(v) for v in allowed]:
        return f"{name}={value!r} is not one of {', '.join(str(v) for v in allowed)}"
    pattern = spec.get("AllowedPattern")
    if isinstance(pattern, str):
        try:
            fits = re.fullmatch(pattern, value) is not None
        except re.error:
            fits = True  # a Java-only construct: CloudFormation itself will judge it
        if not fits:
            return f"{name}={value!r} does not match {pattern}" + (
                f" ({spec['ConstraintDescription']})" if spec.get("ConstraintDescription") else ""
            )
    kind = str(spec.get("Type", "String"))
    if kind == "String":
        if "MinLength" in spec and len(value) < int(spec["MinLength"]):
            return f"{name}={value!r} is shorter than {spec['MinLength']} characters"
        if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
            return f"{name} is longer than {spec['MaxLength']} characters"
    if kind == "Number":
        try:
            number = float(value)
        except ValueError:
            return f"{name}={value!r} is not a number"
        if "MinValue" in spec and number < float(spec["MinValue"]):
            return f"{name}={value} is below {spec['MinValue']}"
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            return f"{name}={value} is above {spec['MaxValue']}"
    return None


def validate(cloudformation: Any, packaged: PackagedTemplate, artifact: Artifact, region: str) -> None:
    """CloudFormation's own ValidateTemplate: the body when it fits, else the published copy by URL."""
    if len(packaged.text.encode()) <= TEMPLATE_BODY_MAX_BYTES:
        artifacts.validate_template(cloudformation, template_body=packaged.text)
    else:
        url = artifacts.template_url(artifact.bucket, region, artifact.template_key)
        artifacts.validate_template(cloudformation, template_url=url)
