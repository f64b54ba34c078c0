"""The `tenant-release` command: what it prints, its exit codes, and the records it writes (against moto)."""

from __future__ import annotations

import re
from pathlib import Path

import boto3
import pytest
from tenant_release import cli
from tenant_release.aws import ledger, release_queue
from tenant_release.aws.approvals import from_dynamodb
from tenant_release.models import Outcome, TenantResult


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_summarises_the_fleet(fleet_file: Path, capsys):
    code, out, err = run(capsys, "validate")
    assert code == 0 and err == ""
    assert f"{fleet_file}: OK" in out
    assert "4 tenants; groups: canary, prod, qa; default group: prod" in out
    assert "gated groups: prod" in out
    assert "application: the bundled sample (" in out and "verified by function_version" in out


def test_validate_names_what_is_wrong(fleet_file: Path, capsys):
    fleet_file.write_text(fleet_file.read_text().replace('account_id: "222222222222"', "account_id: 222222222222"))
    code, out, err = run(capsys, "validate")
    assert code == 2 and out == ""
    assert "tenant 'globex' (tenants[1]) field account_id" in err and 'Quote it: account_id: "222222222222"' in err


def test_plan_lists_the_tags_tenants(fleet_file: Path, capsys):
    code, out, err = run(capsys, "plan", "v1.4.0")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "v1.4.0: version 1.4.0 to group prod (gated: needs approval, for acme, globex, umbrella)"
    assert lines[1].startswith("  source: the bundled sample")
    assert lines[2].startswith("  template parameters: the parameters of 4 target(s) fit ")
    assert lines[3] == "  held back or pinned (recorded SKIPPED, not deployed): none"
    assert lines[4] == "  waves: 1 all (3)"
    assert lines[5].split() == ["TENANT", "ACCOUNT", "REGION", "STACK", "WAVE", "GATE", "APPROVAL", "WINDOW", "HOLD"]
    assert [line.split()[0] for line in lines[6:]] == ["acme", "globex", "umbrella"]
    assert "044444444444" in out  # the leading zero survives


def test_plan_says_which_tenants_of_another_groups_tag_are_gated(fleet_file: Path, capsys):
    # acme is in canary and in the gated prod; initech (qa only) is not gated, umbrella (qa, prod) is.
    code, out, _ = run(capsys, "plan", "v-1.4.0-canary")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "v-1.4.0-canary: version 1.4.0 to group canary (gated: needs approval, for acme)"
    assert lines[6].split()[0] == "acme" and lines[6].split()[5] == "prod"
    code, out, _ = run(capsys, "plan", "v-1.4.0-qa")
    lines = out.splitlines()
    assert lines[0] == "v-1.4.0-qa: version 1.4.0 to group qa (gated: needs approval, for umbrella)"
    gate = {line.split()[0]: line.split()[5] for line in lines[6:]}
    assert gate == {"initech": "-", "umbrella": "prod"}
    code, out, _ = run(capsys, "plan", "v-1.4.0-qa", "--tenants", "initech")
    assert out.splitlines()[0] == "v-1.4.0-qa: version 1.4.0 to group qa"


def test_plan_refuses_a_bad_tag_with_exit_code_2_and_the_fix_on_stderr(fleet_file: Path, capsys):
    code, out, err = run(capsys, "plan", "1.4")
    assert (code, out) == (2, "")
    assert err.startswith("tenant-release: release tag '1.4' is not valid: use v<MAJOR>.<MINOR>.<PATCH>")

    code, out, err = run(capsys, "plan", "v-1.4.0-nosuch")
    assert (code, out) == (2, "")
    assert "targets group 'nosuch', which no tenant belongs to; groups: canary, prod, qa" in err


def test_plan_names_the_commit_a_tag_builds_and_refuses_a_tag_with_no_source(fleet_file: Path, tmp_path: Path, capsys):
    from tests.orders_example import git

    repo = tmp_path / "app"
    repo.mkdir()
    for command in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "one"], ["tag", "v1.4.0"]):
        git(repo, *command)
    commit = git(repo, "rev-parse", "HEAD")
    fleet_file.write_text(fleet_file.read_text() + f"application:\n  source:\n    git: {repo}\n")

    code, out, err = run(capsys, "plan", "v1.4.0")
    assert code == 0 and err == ""
    assert out.splitlines()[1] == f"  source: {repo} refs/tags/v1.4.0 at commit {commit}"

    code, out, err = run(capsys, "plan", "v1.5.0")
    assert code != 0 and "release tag v1.5.0 names 'v1.5.0', which" in err and "(tags there: v1.4.0)" in err


def approvals(tenant: str, release: str):
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    return from_dynamodb(dynamodb, "tenant-release-approvals", tenant=tenant, release=release)


SHA = "5" * 64


def publish_manifest(tag: str, version: str, sha256: str) -> None:
    """What the build leaves beside its objects (build.build_manifest_key): the artifact, with its sha256."""
    from tenant_release.models import Artifact

    artifact = Artifact(version=version, sha256=sha256, bucket="tr-test-artifacts", template_key="t", objects=(), source="x")
    boto3.client("s3", region_name="us-east-1").put_object(
        Bucket="tr-test-artifacts", Key=f"releases/{version}/build-{tag}.json", Body=artifact.model_dump_json().encode()
    )


def test_approve_needs_the_artifact_and_records_it_with_the_callers_identity(bootstrapped, capsys):
    code, out, err = run(capsys, "approve", "v1.5.0", "--by", "release-manager")
    assert (code, out) == (2, "")
    assert "no build of v1.5.0 is published (s3://tr-test-artifacts/releases/1.5.0/build-v1.5.0.json)" in err
    assert "tenant-release approve v1.5.0 --sha256 <sha256>" in err
    assert approvals("*", "v1.5.0") is None

    code, out, err = run(capsys, "approve", "v1.5.0", "--sha256", "abc")
    assert code == 2 and "--sha256 'abc' is not a SHA-256 (64 hex digits)" in err

    publish_manifest("v1.5.0", "1.5.0", SHA)  # the build of v1.5.0 ran: approve learns what it approves
    code, out, _ = run(capsys, "approve", "v1.5.0", "--by", "release-manager", "--note", "CAB-12")
    assert code == 0
    caller = boto3.client("sts", region_name="us-east-1").get_caller_identity()["Arn"]
    assert out.splitlines() == [
        "recorded: approved the release gate of v1.5.0 by release-manager (CAB-12)",
        f"  artifact sha256 {SHA}; caller {caller}",
        "  the build published for v1.5.0: x",  # what the approver approves, as the build recorded it
    ]
    record = approvals("*", "v1.5.0")
    assert (record.approved, record.decided_by, record.sha256, record.identity) == (True, "release-manager", SHA, caller)

    other = "6" * 64
    code, out, _ = run(capsys, "approve", "v1.5.0", "--sha256", other, "--by", "release-manager")
    assert approvals("*", "v1.5.0").sha256 == other
    assert f"note: the published build of v1.5.0 is {SHA}; a run of that build will not accept this approval" in out


def test_approve_writes_the_release_gate_record_and_a_second_answer_replaces_it(bootstrapped, capsys):
    code, out, _ = run(capsys, "approve", "v1.5.0", "--by", "release-manager", "--note", "CAB-12", "--sha256", SHA)
    assert code == 0
    assert out.splitlines()[0] == "recorded: approved the release gate of v1.5.0 by release-manager (CAB-12)"
    record = approvals("*", "v1.5.0")
    assert (record.approved, record.decided_by, record.note) == (True, "release-manager", "CAB-12")

    code, out, _ = run(capsys, "approve", "v1.5.0", "--reject", "--by", "cto")
    assert code == 0
    assert "recorded: rejected the release gate of v1.5.0 by cto" in out
    assert "replaces the earlier decision: approved by release-manager via dynamodb: CAB-12" in out
    assert approvals("*", "v1.5.0").approved is False


def test_approve_for_a_tenant_checks_it_belongs_to_the_tags_group(bootstrapped, capsys):
    code, out, _ = run(capsys, "approve", "v-1.5.0-qa", "--tenant", "initech", "--by", "initech-ops", "--sha256", SHA)
    assert code == 0 and "approved v-1.5.0-qa for tenant initech by initech-ops" in out
    assert "does not require its own approval" in out
    assert approvals("initech", "v-1.5.0-qa").decided_by == "initech-ops"

    code, out, err = run(capsys, "approve", "v1.5.0", "--tenant", "initech", "--sha256", SHA)
    assert (code, out) == (2, "")
    assert "not in group 'prod'" in err
    assert approvals("initech", "v1.5.0") is None


def test_status_shows_queue_gate_and_tenants_still_waiting_with_the_reason(bootstrapped, capsys):
    code, out, _ = run(capsys, "status", "v1.5.0")
    assert code == 1
    assert "queue: not queued" in out and "release gate: no decision recorded" in out

    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    release_queue.enqueue(
        dynamodb, "tenant-release-queue", release_tag="v1.5.0", tenants=(), queued_by="alice", approved_by="bob (ui)"
    )
    run(capsys, "approve", "v1.5.0", "--by", "bob", "--sha256", SHA)
    waiting = "waiting for maintenance window Sun 02:00-05:00 Europe/Berlin, opens 2027-03-07T01:00:00+00:00"
    ledger.record(
        dynamodb,
        "tenant-release-history",
        TenantResult(
            tenant="acme",
            account_id="111111111111",
            region="eu-central-1",
            release="v1.5.0",
            version="1.5.0",
            status=Outcome.IN_PROGRESS,
            run_id="manual__1",
            started_at="2027-03-06T20:00:00+00:00",
            finished_at="2027-03-06T20:00:00+00:00",
            reason=waiting,
        ),
    )
    code, out, _ = run(capsys, "status", "v1.5.0")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "v1.5.0: version 1.5.0 to group prod (gated by acme, globex, umbrella)"
    assert lines[1].startswith("queue: v1.5.0 is queued (queued by alice at ")
    assert lines[2] == "release gate: approved by bob via dynamodb"
    (acme,) = [line for line in lines if line.startswith("acme")]
    assert "IN_PROGRESS" in acme and waiting in acme


def test_queue_list_and_cancel(bootstrapped, capsys):
    code, out, _ = run(capsys, "queue", "list")
    assert code == 0 and out.splitlines()[-1] == "nothing queued"
    assert out.startswith("next release window: none")  # this fleet file declares no windows

    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    release_queue.enqueue(
        dynamodb, "tenant-release-queue", release_tag="v-1.5.0-qa", tenants=["initech"], queued_by="alice", approved_by=None
    )
    code, out, _ = run(capsys, "queue", "list")
    header, row = out.splitlines()[1:]
    assert header.split() == ["RELEASE", "STATUS", "TENANTS", "QUEUED", "AT", "QUEUED", "BY", "APPROVED", "BY", "RUN"]
    assert row.split()[:3] == ["v-1.5.0-qa", "QUEUED", "initech"]

    code, out, _ = run(capsys, "queue", "cancel", "v-1.5.0-qa", "--by", "carol")
    assert code == 0 and out.startswith("v-1.5.0-qa was cancelled by carol")
    code, out, _ = run(capsys, "queue", "list")
    assert out.splitlines()[-1] == "nothing queued"
    code, out, _ = run(capsys, "queue", "list", "--all")
    assert "CANCELLED" in out

    code, out, err = run(capsys, "queue", "cancel", "v-1.5.0-qa")
    assert (code, out) == (2, "") and "nothing to cancel" in err


def test_pause_resume_and_abort_record_the_callers_identity_and_status_shows_who_when_and_why(bootstrapped, capsys):
    caller = boto3.client("sts", region_name="us-east-1").get_caller_identity()["Arn"]
    code, out, _ = run(capsys, "status", "v1.5.0")
    assert "rollout: running (never paused or aborted)" in out.splitlines()

    code, out, _ = run(capsys, "pause", "v1.5.0", "--reason", "error rate up in canary")
    assert code == 0
    first, effect = out.splitlines()
    assert first.startswith(f"rollout of v1.5.0 paused by {caller}: error rate up in canary at 20")
    assert effect == "  tenants already deploying finish; no other tenant starts until `tenant-release resume v1.5.0`"
    code, out, _ = run(capsys, "status", "v1.5.0")
    assert code == 0  # something is recorded for the tag: its rollout control
    (rollout,) = [line for line in out.splitlines() if line.startswith("rollout:")]
    assert rollout.startswith(f"rollout: paused: paused by {caller}: error rate up in canary at ")

    code, out, _ = run(capsys, "resume", "v1.5.0")
    assert code == 0 and out.startswith(f"rollout of v1.5.0 resumed by {caller} at ")
    code, out, _ = run(capsys, "status", "v1.5.0")
    (rollout,) = [line for line in out.splitlines() if line.startswith("rollout:")]
    assert rollout.startswith(f"rollout: running: resumed by {caller} at ")
    assert f"(after: paused by {caller}: error rate up in canary at " in rollout

    code, out, err = run(capsys, "abort", "v1.5.0", "--reason", "bad migration")
    assert code == 0 and out.startswith(f"rollout of v1.5.0 aborted by {caller}: bad migration at ")
    assert "ends SKIPPED with this reason. A new run of v1.5.0 is not stopped by it" in out
    code, out, err = run(capsys, "resume", "v1.5.0")
    assert (code, out) == (2, "")
    assert "an abort is final for the runs planned before it, so it cannot be resumed" in err
    assert "tenant-release redeploy v1.5.0 --failed" in err

    # A run planned after the abort (a redeploy) can be paused and resumed; the abort stays for the runs before it.
    code, out, err = run(capsys, "pause", "v1.5.0", "--reason", "watching the redeploy")
    assert code == 0, err
    assert out.splitlines()[2].startswith("  the runs planned before the abort (20") and "stay aborted" in out
    code, out, _ = run(capsys, "status", "v1.5.0")
    (rollout,) = [line for line in out.splitlines() if line.startswith("rollout:")]
    assert rollout.startswith(f"rollout: paused: paused by {caller}: watching the redeploy at ")
    assert f"; earlier aborted by {caller}: bad migration at " in rollout
    assert rollout.endswith("still stopping the runs planned before it")
    code, out, _ = run(capsys, "resume", "v1.5.0")
    assert code == 0 and out.startswith(f"rollout of v1.5.0 resumed by {caller} at ")
    code, out, _ = run(capsys, "status", "v-1.5.0-qa")
    assert "rollout: running (never paused or aborted)" in out.splitlines()  # another tag: not stopped


def test_a_control_is_stamped_with_aws_clock_when_this_hosts_clock_is_off(bootstrapped, capsys, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from tenant_release.aws import controls

    real_clock = controls.local_clock
    monkeypatch.setattr(controls, "local_clock", lambda: real_clock() - timedelta(hours=2))  # a laptop 2 h behind

    code, _, err = run(capsys, "abort", "v1.5.0", "--reason", "bad migration")

    assert code == 0
    # AWS's Date header has second precision: about 7200 s.
    assert re.match(
        r"tenant-release: this host's clock is (7199|7200|7201) s behind AWS's; the control is stamped with AWS's time", err
    )
    stamped = datetime.fromisoformat(
        controls.current(boto3.client("dynamodb", "us-east-1"), "tenant-release-leases", "v1.5.0").at
    )
    # moto answers with this machine's real time: the abort is stamped with it, not the laptop's two hours ago.
    assert abs(stamped - datetime.now(UTC)) < timedelta(seconds=30)


def test_approve_a_wave_records_it_under_the_wave_and_refuses_an_unknown_wave_before_aws(bootstrapped, fleet_file, capsys):
    waves = "rollout:\n  waves:\n    - {name: canary, groups: [canary]}\n    - {name: general, approval: true}\n"
    fleet_file.write_text(fleet_file.read_text().replace("tenants:\n", waves + "tenants:\n", 1))

    code, out, _ = run(capsys, "approve", "v1.5.0", "--wave", "general", "--by", "cab", "--sha256", SHA)
    assert code == 0
    assert out.splitlines()[0] == "recorded: approved wave general of v1.5.0 by cab"
    record = approvals("wave:general", "v1.5.0")
    assert (record.approved, record.decided_by, record.sha256) == (True, "cab", SHA)
    assert approvals("*", "v1.5.0") is None  # not the release gate

    code, out, err = run(capsys, "approve", "v1.5.0", "--wave", "early", "--sha256", SHA)
    assert (code, out) == (2, "")
    assert "wave 'early' is not a wave of the rollout" in err and "waves: canary, general" in err
    code, _, err = run(capsys, "approve", "v1.5.0", "--wave", "general", "--tenant", "acme", "--sha256", SHA)
    assert code == 2 and "give --wave or --tenant, not both" in err

    code, out, _ = run(capsys, "approve", "v1.5.0", "--wave", "canary", "--sha256", SHA)
    assert "note: wave canary does not ask for approval (approval: false), so nothing reads this" in out
