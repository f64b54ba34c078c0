"""Builds the release artifact once and copies it, re-encrypted, into each tenant's own bucket."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import zipfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify, naming
from tenant_release.errors import BuildError, ChecksumMismatchError, PermanentAwsError
from tenant_release.models import Artifact

log = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[3]
APP_DIR = _PROJECT_ROOT / "include" / "templates" / "app"
APP_TEMPLATE = APP_DIR / "template.yaml"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def package_application(source_dir: Path = APP_DIR) -> bytes:
    """Zip the function's code reproducibly: same files, same bytes, same hash, whatever the clock says."""
    files = sorted(p for p in source_dir.rglob("*") if p.is_file() and p.suffix != ".yaml" and "__pycache__" not in p.parts)
    if not files:
        raise BuildError(f"no application code found in {source_dir}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(source_dir).as_posix(), date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checksum_b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def lint_template(template_text: str) -> None:
    """Run cfn-lint; errors fail the build, warnings are logged."""
    from cfnlint.api import lint  # imported here: cfn-lint is slow to import and only the build needs it

    matches = lint(template_text)
    errors = [m for m in matches if str(m.rule.id).startswith("E")]
    for match in matches:
        log.info("cfn-lint %s line %s: %s", match.rule.id, match.linenumber, match.message)
    if errors:
        detail = "; ".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in errors[:5])
        raise BuildError(f"the application template fails cfn-lint: {detail}")


def validate_template(cloudformation: Any, template_text: str) -> None:
    """CloudFormation's own ValidateTemplate."""
    try:
        cloudformation.validate_template(TemplateBody=template_text)
    except ClientError as exc:
        if classify.is_retriable(exc):
            raise
        raise BuildError(f"CloudFormation rejects the application template: {classify.describe(exc)}") from None


def declared_parameters(template_text: str) -> list[str]:
    """Parameter names of a template, read with cfn-lint's YAML loader (it knows the short-form tags)."""
    from cfnlint.decode import decode_str

    template, problems = decode_str(template_text)
    if problems or not isinstance(template, dict):
        raise BuildError(f"the application template cannot be parsed: {problems[0].message if problems else 'not a mapping'}")
    return sorted((template.get("Parameters") or {}).keys())


def publish_artifact(
    s3: Any,
    *,
    bucket: str,
    kms_key_id: str,
    release_prefix: str,
    version: str,
    code: bytes,
    template_text: str,
) -> Artifact:
    """Upload code and template under a key naming version and content hash; reuse what is already there."""
    planned = planned_artifact(
        bucket=bucket, release_prefix=release_prefix, version=version, code=code, template_text=template_text
    )
    reused = True
    for key, body, sha in (
        (planned.code_key, code, planned.sha256),
        (planned.template_key, template_text.encode(), planned.template_sha256),
    ):
        existing = head_object(s3, bucket=bucket, key=key)
        if existing is not None and existing.get("Metadata", {}).get("sha256") == sha:
            continue
        reused = False
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=kms_key_id,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=_checksum_b64(sha),
            Metadata={"sha256": sha, "release-version": version},
        )
    return planned.model_copy(update={"reused": reused})


def planned_artifact(*, bucket: str, release_prefix: str, version: str, code: bytes, template_text: str) -> Artifact:
    """Where this build lives (keys named by version and content hash), whether or not it is uploaded yet."""
    code_sha = sha256_hex(code)
    template_sha = sha256_hex(template_text.encode())
    bundle_sha = sha256_hex(f"{code_sha}:{template_sha}".encode())
    return Artifact(
        version=version,
        sha256=code_sha,
        bucket=bucket,
        code_key=naming.code_key(release_prefix=release_prefix, version=version, sha256=bundle_sha),
        template_key=naming.template_key(release_prefix=release_prefix, version=version, sha256=bundle_sha),
        template_sha256=template_sha,
    )


def already_published(s3: Any, artifact: Artifact) -> bool:
    """Both objects of this exact build are in the bucket: it passed the build's checks when it was published."""
    for key, sha in ((artifact.code_key, artifact.sha256), (artifact.template_key, artifact.template_sha256)):
        existing = head_object(s3, bucket=artifact.bucket, key=key)
        if existing is None or existing.get("Metadata", {}).get("sha256") != sha:
            return False
    return True


def head_object(s3: Any, *, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if classify.error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def copy_into_tenant(
    s3: Any,
    *,
    source_bucket: str,
    source_key: str,
    sha256: str,
    target_bucket: str,
    target_key: str,
    kms_key_arn: str,
) -> None:
    """Server-side copy, re-encrypted under the tenant's key, verified against the build's SHA-256.

    One call: S3 computes the copy's SHA-256 (`ChecksumAlgorithm`) and returns it with the copy, so nothing is
    read back (a head before and after each copy was four calls a tenant; at a thousand tenants that is a
    fifth of all the release's AWS calls). A retry copies again: copying the same object twice is harmless.
    Only an endpoint that returns no checksum with the copy is asked for the object's head.
    """
    try:
        response = s3.copy_object(
            Bucket=target_bucket,
            Key=target_key,
            CopySource={"Bucket": source_bucket, "Key": source_key},
            MetadataDirective="COPY",
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=kms_key_arn,
            ChecksumAlgorithm="SHA256",
        )
    except ClientError as exc:
        if classify.is_retriable(exc):
            raise
        code = classify.error_code(exc)
        hint = ""
        if code in {"NoSuchBucket", "404"}:
            hint = f" Fix: the tenant bucket {target_bucket} is missing; deploy the tenant bootstrap stack."
        elif classify.is_access_denied(exc):
            hint = " Fix: the tenant's deploy role needs read on the tooling release prefix and kms:Decrypt on its key."
        raise PermanentAwsError(
            f"copying s3://{source_bucket}/{source_key} to s3://{target_bucket}/{target_key} failed: "
            f"{classify.describe(exc)}.{hint}"
        ) from None
    copied = {**(response.get("CopyObjectResult") or {}), "SSEKMSKeyId": response.get("SSEKMSKeyId")}
    if not copied.get("ChecksumSHA256"):
        copied = head_object(s3, bucket=target_bucket, key=target_key) or {}
    if not _matches(copied, sha256):
        raise ChecksumMismatchError(
            f"the copy at s3://{target_bucket}/{target_key} does not hash to the built artifact {sha256}; it was not deployed"
        )
    if copied.get("SSEKMSKeyId") not in (None, kms_key_arn):
        raise PermanentAwsError(
            f"the copy at s3://{target_bucket}/{target_key} is encrypted under {copied['SSEKMSKeyId']}, not the tenant's "
            f"key {kms_key_arn}; it was not deployed"
        )


def _matches(head: dict[str, Any], sha256: str) -> bool:
    checksum = head.get("ChecksumSHA256")
    if checksum and "-" not in checksum:  # a multipart checksum ends in -N and is not a whole-object hash
        return checksum == _checksum_b64(sha256)
    return head.get("Metadata", {}).get("sha256") == sha256


def resolve_kms_key_arn(kms: Any, alias: str) -> str:
    """The tenant copy is encrypted under the key ARN, so the object names the real key, not an alias."""
    try:
        return kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"]
    except ClientError as exc:
        if classify.is_retriable(exc):
            raise
        raise PermanentAwsError(
            f"KMS key {alias} not found or not usable: {classify.describe(exc)}. "
            "Fix: deploy the bootstrap stack that creates it, or set kms_key_alias in the fleet file."
        ) from None
