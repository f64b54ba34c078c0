"""How a library error becomes an Airflow task outcome, decided in one place for every task and operator."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from tenant_release import classify
from tenant_release.deploy import failure_reason


def as_task_failure(exc: BaseException) -> BaseException:
    """What to raise for `exc`: `AirflowFailException` (no retry) when retrying cannot help, else a retriable error.

    The message is the reason a person reads in the task's log and the summary, with the fix where one is known.
    """
    if isinstance(exc, AirflowException):
        return exc
    reason = failure_reason(exc)
    if classify.needs_a_person(exc):
        return AirflowFailException(reason)
    return AirflowException(reason)
