"""Tenant sessions outlive their STS credentials: botocore re-assumes the role before they expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tenant_release.aws.session import AwsSessions
from tenant_release.config import load_fleet

from tests.faults import Faults


def test_expired_tenant_credentials_are_refreshed_by_assuming_the_role_again(moto, fleet_file, monkeypatch):
    import botocore.credentials

    faults = Faults()
    sessions = AwsSessions(client_hook=faults.hook)
    acme = load_fleet(fleet_file).target("acme")
    session = sessions.tenant_session(acme, session_name="tr-v1-run", source_identity="tenant-release@v1")
    sts = session.client("sts", region_name=acme.region)
    first = sts.get_caller_identity()
    assumed = [call for call in faults.calls if call == ("sts", "tooling", "assume_role")]
    assert len(assumed) == 1

    credentials = session._session._credentials  # the RefreshableCredentials behind the session
    old_key = credentials.access_key
    # 48 minutes later, inside botocore's 15-minute refresh window of a one-hour session (moto issues one
    # hour from the real clock); both the refresh check and the fetcher's cache see the moved clock.
    later = datetime.now(UTC) + timedelta(minutes=48)
    monkeypatch.setattr(botocore.credentials, "_local_now", lambda: later)
    monkeypatch.setattr(credentials, "_time_fetcher", lambda: later)

    second = sts.get_caller_identity()
    assumed = [call for call in faults.calls if call == ("sts", "tooling", "assume_role")]
    assert len(assumed) == 2, "the expired credentials were not refreshed"
    assert credentials.access_key != old_key
    assert first["Account"] == second["Account"] == "111111111111"
    assert "tr-v1-run" in second["Arn"]
