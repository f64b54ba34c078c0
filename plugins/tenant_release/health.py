"""Health checks after a tenant's stack settled: what "healthy" means for the application (`application.health`).

Each check names a stack output: a function to invoke, a URL to GET, or a value to compare. A check that fails
raises `VerificationError` with what it saw, so the tenant's log and history say why it failed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from tenant_release import classify
from tenant_release.aws import stacks
from tenant_release.errors import VerificationError
from tenant_release.models import HealthCheck

if TYPE_CHECKING:
    from tenant_release.deploy import TargetDeployment

log = logging.getLogger(__name__)

SHOWN_BYTES = 300


def check_all(deployment: TargetDeployment, checks: tuple[HealthCheck, ...]) -> None:
    stack = deployment.retry.call(
        "read outputs", stacks.describe_stack, deployment.client("cloudformation"), deployment.target.stack_name, log=log.warning
    )
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in (stack or {}).get("Outputs") or []}
    fill = {"version": deployment.run.artifact.version, "tenant": deployment.target.name}
    for check in checks:
        if check.output not in outputs:
            raise VerificationError(
                f"health check '{check.describe()}': stack {deployment.target.stack_name} has no output {check.output} "
                f"(outputs: {', '.join(sorted(outputs)) or 'none'})"
            )
        seen = _run(deployment, check, outputs[check.output])
        expected = check.equals if check.equals is not None else check.contains or ""
        for name, value in fill.items():  # not str.format: a JSON body to look for holds braces of its own
            expected = expected.replace(f"{{{name}}}", value)
        if check.equals is not None and seen != expected:
            raise VerificationError(f"health check '{check.describe()}' failed: saw {seen!r}, expected {expected!r}")
        if check.contains is not None and expected not in seen:
            raise VerificationError(f"health check '{check.describe()}' failed: {expected!r} not in {seen[:SHOWN_BYTES]!r}")
        log.info("health check passed: %s", check.describe())


def _run(deployment: TargetDeployment, check: HealthCheck, value: str) -> str:
    if check.invoke:
        return _invoke(deployment, check, value)
    if check.http:
        return _get(check, value)
    return value


def _invoke(deployment: TargetDeployment, check: HealthCheck, function: str) -> str:
    try:
        response = deployment.client("lambda").invoke(FunctionName=function, Payload=json.dumps(check.payload).encode())
    except Exception as exc:
        if classify.is_retriable(exc):
            raise
        problem = classify.describe(exc)
        raise VerificationError(f"health check '{check.describe()}': {function} cannot be invoked: {problem}") from None
    body = response["Payload"].read().decode(errors="replace")
    if response.get("FunctionError") or response.get("StatusCode") != 200:
        raise VerificationError(
            f"health check '{check.describe()}' failed: {function} answered {response.get('StatusCode')} "
            f"{response.get('FunctionError') or ''} {body[:SHOWN_BYTES]!r}".replace("  ", " ")
        )
    return body


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A health check asks the URL it was given: a redirect is its answer, never followed elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _refuse_unsafe(check: HealthCheck, url: str) -> None:
    """HTTPS only (unless the check allows plain HTTP), and never a link-local address such as the metadata service."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and check.insecure_http):
        raise VerificationError(
            f"health check '{check.describe()}': output {check.output} is {url!r}, not an https URL "
            "(set insecure_http: true on the check to allow plain http)"
        )
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parsed.hostname or "", parsed.port or 443)}
    except OSError as exc:
        raise VerificationError(f"health check '{check.describe()}': {parsed.hostname} cannot be resolved: {exc}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip in _METADATA:
            raise VerificationError(f"health check '{check.describe()}': {url} resolves to {ip}, which is never checked")


_METADATA = ipaddress.ip_network("fd00:ec2::/64")


def _get(check: HealthCheck, url: str) -> str:
    _refuse_unsafe(check, url)
    try:
        with _OPENER.open(url, timeout=check.timeout_seconds) as response:
            status, body = response.status, response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(64 * 1024)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VerificationError(f"health check '{check.describe()}': {url} did not answer: {reason}") from None
    text = body.decode(errors="replace")
    if status != check.status:
        raise VerificationError(f"health check '{check.describe()}' failed: {url} answered {status}: {text[:SHOWN_BYTES]!r}")
    return text
