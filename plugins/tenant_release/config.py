"""Reads and validates the fleet file; applies defaults to produce deploy targets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tenant_release import naming
from tenant_release.errors import FleetConfigError
from tenant_release.fleet_checks import fleet_problems
from tenant_release.models import Fleet, Target, TargetSpec

CONFIG_ENV_VAR = "TENANT_RELEASE_CONFIG"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = _PROJECT_ROOT / "config" / "tenants.yaml"


class _WrittenInt(int):
    """An unquoted YAML integer that remembers how it was written (`044444444444` is octal to YAML)."""

    yaml_text: str


class _UnquotedDigits(str):
    """Unquoted digits YAML 1.1 keeps as text (`012345678901`) but YAML 1.2 tools read as a number."""

    yaml_text: str


class _FleetLoader(yaml.SafeLoader):
    """SafeLoader that marks unquoted numbers, so an unquoted account id is reported as the user wrote it.

    It also notes every mapping key written twice: plain YAML keeps the last one silently (a second `tenants:`
    drops the whole first list).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first:
                self.duplicates.append(
                    f"key {key_node.value!r} appears twice in one mapping, at line {first[key_node.value]} and line {line}; "
                    "YAML keeps only the second. Fix: merge the two or remove one"
                )
            else:
                first[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: _FleetLoader, node: yaml.ScalarNode) -> int:
    value = _WrittenInt(loader.construct_yaml_int(node))
    value.yaml_text = node.value
    return value


def _construct_str(loader: _FleetLoader, node: yaml.ScalarNode) -> str:
    text = loader.construct_yaml_str(node)
    if node.style is None and text.isascii() and text.isdigit():
        marked = _UnquotedDigits(text)
        marked.yaml_text = text
        return marked
    return text


_FleetLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_FleetLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def config_path() -> Path:
    """The fleet file: `$TENANT_RELEASE_CONFIG`, else `config/tenants.yaml` of this project."""
    override = os.environ.get(CONFIG_ENV_VAR)
    return Path(override).expanduser().resolve() if override else DEFAULT_CONFIG_PATH


class LoadedFleet:
    """A validated fleet with the digest of the text it came from (a run checks it did not change)."""

    def __init__(self, *, fleet: Fleet, digest: str, path: Path | None) -> None:
        self.fleet = fleet
        self.digest = digest
        self.path = path
        self._specs = {spec.name: spec for spec in (fleet.dev, *fleet.tenants)}

    def target(self, name: str) -> Target:
        spec = self._specs.get(name)
        if spec is not None:
            return resolve_target(self.fleet, spec)
        raise FleetConfigError(
            f"tenant {name!r} is not in the fleet file {self.path or '(inline)'}; "
            f"tenants: {', '.join(t.name for t in self.fleet.tenants)}"
        )

    def tenants(self) -> list[Target]:
        return [resolve_target(self.fleet, spec) for spec in self.fleet.tenants]


def load_fleet(path: Path | str | None = None) -> LoadedFleet:
    source = Path(path) if path is not None else config_path()
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise FleetConfigError(
            f"fleet file {source} does not exist; create it (see config/tenants.yaml in the project) "
            f"or point {CONFIG_ENV_VAR} at it"
        ) from None
    except OSError as exc:
        raise FleetConfigError(f"fleet file {source} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FleetConfigError(
            f"fleet file {source} is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) "
            "cannot be read. Fix: save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    return parse_fleet(text, source=source)


def parse_fleet(text: str, *, source: Path | None = None) -> LoadedFleet:
    where = str(source) if source else "fleet file"
    loader = _FleetLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FleetConfigError(f"{where} is not valid YAML{position}: {problem}") from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise FleetConfigError(f"{where} is invalid:\n" + "\n".join(f"  - {line}" for line in loader.duplicates))
    if not isinstance(raw, dict):
        raise FleetConfigError(
            f"{where} must be a mapping with the keys tooling, dev, default_group and tenants; got {type(raw).__name__}"
        )
    try:
        fleet = Fleet.model_validate(raw)
    except ValidationError as exc:
        raise FleetConfigError(f"{where} is invalid:\n{describe_validation_errors(exc, raw)}") from None
    problems = fleet_problems(fleet)
    if problems:
        raise FleetConfigError(f"{where} is invalid:\n" + "\n".join(f"  - {line}" for line in problems))
    return LoadedFleet(fleet=fleet, digest=hashlib.sha256(text.encode()).hexdigest(), path=source)


def describe_validation_errors(exc: ValidationError, raw: dict[str, Any]) -> str:
    """One line per problem, naming the tenant rather than only its list index."""
    lines = []
    for error in exc.errors():
        location = list(error["loc"])
        label = ".".join(str(part) for part in location) or "(top level)"
        if len(location) >= 2 and location[0] == "tenants" and isinstance(location[1], int):
            tenants = raw.get("tenants") or []
            entry = tenants[location[1]] if location[1] < len(tenants) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            field = ".".join(str(part) for part in location[2:]) or "(entry)"
            label = f"tenant {name!r} (tenants[{location[1]}]) field {field}" if name else f"tenants[{location[1]}].{field}"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but missing"
        elif error["type"] == "extra_forbidden":
            message = "is not a known setting (check its spelling)"
        lines.append(f"  - {label}: {message}")
    return "\n".join(lines)


def resolve_target(fleet: Fleet, spec: TargetSpec) -> Target:
    """Apply the fleet defaults to one target; the result carries full ARNs and concrete names."""
    defaults = fleet.defaults
    region = spec.region or defaults.region
    values = {"name": spec.name, "account_id": spec.account_id, "region": region}
    return Target(
        name=spec.name,
        account_id=spec.account_id,
        region=region,
        groups=spec.groups,
        deploy_role_arn=naming.role_arn(
            account_id=spec.account_id, role_name=spec.deploy_role_name or defaults.deploy_role_name, region=region
        ),
        execution_role_arn=naming.role_arn(
            account_id=spec.account_id,
            role_name=spec.execution_role_name or defaults.execution_role_name,
            region=region,
        ),
        external_id=spec.external_id,
        artifact_bucket=naming.render_target_name(spec.artifact_bucket or defaults.artifact_bucket, **values),
        kms_key_alias=spec.kms_key_alias or defaults.kms_key_alias,
        stack_name=naming.render_target_name(spec.stack_name or defaults.stack_name, **values),
        function_name=naming.render_target_name(spec.function_name or defaults.function_name, **values),
        parameters={**defaults.parameters, **spec.parameters},
        approval=spec.approval or defaults.approval,
        maintenance_window=spec.maintenance_window,
        outside_window=spec.outside_window or defaults.outside_window,
        wave=spec.wave,
        hold=spec.hold,
        pin=spec.pin,
        alarms=tuple(
            naming.render_target_name(pattern, **values)
            for pattern in (spec.alarms if spec.alarms is not None else defaults.alarms)
        ),
        rollback_on_alarm=spec.rollback_on_alarm if spec.rollback_on_alarm is not None else defaults.rollback_on_alarm,
        rollback_monitoring_minutes=(
            spec.rollback_monitoring_minutes
            if spec.rollback_monitoring_minutes is not None
            else defaults.rollback_monitoring_minutes
        ),
    )
