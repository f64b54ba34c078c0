"""Every bad input is refused before anything is touched: the message names the problem and the fix, the CLI
prints one line or a list (never a traceback), and no AWS call is made.

Each case is a mutation of tests/fixtures/fleet.yaml (or a CLI argument list against it) run through
`tenant-release`'s `main`, with every botocore request recorded and refused.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from tenant_release import cli
from tenant_release.config import load_fleet

from tests.conftest import FIXTURES

BASE = (FIXTURES / "fleet.yaml").read_text()


@dataclass(frozen=True)
class Bad:
    id: str
    edit: Callable[[str], str | bytes] | None  # the fleet file's text -> a bad one; None: the fixture as it is
    expect: tuple[str, ...]  # every one must appear in stderr: the problem, and the fix where there is one
    argv: tuple[str, ...] = ("validate",)


def sub(old: str, new: str, count: int = 1) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert text.count(old) >= count, f"{old!r} is not in the fixture"
        return text.replace(old, new, count)

    return edit


def add_to(tenant: str, lines: str) -> Callable[[str], str]:
    """Add indented settings to one tenant's entry."""
    return sub(f"  - name: {tenant}\n", f"  - name: {tenant}\n" + "".join(f"    {line}\n" for line in lines.splitlines()))


def top(lines: str) -> Callable[[str], str]:
    """Add top-level settings before `tenants:`."""
    return sub("tenants:\n", lines.rstrip("\n") + "\ntenants:\n")


def defaults(line: str) -> Callable[[str], str]:
    return sub("defaults:\n", f"defaults:\n  {line}\n")


def latin1(text: str) -> bytes:
    return text.replace("# A test fleet", "# A test fleet (Zürich)").encode("latin-1")


# Six freezes of at most 62 days each that together leave no day free.
YEAR_IN_SIX_FREEZES = [("01-01", "02-28"), ("02-29", "04-30"), ("05-01", "06-30"), ("07-01", "08-31"), ("09-01", "10-31")]
YEAR_IN_SIX_FREEZES.append(("11-01", "12-31"))
SCHEDULE = 'schedule:\n  windows: ["Tue 02:00-04:00 UTC"]\n'

CASES = [
    # --- rollout waves
    Bad(
        "a wave naming an unknown group",
        top("rollout:\n  waves:\n    - {name: canary, groups: [canery]}\n    - {name: general}"),
        ("rollout wave canary: group(s) canery are no tenant's group", "groups in use: canary, prod, qa"),
    ),
    Bad(
        "a tenant in no wave",
        top("rollout:\n  waves:\n    - {name: canary, groups: [canary]}"),
        ("tenant globex (groups prod) is in no wave of the rollout", "add a last wave that takes every tenant left"),
    ),
    Bad(
        "a catch-all wave before other waves",
        top("rollout:\n  waves:\n    - {name: early, group: [canary]}\n    - {name: general}"),
        ("group", "is not a known setting"),
    ),
    Bad(
        "a wave without groups that is not last",
        top("rollout:\n  waves:\n    - {name: early}\n    - {name: general, groups: [prod]}"),
        ("rollout wave early names no groups and no tenants", "or make it the last wave"),
    ),
    Bad(
        "a tenant naming a wave that does not exist",
        lambda t: add_to("globex", "wave: erly")(
            top("rollout:\n  waves:\n    - {name: early, groups: [canary]}\n    - {name: general}")(t)
        ),
        ("tenant globex: wave 'erly' is not a wave of rollout.waves (early, general)",),
    ),
    Bad(
        "max_failures that is not a count or a percentage",
        top("rollout:\n  waves:\n    - {name: all, max_failures: some}"),
        ("max_failures 'some' must be a count (0, 2) or a percentage of the wave",),
    ),
    Bad(
        "a pin YAML reads as a number",
        add_to("globex", "pin: 1.10"),
        ("pin 1.1 was read as a number", "(1.10 becomes 1.1); quote it as written"),
    ),
    Bad(
        "seven waves",
        top("rollout:\n  waves:\n" + "".join(f"    - {{name: w{i}x, tenants: [acme]}}\n" for i in range(7))),
        ("rollout.waves lists 7 waves; at most 6",),
    ),
    # --- the file itself
    Bad(
        "duplicate top-level key",
        lambda t: t + "tenants:\n  - {name: newco, account_id: '999999999999', groups: [prod]}\n",
        ("key 'tenants' appears twice", "at line 16 and line 36", "YAML keeps only the second", "Fix: merge the two"),
    ),
    Bad("duplicate key in a tenant", add_to("globex", "region: eu-west-1\nregion: us-east-2"), ("key 'region' appears twice",)),
    Bad("duplicate gated_groups", top("gated_groups: [qa]"), ("key 'gated_groups' appears twice", "line 15 and line 16")),
    Bad("duplicate key in defaults", defaults("region: us-east-2"), ("key 'region' appears twice", "line 11 and line 12")),
    Bad("not UTF-8", latin1, ("is not UTF-8", "byte 0xfc at offset 17 (line 1)", "save the file as UTF-8")),
    # --- accounts
    Bad(
        "two tenants in one account",
        sub('account_id: "222222222222"', 'account_id: "111111111111"'),
        ("tenants acme, globex share the account 111111111111", "Fix: give each its own account_id"),
    ),
    Bad(
        "a tenant in the tooling account",
        sub('account_id: "333333333333"', 'account_id: "123456789012"'),
        ("initech use the tooling account 123456789012", "Fix: give the tenant its own account_id"),
    ),
    Bad(
        "dev in a tenant's account",
        sub('  name: dev\n  account_id: "123456789012"', '  name: dev\n  account_id: "222222222222"'),
        ("globex use the dev account 222222222222", "Fix: give dev or the tenant another account_id"),
    ),
    # --- regions
    Bad(
        "misspelt region", sub("region: eu-west-1", "region: eu-wset-1"), ("'eu-wset-1' does not exist", "did you mean eu-west-1")
    ),
    Bad("made-up region", sub("region: eu-west-1", "region: eu-north-9"), ("region 'eu-north-9' does not exist",)),
    Bad("region as a city", sub("region: eu-central-1", "region: Frankfurt"), ("'Frankfurt' is not an AWS region name",)),
    Bad("made-up default region", sub("  region: us-east-1\n  parameters", "  region: us-east-7\n  parameters"), ("us-east-7",)),
    Bad(
        "made-up tooling region",
        sub("  region: us-east-1\n  artifact_bucket", "  region: us-central-1\n  artifact_bucket"),
        ("tooling.region", "'us-central-1' does not exist"),
    ),
    # --- rendered names
    Bad(
        "stack name with '_'", defaults('stack_name: "app_{name}"'), ("tenant 'acme'", "stack name 'app_acme'", "CloudFormation")
    ),
    Bad("stack name starts with a digit", add_to("globex", 'stack_name: "1-globex"'), ("tenant 'globex'", "start with a letter")),
    Bad("stack name too long", add_to("globex", f"stack_name: s{'x' * 130}"), ("tenant 'globex'", "at most 128")),
    Bad("function name too long", defaults(f'function_name: "{"f" * 60}-{{name}}"'), ("refused by Lambda", "1-64", "umbrella")),
    Bad("function name with '.'", add_to("acme", "function_name: acme.app"), ("function name 'acme.app'", "Lambda")),
    Bad(
        "bucket with capitals",
        add_to("acme", "artifact_bucket: Acme-Artifacts"),
        ("tenant 'acme'", "'Acme-Artifacts' is not a valid S3 bucket name", "Fix: change artifact_bucket"),
    ),
    Bad("bucket with '..'", defaults('artifact_bucket: "tr..{account_id}-{region}"'), ("no '..'",)),
    Bad("bucket like an IP", add_to("acme", "artifact_bucket: 192.168.10.12"), ("looks like an IP address",)),
    Bad("bucket prefix xn--", defaults('artifact_bucket: "xn--{account_id}-{region}"'), ("prefix 'xn--' is reserved",)),
    Bad("bucket suffix -s3alias", defaults('artifact_bucket: "tr-{account_id}-s3alias"'), ("suffix '-s3alias' is reserved",)),
    Bad("bucket too long", defaults(f'artifact_bucket: "{"b" * 40}-{{account_id}}-{{region}}"'), ("3-63",)),
    Bad(
        "one bucket for every tenant",
        defaults('artifact_bucket: "tenant-release-shared"'),
        ("all use the artifact bucket 'tenant-release-shared'", "bucket name is global", "put {account_id}"),
    ),
    Bad(
        "tooling bucket", sub("artifact_bucket: tr-test-artifacts", "artifact_bucket: TR_Artifacts"), ("tooling.artifact_bucket",)
    ),
    Bad(
        "attempts table name",
        sub("artifact_bucket: tr-test-artifacts", "artifact_bucket: tr-test-artifacts\n  attempts_table: x"),
        ("tooling.attempts_table 'x' is not a DynamoDB table name",),
    ),
    Bad(
        "two tables, one name",
        sub("artifact_bucket: tr-test-artifacts", "artifact_bucket: tr-test-artifacts\n  leases_table: tenant-release-history"),
        ("tooling.history_table, tooling.leases_table all name the table 'tenant-release-history'", "a table of its own"),
    ),
    Bad(
        "release prefix with a slash",
        sub("artifact_bucket: tr-test-artifacts", "artifact_bucket: tr-test-artifacts\n  release_prefix: rel/eases"),
        ("tooling.release_prefix 'rel/eases' must be one key segment", "e.g. releases"),
    ),
    Bad(
        "releases under the approvals prefix",
        sub("artifact_bucket: tr-test-artifacts", "artifact_bucket: tr-test-artifacts\n  release_prefix: approvals"),
        ("tooling.release_prefix may not be 'approvals'", "the orchestrator", "must never write one"),
    ),
    Bad("unknown placeholder", defaults('stack_name: "app-{tenant}"'), ("unknown placeholder 'tenant'", "{name}, {account_id}")),
    Bad(
        "role name", defaults('deploy_role_name: "deploy role!"'), ("deploy role name 'deploy role!'", "change deploy_role_name")
    ),
    Bad(
        "AWS-managed key alias",
        defaults("kms_key_alias: alias/aws/s3"),
        ("kms_key_alias 'alias/aws/s3'", "alias/aws/ is reserved"),
    ),
    Bad("key alias without alias/", add_to("acme", "kms_key_alias: my-key"), ("kms_key_alias 'my-key'", "alias/<name>")),
    Bad(
        "history table name",
        sub("  artifact_bucket: tr-test", "  history_table: h\n  artifact_bucket: tr-test"),
        ("history_table 'h'",),
    ),
    # --- the gate
    Bad(
        "gated group nobody is in",
        sub("gated_groups: [prod]", "gated_groups: [prd]"),
        ("gated_groups names 'prd'", "silently removes the gate", "Groups in use: canary, prod, qa", "Fix: correct the name"),
    ),
    # --- schedule, freezes, maintenance windows
    Bad(
        "freezes cover the whole year",
        top(SCHEDULE + "  freezes:\n" + "".join(f'    - {{start: "{a}", end: "{b}"}}\n' for a, b in YEAR_IN_SIX_FREEZES)),
        ("every release window opens inside a freeze", "shorten the freezes or add windows"),
    ),
    Bad(
        "window that does not parse",
        top('schedule:\n  windows: ["Tuesday 2am"]'),
        ("schedule.windows[0]", "is not a window", "e.g."),
    ),
    Bad(
        "window in an unknown zone",
        top('schedule:\n  windows: ["Tue 02:00-04:00 Mars/Olympus"]'),
        ("unknown time zone 'Mars/Olympus'",),
    ),
    Bad("window at 25:00", top('schedule:\n  windows: ["Tue 25:00-26:00"]'), ("25:00 is not a time of day",)),
    Bad("freeze on 02-30", top(SCHEDULE + '  freezes: [{start: "02-30", end: "03-02"}]'), ("'02-30' must be a real MM-DD day",)),
    Bad("freeze in month 13", top(SCHEDULE + '  freezes: [{start: "13-01", end: "12-31"}]'), ("'13-01' must be MM-DD",)),
    Bad(
        "reversed year-end freeze",
        top(SCHEDULE + '  freezes: [{start: "01-05", end: "12-20", reason: year-end}]'),
        ("01-05..12-20 (year-end) spans 350 days", "swap start and end (start: '12-20', end: '01-05')"),
    ),
    Bad("half-year freeze", top(SCHEDULE + '  freezes: [{start: "01-01", end: "06-30"}]'), ("spans 181 days", "shorten it")),
    Bad(
        "maintenance window", add_to("globex", 'maintenance_window: "Sunday morning"'), ("tenant 'globex'", "maintenance_window")
    ),
    Bad("maintenance zone", add_to("globex", 'maintenance_window: "Sun 02:00-04:00 Europe/Berlín"'), ("unknown time zone",)),
    # --- parameters against the bundled sample's template
    Bad(
        "undeclared parameter",
        add_to("globex", "parameters: {Memory: 512}"),
        ("tenant 'globex' sets parameter(s) Memory", "does not declare", "it declares: ApplicationName"),
    ),
    Bad(
        "value not allowed", add_to("globex", "parameters: {MemorySize: 300}"), ("MemorySize='300' is not one of 128, 256, 512",)
    ),
    Bad("log level not allowed", sub("LogLevel: DEBUG", "LogLevel: VERBOSE"), ("tenant 'initech': LogLevel='VERBOSE'",)),
    Bad(
        "parameter the release sets",
        add_to("umbrella", "parameters: {ReleaseVersion: x}"),
        ("sets ReleaseVersion", "remove them"),
    ),
    Bad(
        "every tenant's problems at once",
        lambda t: sub("LogLevel: DEBUG", "LogLevel: LOUD")(sub("MemorySize: 256", "MemorySize: 3000")(t)),
        ("tenant 'acme': MemorySize='3000'", "tenant 'initech': LogLevel='LOUD'"),
    ),
    Bad(
        "function name the template refuses",
        defaults(f'function_name: "tenant-app-{"x" * 42}-{{name}}"'),
        ("tenant 'umbrella': ApplicationName=", "does not match", "1-59 letters"),
    ),
    # --- CLI arguments, checked before any AWS call
    Bad("history: tag", None, ("release tag '1.4' is not valid", "e.g. v1.4.0"), ("history", "1.4")),
    Bad("history: shell in tag", None, ("release tag", "is not valid"), ("history", "v1.4.0;rm -rf /")),
    Bad("history: bad fleet", sub("gated_groups: [prod]", "gated_groups: [prd]"), ("gates nothing",), ("history", "v1.4.0")),
    Bad("status: tag", None, ("release tag 'latest' is not valid",), ("status", "latest")),
    Bad("approve: tag", None, ("release tag 'v1.4' is not valid",), ("approve", "v1.4")),
    Bad(
        "approve: unknown tenant",
        None,
        ("unknown tenant(s) 'nosuch'", "tenants: acme"),
        ("approve", "v1.4.0", "--tenant", "nosuch"),
    ),
    Bad("approve: tenant not in group", None, ("not in group 'prod'",), ("approve", "v1.4.0", "--tenant", "initech")),
    Bad("approve: unknown group", None, ("group 'nosuch', which no tenant",), ("approve", "v-1.4.0-nosuch")),
    Bad("approve: empty --by", None, ("--by '  ' must name who decides", "--by alice"), ("approve", "v1.4.0", "--by", "  ")),
    Bad("queue cancel: tag", None, ("release tag 'v1.5' is not valid",), ("queue", "cancel", "v1.5")),
    Bad("queue cancel: bad --by", None, ("must name who decides",), ("queue", "cancel", "v1.5.0", "--by", "a\tb")),
    Bad("queue list: bad fleet", sub("region: eu-west-1", "region: eu-wset-1"), ("does not exist",), ("queue", "list")),
    Bad("pause: tag", None, ("release tag 'v1.4' is not valid",), ("pause", "v1.4")),
    Bad("resume: tag", None, ("release tag 'latest' is not valid",), ("resume", "latest")),
    Bad(
        "abort: no reason",
        None,
        ("the reason is missing; an abort must say why", "--reason 'error rate up in canary'"),
        ("abort", "v1.4.0"),
    ),
    Bad("abort: blank reason", None, ("the reason is missing",), ("abort", "v1.4.0", "--reason", "   ")),
    Bad("abort: unknown group", None, ("group 'nosuch', which no tenant",), ("abort", "v-1.4.0-nosuch", "--reason", "x")),
    Bad(
        "pause: reason on two lines",
        None,
        ("the reason must be at most 500 printable characters on one line",),
        ("pause", "v1.4.0", "--reason", "a\nb"),
    ),
    Bad("plan: unknown tenant", None, ("unknown tenant(s) 'nosuch'",), ("plan", "v1.4.0", "--tenants", "nosuch")),
    Bad("bootstrap: bad fleet", sub("gated_groups: [prod]", "gated_groups: [prd]"), ("gates nothing",), ("bootstrap",)),
    Bad(
        "plan: names a held tenant",
        add_to("acme", 'hold: "customer freeze until 2027-01-10"'),
        ("tenant acme is held back: customer freeze until 2027-01-10", "trigger with override_hold set to the reason"),
        ("plan", "v1.4.0", "--tenants", "acme", "globex"),
    ),
    Bad(
        "plan: names a pinned tenant",
        add_to("acme", 'pin: "1.3"'),
        ("tenant acme is pinned to 1.3.x: 1.4.0 is not a 1.3 release", "override_hold"),
        ("plan", "v1.4.0", "--tenants", "acme"),
    ),
    Bad(
        "plan: override without tenants",
        add_to("acme", 'hold: "customer freeze"'),
        ("override_hold deploys held or pinned tenants that the tenants param names", "acme (held back: customer freeze)"),
        ("plan", "v1.4.0", "--override-hold", "ticket 42"),
    ),
    Bad("redeploy: tag", None, ("release tag 'v1.4' is not valid",), ("redeploy", "v1.4", "--failed", "--print-only")),
    Bad(
        "redeploy: run id",
        None,
        ("run id 'manual run 1' is not an Airflow run id", "copy it from the run's summary"),
        ("redeploy", "v1.4.0", "--failed", "--run", "manual run 1", "--print-only"),
    ),
    Bad(
        "redeploy: airflow url",
        None,
        ("Airflow URL 'localhost:8080' is not an http(s) address", "--airflow-url"),
        ("redeploy", "v1.4.0", "--failed", "--airflow-url", "localhost:8080", "--print-only"),
    ),
    Bad(
        "redeploy: no airflow credentials",
        None,
        ("no Airflow credentials", "TENANT_RELEASE_AIRFLOW_TOKEN", "--print-only"),
        ("redeploy", "v1.4.0", "--failed"),
    ),
    Bad("redeploy: without --failed", None, ("--failed",), ("redeploy", "v1.4.0")),
    Bad(
        "redeploy: unknown group",
        None,
        ("group 'nosuch', which no tenant",),
        ("redeploy", "v-1.4.0-nosuch", "--failed", "--print-only"),
    ),
    Bad(
        "bootstrap: concurrency 0",
        None,
        ("--concurrency", "'0' is not a whole number from 1 to 256"),
        ("bootstrap", "--concurrency", "0"),
    ),
]


@pytest.fixture
def aws_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Every AWS call attempted, each refused; no credentials and no local emulation to find either."""
    calls: list[str] = []

    def refuse(self, operation_name, api_params):
        calls.append(f"{self.meta.service_model.service_name}.{operation_name}")
        raise AssertionError(f"an AWS call was made: {calls[-1]}")

    monkeypatch.setattr("botocore.client.BaseClient._make_api_call", refuse)
    plain_shell(monkeypatch, tmp_path / "no-stack")
    return calls


def plain_shell(monkeypatch: pytest.MonkeyPatch, stack_dir: Path) -> None:
    """A shell that sets no AWS endpoint or credentials, and where `make run` left its state in `stack_dir`."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    home = stack_dir.parent / "home"  # no ~/.aws of its own
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TENANT_RELEASE_STACK_DIR", str(stack_dir))
    for name in ("TENANT_RELEASE_AIRFLOW_TOKEN", "TENANT_RELEASE_AIRFLOW_USER", "TENANT_RELEASE_AIRFLOW_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse refuses an argument with exit code 2 and its usage line
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def test_at_least_forty_bad_inputs():
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_before_aws(case: Bad, fleet_file: Path, aws_calls: list[str], capsys):
    if case.edit is not None:
        bad = case.edit(BASE)
        if isinstance(bad, bytes):
            fleet_file.write_bytes(bad)
        else:
            fleet_file.write_text(bad)
    code, out, err = run(capsys, *case.argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err + out
    for text in case.expect:
        assert text in err, f"{text!r} not in:\n{err}"
    assert aws_calls == []


def test_the_fixture_itself_passes(fleet_file: Path, aws_calls: list[str], capsys):
    """The cases above fail because of their edit, not because the base fleet is refused."""
    code, out, err = run(capsys, "validate")
    assert code == 0 and err == "" and aws_calls == []
    assert "template parameters: the parameters of 5 target(s) fit " in out


def test_a_year_end_freeze_and_dev_in_the_tooling_account_are_fine():
    """What the shipped fleet file does (dev shares the tooling account; 12-20..01-05) stays allowed."""
    loaded = load_fleet(Path(__file__).resolve().parents[2] / "config" / "tenants.yaml")
    assert loaded.fleet.dev.account_id == loaded.fleet.tooling.account_id
    assert loaded.fleet.schedule.freezes[0].start == "12-20"


def test_validate_says_a_git_source_is_checked_at_build(fleet_file: Path, aws_calls: list[str], tmp_path: Path, capsys):
    fleet_file.write_text(BASE + f"application:\n  source:\n    git: {tmp_path / 'app.git'}\n")
    code, out, err = run(capsys, "validate")
    assert code == 0, err
    assert "template parameters: checked when the release is built (the git repository is not read before)" in out


# --- AWS that cannot be reached or refuses us: one line, exit code 3 ------------------------------------------


def refusing(code: str, message: str):
    def answer(self, operation_name, api_params):
        raise ClientError({"Error": {"Code": code, "Message": message}}, operation_name)

    return answer


@pytest.mark.parametrize(
    ("code", "expect", "exit_codes"),
    [
        (
            "ExpiredToken",
            "AWS refused the credentials (ExpiredToken: The security token included in the request is expired)",
            {3},
        ),
        ("InvalidClientTokenId", "Fix: they are expired or wrong: sign in again", {3}),
        ("AccessDeniedException", "AWS denied the call (AccessDeniedException", {3}),
        # the queue's own error says the same for its table (exit code 2, as for every error of ours)
        ("ResourceNotFoundException", "tenant-release bootstrap", {2, 3}),
    ],
)
def test_aws_refusal_is_one_line(code: str, expect: str, exit_codes: set[int], fleet_file: Path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(
        "botocore.client.BaseClient._make_api_call", refusing(code, "The security token included in the request is expired")
    )
    for argv in (("history", "v1.4.0"), ("status", "v1.4.0"), ("queue", "list")):
        exit_code, _, err = run(capsys, *argv)
        assert exit_code in exit_codes and "Traceback" not in err
        assert err.count("\n") == 1 and expect in err, err


def test_no_credentials_is_one_line(fleet_file: Path, monkeypatch, tmp_path: Path, capsys):
    """Real botocore, no credentials anywhere: it refuses before sending anything."""
    plain_shell(monkeypatch, tmp_path / "no-stack")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = run(capsys, "history", "v1.4.0")
    assert code == 3 and "Traceback" not in err
    assert err.startswith("tenant-release: no usable AWS credentials (Unable to locate credentials)")
    assert "`make run`" in err and err.count("\n") == 1


def test_unreachable_endpoint_is_one_line(fleet_file: Path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = run(capsys, "queue", "list")
    assert code == 3 and "Traceback" not in err and err.count("\n") == 1
    assert "cannot reach AWS (Could not connect to the endpoint URL" in err and "`make run`" in err


# --- after `make run`: the README's commands work from a plain shell ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tooling_tables_and_bucket(loaded, setup: dict[str, str]) -> None:
    """The tooling stack's tables (as tooling.yaml declares them) and bucket, made directly: the whole stack
    through moto's CloudFormation takes seconds, and these commands need only these."""
    from tenant_release.aws.bootstrap import TOOLING_TEMPLATE, tooling_parameters
    from tenant_release.packaging import load_template

    parameters = tooling_parameters(loaded, tooling_principal_arn="arn:aws:iam::123456789012:role/admin")
    dynamodb = boto3.client("dynamodb", **setup)
    for resource in load_template(TOOLING_TEMPLATE)["Resources"].values():
        if resource["Type"] == "AWS::DynamoDB::Table":
            spec = resource["Properties"]
            extra = {"GlobalSecondaryIndexes": spec["GlobalSecondaryIndexes"]} if "GlobalSecondaryIndexes" in spec else {}
            dynamodb.create_table(
                TableName=parameters[spec["TableName"]["Ref"]],
                KeySchema=spec["KeySchema"],
                AttributeDefinitions=spec["AttributeDefinitions"],
                BillingMode="PAY_PER_REQUEST",
                **extra,
            )
    boto3.client("s3", **setup).create_bucket(Bucket=loaded.fleet.tooling.artifact_bucket)


def test_readme_commands_use_the_local_emulation(fleet_file: Path, monkeypatch, tmp_path: Path, capsys):
    """`make run` leaves a state file; `status`, `history`, `approve` then reach its moto server as printed."""
    from moto.server import ThreadedMotoServer
    from tenant_release.aws import ledger
    from tenant_release.models import Outcome, TenantResult

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        loaded = load_fleet(fleet_file)
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        tooling_tables_and_bucket(loaded, setup)
        ledger.record(
            boto3.client("dynamodb", **setup),
            loaded.fleet.tooling.history_table,
            TenantResult(
                tenant="acme", account_id="111111111111", region="eu-central-1", release="v1.4.0", version="1.4.0",
                status=Outcome.SUCCEEDED, run_id="manual__1", started_at="2027-01-01T00:00:00Z",
                finished_at="2027-01-01T00:01:00Z",
            ),
        )  # fmt: skip
        # After `make run` the run's build has published its manifest: `approve` binds to that artifact.
        from tenant_release.build import build_manifest_key
        from tenant_release.models import Artifact
        from tenant_release.tags import parse_release_tag

        built = Artifact(
            version="1.4.0", sha256="ab" * 32, bucket=loaded.fleet.tooling.artifact_bucket,
            template_key="releases/1.4.0/template.json", objects=(), source="the bundled sample",
        )  # fmt: skip
        boto3.client("s3", **setup).put_object(
            Bucket=built.bucket,
            Key=build_manifest_key(loaded.fleet.tooling, parse_release_tag("v1.4.0")),
            Body=built.model_dump_json().encode(),
        )

        # What scripts/local_stack.py `up` writes into its state dir; the shell sets no AWS variable.
        stack_dir = tmp_path / "stack"
        stack_dir.mkdir()
        (stack_dir / "aws-endpoint.json").write_text(json.dumps({"endpoint_url": endpoint, "stop": "make stop"}))
        plain_shell(monkeypatch, stack_dir)

        code, out, err = run(capsys, "approve", "v1.4.0", "--by", "alice")
        assert code == 0, err
        assert "recorded: approved the release gate of v1.4.0 by alice" in out
        assert f"artifact sha256 {'ab' * 32}" in out
        assert f"talking to the local AWS emulation started by `make run` ({endpoint}" in err and "`make stop`" in err

        code, out, err = run(capsys, "status", "v1.4.0")
        assert code == 0, err
        assert "release gate: approved by alice" in out and "acme" in out and "SUCCEEDED" in out

        code, out, err = run(capsys, "history", "v1.4.0")
        assert code == 0 and "acme" in out and "SUCCEEDED" in out and "Traceback" not in err
        assert "AWS_ENDPOINT_URL" not in os.environ  # put back after each command
    finally:
        server.stop()

    # `make stop` stopped the emulation but the file was left behind: the line says so, no traceback.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = run(capsys, "status", "v1.4.0")
    assert code == 3 and "Traceback" not in err
    assert f"cannot reach the local AWS emulation at {endpoint}" in err and "start it with `make run`" in err


def test_plan_checks_a_local_git_sources_template_at_the_tag(aws_calls: list[str], tmp_path: Path, monkeypatch, capsys):
    """A repository on this machine is read at the tag's commit (`git show`), so plan refuses before the build."""
    from tests.orders_example import orders_fleet, orders_repository

    orders_repository(tmp_path)
    path = orders_fleet(tmp_path)
    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(path))
    code, out, err = run(capsys, "plan", "v1.4.0")
    assert code == 0, err
    assert "template parameters: the parameters of 4 target(s) fit template.yaml at v1.4.0" in out

    path.write_text(
        path.read_text().replace(
            "  groups:\n  - prod\n  - canary\n", "  groups: [prod, canary]\n  parameters: {BillingMode: PROVISIONED}\n"
        )
    )
    code, out, err = run(capsys, "plan", "v1.4.0")
    assert code == 2 and "Traceback" not in err
    assert "tenant 'acme': BillingMode='PROVISIONED' is not one of PAY_PER_REQUEST" in err
    assert aws_calls == []


def test_an_operators_own_aws_credentials_are_never_swapped_for_a_leftover_emulation(tmp_path: Path, monkeypatch):
    from tenant_release.cli_aws import local_emulation

    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()
    (stack_dir / "aws-endpoint.json").write_text(json.dumps({"endpoint_url": "http://127.0.0.1:1", "stop": "make stop"}))
    plain_shell(monkeypatch, stack_dir)
    with local_emulation() as endpoint:
        assert endpoint == "http://127.0.0.1:1"  # nothing of the operator's own: the emulation make run left
    aws = tmp_path / "home" / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("[default]\naws_access_key_id = AKIA...\n")
    with local_emulation() as endpoint:
        assert endpoint is None and "AWS_ENDPOINT_URL" not in os.environ  # ~/.aws/credentials: the operator's AWS
