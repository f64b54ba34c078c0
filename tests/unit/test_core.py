"""The pure core: fleet-file validation, release tags, target selection, derived names, error classification, report.

No Airflow and no AWS: everything here runs on text and models.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from botocore.exceptions import ClientError
from tenant_release import naming
from tenant_release.classify import RetryPolicy, is_no_changes, is_retriable
from tenant_release.config import CONFIG_ENV_VAR, config_path, load_fleet, parse_fleet
from tenant_release.errors import FleetConfigError, PermanentAwsError, ReleaseTagError, TargetSelectionError
from tenant_release.models import Outcome, TenantResult
from tenant_release.plan import plan_release
from tenant_release.report import render_table
from tenant_release.tags import TAG_JSON_SCHEMA_PATTERN, parse_release_tag

FLEET = """\
tooling:
  account_id: "123456789012"
  artifact_bucket: tr-artifacts
dev:
  name: dev
  account_id: "123456789012"
defaults:
  region: eu-west-1
  parameters:
    MemorySize: 128
    LogLevel: INFO
default_group: prod
gated_groups: [prod]
tenants:
  - name: acme
    account_id: "111111111111"
    region: eu-central-1
    groups: [prod, canary]
    external_id: acme-ext-0001
    parameters:
      MemorySize: 256
  - name: globex
    account_id: "222222222222"
    groups: [prod]
  - name: initech
    account_id: "033333333333"
    groups: [qa]
  - name: panda
    account_id: "444444444444"
    region: cn-north-1
    groups: [china]
  - name: fedco
    account_id: "555555555555"
    region: us-gov-west-1
    groups: [gov]
"""


def fleet_with(old: str, new: str) -> str:
    """The valid FLEET with one edit; the edit must apply exactly once, so a test never checks an unedited file."""
    assert FLEET.count(old) == 1, old
    return FLEET.replace(old, new)


def config_error(text: str) -> str:
    with pytest.raises(FleetConfigError) as caught:
        parse_fleet(text)
    return str(caught.value)


# --- fleet file ------------------------------------------------------------------------------------------------


def test_valid_fleet_applies_defaults_and_tenant_overrides_win() -> None:
    loaded = parse_fleet(FLEET)

    acme, globex = loaded.target("acme"), loaded.target("globex")
    assert acme.region == "eu-central-1"  # the tenant's own
    assert globex.region == "eu-west-1"  # the defaults'
    assert acme.parameters == {"MemorySize": "256", "LogLevel": "INFO"}  # defaults + tenant, tenant wins
    assert globex.parameters == {"MemorySize": "128", "LogLevel": "INFO"}
    assert acme.deploy_role_arn == "arn:aws:iam::111111111111:role/tenant-release-deploy"
    assert acme.execution_role_arn == "arn:aws:iam::111111111111:role/tenant-release-cfn-execution"
    assert acme.artifact_bucket == "tenant-release-111111111111-eu-central-1"
    assert acme.stack_name == "tenant-app-acme" and acme.function_name == "tenant-app-acme"
    assert acme.external_id == "acme-ext-0001" and globex.external_id is None
    assert loaded.target("initech").account_id == "033333333333"  # quoted: the leading zero survives
    assert [t.name for t in loaded.tenants()] == ["acme", "globex", "initech", "panda", "fedco"]


def test_role_arns_use_the_partition_of_the_tenant_region() -> None:
    loaded = parse_fleet(FLEET)

    assert loaded.target("panda").deploy_role_arn == "arn:aws-cn:iam::444444444444:role/tenant-release-deploy"
    assert loaded.target("fedco").execution_role_arn == ("arn:aws-us-gov:iam::555555555555:role/tenant-release-cfn-execution")


def test_minimal_fleet_is_valid() -> None:
    minimal = """
tooling: {account_id: "123456789012", artifact_bucket: b-artifacts}
dev: {name: dev, account_id: "123456789012"}
default_group: prod
tenants:
  - {name: acme, account_id: "111111111111", groups: [prod]}
"""
    target = parse_fleet(minimal).target("acme")
    assert (target.region, target.parameters) == ("us-east-1", {})


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("033333333333", "033333333333"),  # YAML 1.1 reads it as octal: 3665038759, another account
        ("0123", "0123"),  # octal 83
        ("012345678901", "012345678901"),  # text to PyYAML, the number 12345678901 to YAML 1.2 tools
    ],
)
def test_unquoted_account_id_names_the_tenant_the_field_and_says_to_quote_it(written: str, shown: str) -> None:
    message = config_error(fleet_with('account_id: "033333333333"', f"account_id: {written}"))

    assert "'initech'" in message and "account_id" in message
    assert f'Quote it: account_id: "{shown}"' in message  # what the user wrote, never a converted number


def test_account_id_of_eleven_digits() -> None:
    message = config_error(fleet_with('account_id: "222222222222"', 'account_id: "22222222222"'))
    assert "'globex'" in message and "exactly 12 digits" in message


def test_duplicate_tenant_names() -> None:
    message = config_error(fleet_with("  - name: globex\n", "  - name: acme\n"))
    assert "repeats the name 'acme'" in message and "must be unique" in message


def test_unknown_key_is_reported_as_a_misspelling() -> None:
    message = config_error(fleet_with("    region: eu-central-1\n", "    regoin: eu-central-1\n"))
    assert "'acme'" in message and "regoin" in message and "is not a known setting" in message


def test_missing_tenants() -> None:
    message = config_error(FLEET[: FLEET.index("tenants:")])
    assert "tenants: is required but missing" in message


def test_groups_written_as_a_string() -> None:
    message = config_error(fleet_with("groups: [qa]", "groups: qa"))
    assert "'initech'" in message and "groups must be a list, e.g. groups: [qa]" in message


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("    region: eu-central-1\n", "    region: eu-central\n", "'acme'"),
        ("  region: eu-west-1\n", "  region: euwest1\n", "defaults.region"),  # a default is checked like a tenant's
    ],
)
def test_bad_region(old: str, new: str, where: str) -> None:
    message = config_error(fleet_with(old, new))
    assert where in message and "is not an AWS region name such as eu-central-1" in message


def test_nested_parameter() -> None:
    message = config_error(fleet_with("      MemorySize: 256\n", "      MemorySize: {value: 256}\n"))
    assert "'acme'" in message and "parameter 'MemorySize' must be a scalar" in message


def test_default_group_naming_no_group_lists_the_groups_in_use() -> None:
    message = config_error(fleet_with("default_group: prod", "default_group: production"))
    assert "default_group 'production'" in message
    assert "groups in use: canary, china, gov, prod, qa" in message


def test_invalid_yaml_gives_the_line() -> None:
    broken = fleet_with("    groups: [prod]\n", "    groups: [prod\n")
    edited = broken.splitlines().index("    groups: [prod") + 1
    message = config_error(broken)
    assert "is not valid YAML at line" in message
    reported = int(re.search(r"at line (\d+)", message).group(1))
    assert edited <= reported <= edited + 2  # where the unclosed list is noticed, not line 1


@pytest.mark.parametrize("text", ["- acme\n- globex\n", "", "just text\n"])
def test_document_that_is_not_a_mapping(text: str) -> None:
    message = config_error(text)
    assert "must be a mapping with the keys tooling, dev, default_group and tenants" in message


def test_bad_maintenance_window() -> None:
    message = config_error(fleet_with("    groups: [prod]\n", '    groups: [prod]\n    maintenance_window: "Sunday 2am"\n'))
    assert "'globex'" in message and "maintenance_window" in message
    assert "e.g. 'Sun 02:00-05:00 Europe/Berlin'" in message


def test_stack_name_pattern_with_unknown_placeholder() -> None:
    message = config_error(fleet_with("  region: eu-west-1\n", '  region: eu-west-1\n  stack_name: "app-{nope}"\n'))
    assert "unknown placeholder 'nope'" in message
    assert "{name}, {account_id} and {region}" in message


def test_load_fleet_on_a_missing_file_names_the_env_var(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FleetConfigError) as caught:
        load_fleet(missing)
    assert str(missing) in str(caught.value) and CONFIG_ENV_VAR in str(caught.value)


def test_config_path_honours_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert config_path().name == "tenants.yaml" and config_path().parent.name == "config"

    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    assert config_path() == path.resolve()
    assert load_fleet().path == path.resolve()
    assert load_fleet().target("acme").account_id == "111111111111"


# --- release tags --------------------------------------------------------------------------------------------

GOOD_TAGS = {
    "v1.4.0": ("1.4.0", None),
    "v-1.4.0-qa": ("1.4.0", "qa"),
    "v-2.0.0-rc.1-prod": ("2.0.0-rc.1", "prod"),
    "v0.0.1": ("0.0.1", None),
    "v-10.20.30-eu-canary": ("10.20.30", "eu-canary"),
}
BAD_TAGS = [
    "1.4.0",  # no v
    "v1.4",  # two parts
    "v-1.4.0-",  # empty group
    "v-1.4.0-QA",  # uppercase group
    "v01.4.0",  # leading zero
    "v1.4.0-qa",  # a group needs the v- form
    "",
    "v-1.4.0",  # v- without a group
    "v1.4.0-rc1",  # rc needs a dot
    "v1.\u0664.0",  # a non-ASCII digit
    "release-1.4.0",
]


@pytest.mark.parametrize(("tag", "expected"), GOOD_TAGS.items())
def test_parse_good_tag(tag: str, expected: tuple[str, str | None]) -> None:
    release = parse_release_tag(tag)
    assert (release.version, release.group) == expected
    assert release.tag == tag


@pytest.mark.parametrize("tag", [*BAD_TAGS, None, 140])
def test_parse_bad_tag_names_the_convention(tag: object) -> None:
    with pytest.raises(ReleaseTagError) as caught:
        parse_release_tag(tag)  # type: ignore[arg-type]
    assert "v-<MAJOR>.<MINOR>.<PATCH>-<group>" in str(caught.value)


def test_trigger_form_pattern_accepts_and_rejects_exactly_what_the_parser_does() -> None:
    schema = {"type": "string", "pattern": TAG_JSON_SCHEMA_PATTERN}

    for tag in GOOD_TAGS:
        jsonschema.validate(tag, schema)
    for tag in [*BAD_TAGS, None, 140]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(tag, schema)


# --- plan ----------------------------------------------------------------------------------------------------


def test_plain_tag_targets_the_default_group_and_is_gated() -> None:
    plan = plan_release(parse_fleet(FLEET), parse_release_tag("v1.4.0"))
    assert (plan.group, plan.tenant_names, plan.gated) == ("prod", ["acme", "globex"], True)


def test_group_tag_targets_that_group() -> None:
    plan = plan_release(parse_fleet(FLEET), parse_release_tag("v-1.4.0-qa"))
    assert (plan.group, plan.tenant_names, plan.gated) == ("qa", ["initech"], False)


def test_a_tenant_in_a_gated_group_is_gated_whatever_tag_or_tenant_list_reaches_it() -> None:
    shipped = load_fleet(Path(__file__).resolve().parents[2] / "config" / "tenants.yaml")  # the fleet the README shows
    canary = plan_release(shipped, parse_release_tag("v-1.4.0-canary"))
    assert (canary.group, canary.tenant_names, canary.gated_tenants, canary.gated) == ("canary", ["acme"], ("acme",), True)
    early = plan_release(shipped, parse_release_tag("v-1.4.0-early"), only_tenants=["globex"])
    assert (early.gated_tenants, early.gated) == (("globex",), True)
    qa = plan_release(shipped, parse_release_tag("v-1.4.0-qa"))
    assert (qa.tenant_names, qa.gated_tenants) == (["initech", "stark"], ("stark",))
    assert not plan_release(shipped, parse_release_tag("v-1.4.0-qa"), only_tenants=["initech"]).gated
    assert not plan_release(shipped, parse_release_tag("v-1.4.0-regulated")).gated


def test_named_tenants_narrow_the_group() -> None:
    plan = plan_release(parse_fleet(FLEET), parse_release_tag("v1.4.0"), only_tenants=["globex"])
    assert plan.tenant_names == ["globex"]
    assert plan_release(parse_fleet(FLEET), parse_release_tag("v1.4.0"), only_tenants="globex, acme").tenant_names == [
        "acme",
        "globex",
    ]


@pytest.mark.parametrize(
    ("tag", "only", "expected"),
    [
        ("v-1.4.0-staging", None, "group 'staging', which no tenant belongs to; groups: canary, china, gov, prod, qa"),
        ("v1.4.0", ["acmee"], "unknown tenant(s) 'acmee'; tenants: acme, fedco, globex, initech, panda"),
        ("v1.4.0", ["initech"], "'initech' are not in group 'prod' targeted by 'v1.4.0'; that group holds: acme, globex"),
    ],
)
def test_selection_errors_say_what_exists(tag: str, only: list[str] | None, expected: str) -> None:
    with pytest.raises(TargetSelectionError) as caught:
        plan_release(parse_fleet(FLEET), parse_release_tag(tag), only_tenants=only)
    assert expected in str(caught.value)


# --- naming --------------------------------------------------------------------------------------------------

SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
CHANGE_SET_NAME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9]{0,127}$")


def test_session_names_are_valid_deterministic_and_distinct_when_long() -> None:
    prefix = "scheduled__2026-11-23T02:00:00+00:00__" + "x" * 30
    assert len(prefix) >= 60
    first = naming.session_name(release_tag="v-2.0.0-rc.1-prod", run_id=prefix + "-first")
    second = naming.session_name(release_tag="v-2.0.0-rc.1-prod", run_id=prefix + "-second")

    for name in (first, second):
        assert SESSION_NAME.match(name), name
    assert first != second
    assert first == naming.session_name(release_tag="v-2.0.0-rc.1-prod", run_id=prefix + "-first")
    short = naming.session_name(release_tag="v1.4.0", run_id="manual__2026-11-23T10:00:00+00:00")
    assert SESSION_NAME.match(short) and "v1.4.0" in short


def test_change_set_names_are_valid_and_deterministic() -> None:
    digest = naming.deploy_digest(build_sha256="b" * 64, parameters={"A": "1"})
    for version in ("1.4.0", "2.0.0-rc.1", "123456.7890.1234-rc.99"):
        name = naming.change_set_name(version=version, deploy_digest=digest)
        assert CHANGE_SET_NAME.match(name), name
        assert name == naming.change_set_name(version=version, deploy_digest=digest)
    assert naming.change_set_name(version="1.4.0", deploy_digest=digest) != naming.change_set_name(
        version="1.4.0", deploy_digest="0" + digest[1:]
    )


def test_deploy_digest_tracks_every_input_but_not_dict_order() -> None:
    base = {"build_sha256": "b" * 64, "parameters": {"A": "1", "B": "2"}}
    reference = naming.deploy_digest(**base)

    assert naming.deploy_digest(**{**base, "parameters": {"B": "2", "A": "1"}}) == reference
    changed = [
        {**base, "build_sha256": "c" * 64},
        {**base, "parameters": {"A": "1", "B": "3"}},
        {**base, "parameters": {"A": "1"}},
        {**base, "parameters": {"A": "1", "B": "2", "C": ""}},
    ]
    digests = {naming.deploy_digest(**inputs) for inputs in changed}
    assert reference not in digests and len(digests) == len(changed)


# --- classify ------------------------------------------------------------------------------------------------


def client_error(code: str, message: str = "boom") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "AnyOperation")


@pytest.mark.parametrize(
    "exc",
    [
        client_error("ThrottlingException"),
        client_error("Throttling", "Rate exceeded"),
        client_error("TooManyRequestsException"),
        client_error(
            "ValidationError",
            "Stack:arn:aws:cloudformation:eu-west-1:111111111111:stack/tenant-app-acme/1 is in UPDATE_IN_PROGRESS "
            "state and can not be updated.",
        ),
    ],
)
def test_retriable_errors(exc: ClientError) -> None:
    assert is_retriable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        client_error("AccessDenied", "User is not authorized to perform: sts:AssumeRole"),
        client_error("ValidationError", "Template format error: Unresolved resource dependencies [Foo]"),
        client_error("ValidationError", "Stack with id tenant-app-acme does not exist"),
        ValueError("a bug of ours"),
    ],
)
def test_permanent_errors(exc: Exception) -> None:
    assert not is_retriable(exc)


def test_no_changes_in_both_wordings() -> None:
    assert is_no_changes("No updates are to be performed.")
    assert is_no_changes("The submitted information didn't contain changes. Submit different information to create a change set.")
    assert not is_no_changes("Template format error")
    assert not is_no_changes(None) and not is_no_changes("")


class _TopOfRange(random.Random):
    """Full jitter always drawing the ceiling, to see the backoff curve itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_retry_backs_off_exponentially_up_to_the_cap_then_succeeds() -> None:
    sleeps: list[float] = []
    failures = iter([client_error("ThrottlingException")] * 5)

    def flaky() -> str:
        if (exc := next(failures, None)) is not None:
            raise exc
        return "done"

    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=5.0, sleep=sleeps.append, rng=_TopOfRange())
    assert policy.call("copy", flaky) == "done"
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_delays_are_jittered_within_the_backoff_ceiling() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=8, base_delay=1.0, max_delay=10.0, sleep=sleeps.append, rng=random.Random(7))

    def throttled() -> None:
        raise client_error("Throttling")

    with pytest.raises(ClientError):
        policy.call("copy", throttled)

    ceilings = [1, 2, 4, 8, 10, 10, 10]
    assert len(sleeps) == len(ceilings)  # gave up after `attempts` calls: one sleep between each
    assert all(0 <= pause <= ceiling for pause, ceiling in zip(sleeps, ceilings, strict=True))
    assert len(set(sleeps)) == len(sleeps)  # jittered, not a fixed schedule every account would share


def test_retry_gives_up_after_attempts_and_reraises_the_last_error() -> None:
    calls: list[int] = []

    def throttled() -> None:
        calls.append(1)
        raise client_error("ThrottlingException", f"attempt {len(calls)}")

    with pytest.raises(ClientError, match="attempt 3"):
        RetryPolicy(attempts=3, sleep=lambda _: None).call("copy", throttled)
    assert len(calls) == 3


@pytest.mark.parametrize("error", [client_error("AccessDenied"), PermanentAwsError("stack needs a person"), KeyError("bug")])
def test_permanent_error_is_not_retried(error: Exception) -> None:
    sleeps: list[float] = []
    calls: list[int] = []

    def denied() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        RetryPolicy(attempts=5, sleep=sleeps.append).call("assume", denied)
    assert (len(calls), sleeps) == (1, [])


# --- report --------------------------------------------------------------------------------------------------


def result(tenant: str, status: Outcome, **fields: object) -> TenantResult:
    return TenantResult(
        tenant=tenant,
        account_id=fields.pop("account_id", "111111111111"),
        region="eu-central-1",
        release="v1.5.0",
        version="1.5.0",
        status=status,
        run_id="manual__1",
        started_at="2026-11-23T10:00:00+00:00",
        finished_at="2026-11-23T10:01:00+00:00",
        **fields,
    )


def test_summary_table_shows_who_went_where_and_why_one_failed() -> None:
    table = render_table(
        [
            result("acme", Outcome.SUCCEEDED, version_before="1.4.0", version_after="1.5.0"),
            result(
                "globex",
                Outcome.FAILED,
                account_id="222222222222",
                version_before="1.4.0",
                reason="stack tenant-app-globex ended UPDATE_ROLLBACK_COMPLETE: Function failed",
            ),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["TENANT", "ACCOUNT", "REGION", "VERSION", "OUTCOME", "REASON"]
    acme = next(line for line in lines if line.startswith("acme"))
    globex = next(line for line in lines if line.startswith("globex"))
    assert "111111111111" in acme and "1.4.0 -> 1.5.0" in acme and "SUCCEEDED" in acme
    assert "222222222222" in globex and "FAILED" in globex
    assert "1.4.0 -> 1.4.0" in globex  # a failed update leaves the tenant where it was
    assert globex.endswith("stack tenant-app-globex ended UPDATE_ROLLBACK_COMPLETE: Function failed")


def test_core_modules_import_neither_airflow_nor_boto3() -> None:
    """The core must load in the CLI, the triggerer and tests without Airflow; checked in a fresh interpreter."""
    core = ["config", "models", "tags", "naming", "classify", "plan", "report", "errors"]
    code = (
        "import sys\n"
        + "".join(f"import tenant_release.{name}\n" for name in core)
        + "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'boto3'}))"
    )
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    done = subprocess.run([sys.executable, "-c", code], cwd=plugins, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
