"""Decides, in one place, which AWS errors are worth retrying and which need a person."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenant_release.errors import PermanentAwsError, RecoverableAwsError, StackBusyError, TenantReleaseError

T = TypeVar("T")

# Throttling rejects a call before AWS acts on it, so the very same call may be sent again on its own (unlike a
# timeout or an internal error, after which the call may have taken effect and the step must look again).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
    }
)

RETRIABLE_CODES = THROTTLING_CODES | frozenset(
    {
        "PriorRequestNotComplete",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "IDPCommunicationError",
        "OperationInProgressException",
        "ResourceConflictException",
    }
)

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RegionDisabledException",
    }
)

_IN_PROGRESS_MARKERS = ("is in UPDATE_IN_PROGRESS", "_IN_PROGRESS state and can not be updated", "is in CREATE_IN_PROGRESS")
_NO_CHANGES_MARKERS = (
    "No updates are to be performed",
    "The submitted information didn't contain changes",
    "didn't contain changes",
)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(exc)


def is_no_changes(text: str | None) -> bool:
    """CloudFormation's "nothing to do", worded differently by change sets and by UpdateStack."""
    return bool(text) and any(marker in text for marker in _NO_CHANGES_MARKERS)


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, RecoverableAwsError):
        return True
    if isinstance(exc, PermanentAwsError):
        return False
    code = error_code(exc)
    if code in RETRIABLE_CODES:
        return True
    if code == "ValidationError" and any(marker in error_message(exc) for marker in _IN_PROGRESS_MARKERS):
        return True
    # Connection resets and read timeouts from botocore carry no error code.
    return type(exc).__name__ in {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError"}


def is_throttled(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLING_CODES


def needs_a_person(exc: BaseException) -> bool:
    """Retrying cannot help: one of our own errors that says so, or an AWS error with a code we do not retry.

    Anything else (a bug, a lost connection without a code) is left to the task's retries.
    """
    if is_retriable(exc):
        return False
    return isinstance(exc, TenantReleaseError) or bool(error_code(exc))


def is_access_denied(exc: BaseException) -> bool:
    return error_code(exc) in ACCESS_DENIED_CODES


def describe(exc: BaseException) -> str:
    code = error_code(exc)
    return f"{code}: {error_message(exc)}" if code else str(exc)


@dataclass(kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for errors that `is_retriable` accepts."""

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))

    def call(self, step: str, func: Callable[..., T], *args: Any, log: Callable[..., None] | None = None, **kwargs: Any) -> T:
        return self._call(step, func, args, kwargs, log=log, retriable=is_retriable)

    def around(self, client: Any, *, log: Callable[..., None] | None = None) -> Any:
        """`client` with each of its calls sent again when throttled, on its own.

        A step of several calls (a change set: read, create, wait, execute) retried as a whole never gets through a
        storm that throttles every few calls; a throttled call did nothing, so it alone is sent again.
        """
        return _ThrottleRetryingClient(client, self, log)

    def _call(
        self,
        step: str,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        log: Callable[..., None] | None,
        retriable: Callable[[BaseException], bool],
    ) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                # A stack busy with someone else's operation is waited for by the caller at the stack's pace.
                if not retriable(exc) or isinstance(exc, StackBusyError) or attempt == self.attempts:
                    raise
                pause = self.delay(attempt)
                if log:
                    log("%s: %s; retry %d/%d in %.1fs", step, describe(exc), attempt, self.attempts - 1, pause)
                self.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover


class _ThrottleRetryingClient:
    """A boto3 client whose method calls go through `RetryPolicy` for throttling only; everything else passes."""

    def __init__(self, client: Any, policy: RetryPolicy, log: Callable[..., None] | None) -> None:
        self._client, self._policy, self._log = client, policy, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("_") or name in {"get_paginator", "get_waiter", "can_paginate", "close"}:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._policy._call(name, attr, args, kwargs, log=self._log, retriable=is_throttled)

        return call
