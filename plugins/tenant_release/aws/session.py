"""Sessions for the tooling account and, through STS, for each tenant account, with refreshing credentials."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, RefreshableCredentials
from botocore.exceptions import ClientError

from tenant_release import classify
from tenant_release.errors import PermanentAwsError, RecoverableAwsError
from tenant_release.models import Target

log = logging.getLogger(__name__)

# botocore's own retries stay on (they absorb most throttling); ours add jitter across many accounts.
CLIENT_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 5}, connect_timeout=10, read_timeout=60)

ClientHook = Callable[[str, str, Any], Any]
"""(service, account_id, client) -> client: lets tests put a fault injector around real clients."""

ASSUME_DURATION_SECONDS = 3600


class AwsSessions:
    """Hands out boto3 clients: the tooling account's, and each tenant's through its deploy role.

    Tenant credentials are `RefreshableCredentials`: botocore re-assumes the role before they
    expire, so a long stack wait never runs on a dead session. Credentials live only in this
    process's memory; nothing here returns them.
    """

    def __init__(self, base_session: boto3.Session | None = None, *, client_hook: ClientHook | None = None) -> None:
        self._base = base_session or boto3.Session()
        self._hook = client_hook
        self._tenant_sessions: dict[tuple[str, str, str], boto3.Session] = {}
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._tooling_account: str | None = None

    def tooling_client(self, service: str, region: str) -> Any:
        key = ("tooling", service, region)
        with self._lock:
            if key not in self._clients:
                client = self._base.client(service, region_name=region, config=CLIENT_CONFIG)
                self._clients[key] = self._wrap(service, "tooling", client)
            return self._clients[key]

    def tenant_client(self, target: Target, service: str, *, session_name: str, source_identity: str) -> Any:
        key = ("tenant", target.deploy_role_arn, session_name, service, target.region)
        with self._lock:
            cached = self._clients.get(key)
        if cached is not None:
            return cached
        session = self.tenant_session(target, session_name=session_name, source_identity=source_identity)
        client = self._wrap(service, target.account_id, session.client(service, region_name=target.region, config=CLIENT_CONFIG))
        with self._lock:
            self._clients[key] = client
        return client

    def tenant_session(self, target: Target, *, session_name: str, source_identity: str) -> boto3.Session:
        """Assume the tenant's deploy role now (so a denial surfaces here, named) and keep it refreshed."""
        key = (target.deploy_role_arn, session_name, target.region)
        with self._lock:
            if key in self._tenant_sessions:
                return self._tenant_sessions[key]
        extra: dict[str, Any] = {
            "RoleSessionName": session_name,
            "SourceIdentity": source_identity,
            "DurationSeconds": ASSUME_DURATION_SECONDS,
        }
        if target.external_id:
            extra["ExternalId"] = target.external_id
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=self._sts_client_creator(target.region),
            source_credentials=self._base.get_credentials(),
            role_arn=target.deploy_role_arn,
            extra_args=extra,
        )
        try:
            metadata = fetcher.fetch_credentials()
        except ClientError as exc:
            raise assume_role_error(target, exc) from None
        credentials = RefreshableCredentials.create_from_metadata(
            metadata=metadata, refresh_using=fetcher.fetch_credentials, method="assume-role"
        )
        botocore_session = botocore.session.Session()
        botocore_session._credentials = credentials  # the documented way to inject credentials into a session
        # A new session would parse every service model again (about 0.13 s a tenant); the models are
        # read-only, so every tenant session shares the base session's loader (about 0.01 s).
        botocore_session.register_component("data_loader", self._base._session.get_component("data_loader"))
        session = boto3.Session(botocore_session=botocore_session, region_name=target.region)
        with self._lock:
            self._tenant_sessions[key] = session
        log.info("assumed %s as session %s (source identity %s)", target.deploy_role_arn, session_name, source_identity)
        return session

    def tenant_reader(self, target: Target, service: str, *, session_name: str, source_identity: str) -> Any:
        """A client for one quick read in a tenant's account (the fleet pass): one assumption, nothing kept.

        Its credentials are not refreshed, so it is for reads that end within minutes, not for a deploy. It is
        made from the base session with those credentials: about 4 ms of CPU, where a session of its own and
        its first client cost about 16 ms, which a thousand tenants read in one process feel.
        """
        extra: dict[str, Any] = {"RoleSessionName": session_name, "SourceIdentity": source_identity}
        if target.external_id:
            extra["ExternalId"] = target.external_id
        sts = self.tooling_client("sts", target.region)
        try:
            credentials = sts.assume_role(RoleArn=target.deploy_role_arn, DurationSeconds=900, **extra)["Credentials"]
        except ClientError as exc:
            raise assume_role_error(target, exc) from None
        with self._lock:  # creating clients from one session is not thread-safe; it is CPU-bound anyway
            client = self._base.client(
                service,
                region_name=target.region,
                config=CLIENT_CONFIG,
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
            )
        return self._wrap(service, target.account_id, client)

    def open_tenant_sessions(self) -> int:
        with self._lock:
            return len(self._tenant_sessions)

    def forget_tenant(self, target: Target, *, session_name: str) -> None:
        """Drop a tenant's session and clients once its deploy is over (their connections are closed).

        The triggerer keeps one `AwsSessions` for every deploy it ever runs: without this, each release would
        leave a session and three clients per tenant behind, and a long-lived triggerer would grow without end.
        """
        with self._lock:
            self._tenant_sessions.pop((target.deploy_role_arn, session_name, target.region), None)
            keys = [k for k in self._clients if k[:3] == ("tenant", target.deploy_role_arn, session_name)]
            clients = [self._clients.pop(k) for k in keys]
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                close()

    def _sts_client_creator(self, region: str) -> Callable[..., Any]:
        """botocore asks for an STS client at every (re-)assumption, passing a snapshot of the base credentials.

        The tooling STS client of the region signs with those same base credentials (kept fresh by the base
        session), so one client per region serves every tenant there instead of one new client per tenant.
        """

        def create(service_name: str, **_snapshot_of_base_credentials: Any) -> Any:
            return self.tooling_client(service_name, region)

        return create

    def _wrap(self, service: str, account: str, client: Any) -> Any:
        return self._hook(service, account, client) if self._hook else client


def assume_role_error(target: Target, exc: ClientError) -> Exception:
    """Translate an STS failure into what the operator must do about it, naming the policies that decide it."""
    what = f"cannot assume {target.deploy_role_arn} for tenant {target.name!r}: {classify.describe(exc)}"
    if classify.is_retriable(exc):
        return RecoverableAwsError(what)
    external_id = f", with the condition sts:ExternalId = {target.external_id!r} (the fleet file's external_id)"
    hint = (
        f"the trust policy of {target.deploy_role_arn} must let the tooling account's orchestrator role assume it: "
        "statement OrchestratorAssumesRole (sts:AssumeRole"
        f"{external_id if target.external_id else ''}) and OrchestratorSetsSessionIdentity (sts:SetSourceIdentity, "
        "sts:TagSession) of DeployRole in include/templates/tenant-bootstrap.yaml, whose ToolingAccountId and "
        f"OrchestratorRoleName parameters name that role. Deploy the tenant bootstrap stack in account "
        f"{target.account_id} (`tenant-release bootstrap`) to create or repair it; the orchestrator's own policy "
        "(AssumeTenantDeployRoles in include/templates/tooling.yaml) must allow the same actions on the role"
    )
    return PermanentAwsError(f"{what}. Fix: {hint}.")
