"""Triggering a `tenant_release` run through Airflow's REST API, for the `tenant-release` command (no airflow import).

Airflow 3's simple auth manager hands out a JWT for a user and password (`POST /auth/token`); a token can also be
given as is. Credentials come from the environment, never from the command line (it ends in shell history), and
are never printed. They go only to the address given: plain http only to this machine (loopback), and a redirect is
never followed (urllib would resend the Authorization header, or the password, to wherever it points).
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tenant_release.errors import TenantReleaseError

URL_ENV = "TENANT_RELEASE_AIRFLOW_URL"
TOKEN_ENV = "TENANT_RELEASE_AIRFLOW_TOKEN"  # noqa: S105 (the variable's name, not a secret)
USER_ENV = "TENANT_RELEASE_AIRFLOW_USER"
PASSWORD_ENV = "TENANT_RELEASE_AIRFLOW_PASSWORD"  # noqa: S105
DEFAULT_URL = "http://localhost:8080"
TIMEOUT_SECONDS = 30.0


class AirflowApiError(TenantReleaseError):
    """Airflow's API could not be reached, refused the credentials, or refused the request."""


def base_url(given: str | None) -> str:
    """`--airflow-url`, else $TENANT_RELEASE_AIRFLOW_URL, else the local default; checked before any call."""
    url = (given or os.environ.get(URL_ENV) or DEFAULT_URL).strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise AirflowApiError(
            f"Airflow URL {url!r} is not an http(s) address such as {DEFAULT_URL}; fix --airflow-url or ${URL_ENV}"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        host = parts.hostname
        raise AirflowApiError(
            f"Airflow URL {url!r} is plain http to {host}, which is not this machine: the API token or password would "
            f"cross the network in clear text. Use https://{parts.netloc} (Airflow's API server behind TLS), or tunnel it "
            f"(ssh -L 8080:{host}:{parts.port or 80} <a host that reaches it>) and use http://localhost:8080; "
            f"fix --airflow-url or ${URL_ENV}"
        )
    return url


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Stop at a redirect instead of sending the credentials on to wherever it points."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        fp.close()
        raise AirflowApiError(
            f"Airflow at {req.full_url} answered HTTP {code}, a redirect to {newurl}; not followed, because the request "
            f"carries credentials meant for the address given. If {newurl} is Airflow's address, set --airflow-url or "
            f"${URL_ENV} to it (https, or http to localhost)"
        )


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def check_credentials() -> None:
    """Refuse early (before AWS) when no way to authenticate is set."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return
    if os.environ.get(USER_ENV, "").strip() and os.environ.get(PASSWORD_ENV):
        return
    raise AirflowApiError(
        f"no Airflow credentials: set ${TOKEN_ENV} to an API token, or ${USER_ENV} and ${PASSWORD_ENV} (for `make run`: "
        f"admin and admin); or add --print-only to print the trigger payload instead"
    )


def _call(method: str, url: str, body: Any, token: str | None = None) -> Any:
    # `url` is built from `base_url`, which admits http(s) only.
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if exc.code in (401, 403):
            fix = f"check ${TOKEN_ENV}, or ${USER_ENV} and ${PASSWORD_ENV}; the user must be allowed to trigger runs"
        elif exc.code == 404:
            fix = "is the tenant_release DAG deployed there, and is this Airflow's address?"
        else:
            fix = "see the detail above"
        raise AirflowApiError(f"Airflow refused {method} {url}: HTTP {exc.code} {detail}; {fix}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AirflowApiError(
            f"cannot reach Airflow at {url} ({reason}); is it running? Set --airflow-url or ${URL_ENV}, or use --print-only"
        ) from None
    return json.loads(payload) if payload else None


def token(url: str) -> str:
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    check_credentials()
    body = {"username": os.environ[USER_ENV].strip(), "password": os.environ[PASSWORD_ENV]}
    return str(_call("POST", f"{url}/auth/token", body)["access_token"])


def trigger_run(url: str, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Trigger a run with a null logical date (a manual run, as the UI's Trigger does); returns Airflow's DAG run."""
    return _call("POST", f"{url}/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}, token(url))
