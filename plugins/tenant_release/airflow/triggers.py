"""Triggers: work and waits that run in the triggerer and hold no worker slot. They carry names, never credentials."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from airflow.triggers.base import BaseTrigger, TaskSkippedEvent, TaskSuccessEvent, TriggerEvent

from tenant_release import classify
from tenant_release.airflow import runtime
from tenant_release.airflow.fleet_targets import TARGETS_ID_KEY, FleetTargetError, TargetListCache, entry_at, targets_source
from tenant_release.classify import describe, is_retriable
from tenant_release.errors import HeldSincePlannedError
from tenant_release.models import ApprovalDecision, DeployProgress, Outcome, RolloutCaps, RolloutControl

T = TypeVar("T")
deployment_log = logging.getLogger("tenant_release.deploy")

# CloudFormation makes a change set in seconds; the trigger looks again every ~2 s, for at most 5 minutes.
CHANGE_SET_POLL_SECONDS = 2.0
CHANGE_SET_TIMEOUT_SECONDS = 300.0

# boto3 blocks; the triggerer's loop must not. One pool per triggerer process for every tenant's AWS calls:
# asyncio's default pool has cpu+4 threads (6 here), too few for hundreds of tenants waiting on AWS at once.
_AWS_POOL: ThreadPoolExecutor | None = None


def _aws_pool() -> ThreadPoolExecutor:
    global _AWS_POOL
    if _AWS_POOL is None:
        _AWS_POOL = ThreadPoolExecutor(
            max_workers=int(runtime.setting("triggerer_aws_threads", 32)), thread_name_prefix="tenant-release-aws"
        )
    return _AWS_POOL


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in the AWS pool, keeping the trigger's log context (its lines go to its task's log)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_aws_pool(), call)


class _Serializable(BaseTrigger):
    """`serialize()` from the constructor's keyword arguments, named once in `fields`."""

    fields: ClassVar[tuple[str, ...]] = ()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {name: getattr(self, name) for name in self.fields}


class TenantDeployTrigger(_Serializable):
    """One target's whole deploy, in the triggerer: assume → copy → change set → wait → verify → history.

    Thousands run at once in one event loop, their AWS calls in a thread pool, and no worker slot is held
    while a stack settles. A tenant's success ends its task here (`TaskSuccessEvent`: no second worker
    execution); a failure resumes the task on a worker, which fails or retries it as Airflow's rules say.
    The triggerer assumes the tenant role itself, from the same fleet-file entry the plan fixed, so no
    credential is ever serialised into the trigger row.
    """

    fields = (
        "tenant",
        "target_digest",
        "config_path",
        "release_tag",
        "run_id",
        "artifact",
        "progress",
        "poll_interval",
        "deadline",
        "record_history",
        "smoke_test",
        "end_in_triggerer",
        "run_started_at",
        "triggered_by",
        "try_number",
        "allow_rollback",
        "rollout",
    )

    def __init__(
        self,
        *,
        tenant: str,
        target_digest: str,
        config_path: str | None,
        release_tag: str,
        run_id: str,
        artifact: dict[str, Any],
        progress: dict[str, Any],
        poll_interval: float,
        deadline: str,
        record_history: bool = True,
        smoke_test: bool = False,
        end_in_triggerer: bool = True,
        run_started_at: str | None = None,
        triggered_by: str | None = None,
        try_number: int | None = None,
        allow_rollback: str = "",
        rollout: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.allow_rollback = allow_rollback
        self.rollout = rollout  # the wave's caps (a `RolloutCaps`): how many of its tenants deploy at once
        self.lease_waited = timedelta(0)  # how long this deploy waited for another run's lease; moves the deadline
        # How long it waited before starting: a paused rollout, a full wave. Moves the deadline too: a tenant
        # at the back of a wave of hundreds capped at 2 may wait hours before its stack is touched.
        self.queue_waited = timedelta(0)
        self.local_slots: list[Any] = []  # in-process slots held (`_LocalSlots`), given back in `run`'s `finally`
        self.slots_held: list[Any] = []  # DynamoDB slots held (`aws.slots.SlotScope`), renewed with the lease
        self.lease_renewed: datetime | None = None  # when this deploy last took or renewed its tenant's lease
        self.slots_renewed: datetime | None = None  # when its oldest deploy slot held was last taken or renewed
        # Whether this run began this tenant's deploy already (asked only when a control would stop it): None, not asked.
        self.begun: str | None = None
        self.begun_asked = False
        self.tenant = tenant
        self.target_digest = target_digest
        self.config_path = config_path
        self.release_tag = release_tag
        self.run_id = run_id
        self.artifact = artifact
        self.progress = progress
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.record_history = record_history
        self.smoke_test = smoke_test
        self.end_in_triggerer = end_in_triggerer
        self.run_started_at = run_started_at
        self.triggered_by = triggered_by
        self.try_number = try_number

    def _deployment(self, *, check_digest: bool = True) -> Any:
        return runtime.planned_deployment(
            tenant=self.tenant,
            digest=self.target_digest,
            config_path=self.config_path,
            release_tag=self.release_tag,
            run_id=self.run_id,
            artifact=self.artifact,
            record_history=self.record_history,
            run_started_at=self.run_started_at,
            triggered_by=self.triggered_by,
            try_number=self.try_number,
            allow_rollback=self.allow_rollback,
            check_digest=check_digest,
        )

    async def _take_lease(self, deployment: Any) -> None:
        """Wait here, holding no worker slot, while another run deploys this tenant; give up once this deploy has
        waited `lease_wait_minutes` for it in all. Its deploy slots, if it holds any, are renewed meanwhile.
        """
        from tenant_release.errors import TenantBusyError

        limit = timedelta(minutes=runtime.setting("lease_wait_minutes", 60.0))
        poll = runtime.setting("lease_poll_seconds", 30.0)
        started, waited_before, said = datetime.now(UTC), self.lease_waited, False
        while (busy := await in_thread(deployment.take_lease)) is not None:
            if not said:
                self.log.info("%s; waiting for it (up to %s in all)", deployment.busy_reason(busy), limit)
                said = True
            self.lease_waited = waited_before + (datetime.now(UTC) - started)
            if self.lease_waited >= limit:
                raise TenantBusyError(
                    f"{deployment.busy_reason(busy)}; this run waited {self.lease_waited.total_seconds() / 60:.0f} min "
                    "([tenant_release] lease_wait_minutes) and started nothing. Re-run this tenant once that run is done.",
                    holder_release=busy.release,
                )
            await asyncio.sleep(poll * random.uniform(0.8, 1.2))  # noqa: S311 (spreading load, not security)
            await self._keep_slots(deployment)
        self.lease_renewed = datetime.now(UTC)
        if said:
            waited = self.lease_waited - waited_before
            self.log.info("%s: the other run is done after %s; deploying", deployment.target.name, waited)

    async def _keep_lease(self, deployment: Any) -> None:
        """Renew the tenant's lease if it is due ([tenant_release] lease_renew_seconds): one UpdateItem every few
        minutes, not one per poll. The lease is short (`deploy.LEASE_SECONDS`), so a cancelled trigger (its task
        cleared or marked failed) frees the tenant soon; a live one keeps it for as long as it waits. Its deploy
        slots are renewed too.
        """
        now = datetime.now(UTC)
        if self.lease_renewed is None or now - self.lease_renewed >= self._renew_every():
            await in_thread(deployment.renew_lease)
            self.lease_renewed = now
        await self._keep_slots(deployment)

    async def _keep_slots(self, deployment: Any) -> None:
        """Renew the wave's deploy slots this tenant holds, if due: also while it waits for a wider cap or its lease."""
        now = datetime.now(UTC)
        if self.slots_held and (self.slots_renewed is None or now - self.slots_renewed >= self._renew_every()):
            for scope in self.slots_held:
                await in_thread(_renew_slot, deployment, scope)
            self.slots_renewed = now

    @staticmethod
    def _renew_every() -> timedelta:
        from tenant_release.deploy import LEASE_RENEW_SECONDS

        return timedelta(seconds=float(runtime.setting("lease_renew_seconds", LEASE_RENEW_SECONDS)))

    def _deadline(self) -> datetime:
        """When a stack that has not settled fails the tenant: the trigger's deadline, moved by the time it waited."""
        return datetime.fromisoformat(self.deadline) + self.lease_waited + self.queue_waited

    # --- rollout controls: pause, abort, and the wave's caps ------------------------------------------------------

    async def _control(self, deployment: Any) -> RolloutControl | None:
        """The rollout's control, read at most once every few seconds per triggerer process and tag
        ([tenant_release] control_cache_seconds): a thousand waiting tenants must not each read it every poll.
        """
        from tenant_release.aws import controls

        tooling = deployment.run.tooling
        tag = deployment.run.release.tag

        async def fetch() -> RolloutControl | None:
            dynamodb = deployment.sessions.tooling_client("dynamodb", tooling.region)
            return await in_thread(
                deployment.retry.call,
                "read rollout control",
                controls.current,
                dynamodb,
                tooling.leases_table,
                tag,
                log=self.log.warning,
            )

        since = time.monotonic() - runtime.setting("control_cache_seconds", 5.0)
        return await _CONTROLS.get(f"{tooling.account_id}/{tooling.leases_table}/{tag}", fetch, since=since)

    async def _begun_already(self, deployment: Any) -> bool:
        """Whether this run began this tenant's deploy already: an earlier try, or this trigger before a triggerer
        restart (see `TargetDeployment.under_way_in_this_run`). Such a deploy is not stopped by a pause or abort read
        now: it re-attaches to its change set instead of being reported SKIPPED with its stack change unobserved.
        Asked once per trigger, and only when a control would stop the tenant (it costs AWS calls).
        """
        if not self.begun_asked:
            self.begun = await in_thread(deployment.under_way_in_this_run)
            self.begun_asked = True
            if self.begun:
                self.log.warning(
                    "%s: this run's deploy of it began already (%s); a pause or abort does not stop a deploy under "
                    "way: re-attaching to it",
                    deployment.target.name,
                    self.begun,
                )
        return bool(self.begun)

    async def _stops(self, deployment: Any, control: RolloutControl | None) -> bool:
        """Whether `control` keeps this tenant from starting now (a pause, or an abort of this run), unless begun already."""
        if control is None or not (control.pauses() or control.aborts(self.run_started_at)):
            return False
        return not await self._begun_already(deployment)

    async def _while_paused(self, deployment: Any) -> str | None:
        """Wait here, holding nothing, while the rollout is paused. Returns why this tenant must not start (an abort)."""
        poll = runtime.setting("control_poll_seconds", 15.0)
        said = None
        while True:
            control = await self._control(deployment)
            if not await self._stops(deployment, control):
                if said is not None:
                    self.log.info(
                        "rollout of %s %s; starting", deployment.run.release.tag, control.describe() if control else "resumed"
                    )
                return None
            assert control is not None
            if control.aborts(self.run_started_at):
                return _abort_reason(control)
            if said != control.at:  # once per pause, not once per poll
                self.log.info(
                    "rollout of %s paused by %s: %s; waiting",
                    deployment.run.release.tag,
                    control.by,
                    control.reason or "no reason given",
                )
                said = control.at
            pause = poll * random.uniform(0.8, 1.2)  # noqa: S311 (spreading load, not security)
            await asyncio.sleep(pause)
            self.queue_waited += timedelta(seconds=pause)

    async def _take_slots(self, deployment: Any) -> None:
        """Wait for a deploy slot of each of the wave's caps, narrowest first (see `aws.slots.scopes_for`).

        Tenants of one triggerer queue on an in-process semaphore, so only as many as could start poll DynamoDB;
        the DynamoDB slot is what holds across triggerers. It holds no tenant lease yet (see `_start_when_allowed`);
        the slots it holds already (narrower caps) are renewed while it waits for the next.
        """
        from tenant_release.aws import slots

        if not self.rollout:
            return
        caps = RolloutCaps.model_validate(self.rollout)
        scopes = slots.scopes_for(
            run_id=self.run_id,
            wave=caps.wave,
            region=deployment.target.region,
            max_parallel=caps.max_parallel,
            max_parallel_per_region=caps.max_parallel_per_region,
        )
        poll = runtime.setting("slot_poll_seconds", 10.0)
        for scope in scopes:
            started = datetime.now(UTC)
            local = _LOCAL_SLOTS.slot(scope)
            await local.acquire()
            self.local_slots.append(local)
            said = False
            while (full := await in_thread(_take_slot, deployment, scope)) is not None:
                if not said:
                    self.log.info(
                        "%s waits for a deploy slot of %s; deploying now: %s",
                        deployment.target.name,
                        scope.describe(),
                        ", ".join(sorted(full)) or "nobody (a write raced)",
                    )
                    said = True
                await asyncio.sleep(poll * random.uniform(0.8, 1.2))  # noqa: S311 (spreading load, not security)
                await self._keep_slots(deployment)
            self.slots_held.append(scope)
            if self.slots_renewed is None:  # the oldest slot held sets when they are due for renewal
                self.slots_renewed = datetime.now(UTC)
            waited = datetime.now(UTC) - started
            self.queue_waited += waited
            if said:
                self.log.info("%s took a deploy slot of %s after %s", deployment.target.name, scope.describe(), waited)

    async def _give_back_slots(self, deployment: Any) -> None:
        """Free this tenant's slots (DynamoDB, then in-process): its deploy ended, or it must not start yet."""
        held, self.slots_held = self.slots_held, []
        local, self.local_slots = self.local_slots, []
        self.slots_renewed = None
        try:
            for scope in reversed(held):
                await in_thread(_release_slot, deployment, scope)
        finally:
            for slot in reversed(local):
                slot.release()

    async def _start_when_allowed(self, deployment: Any) -> str | None:
        """Wait out a pause, take the wave's slots, then the tenant's lease. Returns why not to start (an abort), else None.

        Slots before the lease: a tenant queued behind its wave's cap must not hold its tenant meanwhile (another
        run's hotfix of it would wait for it, then time out), and there is no lease to lapse while it queues.
        The control is read again once both are taken: a tenant that waited must not start after the rollout was
        paused or aborted meanwhile; it gives its lease and slots back and waits again. A deploy this run began
        already is not stopped by either (`_begun_already`): it goes on to `_begin`, which re-attaches.
        Dev (no history) is not a tenant of the rollout: it is the build's smoke test before the release gate,
        and it has no planned time an abort could be weighed against.
        """
        if not self.record_history:
            await self._take_lease(deployment)
            return None
        while True:
            stop = await self._while_paused(deployment)
            if stop is not None:
                return stop
            await self._take_slots(deployment)
            await self._take_lease(deployment)
            if not await self._stops(deployment, await self._control(deployment)):
                return None
            await in_thread(deployment.release_lease)
            await self._give_back_slots(deployment)

    def _pause(self, first: bool) -> float:
        # Jittered: a thousand tenants that started together must not poll CloudFormation in lockstep.
        low = 0.5 if first else 0.8
        return self.poll_interval * random.uniform(low, 1.2)  # noqa: S311 (spreading load, not security)

    async def _begin(self, deployment: Any, progress: DeployProgress) -> DeployProgress:
        """Start the deploy (or re-attach to this run's); while someone else's operation holds the stack, or another
        run took the tenant's lease, wait here for it (never compete). Lease and slots are renewed while it waits.
        """
        from tenant_release.errors import StackBusyError, TenantBusyError

        while True:
            try:
                begun = await in_thread(deployment.begin, progress, wait_for_change_set=False)
                self.lease_renewed = datetime.now(UTC)  # `begin` took the lease again
                return begun
            except TenantBusyError:
                # This deploy's lease lapsed and another run took the tenant: wait for that run as for any lease
                # (up to lease_wait_minutes in all, moving the deadline), not a failure. Nothing was started.
                self.log.info("%s: another run took its lease before this deploy began; waiting for it", self.tenant)
                await self._take_lease(deployment)
                continue
            except StackBusyError as busy:
                self.lease_renewed = datetime.now(UTC)  # `begin` took the lease before it found the stack busy
                if datetime.now(UTC) >= self._deadline():
                    message = f"{busy}; still {busy.stack_status} at {self._deadline().isoformat()}"
                    raise StackBusyError(message, stack_status=busy.stack_status) from None
                self.log.info("%s", busy)
            await asyncio.sleep(self._pause(first=False))
            await self._keep_lease(deployment)

    async def _execute_when_ready(self, deployment: Any, progress: DeployProgress) -> DeployProgress:
        """Wait here, not in a thread, while CloudFormation creates the change set (seconds on AWS), then execute it."""
        waited = 0.0
        while progress.change_set_pending:
            ready = await in_thread(deployment.execute_when_ready, progress)  # at once first: the old code's one look
            if ready is not None:
                return ready
            pause = CHANGE_SET_POLL_SECONDS * random.uniform(0.8, 1.2)  # noqa: S311 (spreading load, not security)
            await asyncio.sleep(pause)
            waited += pause
            await self._keep_lease(deployment)
            if waited >= CHANGE_SET_TIMEOUT_SECONDS:
                from tenant_release.errors import RecoverableAwsError

                raise RecoverableAwsError(
                    f"change set {progress.change_set} on {deployment.target.stack_name} was not ready after {waited:.0f}s"
                )
        return progress

    async def _settle(self, deployment: Any, progress: DeployProgress) -> str:
        if progress.unchanged:
            return (await in_thread(deployment.poll)).status
        self.log.info(
            "change set %s executing on %s; waiting for it to settle", progress.change_set, deployment.target.stack_name
        )
        first = True
        while True:
            await asyncio.sleep(self._pause(first))
            first = False
            try:
                polled = await in_thread(deployment.poll)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                self.log.warning("polling %s: %s; trying again", deployment.target.stack_name, describe(exc))
            else:
                if polled.settled:
                    return polled.status
            await self._keep_lease(deployment)
            # CloudFormation watches rollback-trigger alarms for the monitoring time before it calls the stack settled.
            target = deployment.target
            monitoring = timedelta(minutes=target.rollback_monitoring_minutes if target.rollback_on_alarm else 0)
            if datetime.now(UTC) >= self._deadline() + monitoring:
                from tenant_release.errors import PermanentAwsError

                raise PermanentAwsError(
                    f"stack {deployment.target.stack_name} did not settle before {(self._deadline() + monitoring).isoformat()}"
                )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deployment: list[Any] = []
        try:
            async for event in self._deploy(deployment):
                yield event
        finally:  # also when the trigger is cancelled (task cleared or killed) mid-deploy
            for done in deployment:
                try:
                    await self._give_back_slots(done)
                except Exception as exc:  # a slot not given back expires with its holder's lease time
                    self.log.warning("could not give back the deploy slots of %s: %s", done.target.name, describe(exc))
                done.sessions.forget_tenant(done.target, session_name=done.run.session_name)

    async def _deploy(self, started: list[Any]) -> AsyncIterator[TriggerEvent]:
        progress = DeployProgress.model_validate(self.progress)
        deployment = None
        try:
            try:
                deployment = await in_thread(self._deployment)
            except HeldSincePlannedError as held:
                deployment = await in_thread(self._deployment, check_digest=False)  # to record it, as it is now
                started.append(deployment)
                yield await self._skipped(deployment, progress, held.hold)
                return
            started.append(deployment)
            self.log.info(
                "deploying %s (sha256 %s) to %s (account %s, %s) as session %s",
                deployment.run.release.tag,
                deployment.run.artifact.sha256[:12],
                deployment.target.name,
                deployment.target.account_id,
                deployment.target.region,
                deployment.run.session_name,
            )
            aborted = await self._start_when_allowed(deployment)
            if aborted is not None:
                yield await self._skipped(deployment, progress, aborted)
                return
            progress = await self._begin(deployment, progress)
            progress = await self._execute_when_ready(deployment, progress)
            status = await self._settle(deployment, progress)
            result = await in_thread(deployment.finish, progress, stack_status=status)
            if self.smoke_test:
                await in_thread(deployment.smoke_test)
            await in_thread(deployment.record, result)
        except Exception as exc:
            yield await self._failed(deployment, progress, exc)
            return
        self.log.info(
            "%s: %s (%s -> %s, stack %s)", result.tenant, result.status.value, result.version_before, result.version_after, status
        )
        if self.end_in_triggerer:
            yield TaskSuccessEvent(xcoms={"return_value": result.to_xcom()})
        else:
            yield TriggerEvent({"result": result.to_xcom()})

    async def _skipped(self, deployment: Any, progress: DeployProgress, reason: str) -> TriggerEvent:
        """Record the tenant SKIPPED (nothing of this release reached it) and end its task skipped."""
        self.log.warning("%s SKIPPED: %s", deployment.target.name, reason)
        await in_thread(deployment.record, deployment.result(progress, status=Outcome.SKIPPED, reason=reason))
        if self.end_in_triggerer:
            return TaskSkippedEvent()
        return TriggerEvent({"skipped": reason})

    async def _failed(self, deployment: Any, progress: DeployProgress, exc: Exception) -> TriggerEvent:
        """Log why, record the tenant FAILED (when its deployment was built), and say whether a retry may help."""
        from tenant_release.deploy import failure_reason

        reason = failure_reason(exc)
        for line in getattr(exc, "events", None) or []:
            self.log.error("stack event: %s", line)
        self.log.error("%s FAILED: %s", self.tenant, reason)
        if deployment is not None:
            try:
                await in_thread(deployment.record_failure, progress, exc)
            except Exception as history_exc:  # the deploy's own error is the one to report
                self.log.warning("could not record the failure in the history table: %s", failure_reason(history_exc))
        permanent = classify.needs_a_person(exc)
        return TriggerEvent({"failed": reason, "permanent": permanent, "progress": progress.model_dump(mode="json")})

    async def skip_if_aborted(self) -> TriggerEvent | None:
        """Before a worker asks for this tenant's own approval or waits for its window: end it SKIPPED now if the
        rollout was aborted (nobody should be asked to approve a deploy that will not happen). None: go on.
        """
        progress = DeployProgress.model_validate(self.progress)
        try:
            deployment = await in_thread(self._deployment)
        except Exception:  # a tenant changed since the plan: the worker's path reports it
            return None
        try:
            control = await self._control(deployment)
            if control is None or not control.aborts(self.run_started_at) or await self._begun_already(deployment):
                return None  # a deploy this run began already goes on (a worker hands it back to the triggerer)
            return await self._skipped(deployment, progress, _abort_reason(control))
        finally:
            deployment.sessions.forget_tenant(deployment.target, session_name=deployment.run.session_name)

    async def refuse(self, exc: Exception) -> TriggerEvent:
        """Fail this tenant before its deploy touches AWS (its release gate did not approve it), recorded as any failure."""
        progress = DeployProgress.model_validate(self.progress)
        try:
            deployment = await in_thread(self._deployment)
        except Exception as planned_exc:  # a tenant changed since the plan: that error is reported instead
            return await self._failed(None, progress, planned_exc)
        try:
            return await self._failed(deployment, progress, exc)
        finally:
            deployment.sessions.forget_tenant(deployment.target, session_name=deployment.run.session_name)


def _abort_reason(control: RolloutControl) -> str:
    # The abort's own who and why: a pause set after it (for later runs) is not why this run's tenant stops.
    return f"aborted by {control.aborted_by}: {control.aborted_reason}"


def _slot_call(deployment: Any, what: str, step: Any, scope: Any, **more: Any) -> Any:
    """One call on a deploy slot of the tenant's wave, in the leases table, retried like every AWS call."""
    tooling = deployment.run.tooling
    dynamodb = deployment.sessions.tooling_client("dynamodb", tooling.region)
    return deployment.retry.call(what, step, dynamodb, tooling.leases_table, scope, tenant=deployment.target.name, **more)


def _take_slot(deployment: Any, scope: Any) -> dict[str, float] | None:
    from tenant_release.aws import slots

    return _slot_call(deployment, "take deploy slot", slots.acquire, scope, seconds=deployment.lease_seconds)


def _renew_slot(deployment: Any, scope: Any) -> None:
    from tenant_release.aws import slots

    try:
        if not _slot_call(deployment, "renew deploy slot", slots.renew, scope, seconds=deployment.lease_seconds):
            # It expired and may have been taken: the wave is one over its cap until this deploy ends.
            deployment_log.warning("%s: its deploy slot of %s expired", deployment.target.name, scope.describe())
    except Exception as exc:  # the deploy goes on; the next renewal may pass
        deployment_log.warning("%s: could not renew its deploy slot: %s", deployment.target.name, describe(exc))


def _release_slot(deployment: Any, scope: Any) -> None:
    from tenant_release.aws import slots

    _slot_call(deployment, "give back deploy slot", slots.release, scope)


class _LocalSlots:
    """In-process semaphores per (run, wave, scope) and event loop: the tenants of one triggerer that cannot start
    yet wait on one of these, not polling DynamoDB. Dropped when nobody holds or awaits one.
    """

    def __init__(self) -> None:
        self._slots: dict[tuple[int, str], _LocalSlot] = {}

    def slot(self, scope: Any) -> _LocalSlot:
        key = (id(asyncio.get_running_loop()), scope.key)
        found = self._slots.get(key)
        if found is None or found.limit != scope.limit:
            found = self._slots[key] = _LocalSlot(scope.limit, on_idle=lambda: self._drop(key, found))
        return found

    def _drop(self, key: tuple[int, str], slot: _LocalSlot | None) -> None:
        if self._slots.get(key) is slot:
            del self._slots[key]


class _LocalSlot:
    def __init__(self, limit: int, *, on_idle: Callable[[], None]) -> None:
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)
        self._users = 0  # holding or waiting
        self._on_idle = on_idle

    async def acquire(self) -> None:
        self._users += 1
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._left()
            raise

    def release(self) -> None:
        self._semaphore.release()
        self._left()

    def _left(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._on_idle()


_LOCAL_SLOTS = _LocalSlots()
# The rollout control of each tag, as this triggerer process last read it (see `TenantDeployTrigger._control`).
_CONTROLS = TargetListCache(keep=256)
_TARGET_LISTS = TargetListCache()
# The release gate's result of each run, read by the tenants that start in this triggerer process (see `since`).
_RELEASE_GATES = TargetListCache(keep=64)
RELEASE_GATE_TASK = "approve_release"


def _read_xcom(ti: Any, task_id: str, key: str) -> Any:
    from airflow.sdk.execution_time.xcom import XCom

    return XCom.get_one(key=key, dag_id=ti.dag_id, task_id=task_id, run_id=ti.run_id, map_index=-1)


def release_gate_refusal(gate: Any, *, sha256: str | None) -> str | None:
    """Why a tenant of a gated run must not deploy artifact `sha256`, from the run's release gate result; None: approved.

    Only the gate's own result counts: a gate marked success in the UI returned nothing, and a gate that approved
    another build (its build cleared and run again without it) names another sha256.
    """
    if isinstance(gate, dict) and gate.get("gated") is True and sha256 and gate.get("sha256") == sha256:
        return None
    if not isinstance(gate, dict):
        returned = "nothing: was it marked success without an answer?"
    elif gate.get("gated") is not True:
        returned = "no approval"
    elif gate.get("sha256"):
        returned = f"an approval of artifact {gate['sha256']} by {gate.get('approved_by')}"
    else:
        returned = f"an approval by {gate.get('approved_by')} that names no artifact"
    return (
        f"the release gate of this run has no approval of artifact {sha256} ({RELEASE_GATE_TASK} returned {returned}); "
        f"approve the release (clear {RELEASE_GATE_TASK} and answer it), then clear the failed tenants"
    )


class FleetTenantStartTrigger(_Serializable):
    """A fleet tenant's task instance, started by the scheduler in the triggerer (no worker): find the tenant, deploy it.

    The scheduler defers each mapped `deploy` task instance straight to this trigger (`start_from_trigger`) with
    no per-tenant arguments, so it reads its own entry of the run's target list by map index (the list is read
    once per triggerer process and run). A tenant with no gate of its own is deployed here, by
    `TenantDeployTrigger`'s steps, and its task ends here. A tenant that needs its own approval or a maintenance
    window goes to a worker, which asks or waits as before and then hands the deploy back to the triggerer.
    """

    fields = ("stack_timeout_seconds",)

    def __init__(self, *, stack_timeout_seconds: float = 7200.0) -> None:
        super().__init__()
        self.stack_timeout_seconds = stack_timeout_seconds

    async def _own_entry(self) -> dict[str, Any]:
        ti = self.task_instance
        if ti is None or getattr(ti, "task", None) is None:
            raise FleetTargetError("started without its task instance: the triggerer must be Airflow 3.3 or later")
        task_id, key = targets_source(ti.task)
        targets_id = await in_thread(_read_xcom, ti, task_id, TARGETS_ID_KEY)
        if not targets_id:
            raise FleetTargetError(f"task {task_id!r} of run {ti.run_id} pushed no target list id")

        async def fetch() -> Any:
            return await in_thread(_read_xcom, ti, task_id, key)

        return entry_at(await _TARGET_LISTS.get(targets_id, fetch), ti.map_index, targets_id)

    async def _release_gate_refusal(self, entry: dict[str, Any], since: float) -> str | None:
        """Why this tenant's run's gate does not let it deploy its artifact (see `release_gate_refusal`); None: it does."""
        ti = self.task_instance

        async def fetch() -> Any:
            return await in_thread(_read_xcom, ti, RELEASE_GATE_TASK, "return_value")

        gate = await _RELEASE_GATES.get(f"{ti.dag_id}/{ti.run_id}", fetch, since=since)
        return release_gate_refusal(gate, sha256=(entry.get("artifact") or {}).get("sha256"))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        since = time.monotonic()  # the gate's result must be read after this tenant started, not reused from before
        try:
            entry = await self._own_entry()
            refusal = await self._release_gate_refusal(entry, since) if entry.get("gated") else None
        except Exception as exc:
            self.log.error("could not find this task instance's tenant or its run's release gate: %s", describe(exc))
            # A list that does not hold this task instance stays wrong on a retry; anything else may pass.
            yield TriggerEvent({"failed": describe(exc), "permanent": isinstance(exc, FleetTargetError)})
            return
        self.log.info(
            "%s: started in the triggerer by the scheduler (entry %s of target list %s); no worker slot is held",
            entry["tenant"],
            self.task_instance.map_index,
            entry[TARGETS_ID_KEY],
        )
        from tenant_release.deploy import utc_now

        deploy = TenantDeployTrigger(
            tenant=entry["tenant"],
            target_digest=entry["target_digest"],
            config_path=entry.get("config_path"),
            release_tag=entry["release_tag"],
            run_id=self.task_instance.run_id,
            artifact=entry["artifact"],
            progress=DeployProgress(started_at=utc_now()).model_dump(mode="json"),
            poll_interval=runtime.setting("stack_poll_seconds", 10.0),
            deadline=(datetime.now(UTC) + timedelta(seconds=self.stack_timeout_seconds)).isoformat(),
            run_started_at=entry.get("run_started_at"),
            triggered_by=entry.get("triggered_by"),
            try_number=getattr(self.task_instance, "try_number", None),
            allow_rollback=entry.get("allow_rollback") or "",
            rollout=entry.get("rollout"),
        )
        if refusal is None and entry.get("has_own_gate"):
            skipped = await deploy.skip_if_aborted()
            if skipped is not None:
                yield skipped
                return
            self.log.info("%s needs its own approval or maintenance window: a worker asks and waits", entry["tenant"])
            yield TriggerEvent({"gates": True})
            return
        if refusal is not None:
            from tenant_release.errors import ReleaseGateError

            yield await deploy.refuse(ReleaseGateError(refusal))
            return
        async for event in deploy.run():
            yield event


def ui_identity(user: Any) -> str | None:
    """The Airflow user who answered, as Airflow authenticated them (id, and name when it differs)."""
    if not user:
        return None
    get = user.get if isinstance(user, dict) else lambda name: getattr(user, name, None)
    user_id, name = get("id"), get("name")
    return f"airflow user {user_id}" + (f" ({name})" if name and str(name) != str(user_id) else "")


def report_problems(log: Any, problems: tuple[str, ...], seen: set[str] | None = None) -> None:
    """Log each approval record that could not be accepted, once per distinct record (`seen`)."""
    for problem in problems:
        if seen is None or problem not in seen:
            log.error("approval record not accepted: %s", problem)
            if seen is not None:
                seen.add(problem)


class ApprovalRecordTrigger(_Serializable):
    """Waits for a person's answer: in the Airflow UI/REST (the task's HITL detail) or as an approval record.

    Records are a DynamoDB item or an S3 object in the tooling account (see `tenant_release.aws.approvals`).
    A record approves only if it names `sha256`, the run's artifact (None: nothing built yet, the queue DAG's
    gate); a rejection applies whatever it names. A record that does not answer (another artifact, malformed)
    is logged as an ERROR once per distinct content and the wait goes on. An answer in the UI resumes the task
    directly through Airflow; this trigger also notices it, so either path works. No answer before `deadline`
    counts as a rejection by timeout.
    """

    fields = ("tenant", "release_tag", "sha256", "config_path", "ti_id", "deadline", "poll_interval", "progress")

    def __init__(
        self,
        *,
        tenant: str,
        release_tag: str,
        sha256: str | None,
        config_path: str | None,
        ti_id: str | None,
        deadline: str,
        poll_interval: float,
        progress: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.tenant = tenant
        self.release_tag = release_tag
        self.sha256 = sha256
        self.config_path = config_path
        self.ti_id = ti_id
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.progress = progress or {}

    def _lookup(self) -> Any:
        tooling = runtime.cached_fleet(self.config_path).fleet.tooling
        return runtime.recorded_decision(tooling, tenant=self.tenant, release=self.release_tag, sha256=self.sha256)

    async def _ui_answer(self, started: datetime) -> dict[str, Any] | None:
        """An answer given in the UI before this wait began, which Airflow could not hand to the task then.

        Airflow resumes a parked task itself when it is answered in the UI or over REST; this trigger must not
        also fire then: its row is gone by the time its event arrives, and on SQLite a new trigger (another
        tenant's) may already have taken the same id and would get the event. Only an answer that came while
        the task was still running (not yet parked) is the trigger's to deliver.
        """
        if not self.ti_id:
            return None
        from uuid import UUID

        from airflow.sdk.execution_time.hitl import get_hitl_detail_content_detail

        try:
            response = await in_thread(get_hitl_detail_content_detail, ti_id=UUID(self.ti_id))
        except Exception as exc:  # an unreachable API must not end the wait
            self.log.warning("could not read the approval request: %s", exc)
            return None
        if response is None or not (response.response_received and response.chosen_options):
            return None
        if response.responded_at is not None and response.responded_at >= started:
            return None  # answered while parked: Airflow resumed the task with this answer already
        user = response.responded_by_user
        decision = ApprovalDecision(
            approved="Approve" in response.chosen_options,
            decided_by=(user.name if user else "timeout default"),
            source="ui",
            sha256=self.sha256,  # the request showed this run's artifact
            identity=ui_identity(user),
        )
        return decision.model_dump(mode="json")

    async def _close_ui_request(self, approved: bool) -> None:
        """Mark the UI request answered, so it does not linger after an approval record decided."""
        if not self.ti_id:
            return
        from uuid import UUID

        from airflow.sdk.execution_time.hitl import update_hitl_detail_response

        try:
            await in_thread(
                update_hitl_detail_response,
                ti_id=UUID(self.ti_id),
                chosen_options=["Approve" if approved else "Reject"],
                params_input={},
            )
        except Exception as exc:
            self.log.info("approval request left open in the UI: %s", exc)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        started = datetime.now(UTC)
        reported: set[str] = set()
        while True:
            # Wait first: the task checked the records just before deferring,
            # and an event within milliseconds of deferring races the scheduler's handling of the deferral.
            await asyncio.sleep(self.poll_interval)
            try:
                found = await in_thread(self._lookup)
            except Exception as exc:
                if not is_retriable(exc):
                    yield TriggerEvent({"error": describe(exc), "progress": self.progress})
                    return
                self.log.warning("reading approval records: %s; trying again", describe(exc))
                decision = None
            else:
                report_problems(self.log, found.problems, reported)
                decision = found.decision
            if decision is not None:
                await self._close_ui_request(decision.approved)
                yield TriggerEvent({"approval": decision.model_dump(mode="json"), "progress": self.progress})
                return
            answer = await self._ui_answer(started)
            if answer is not None:
                yield TriggerEvent({"approval": answer, "progress": self.progress})
                return
            if datetime.now(UTC) >= deadline:
                await self._close_ui_request(False)
                timeout = ApprovalDecision(
                    approved=False, decided_by="nobody", source="timeout", note=f"no answer by {self.deadline}"
                )
                yield TriggerEvent({"approval": timeout.model_dump(mode="json"), "progress": self.progress})
                return


class WindowOpenTrigger(_Serializable):
    """Sleeps in the triggerer until a tenant's maintenance window opens (by `runtime.utcnow`)."""

    fields = ("opens_at", "poll_interval", "progress")

    def __init__(self, *, opens_at: str, poll_interval: float, progress: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.opens_at = opens_at
        self.poll_interval = poll_interval
        self.progress = progress or {}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        opens = datetime.fromisoformat(self.opens_at)
        while (remaining := (opens - runtime.utcnow()).total_seconds()) > 0:
            # Wake up now and then instead of sleeping days at once: a clock jump or a triggerer
            # restart then costs at most one interval.
            await asyncio.sleep(min(remaining, self.poll_interval))
        yield TriggerEvent({"window_opened": self.opens_at, "progress": self.progress})
