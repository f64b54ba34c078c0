"""One function per derived name: ARNs, artifact keys, change sets, STS session names."""

from __future__ import annotations

import hashlib
import re

from tenant_release.errors import FleetConfigError

_SESSION_UNSAFE = re.compile(r"[^\w+=,.@-]")
_CHANGE_SET_UNSAFE = re.compile(r"[^a-zA-Z0-9-]")

STS_NAME_MAX = 64
TOOLING_STACK = "tenant-release-tooling"
TENANT_STACK = "tenant-release-bootstrap"
SOURCE_IDENTITY_PREFIX = "tenant-release"

# The key prefix of S3 approval records in the tooling bucket (aws.approvals); never the release prefix.
APPROVALS_PREFIX = "approvals"


def partition_for(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def role_arn(*, account_id: str, role_name: str, region: str) -> str:
    return f"arn:{partition_for(region)}:iam::{account_id}:role/{role_name}"


def app_permissions_boundary_arn(*, account_id: str, region: str, prefix: str) -> str:
    """The bootstrap's `AppPermissionsBoundary` policy, which every application role must carry."""
    return f"arn:{partition_for(region)}:iam::{account_id}:policy/{prefix}permissions-boundary"


def _short_hash(*parts: str, length: int = 10) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def _fit(text: str, limit: int, *, unsafe: re.Pattern[str], replacement: str) -> str:
    """Sanitise and, when too long, keep the head and a hash of the whole so the name stays unique."""
    clean = unsafe.sub(replacement, text)
    if len(clean) <= limit:
        return clean
    digest = _short_hash(text, length=8)
    return f"{clean[: limit - len(digest) - 1]}-{digest}"


def session_name(*, release_tag: str, run_id: str) -> str:
    """RoleSessionName: shows up in the tenant's CloudTrail as who did what, for which release and run."""
    return _fit(f"tr-{release_tag}-{run_id}", STS_NAME_MAX, unsafe=_SESSION_UNSAFE, replacement="-")


def source_identity(*, release_tag: str) -> str:
    """SourceIdentity persists through role chaining and cannot be changed by the assumed session."""
    return _fit(f"{SOURCE_IDENTITY_PREFIX}@{release_tag}", STS_NAME_MAX, unsafe=_SESSION_UNSAFE, replacement="-")


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def change_set_name(*, version: str, deploy_digest: str) -> str:
    """Deterministic: a retry finds the change set its previous attempt created instead of making another."""
    return _fit(f"tr-{version}-{deploy_digest[:12]}", 128, unsafe=_CHANGE_SET_UNSAFE, replacement="-")


def change_set_name_from(name: str, stack_digest: str | None) -> str:
    """The same deploy again from another starting point of the stack (its current digest): a new, stable name."""
    suffix = (stack_digest or "none")[:8]
    return _fit(f"{name}-from-{suffix}", 128, unsafe=_CHANGE_SET_UNSAFE, replacement="-")


def deploy_digest(*, build_sha256: str, parameters: dict[str, str]) -> str:
    """What makes two deploys the same: the build (template and every packaged object) and every parameter value."""
    flat = "\n".join(f"{key}={parameters[key]}" for key in sorted(parameters))
    return hashlib.sha256(f"{build_sha256}\n{flat}".encode()).hexdigest()


def render_target_name(pattern: str, **values: str) -> str:
    """Expand `{name}`, `{account_id}`, `{region}` in a defaults pattern such as `tenant-app-{name}`."""
    return pattern.format(**values)


def common_bucket_prefix(patterns: list[str]) -> str:
    """The name prefix every tenant artifact bucket shares (`tenant-release-`): the orchestrator's grant to copy.

    Taken from the fleet file's bucket patterns (the text before the first placeholder), not from the rendered
    names, so it stays the same as tenants come and go. It scopes an identity policy in the tooling account
    without naming a tenant; each tenant's own bucket policy decides whether the copy is allowed.
    """
    heads = [pattern.split("{", 1)[0] for pattern in patterns]
    prefix = heads[0] if heads else ""
    for head in heads[1:]:
        while not head.startswith(prefix):
            prefix = prefix[:-1]
    if len(prefix) < 3:
        raise FleetConfigError(
            f"the artifact buckets of the fleet share no name prefix ({', '.join(sorted(set(patterns))[:5])}); give them "
            "a common one, e.g. artifact_bucket: 'tenant-release-{account_id}-{region}' in the fleet defaults"
        )
    return prefix


def app_name_prefix(stack_name: str, function_name: str) -> str:
    """The app resources' shared name prefix, which scopes the execution role (e.g. `tenant-app-`)."""
    prefix = ""
    for a, b in zip(stack_name, function_name, strict=False):
        if a != b:
            break
        prefix += a
    if "-" in prefix:
        prefix = prefix[: prefix.rindex("-") + 1]
    if len(prefix) < 4:
        raise FleetConfigError(
            f"stack name {stack_name!r} and function name {function_name!r} share no name prefix to scope the "
            "deployment roles to; give them a common prefix such as 'tenant-app-'"
        )
    return prefix


def app_prefix_clashes(prefix: str, own_names: dict[str, str]) -> list[str]:
    """The project's own names (`what: name`) that the application name prefix would let the execution role manage.

    The execution role may manage any role, function, stack, bucket... whose name starts with the prefix, so a
    prefix such as `tenant-` would cover `tenant-release-deploy` and the `tenant-release-bootstrap` stack.
    """
    return [f"{what} {name!r}" for what, name in own_names.items() if name.startswith(prefix)]
