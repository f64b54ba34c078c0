"""Redeploying the failed tenants of an earlier run, on moto: which tenants the history selects (succeeded, failed,
rolled back, skipped, lost, and tenants whose latest item is another run's), the refusals, and `tenant-release
redeploy` printing the selection and triggering the run through Airflow's REST API.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tenant_release import cli, redeploy
from tenant_release.aws import ledger
from tenant_release.models import Outcome, TenantResult, ToolingAccount

from tests.aws import test_history_audit as history_audit

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet.yaml"
TOOLING = ToolingAccount(account_id="123456789012", artifact_bucket="tr-test-artifacts")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RUN_A, RUN_B, RUN_C = "manual__2026-11-02T09:00:00+00:00", "manual__2026-11-02T10:00:00+00:00", "scheduled__2026-11-01"
PLANNED = {RUN_C: -60, RUN_A: 0, RUN_B: 60}  # minutes after T0: C, then A, then B


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="microseconds")


# The tooling account as bootstrap leaves it (history and attempts tables from tooling.yaml), once for the module.
tooling = history_audit.tooling


def write(dynamodb: Any, tenant: str, run_id: str, status: Outcome, reason: str = "", *, release: str = "v1.4.0") -> None:
    """What the run's writer (deploy, fleet changes, summary) records: the latest item if newest, and an attempt."""
    started = PLANNED[run_id]
    result = TenantResult(
        tenant=tenant,
        account_id="111111111111",
        region="us-east-1",
        release=release,
        version=release.lstrip("v"),
        status=status,
        run_id=run_id,
        started_at=at(started + 5),
        finished_at=at(started + 6),
        run_started_at=at(started),
        attempt_started_at=at(started + 5),
        reason=reason or None,
    )
    ledger.record(dynamodb, TOOLING.history_table, result, attempts_table=TOOLING.attempts_table)


TENANTS = ("ok", "broken", "skipped", "lost", "rolled", "fixed-later", "failed-later", "unchanged", "not-in-a", "never")


@pytest.fixture(scope="module")
def history(tooling: Any) -> Any:
    """Run C (oldest), then A, then B of v1.4.0, as their writers left the history."""
    write(tooling, "ok", RUN_A, Outcome.SUCCEEDED)
    write(tooling, "broken", RUN_A, Outcome.FAILED, "stack event: Function CREATE_FAILED (bad handler)")
    write(tooling, "skipped", RUN_A, Outcome.SKIPPED, "wave canary: 1 of 1 failed, tolerance 0")
    write(tooling, "lost", RUN_A, Outcome.IN_PROGRESS)  # the worker was lost; no summary replaced it
    write(tooling, "rolled", RUN_A, Outcome.ROLLED_BACK, "rolled back by CloudFormation: alarm app-errors in ALARM")
    # Failed in A, fixed by the later run B: the latest item is B's, A's outcome is in the attempts.
    write(tooling, "fixed-later", RUN_A, Outcome.FAILED, "assume role denied")
    write(tooling, "fixed-later", RUN_B, Outcome.SUCCEEDED)
    # Succeeded in A, failed in B: redeploying A's failures must not take it.
    write(tooling, "failed-later", RUN_A, Outcome.SUCCEEDED)
    write(tooling, "failed-later", RUN_B, Outcome.FAILED, "throttled")
    write(tooling, "unchanged", RUN_A, Outcome.UNCHANGED)
    write(tooling, "not-in-a", RUN_C, Outcome.FAILED, "in the older run only")
    return tooling


def test_the_failed_rolled_back_skipped_and_lost_tenants_of_the_run_are_selected(history: Any):
    chosen = redeploy.failed_tenants(history, TOOLING, "v1.4.0", RUN_A, TENANTS)
    assert chosen == {
        "broken": "FAILED: stack event: Function CREATE_FAILED (bad handler)",
        "skipped": "SKIPPED: wave canary: 1 of 1 failed, tolerance 0",
        "lost": "IN_PROGRESS: never finished in that run (its worker was lost)",
        "rolled": "ROLLED_BACK: rolled back by CloudFormation: alarm app-errors in ALARM",
        "fixed-later": "FAILED: assume role denied",  # its outcome in A, read from the attempts
    }
    # Tenants outside the given list are never selected, whatever the history says.
    assert redeploy.failed_tenants(history, TOOLING, "v1.4.0", RUN_A, ["ok", "broken"]) == {
        "broken": "FAILED: stack event: Function CREATE_FAILED (bad handler)"
    }


def test_the_later_runs_own_failures_are_its_own(history: Any):
    assert redeploy.failed_tenants(history, TOOLING, "v1.4.0", RUN_B, TENANTS) == {"failed-later": "FAILED: throttled"}
    assert redeploy.failed_tenants(history, TOOLING, "v1.4.0", RUN_C, TENANTS) == {"not-in-a": "FAILED: in the older run only"}


def test_an_unknown_run_is_refused_naming_the_runs_the_history_knows(history: Any):
    with pytest.raises(redeploy.RedeployError) as refused:
        redeploy.failed_tenants(history, TOOLING, "v1.4.0", "manual__typo", TENANTS)
    message = str(refused.value)
    assert message.startswith("run manual__typo is not a run of v1.4.0 that the history knows")
    assert f"runs of v1.4.0 in the history: {RUN_C}, {RUN_A}, {RUN_B}." in message  # oldest first
    # A run of another release is not a run of this one.
    with pytest.raises(redeploy.RedeployError, match=r"runs of v9\.9\.9 in the history: none"):
        redeploy.failed_tenants(history, TOOLING, "v9.9.9", RUN_A, TENANTS)


def test_a_run_with_nothing_to_redeploy_is_refused(history: Any):
    with pytest.raises(redeploy.RedeployError) as refused:
        redeploy.failed_tenants(history, TOOLING, "v1.4.0", RUN_A, ["ok", "unchanged", "failed-later"])
    assert str(refused.value) == f"run {RUN_A} of v1.4.0 has no failed or skipped tenant; nothing to redeploy"


def test_without_a_run_the_newest_run_that_left_tenants_failed_or_skipped_is_picked(history: Any):
    picked = redeploy.run_to_redeploy(history, TOOLING, "v1.4.0", TENANTS)
    assert (picked.run_id, picked.failed, picked.newer, picked.older) == (
        RUN_B,
        {"failed-later": Outcome.FAILED},
        (),
        (RUN_A, RUN_C),
    )
    # Without failed-later, B (the newest run) left nothing failed: it does not hide A's failures.
    picked = redeploy.run_to_redeploy(history, TOOLING, "v1.4.0", [name for name in TENANTS if name != "failed-later"])
    assert (picked.run_id, picked.newer, picked.older) == (RUN_A, (RUN_B,), (RUN_C,))
    assert picked.failed == {
        "broken": Outcome.FAILED,
        "lost": Outcome.IN_PROGRESS,
        "rolled": Outcome.ROLLED_BACK,
        "skipped": Outcome.SKIPPED,
    }
    assert redeploy.run_to_redeploy(history, TOOLING, "v1.4.0", ["ok", "not-in-a"]).run_id == RUN_C
    with pytest.raises(redeploy.RedeployError) as refused:
        redeploy.run_to_redeploy(history, TOOLING, "v1.4.0", ["ok", "fixed-later", "unchanged"])
    assert str(refused.value).startswith(
        f"no tenant of v1.4.0 failed or was skipped in its latest outcome (the newest run is {RUN_B}); nothing to redeploy"
    )
    with pytest.raises(redeploy.RedeployError, match=r"the history has no outcome of v9\.9\.9"):
        redeploy.run_to_redeploy(history, TOOLING, "v9.9.9", TENANTS)


def test_the_hint_gives_the_command_and_the_trigger_payload():
    hint = redeploy.redeploy_hint("v1.4.0", RUN_A)
    assert f"tenant-release redeploy v1.4.0 --failed --run {RUN_A}" in hint
    assert f'{{"release_tag": "v1.4.0", "redeploy_of": "{RUN_A}"}}' in hint
    assert redeploy.trigger_conf("v1.4.0", RUN_A) == {"release_tag": "v1.4.0", "redeploy_of": RUN_A}


# --- the command --------------------------------------------------------------------------------------------


@pytest.fixture
def fleet_history(tooling: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run A of v1.6.0 to the test fleet's prod group: acme failed, globex succeeded, umbrella skipped."""
    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(FLEET))
    for name in ("TENANT_RELEASE_AIRFLOW_TOKEN", "TENANT_RELEASE_AIRFLOW_USER", "TENANT_RELEASE_AIRFLOW_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    write(tooling, "acme", RUN_A, Outcome.FAILED, "stack event: Function CREATE_FAILED", release="v1.6.0")
    write(tooling, "globex", RUN_A, Outcome.SUCCEEDED, release="v1.6.0")
    write(tooling, "umbrella", RUN_A, Outcome.SKIPPED, "wave canary: 1 of 1 failed, tolerance 0", release="v1.6.0")
    return tooling


def test_redeploy_print_only_lists_the_tenants_and_prints_the_payload(fleet_history: Any, capsys):
    code = cli.main(["redeploy", "v1.6.0", "--failed", "--print-only"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"picked run {RUN_A}: the newest run of v1.6.0 that left tenants failed or skipped in the history "
        "(acme FAILED, umbrella SKIPPED)"
    )
    assert lines[1] == f"redeploy v1.6.0 to 2 tenant(s) that failed or were skipped in run {RUN_A}:"
    assert lines[2].split() == ["TENANT", "IN", "THAT", "RUN", "REASON"]
    assert lines[3].split()[:2] == ["acme", "FAILED"] and lines[3].endswith("stack event: Function CREATE_FAILED")
    assert lines[4].split()[:2] == ["umbrella", "SKIPPED"]
    assert "globex" not in out
    payload = {"logical_date": None, "conf": {"release_tag": "v1.6.0", "redeploy_of": RUN_A}}
    assert json.dumps(payload) in lines
    assert lines[-1] == (
        f"or: airflow dags trigger tenant_release --conf '{json.dumps({'release_tag': 'v1.6.0', 'redeploy_of': RUN_A})}'"
    )


class _FakeAirflow(BaseHTTPRequestHandler):
    """Airflow's token and trigger endpoints, recording what the command sent."""

    requests: list[tuple[str, dict[str, Any], str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body, self.headers.get("Authorization", "")))
        if self.path == "/auth/token":
            answer = {"access_token": "jwt-for-" + body["username"]}
        else:
            answer = {"dag_run_id": "manual__redeploy", "conf": body["conf"]}
        data = json.dumps(answer).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_airflow() -> Iterator[str]:
    _FakeAirflow.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAirflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_redeploy_triggers_a_run_with_redeploy_of_through_the_rest_api(
    fleet_history: Any, fake_airflow: str, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("TENANT_RELEASE_AIRFLOW_USER", "admin")
    monkeypatch.setenv("TENANT_RELEASE_AIRFLOW_PASSWORD", "s3cret")
    code = cli.main(["redeploy", "v1.6.0", "--failed", "--run", RUN_A, "--airflow-url", fake_airflow])
    out, err = capsys.readouterr()
    assert code == 0, err
    token_call, trigger_call = _FakeAirflow.requests
    assert token_call[0] == "/auth/token" and token_call[1] == {"username": "admin", "password": "s3cret"}
    assert trigger_call == (
        "/api/v2/dags/tenant_release/dagRuns",
        {"logical_date": None, "conf": {"release_tag": "v1.6.0", "redeploy_of": RUN_A}},
        "Bearer jwt-for-admin",
    )
    assert "triggered tenant_release run manual__redeploy" in out
    assert "s3cret" not in out + err  # the password is never printed


def test_redeploy_of_a_run_with_no_failures_says_so(fleet_history: Any, capsys):
    write(fleet_history, "acme", RUN_A, Outcome.FAILED, "throttled", release="v1.7.0")
    write(fleet_history, "acme", RUN_B, Outcome.SUCCEEDED, release="v1.7.0")
    write(fleet_history, "umbrella", RUN_B, Outcome.UNCHANGED, release="v1.7.0")
    code = cli.main(["redeploy", "v1.7.0", "--failed", "--print-only"])  # the latest run is B, which fixed acme
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(
        f"tenant-release: no tenant of v1.7.0 failed or was skipped in its latest outcome (the newest run is {RUN_B}); "
        "nothing to redeploy"
    )
    code = cli.main(["redeploy", "v1.7.0", "--failed", "--run", RUN_B, "--print-only"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err == f"tenant-release: run {RUN_B} of v1.7.0 has no failed or skipped tenant; nothing to redeploy\n"


def test_a_later_one_tenant_run_does_not_hide_the_large_failed_run(fleet_history: Any, capsys):
    write(fleet_history, "acme", RUN_A, Outcome.FAILED, "throttled", release="v1.8.0")
    write(fleet_history, "umbrella", RUN_A, Outcome.SKIPPED, "wave canary failed", release="v1.8.0")
    write(fleet_history, "globex", RUN_A, Outcome.FAILED, "assume role denied", release="v1.8.0")
    write(fleet_history, "globex", RUN_B, Outcome.SUCCEEDED, release="v1.8.0")  # a later run of globex alone

    code = cli.main(["redeploy", "v1.8.0", "--failed", "--print-only"])

    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"picked run {RUN_A}: the newest run of v1.8.0 that left tenants failed or skipped in the history "
        f"(acme FAILED, umbrella SKIPPED); newer runs left none: {RUN_B}"
    )
    # globex failed in that run too and is taken again; the table says the later run deployed it since.
    globex = next(line for line in lines if line.startswith("globex"))
    assert globex.split()[1] == "FAILED" and globex.endswith(f"assume role denied [since then SUCCEEDED in run {RUN_B}]")
    assert json.dumps({"logical_date": None, "conf": {"release_tag": "v1.8.0", "redeploy_of": RUN_A}}) in lines


def test_the_plan_of_a_redeploy_run_takes_the_failed_tenants_and_keeps_a_tenant_held_since(
    fleet_history: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from airflow.sdk.exceptions import AirflowFailException
    from tenant_release.airflow import steps

    fleet = tmp_path / "tenants.yaml"
    held = FLEET.read_text().replace("  - name: umbrella\n", '  - name: umbrella\n    hold: "customer freeze"\n')
    fleet.write_text(held)
    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(fleet))
    now = datetime(2027, 3, 2, 2, 30, tzinfo=UTC)

    plan = steps.plan({"release_tag": "v1.6.0", "redeploy_of": RUN_A}, now=now, max_map_length=1024)
    assert plan["redeploy_of"] == RUN_A
    assert plan["tenants"] == ["acme", "umbrella"]  # globex succeeded in run A: not part of this run at all
    assert [t["tenant"] for t in plan["targets"]] == ["acme"]
    assert plan["held"] == [{"tenant": "umbrella", "reason": "held back: customer freeze"}]

    fleet.write_text(held.replace("  - name: acme\n", '  - name: acme\n    hold: "under investigation"\n'))
    with pytest.raises(AirflowFailException) as refused:
        steps.plan({"release_tag": "v1.6.0", "redeploy_of": RUN_A}, now=now, max_map_length=1024)
    assert str(refused.value).startswith(
        f"every tenant to redeploy from run {RUN_A} is held back now: acme (held back: under investigation); "
        "umbrella (held back: customer freeze); nothing to redeploy"
    )
