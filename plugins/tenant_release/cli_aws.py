"""How the `tenant-release` command reaches AWS: the local emulation `make run` started, and one line per failure.

`scripts/local_stack.py up` writes `aws-endpoint.json` in its state dir (`.local/` by default) and `down` removes it.
When the shell sets no AWS endpoint or credentials of its own, the CLI's AWS commands use that emulation, and say so
on stderr, so the commands the README shows after `make run` work as printed from the same shell.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tenant_release import classify

STATE_FILE_NAME = "aws-endpoint.json"  # written by scripts/local_stack.py
STACK_DIR_ENV = "TENANT_RELEASE_STACK_DIR"  # the state dir of a stack started with --state-dir
_PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Any of these means the shell chose where AWS calls go, or with whose credentials: leave it alone.
_OWN_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
# Credentials or profiles the shell would use without any variable set: a real operator's, never overridden.
_OWN_AWS_FILES = (Path("~/.aws/credentials"), Path("~/.aws/config"))
_CREDENTIAL_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidSignatureException",
        "AuthFailure",
    }
)
_CONNECTION_ERRORS = frozenset(
    {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError", "ProxyConnectionError"}
)
_CREDENTIAL_ERRORS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "TokenRetrievalError", "SSOTokenLoadError"}
)


def state_file() -> Path:
    stack_dir = os.environ.get(STACK_DIR_ENV)
    return (Path(stack_dir) if stack_dir else _PROJECT_ROOT / ".local") / STATE_FILE_NAME


@contextmanager
def local_emulation() -> Iterator[str | None]:
    """Point AWS calls at the local emulation while the block runs, when the shell sets nothing and it is up.

    Yields its endpoint, or None when the shell's own AWS settings apply.
    """
    path = state_file()
    own = any(os.environ.get(name) for name in _OWN_AWS_SETTINGS) or any(f.expanduser().is_file() for f in _OWN_AWS_FILES)
    if own or not path.is_file():
        yield None
        return
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        endpoint = str(state["endpoint_url"])
    except (OSError, ValueError, KeyError, TypeError):
        yield None
        return
    stop = state.get("stop") or "make stop"
    sys.stderr.write(
        f"tenant-release: talking to the local AWS emulation started by `make run` ({endpoint}, from {path}); "
        f"stop it with `{stop}`, or set AWS_PROFILE or AWS_ENDPOINT_URL to use another\n"
    )
    # moto's fake keys: the emulation wants a signature, not real credentials.
    settings = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def describe_aws_failure(exc: BaseException, *, local_endpoint: str | None = None) -> str | None:
    """One line for a failure to reach AWS or to be let in, with the fix; None for anything else."""
    kind = type(exc).__name__
    code = classify.error_code(exc)
    if kind in _CONNECTION_ERRORS:
        if local_endpoint:
            return (
                f"cannot reach the local AWS emulation at {local_endpoint} ({exc}); it is not running: start it with "
                f"`make run`, or remove {state_file()} if you stopped it another way"
            )
        where = os.environ.get("AWS_ENDPOINT_URL")
        return f"cannot reach AWS ({exc}). Fix: check the network" + (
            f" and AWS_ENDPOINT_URL={where} (is the emulation running? `make run`)" if where else ""
        )
    if kind in _CREDENTIAL_ERRORS:
        return (
            f"no usable AWS credentials ({exc}). Fix: sign in to the tooling account (e.g. `aws sso login`, or set "
            "AWS_PROFILE), or start the local emulation with `make run`"
        )
    if code in _CREDENTIAL_CODES:
        return (
            f"AWS refused the credentials ({classify.describe(exc)}). Fix: they are expired or wrong: sign in again "
            "(e.g. `aws sso login`) or set AWS_PROFILE to the tooling account's profile"
        )
    if classify.is_access_denied(exc):
        return (
            f"AWS denied the call ({classify.describe(exc)}). Fix: use the tooling account's credentials that may read "
            "the release tables (the orchestrator or approver role the bootstrap created)"
        )
    if code == "ResourceNotFoundException":
        return (
            f"a release table does not exist ({classify.describe(exc)}). Fix: run `tenant-release bootstrap` in the "
            "tooling account, or check tooling.region and the table names in the fleet file"
        )
    if code == "NoSuchBucket":
        return f"the artifact bucket does not exist ({classify.describe(exc)}). Fix: run `tenant-release bootstrap`"
    return None
