"""Typed models of the fleet file (`config/tenants.yaml`) and of what flows between release steps."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ACCOUNT_ID_PATTERN = re.compile(r"^\d{12}$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
REGION_PATTERN = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
ROLE_NAME_PATTERN = re.compile(r"^[\w+=,.@-]{1,64}$")
EXTERNAL_ID_PATTERN = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
PIN_PATTERN = re.compile(r"^\d+(\.\d+){0,2}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _account_id(value: Any) -> str:
    written = getattr(value, "yaml_text", None)  # the fleet loader marks unquoted numbers with their text
    if written is not None or (isinstance(value, int) and not isinstance(value, bool)):
        shown = written or str(value)
        raise ValueError(
            f"account_id {shown} is not quoted, so YAML reads it as a number (dropping leading zeros, or as "
            f'octal) and it may name another account. Quote it: account_id: "{shown}"'
        )
    if not isinstance(value, str) or not ACCOUNT_ID_PATTERN.match(value):
        raise ValueError(f"account_id {value!r} must be a quoted string of exactly 12 digits")
    return value


def _region(value: str | None) -> str | None:
    from tenant_release.regions import known_regions, unknown_region

    if value is None or value in known_regions():
        return value
    if not REGION_PATTERN.match(value):
        raise ValueError(f"region {value!r} is not an AWS region name such as eu-central-1")
    problem = unknown_region(value)  # well-formed but made up or misspelt: every call to it would fail
    if problem:
        raise ValueError(problem)
    return value


class Outcome(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    UNCHANGED = "UNCHANGED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    # Written when a deploy starts: a run that ends with a tenant still IN_PROGRESS lost that tenant's worker.
    IN_PROGRESS = "IN_PROGRESS"
    # CloudFormation rolled the stack back because one of the tenant's health alarms fired while it settled
    # (`rollback_on_alarm`): counts as a failure of its wave.
    ROLLED_BACK = "ROLLED_BACK"


# What counts against a wave's `max_failures` (and fails the run), as the history records it.
FAILED_OUTCOMES = frozenset({Outcome.FAILED, Outcome.ROLLED_BACK})


class ApprovalPolicy(StrEnum):
    NONE = "none"
    REQUIRED = "required"


class OutsideWindowPolicy(StrEnum):
    WAIT = "wait"
    SKIP = "skip"


class ToolingAccount(_Strict):
    """The account that builds, stores and tracks releases."""

    account_id: str
    region: str = "us-east-1"
    artifact_bucket: str
    kms_key_alias: str = "alias/tenant-release-artifacts"
    history_table: str = "tenant-release-history"
    approvals_table: str = "tenant-release-approvals"
    queue_table: str = "tenant-release-queue"
    orchestrator_role_name: str = "tenant-release-orchestrator"
    release_prefix: str = "releases"
    attempts_table: str = "tenant-release-attempts"  # every written outcome, the history's audit trail
    leases_table: str = "tenant-release-leases"  # who is deploying each tenant now (see aws/leases.py)

    _check_account = field_validator("account_id", mode="before")(_account_id)
    _check_region = field_validator("region")(_region)


class TargetDefaults(_Strict):
    """Settings every deploy target inherits unless it sets its own."""

    region: str = "us-east-1"
    deploy_role_name: str = "tenant-release-deploy"
    execution_role_name: str = "tenant-release-cfn-execution"
    artifact_bucket: str = "tenant-release-{account_id}-{region}"
    kms_key_alias: str = "alias/tenant-release-tenant"
    stack_name: str = "tenant-app-{name}"
    function_name: str = "tenant-app-{name}"
    parameters: dict[str, str] = Field(default_factory=dict)
    approval: ApprovalPolicy = ApprovalPolicy.NONE
    outside_window: OutsideWindowPolicy = OutsideWindowPolicy.WAIT
    # CloudWatch alarms in the tenant's own account that say its application is unhealthy: names or name
    # patterns (`*` matches anything), `{name}`, `{account_id}` and `{region}` filled in per tenant.
    alarms: tuple[str, ...] = ()
    # Execute each change set with CloudFormation's rollback triggers on those alarms (RollbackConfiguration).
    rollback_on_alarm: bool = False
    rollback_monitoring_minutes: int = Field(default=10, ge=0, le=180)

    _check_region = field_validator("region")(_region)
    _check_alarms = field_validator("alarms", mode="before")(lambda value: _alarm_patterns(value))

    @field_validator("parameters", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return _parameters_as_strings(value)


ALARM_PATTERN = re.compile(r"^[^\x00-\x1f]{1,255}$")


def _alarm_patterns(value: Any) -> Any:
    if value is None:
        return ()
    if isinstance(value, str):
        raise ValueError(f'alarms must be a list of alarm names or patterns, e.g. alarms: ["{value}"]')
    for pattern in value:
        if not isinstance(pattern, str) or not ALARM_PATTERN.match(pattern) or not pattern.strip("*"):
            raise ValueError(
                f"alarm pattern {pattern!r} must be an alarm name (1-255 printable characters), `*` matching anything, "
                'e.g. "tenant-app-{name}-*"'
            )
    return tuple(value)


def _parameters_as_strings(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, (dict, list)):
            raise ValueError(f"parameter {key!r} must be a scalar (CloudFormation parameters are strings)")
        out[str(key)] = "true" if item is True else "false" if item is False else str(item)
    return out


class TargetSpec(_Strict):
    """A deploy target (a tenant, or dev) exactly as written in the fleet file; unset fields inherit."""

    name: str
    account_id: str
    region: str | None = None
    groups: tuple[str, ...] = ()
    parameters: dict[str, str] = Field(default_factory=dict)
    deploy_role_name: str | None = None
    execution_role_name: str | None = None
    external_id: str | None = None
    artifact_bucket: str | None = None
    kms_key_alias: str | None = None
    stack_name: str | None = None
    function_name: str | None = None
    approval: ApprovalPolicy | None = None
    maintenance_window: str | None = None
    outside_window: OutsideWindowPolicy | None = None
    wave: str | None = None  # the rollout wave this tenant is in, whatever the waves' groups say
    hold: str | None = None  # held back (the reason, e.g. the customer's own freeze): no release reaches it
    pin: str | None = None  # "1.3": only 1.3.x releases reach it
    alarms: tuple[str, ...] | None = None  # its health alarms (see TargetDefaults.alarms); unset: the defaults'
    rollback_on_alarm: bool | None = None
    rollback_monitoring_minutes: int | None = Field(default=None, ge=0, le=180)

    _check_account = field_validator("account_id", mode="before")(_account_id)
    _check_alarms = field_validator("alarms", mode="before")(lambda value: None if value is None else _alarm_patterns(value))

    @field_validator("hold")
    @classmethod
    def _check_hold(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError('hold must give the reason, e.g. hold: "customer freeze until 2027-01-10"')
        return value

    @field_validator("pin", mode="before")
    @classmethod
    def _check_pin(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, float):  # `pin: 1.10` is the number 1.1 to YAML
            raise ValueError(
                f"pin {value!r} was read as a number, which drops trailing zeros (1.10 becomes 1.1); quote it as written, "
                'e.g. pin: "1.10"'
            )
        text = getattr(value, "yaml_text", None) or (str(value) if isinstance(value, int) else value)
        if not isinstance(text, str) or not PIN_PATTERN.match(text):
            raise ValueError(f'pin {value!r} must be a version prefix such as "1.3" (only 1.3.x releases reach it); quote it')
        return text

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                f"name {value!r} must be 2-40 lowercase letters, digits or '-', starting with a letter "
                "(it becomes part of stack, function and session names)"
            )
        return value

    @field_validator("groups", mode="before")
    @classmethod
    def _check_groups(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f"groups must be a list, e.g. groups: [{value}]")
        for group in value or ():
            if not isinstance(group, str) or not NAME_PATTERN.match(group):
                raise ValueError(f"group {group!r} must be lowercase letters, digits or '-'")
        return tuple(value or ())

    @field_validator("parameters", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return _parameters_as_strings(value)

    _check_region = field_validator("region")(_region)

    @field_validator("deploy_role_name", "execution_role_name")
    @classmethod
    def _check_role(cls, value: str | None) -> str | None:
        if value is not None and not ROLE_NAME_PATTERN.match(value):
            raise ValueError(f"role name {value!r} is not a valid IAM role name")
        return value

    @field_validator("external_id")
    @classmethod
    def _check_external_id(cls, value: str | None) -> str | None:
        if value is not None and not EXTERNAL_ID_PATTERN.match(value):
            raise ValueError("external_id must be 2-1224 characters of letters, digits and +=,.@:/-")
        return value


class Freeze(_Strict):
    """A period in which no release starts, e.g. the year-end freeze. Dates are MM-DD, inclusive."""

    start: str
    end: str
    reason: str = "change freeze"

    @field_validator("start", "end")
    @classmethod
    def _check_month_day(cls, value: str) -> str:
        if not re.match(r"^(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$", str(value)):
            raise ValueError(f"freeze date {value!r} must be MM-DD, e.g. 12-20")
        return str(value)


class ReleaseSchedule(_Strict):
    """When scheduled releases may start: weekly windows, minus freezes."""

    windows: tuple[str, ...] = ()
    freezes: tuple[Freeze, ...] = ()


class Capability(StrEnum):
    IAM = "CAPABILITY_IAM"
    NAMED_IAM = "CAPABILITY_NAMED_IAM"
    AUTO_EXPAND = "CAPABILITY_AUTO_EXPAND"


class VerifyMode(StrEnum):
    # The function the target names (`function_name`) reports the release in its RELEASE_VERSION variable.
    FUNCTION_VERSION = "function_version"
    # The stack settled with the release's version tag: what any CloudFormation application can promise.
    STACK = "stack"


class ApplicationSource(_Strict):
    """Where the application's source is: a folder, or a git repository at the ref a release tag maps to."""

    path: str | None = None  # relative to the fleet file's folder
    git: str | None = None  # anything `git fetch` accepts
    ref: str = "{tag}"  # the git ref a release tag maps to: {tag} (v1.4.0) or {version} (1.4.0)
    archive: str | None = None  # a zip CI published: s3://bucket/key naming {version} or {tag}

    @model_validator(mode="after")
    def _one_kind(self) -> ApplicationSource:
        if [self.path, self.git, self.archive].count(None) != 2:
            raise ValueError("give exactly one of path (a folder), git (a repository address) or archive (a published zip)")
        if self.git is None and self.ref != "{tag}":
            raise ValueError("ref applies to a git source only")
        from tenant_release.source import GitSource, PublishedArchive, SourceError

        try:  # the same checks the build makes, so that `tenant-release validate` reports them
            if self.git is not None:
                GitSource(url=self.git, ref=self.ref)
            if self.archive is not None:
                PublishedArchive(uri=self.archive)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        return self


class ReleaseParameterNames(_Strict):
    """Under which names the application's template takes what the release sets; null: it does not take it."""

    version: str | None = "ReleaseVersion"
    tenant: str | None = "TenantName"
    bucket: str | None = "CodeS3Bucket"  # the tenant's artifact bucket, which holds the packaged code
    name: str | None = "ApplicationName"  # the target's function_name, the application's own name prefix
    permissions_boundary: str | None = "PermissionsBoundaryArn"

    def names(self) -> dict[str, str]:
        return {role: name for role, name in self.model_dump().items() if name}


class HealthCheck(_Strict):
    """A check after a tenant's stack settled, on what a stack output names. A failed check fails that tenant.

    One of: `invoke` (the output names a Lambda function: invoke it), `http` (the output is a URL: GET it), or
    `equals` (the output's value itself). `contains` checks the invocation's or the response's body.
    `{version}` and `{tenant}` in `equals` and `contains` are filled in.
    """

    output: str
    invoke: bool = False
    payload: dict[str, Any] = Field(default_factory=dict)
    http: bool = False
    insecure_http: bool = False  # allow a plain http:// URL (https only by default)
    status: int = Field(default=200, ge=100, le=599)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    equals: str | None = None
    contains: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        if [self.invoke, self.http, self.equals is not None].count(True) != 1:
            raise ValueError(f"health check of output {self.output}: give exactly one of invoke, http or equals")
        if self.contains is not None and self.equals is not None:
            raise ValueError(f"health check of output {self.output}: contains applies to invoke and http only")
        return self

    def describe(self) -> str:
        if self.invoke:
            return f"invoke the function in output {self.output}"
        if self.http:
            return f"GET the URL in output {self.output} (expect {self.status})"
        return f"output {self.output} equals {self.equals!r}"


class ExecutionRolePolicy(_Strict):
    """What the tenant's CloudFormation execution role may manage beyond the sample's resources (see execution_policy)."""

    resource_types: tuple[str, ...] = ()
    statements: tuple[dict[str, Any], ...] = ()

    @field_validator("resource_types")
    @classmethod
    def _known_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from tenant_release.execution_policy import CATALOG

        unknown = [kind for kind in value if kind not in CATALOG]
        if unknown:
            raise ValueError(
                f"resource type(s) {', '.join(unknown)} are not in the catalog ({', '.join(sorted(CATALOG))}); "
                "grant what they need with statements"
            )
        return value

    @field_validator("statements")
    @classmethod
    def _bounded_statements(cls, value: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        from tenant_release.execution_policy import check_statements

        check_statements(value)
        return value

    @property
    def is_empty(self) -> bool:
        return not self.resource_types and not self.statements


STACK_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,62}$")


class StackSpec(_Strict):
    """One of several stacks of the application, deployed after the ones declared before it."""

    name: str  # its logical name in the tenant's stack (letters and digits)
    template: str  # relative to the source folder
    inputs: dict[str, str] = Field(default_factory=dict)  # parameter -> "<earlier stack>.<Output>"

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not STACK_NAME_PATTERN.match(value):
            raise ValueError(f"stack name {value!r} must be letters and digits, starting with a letter")
        return value

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"template {value!r} must be a path inside the source folder")
        return value


class Application(_Strict):
    """The application a release ships. Unset: the bundled sample Lambda of include/templates/app."""

    source: ApplicationSource | None = None
    build: str | None = None  # a shell command run in the source folder before packaging
    build_timeout_minutes: float = Field(default=30.0, gt=0, le=24 * 60)
    build_env: tuple[str, ...] = ()  # worker environment variables the build may see (never AWS credentials)
    template: str = "template.yaml"  # relative to the source folder
    stacks: tuple[StackSpec, ...] = ()  # several stacks in order, instead of one template
    # Template parameters that take the key of a packaged folder or file, for templates that name their code
    # by parameters (Code: {S3Bucket: !Ref Bucket, S3Key: !Ref ApiCodeKey}) instead of a local path.
    key_parameters: dict[str, str] = Field(default_factory=dict)  # parameter -> path in the source
    parameters: ReleaseParameterNames = ReleaseParameterNames()
    capabilities: tuple[Capability, ...] = (Capability.IAM, Capability.NAMED_IAM)
    verify: VerifyMode | None = None  # unset: function_version for the sample, stack for your own
    health: tuple[HealthCheck, ...] = ()  # after the verify, in order; the first that fails fails the tenant
    execution_role: ExecutionRolePolicy = ExecutionRolePolicy()

    @property
    def is_sample(self) -> bool:
        return self.source is None

    @property
    def verify_mode(self) -> VerifyMode:
        if self.verify is not None:
            return self.verify
        return VerifyMode.FUNCTION_VERSION if self.is_sample else VerifyMode.STACK

    @model_validator(mode="after")
    def _check(self) -> Application:
        if self.source is None and (self.build is not None or self.template != "template.yaml"):
            raise ValueError("build and template describe your own application: give its source too")
        from tenant_release.source import NEVER_PASSED

        refused = [name for name in self.build_env if name in NEVER_PASSED or name.startswith("AIRFLOW")]
        if refused:
            raise ValueError(f"build_env may not pass {', '.join(refused)}: the build never gets the orchestrator's credentials")
        if self.parameters.bucket is None:
            raise ValueError("parameters.bucket may not be null: the packaged code is found through it")
        template = PurePosixPath(self.template)
        if template.is_absolute() or ".." in template.parts:
            raise ValueError(f"template {self.template!r} must be a path inside the source folder")
        for parameter, path in self.key_parameters.items():
            parts = PurePosixPath(path)
            if parts.is_absolute() or ".." in parts.parts:
                raise ValueError(f"key_parameters.{parameter} {path!r} must be a path inside the source folder")
        if self.stacks and self.template != "template.yaml":
            raise ValueError("give either template (one stack) or stacks (several), not both")
        earlier: set[str] = set()
        for stack in self.stacks:
            if stack.name in earlier:
                raise ValueError(f"stacks: {stack.name!r} is declared twice")
            for parameter, source in stack.inputs.items():
                origin, _, output = source.partition(".")
                if origin not in earlier or not output:
                    raise ValueError(
                        f"stacks: {stack.name}.inputs.{parameter} is {source!r}: it must name an output of a stack declared "
                        f"before it, as <stack>.<Output> (earlier stacks: {', '.join(sorted(earlier)) or 'none'})"
                    )
            earlier.add(stack.name)
        return self


MAX_WAVES = 6  # wave task groups in the release DAG (its shape is fixed at parse time; a fleet declares up to this)
_PERCENT = re.compile(r"^(\d{1,3}(\.\d+)?)\s*%$")


def _max_failures(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError('max_failures must be a count (0, 2) or a percentage of the wave ("10%")')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"max_failures {value} must be 0 or more")
        return int(value)
    if isinstance(value, str):
        match = _PERCENT.match(value.strip())
        if match and float(match.group(1)) <= 100:
            return value.strip().replace(" ", "")
        if value.strip().isdigit():
            return int(value.strip())
    raise ValueError(f'max_failures {value!r} must be a count (0, 2) or a percentage of the wave ("10%", at most 100%)')


class WaveSpec(_Strict):
    """One wave of a rollout as the fleet file writes it."""

    name: str
    groups: tuple[str, ...] = ()  # the tenants of these groups (none, and no tenants: every tenant left)
    tenants: tuple[str, ...] = ()  # and these tenants by name
    max_failures: int | str = 0  # failed tenants the wave tolerates: a count, or "10%" of the wave (rounded down)
    bake_minutes: float = Field(default=0.0, ge=0, le=7 * 24 * 60)  # watch the health alarms before the next wave
    approval: bool = False  # a person approves before this wave starts
    max_parallel: int | None = Field(default=None, ge=1, le=10_000)  # tenants deploying at once (unset: the rollout's)
    max_parallel_per_region: int | None = Field(default=None, ge=1, le=10_000)

    _check_max_failures = field_validator("max_failures", mode="before")(lambda value: _max_failures(value))

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"wave name {value!r} must be 2-40 lowercase letters, digits or '-', starting with a letter")
        return value

    @property
    def selects_rest(self) -> bool:
        return not self.groups and not self.tenants

    def tolerance(self, size: int) -> int:
        """How many of a wave of `size` tenants may fail before the rollout stops."""
        if isinstance(self.max_failures, int):
            return self.max_failures
        return int(float(self.max_failures.rstrip("%")) * size // 100)


class RolloutSpec(_Strict):
    """How a release moves through the fleet: waves in order, each gated on the previous one's health."""

    waves: tuple[WaveSpec, ...]
    max_parallel: int | None = Field(default=None, ge=1, le=10_000)  # every wave's, unless it sets its own
    max_parallel_per_region: int | None = Field(default=None, ge=1, le=10_000)

    @field_validator("waves")
    @classmethod
    def _check_waves(cls, value: tuple[WaveSpec, ...]) -> tuple[WaveSpec, ...]:
        if not value:
            raise ValueError("rollout.waves must list at least one wave, e.g. - {name: general}")
        if len(value) > MAX_WAVES:
            raise ValueError(f"rollout.waves lists {len(value)} waves; at most {MAX_WAVES}: merge some")
        names = [wave.name for wave in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"rollout.waves names {', '.join(twice)} more than once; wave names must be unique")
        return value


class Fleet(_Strict):
    """The whole fleet file, validated; tenants still hold their raw (uninherited) settings."""

    tooling: ToolingAccount
    dev: TargetSpec
    defaults: TargetDefaults = TargetDefaults()
    default_group: str
    gated_groups: tuple[str, ...] = ()
    approval_timeout_hours: float = Field(default=72.0, gt=0, le=24 * 30)
    schedule: ReleaseSchedule = ReleaseSchedule()
    application: Application = Application()
    rollout: RolloutSpec | None = None  # unset: one wave of every targeted tenant, as before waves
    tenants: tuple[TargetSpec, ...]

    @model_validator(mode="after")
    def _check_fleet(self) -> Fleet:
        seen: dict[str, int] = {}
        for index, tenant in enumerate(self.tenants):
            if tenant.name in seen:
                raise ValueError(
                    f"tenants[{index}] repeats the name {tenant.name!r} (first at tenants[{seen[tenant.name]}]); "
                    "tenant names must be unique"
                )
            if tenant.name == self.dev.name:
                raise ValueError(f"tenant name {tenant.name!r} is taken by the dev target")
            seen[tenant.name] = index
        if self.default_group not in self.groups():
            raise ValueError(
                f"default_group {self.default_group!r} names no tenant's group; groups in use: "
                f"{', '.join(sorted(self.groups())) or 'none'}"
            )
        return self

    def groups(self) -> set[str]:
        return {group for tenant in self.tenants for group in tenant.groups}


class Target(_Strict):
    """A deploy target with defaults applied: everything one tenant's deploy needs, and no secret."""

    name: str
    account_id: str
    region: str
    groups: tuple[str, ...]
    deploy_role_arn: str
    execution_role_arn: str
    external_id: str | None
    artifact_bucket: str
    kms_key_alias: str
    stack_name: str
    function_name: str
    parameters: dict[str, str]
    approval: ApprovalPolicy
    maintenance_window: str | None
    outside_window: OutsideWindowPolicy
    wave: str | None = None
    hold: str | None = None
    pin: str | None = None
    alarms: tuple[str, ...] = ()  # rendered for this tenant
    rollback_on_alarm: bool = False
    rollback_monitoring_minutes: int = 10


class Release(_Strict):
    """A parsed release tag."""

    tag: str
    version: str
    group: str | None  # None: the fleet's default group


class ArtifactObject(_Strict):
    """One packaged object of a build (a code zip, a layer, a nested template), named by its SHA-256."""

    key: str
    sha256: str


class Artifact(_Strict):
    """The built release in the tooling bucket: the packaged template and the objects it refers to.

    `sha256` is the packaged template's. The template names every object by its own hash, so this one hash
    identifies the whole build: the same source gives the same hash.
    """

    version: str
    sha256: str
    bucket: str
    template_key: str
    objects: tuple[ArtifactObject, ...]
    source: str  # where it was built from, e.g. "https://git.example.com/app.git refs/tags/v1.4.0"
    source_commit: str | None = None  # the commit, for a git source (a published archive's SHA-256)
    recipe: str = ""  # digest of the application settings that shape the build (see build.build_recipe)
    key_parameters: dict[str, str] = Field(default_factory=dict)  # template parameter -> key of a packaged object
    template_sha256: str = ""  # the packaged template's own hash, when `sha256` also covers key_parameters
    reused: bool = False


class TenantResult(BaseModel):
    """What happened to one tenant in one release: written to history and shown in the summary."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    account_id: str
    region: str
    release: str
    version: str
    status: Outcome
    run_id: str
    started_at: str
    finished_at: str
    version_before: str | None = None
    version_after: str | None = None
    digest_before: str | None = None
    artifact_uri: str | None = None
    sha256: str | None = None
    source_commit: str | None = None  # the commit (or published archive's SHA-256) the build came from
    stack_status: str | None = None
    reason: str | None = None
    gated: bool = False
    approved_by: str | None = None
    note: str | None = None
    # Who wrote this outcome, and its place in time (see `aws.ledger.write_order`): newer never yields to older.
    run_started_at: str | None = None  # when the run was planned
    attempt_started_at: str | None = None  # when the writing attempt (deploy try, fleet changes, summary) started
    try_number: int | None = None  # the writing task instance's try
    written_by: str | None = None  # "deploy", "fleet_changes" or "summary"
    identity: str | None = None  # the orchestrator session the run acts as, and who triggered the run if known
    approval: ApprovalDecision | None = None  # a tenant's own answer given in Airflow: a retry of the run reuses it
    rollback_from: str | None = None  # the newer version this deploy replaced, when the run was allowed to roll back

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- what crosses a task or trigger boundary ------------------------------------------------------------------


class ApprovalDecision(_Strict):
    """One answer to an approval request, wherever it came from (UI/REST, a DynamoDB item, an S3 object, a timeout)."""

    approved: bool
    decided_by: str
    source: str  # "ui", "dynamodb", "s3" or "timeout"
    note: str = ""
    sha256: str | None = None  # the artifact approved (an approval of another artifact does not pass)
    identity: str | None = None  # who, as Airflow (UI user id) or AWS (caller ARN) authenticated them
    # The run's release gate answered (for every tenant of the run), not the tenant's own approval: never reused as one.
    release_gate: bool = False

    def describe(self) -> str:
        if self.source == "timeout":
            return f"approval timed out ({self.note or 'no answer'})"
        verb = "approved" if self.approved else "rejected"
        return f"{verb} by {self.decided_by} via {self.source}" + (f": {self.note}" if self.note else "")


class PlannedTarget(_Strict):
    """One deploy target as the plan fixed it: its name, and a digest of its settings (checked again at deploy)."""

    tenant: str
    target_digest: str
    # Needs its own approval or a maintenance window: those waits start on a worker (a HITL request).
    has_own_gate: bool = False
    region: str = ""  # for per-region caps of its wave


class PlannedWave(_Strict):
    """One wave of a run as the plan fixed it: its tenants and its rules."""

    index: int  # 1-based: the DAG's task group wave_<index>
    name: str
    tenants: tuple[str, ...]
    max_failures: int | str = 0
    bake_minutes: float = 0.0
    approval: bool = False
    max_parallel: int | None = None
    max_parallel_per_region: int | None = None

    def tolerance(self, size: int | None = None) -> int:
        return WaveSpec(name=self.name, max_failures=self.max_failures).tolerance(len(self.tenants) if size is None else size)

    def describe_tolerance(self) -> str:
        if isinstance(self.max_failures, int):
            return f"tolerance {self.max_failures}"
        return f"tolerance {self.max_failures} = {self.tolerance()}"


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"


class RolloutControl(_Strict):
    """An operator's word on the rollout of one release tag: pause it, resume it, abort it (see aws.controls).

    The latest abort is kept apart from the word in force (`aborted_at/_by/_reason`): a pause or resume after it
    steers the runs planned after the abort (a redeploy), while the abort goes on stopping the runs planned before it.
    """

    release: str
    state: RolloutState
    by: str  # who set it, as AWS (caller ARN) or Airflow (user) authenticated them
    reason: str = ""
    at: str  # when (ISO, UTC, microseconds)
    aborted_at: str | None = None  # the latest abort, even after a later pause or resume: it stops runs planned before it
    aborted_by: str | None = None
    aborted_reason: str = ""

    @model_validator(mode="before")
    @classmethod
    def _an_abort_is_its_own_abort(cls, data: Any) -> Any:
        # The abort itself (and an item written before aborts were kept apart) carries its time only as `at`.
        if isinstance(data, dict) and data.get("state") == RolloutState.ABORTED and not data.get("aborted_at"):
            data = {**data, "aborted_at": data.get("at"), "aborted_by": data.get("by"), "aborted_reason": data.get("reason", "")}
        return data

    def aborts(self, planned_at: str | None) -> bool:
        """An abort stops the runs planned before it, not a later run of the same tag (a redeploy), whatever came after."""
        return self.aborted_at is not None and (planned_at is None or planned_at < self.aborted_at)

    def pauses(self) -> bool:
        return self.state == RolloutState.PAUSED

    def describe_abort(self) -> str:
        """The abort, for what it stops: "aborted by WHO: WHY at WHEN" ("" when there was none)."""
        if self.aborted_at is None:
            return ""
        why = f": {self.aborted_reason}" if self.aborted_reason else ""
        return f"aborted by {self.aborted_by}{why} at {self.aborted_at}"

    def describe(self) -> str:
        """The word in force; an earlier abort is named too, so a reader of a paused or resumed rollout sees it."""
        if self.state == RolloutState.ABORTED:
            return self.describe_abort()
        verb = {RolloutState.PAUSED: "paused", RolloutState.RUNNING: "resumed"}[self.state]
        text = f"{verb} by {self.by}" + (f": {self.reason}" if self.reason else "") + f" at {self.at}"
        if self.aborted_at is not None:
            text += f" (after the abort, still in force for the runs planned before it: {self.describe_abort()})"
        return text


class HeldTenant(_Strict):
    """A selected tenant the release does not reach (held back, or pinned to another line): recorded SKIPPED."""

    tenant: str
    reason: str


class RolloutCaps(_Strict):
    """What a tenant's deploy trigger needs of its wave: how many may deploy at once, overall and per region."""

    wave: str
    max_parallel: int | None = None
    max_parallel_per_region: int | None = None


class WaveVerdict(_Strict):
    """How a wave ended: who failed (and why), its tolerance, and whether the rollout goes on."""

    wave: str
    index: int
    size: int
    failed: dict[str, str] = Field(default_factory=dict)  # tenant -> reason (a failed deploy, an alarm during bake)
    tolerance: int = 0
    baked_minutes: float = 0.0
    passed: bool = True
    stopped: str | None = None  # why the rollout stops here, e.g. "wave canary: 1 of 1 failed, tolerance 0"


class RunPlan(_Strict):
    """The plan XCom: what one run releases, and to whom. Names only, never settings or secrets."""

    release_tag: str
    version: str
    group: str
    gated: bool
    config_path: str
    tenants: tuple[str, ...]
    targets: tuple[PlannedTarget, ...] = ()
    dev: PlannedTarget | None = None
    freeze_override: str | None = None
    rebuild: bool = False  # build again even if the tag moved since this version was built
    planned_at: str | None = None  # orders this run's history writes against other runs' (see aws.ledger)
    triggered_by: str | None = None  # the Airflow user who triggered the run, if known
    gated_tenants: tuple[str, ...] = ()  # the selected tenants in a gated group: they make the run gated
    allow_rollback: str = ""  # the reason to deploy over a newer version; empty: a tenant holding a newer one fails
    tooling: ToolingAccount | None = None  # where the history is (names only): the summary needs it if the file breaks
    waves: tuple[PlannedWave, ...] = ()  # empty (a plan from before waves): one wave of every tenant
    held: tuple[HeldTenant, ...] = ()  # selected, but held back or pinned: recorded SKIPPED, never deployed
    override_hold: str = ""  # the reason a `tenants` filter named held tenants and deploys them anyway
    redeploy_of: str | None = None  # the earlier run whose failed and skipped tenants this run redeploys


class QueuedPlan(RunPlan):
    """The queue DAG's plan: a run plan that ships later, at a release window."""

    requested_tenants: tuple[str, ...] = ()  # empty: the whole group as the fleet file lists it when it ships
    next_window: str
    windows: tuple[str, ...]


class FleetChanges(_Strict):
    """Which planned tenants already hold the release (recorded UNCHANGED) and which get a task instance to deploy."""

    deploy: tuple[PlannedTarget, ...]
    unchanged: tuple[str, ...] = ()

    def deploy_kwargs(
        self,
        *,
        release_tag: str,
        config_path: str,
        artifact: dict[str, Any],
        targets_id: str,
        allow_rollback: str = "",
        gated: bool = False,
        rollout: RolloutCaps | None = None,
    ) -> list[dict[str, Any]]:
        """The mapped deploy task's `expand_kwargs`: one entry per tenant that needs a change.

        Each entry carries everything its task needs, so a task reads only its own entry and no other XCom: at a
        thousand tenants, pulling the plan in every task would move the whole fleet's plan a thousand times.
        `targets_id` is new for each list, so that a task instance can tell an entry of this list from an older one.
        `gated`: the run is gated, so each tenant deploys only an artifact the run's release gate approved.
        """
        shared = {"release_tag": release_tag, "config_path": config_path, "artifact": artifact, "targets_id": targets_id}
        if allow_rollback:  # only when set: the entries of an ordinary run stay as they were
            shared["allow_rollback"] = allow_rollback
        if gated:
            shared["gated"] = True
        if rollout is not None and (rollout.max_parallel or rollout.max_parallel_per_region):
            shared["rollout"] = rollout.model_dump(mode="json")  # the wave's caps, kept by each tenant's deploy trigger
        return [
            {"tenant": t.tenant, "target_digest": t.target_digest, "has_own_gate": t.has_own_gate, **shared} for t in self.deploy
        ]


class DeployProgress(BaseModel):
    """A target's deploy so far; travels through deferrals (JSON in the trigger row), so it holds no secret."""

    model_config = ConfigDict(extra="forbid")

    started_at: str
    version_before: str | None = None
    digest_before: str | None = None
    artifact_uri: str | None = None
    kms_key_arn: str | None = None
    unchanged: bool = False
    change_set: str | None = None
    change_set_type: str | None = None
    change_set_pending: bool = False  # created, not yet ready to execute
    notes: list[str] = Field(default_factory=list)
    approval: ApprovalDecision | None = None
    approved_by: str | None = None
    window_waits: int = 0
    # This try's start, to the microsecond (`started_at` is the first try's): orders its history writes.
    attempt_started_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))
    rollback_from: str | None = None  # the newer version the stack held when this deploy began (an allowed rollback)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
