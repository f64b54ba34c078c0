"""Builds the release artifact once and copies it, re-encrypted, into each tenant's own bucket."""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify, naming
from tenant_release.errors import BuildError, ChecksumMismatchError, PermanentAwsError
from tenant_release.models import Artifact

log = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[3]
SAMPLE_APP_DIR = _PROJECT_ROOT / "include" / "templates" / "app"
SAMPLE_APP_TEMPLATE = SAMPLE_APP_DIR / "template.yaml"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checksum_b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def lint_template(template_text: str, *, name: str = "the application template") -> None:
    """Run cfn-lint; errors fail the build, warnings are logged."""
    from cfnlint.api import lint  # imported here: cfn-lint is slow to import and only the build needs it

    matches = lint(template_text)
    errors = [m for m in matches if str(m.rule.id).startswith("E")]
    for match in matches:
        log.info("cfn-lint %s line %s: %s", match.rule.id, match.linenumber, match.message)
    if errors:
        detail = "; ".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in errors[:5])
        raise BuildError(f"{name} fails cfn-lint: {detail}")


def validate_template(cloudformation: Any, *, template_body: str | None = None, template_url: str | None = None) -> None:
    """CloudFormation's own ValidateTemplate."""
    try:
        if template_body is not None:
            cloudformation.validate_template(TemplateBody=template_body)
        else:
            cloudformation.validate_template(TemplateURL=template_url)
    except ClientError as exc:
        if classify.is_retriable(exc):
            raise
        raise BuildError(f"CloudFormation rejects the application template: {classify.describe(exc)}") from None


def template_url(bucket: str, region: str, key: str) -> str:
    suffix = "amazonaws.com.cn" if naming.partition_for(region) == "aws-cn" else "amazonaws.com"
    return f"https://{bucket}.s3.{region}.{suffix}/{key}"


def put_once(
    s3: Any, *, bucket: str, key: str, body: bytes, sha256: str, kms_key_id: str, version: str, source_commit: str | None = None
) -> bool:
    """Upload an object named by its content, unless it is there already; True when it was uploaded.

    Its metadata names the version and, when there is one, the source commit it was built from (a tenant's copy
    keeps it: the copy copies metadata).
    """
    existing = head_object(s3, bucket=bucket, key=key)
    if existing is not None and existing.get("Metadata", {}).get("sha256") == sha256:
        return False
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=kms_key_id,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=_checksum_b64(sha256),
        Metadata={"sha256": sha256, "release-version": version, **({"source-commit": source_commit} if source_commit else {})},
    )
    return True


def put_object(s3: Any, *, bucket: str, key: str, body: bytes, kms_key_id: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key_id)


def get_object(s3: Any, *, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if classify.error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def artifact_files(artifact: Artifact) -> list[tuple[str, str]]:
    """(key, sha256) of every object of a build, the packaged template last."""
    return [*((o.key, o.sha256) for o in artifact.objects), (artifact.template_key, artifact.template_sha256 or artifact.sha256)]


def already_published(s3: Any, artifact: Artifact) -> bool:
    """Every object of this exact build is in the bucket."""
    for key, sha in artifact_files(artifact):
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
        elif code.startswith("KMS.") or (classify.is_access_denied(exc) and "kms:" in classify.error_message(exc)):
            hint = (
                f" Fix: the key policy of the tenant's key {kms_key_arn} must let the tooling orchestrator role use it "
                "through S3: statement OrchestratorEncryptsReleaseCopies (kms:GenerateDataKey, kms:Encrypt, kms:ViaService "
                "s3.<region>) of ArtifactKey in include/templates/tenant-bootstrap.yaml; redeploy the tenant bootstrap "
                "stack (`tenant-release bootstrap`). The orchestrator's own policy must allow the same "
                "(EncryptCopiesUnderTenantKeys in include/templates/tooling.yaml)."
            )
        elif classify.is_access_denied(exc):
            hint = (
                f" Fix: the policy of the tenant bucket {target_bucket} must let the tooling orchestrator role write "
                "release copies: statement OrchestratorStagesReleases (s3:PutObject, s3:GetObject) of ArtifactBucketPolicy "
                "in include/templates/tenant-bootstrap.yaml (redeploy it with `tenant-release bootstrap`); the "
                "orchestrator's own policy must allow reading the source and writing the copy (PublishReleaseArtifacts, "
                "CopyReleasesIntoTenantBuckets, UseArtifactKey in include/templates/tooling.yaml)."
            )
        raise PermanentAwsError(
            f"copying s3://{source_bucket}/{source_key} to s3://{target_bucket}/{target_key} failed: "
            f"{classify.describe(exc)}.{hint}"
        ) from None
    copied = {**(response.get("CopyObjectResult") or {}), "SSEKMSKeyId": response.get("SSEKMSKeyId")}
    if not copied.get("ChecksumSHA256"):
        copied = head_object(s3, bucket=target_bucket, key=target_key) or {}
    if not _matches(copied, sha256):
        raise ChecksumMismatchError(
            f"the copy at s3://{target_bucket}/{target_key} hashes to {_copied_sha256(copied)}, not to the built "
            f"artifact's {sha256}: the source s3://{source_bucket}/{source_key} no longer holds what was built, or the "
            "copy was corrupted; it was not deployed. Fix: find out what changed the source object, restore its built "
            "version (the bucket keeps versions), or delete it and run the release again with `rebuild: true`"
        )
    if copied.get("SSEKMSKeyId") not in (None, kms_key_arn):
        raise PermanentAwsError(
            f"the copy at s3://{target_bucket}/{target_key} is encrypted under {copied['SSEKMSKeyId']}, not the tenant's "
            f"key {kms_key_arn}; it was not deployed"
        )


def _copied_sha256(head: dict[str, Any]) -> str:
    """The copy's SHA-256 in hex, as S3 computed it (else as its metadata claims), for the mismatch message."""
    checksum = head.get("ChecksumSHA256")
    if checksum and "-" not in checksum:
        return base64.b64decode(checksum).hex()
    return head.get("Metadata", {}).get("sha256") or "an unknown SHA-256"


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
        if classify.is_access_denied(exc):
            fix = (
                f"the tenant's deploy role must be allowed kms:DescribeKey on the key behind {alias}: statement "
                "UseTenantKey of DeployRole in include/templates/tenant-bootstrap.yaml (with the key policy's "
                "TenantAccountAdministersKey, which lets the account's IAM policies grant it); redeploy the tenant "
                "bootstrap stack (`tenant-release bootstrap`)"
            )
        else:
            fix = "deploy the bootstrap stack that creates it, or set kms_key_alias in the fleet file"
        raise PermanentAwsError(f"KMS key {alias} not found or not usable: {classify.describe(exc)}. Fix: {fix}.") from None
