"""The project's exception types: each names the problem and, where one exists, the fix."""

from __future__ import annotations


class TenantReleaseError(Exception):
    """Base class; the message is shown to users as is."""


class FleetConfigError(TenantReleaseError):
    """The fleet file is missing, unreadable or invalid."""


class HeldSincePlannedError(FleetConfigError):
    """A tenant was held back (or pinned to another line) in the fleet file after its run was planned."""

    def __init__(self, message: str, *, hold: str) -> None:
        super().__init__(message)
        self.hold = hold


class ReleaseTagError(TenantReleaseError):
    """A release tag that does not follow the convention."""


class TargetSelectionError(TenantReleaseError):
    """A tag or tenant list that selects nothing, or names unknown tenants or groups."""


class RecoverableAwsError(TenantReleaseError):
    """An AWS error that may go away by itself (throttling, a stack busy with another operation)."""


class PermanentAwsError(TenantReleaseError):
    """An AWS error that retrying cannot fix (access denied, a bad template, a stack needing a human)."""


class BuildError(PermanentAwsError):
    """The release could not be packaged or its template is invalid."""


class ChecksumMismatchError(PermanentAwsError):
    """An artifact copy does not hash to the built artifact."""


class StackFailedError(PermanentAwsError):
    """A stack operation ended in a failed or rolled-back state."""

    def __init__(self, message: str, *, stack_status: str, events: list[str] | None = None) -> None:
        super().__init__(message)
        self.stack_status = stack_status
        self.events = events or []


class VerificationError(PermanentAwsError):
    """The deployed application does not report the released version."""


class StackBusyError(RecoverableAwsError):
    """The stack is in the middle of an operation this deploy did not start: wait for it, never compete with it."""

    def __init__(self, message: str, *, stack_status: str) -> None:
        super().__init__(message)
        self.stack_status = stack_status


class TenantBusyError(TenantReleaseError):
    """Another run holds the tenant's lease: it is being deployed right now, so this run does not touch it."""

    def __init__(self, message: str, *, holder_release: str) -> None:
        super().__init__(message)
        self.holder_release = holder_release  # the release the holding run deploys


class RollbackRefusedError(TenantReleaseError):
    """The tenant's stack holds a newer version than the release, and the run was not told to roll back."""


class ReleaseGateError(TenantReleaseError):
    """A tenant of a gated run found no approval of the artifact it was about to deploy in the run's release gate."""


class RollbackTriggerError(PermanentAwsError):
    """`rollback_on_alarm` cannot be honoured: the tenant's alarm patterns match no alarm, or more than CloudFormation takes."""


class AlarmRollbackError(StackFailedError):
    """CloudFormation rolled the stack back because one of the tenant's health alarms fired while it settled."""

    def __init__(self, message: str, *, stack_status: str, alarms: list[str], events: list[str] | None = None) -> None:
        super().__init__(message, stack_status=stack_status, events=events)
        self.alarms = alarms  # "alarm X in ALARM since ..." of each firing alarm
