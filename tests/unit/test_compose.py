"""Static checks of the local Docker Compose stack (``docker-compose.yaml`` and ``Dockerfile``).

No Docker engine is needed: the compose file is validated against the Compose
Specification JSON schema (``<repo>/../shared/schemas/compose-spec.json``; the
tests that need it are skipped when it is absent), and the cross-references the
schema cannot see are checked by hand: bind-mounted host paths, ``${VAR}``
interpolations, service dependencies, the build context, the executor wiring
and the AWS endpoint.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from jsonschema.protocols import Validator

REPO_ROOT: Path = Path(__file__).resolve().parents[2]
COMPOSE_FILE: Path = REPO_ROOT / "docker-compose.yaml"
SCHEMA_FILE: Path = REPO_ROOT.parent / "shared" / "schemas" / "compose-spec.json"
# Committed env files whose variables count as "set" for ${VAR} interpolation.
COMMITTED_ENV_FILES: tuple[Path, ...] = (REPO_ROOT / ".env.example",)

AIRFLOW_SERVICES: tuple[str, ...] = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
REQUIRED_SERVICES: tuple[str, ...] = (
    "postgres",
    "redis",
    "moto",
    *AIRFLOW_SERVICES,
    "tenant-release-bootstrap",
)
MOTO_SERVICE = "moto"
MOTO_IMAGE = "motoserver/moto:5.2.5"
MOTO_PORT = 5000

# `${NAME...}` or `$NAME` after `$$` escapes are removed; group "op" is the
# operator that follows the name inside braces (":-", "-", ":?", "?", ":+", "+").
_INTERPOLATION = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
# Innermost `${NAME:-default}` / `${NAME-default}` / `${NAME}` (no nested `${`).
_DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^${}]*))?\}")


# --------------------------------------------------------------------------- helpers


def _load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict), "docker-compose.yaml must be a mapping"
    return data


def _iter_strings(node: Any) -> Iterator[str]:
    """Yield every string value (not key) of a parsed YAML tree, as Compose interpolates values only."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _iter_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _iter_strings(item)


def _interpolate_defaults(value: str) -> str:
    """Resolve ``${VAR:-default}`` to its default (unset variables become empty) and ``$$`` to ``$``."""
    escaped = value.replace("$$", "\x00")
    previous = None
    while previous != escaped:
        previous = escaped
        escaped = _DEFAULTED.sub(lambda match: match.group(2) or "", escaped)
    return escaped.replace("\x00", "$")


def _resolve(node: Any) -> Any:
    """Return a copy of a parsed YAML tree with every string interpolated as in a clean environment."""
    if isinstance(node, str):
        return _interpolate_defaults(node)
    if isinstance(node, dict):
        return {key: _resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item) for item in node]
    return node


def _env_file_names(path: Path) -> set[str]:
    names: set[str] = set()
    if not path.is_file():
        return names
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, _ = line.partition("=")
        if sep:
            names.add(name.strip())
    return names


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two Compose syntaxes it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: value for name, _, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: (spec or {}) for name, spec in deps.items()}


def _build_context(service: dict[str, Any]) -> tuple[Path, str] | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (REPO_ROOT / build).resolve(), "Dockerfile"
    return (REPO_ROOT / build.get("context", ".")).resolve(), build.get("dockerfile", "Dockerfile")


def _dockerfile_instructions(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(INSTRUCTION, arguments)`` pairs, joining backslash continuations and skipping comments."""
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()
        logical = ""
    if logical:
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()


def _copy_sources(arguments: str) -> list[str] | None:
    """Host-side sources of a COPY/ADD instruction, or None when it copies from another stage."""
    if arguments.startswith("["):
        parts: list[str] = json.loads(arguments)
    else:
        parts = shlex.split(arguments)
    flags = [part for part in parts if part.startswith("--")]
    if any(flag.startswith("--from=") for flag in flags):
        return None
    operands = [part for part in parts if not part.startswith("--")]
    assert len(operands) >= 2, f"COPY needs a source and a destination: {arguments!r}"
    return operands[:-1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose()


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any]) -> dict[str, Any]:
    return _resolve(compose)


@pytest.fixture(scope="module")
def services(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = resolved.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yaml defines no services"
    return found


@pytest.fixture(scope="module")
def validator() -> Validator:
    if not SCHEMA_FILE.is_file():
        pytest.skip(
            f"Compose Specification schema not found at {SCHEMA_FILE}; it ships with the "
            "shared workspace (CI has it). Place compose-spec.json from "
            "github.com/compose-spec/compose-spec (schema/compose-spec.json) there to run this check."
        )
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


# --------------------------------------------------------------------------- schema


def test_compose_file_matches_compose_spec(validator: Validator, compose: dict[str, Any], resolved: dict[str, Any]) -> None:
    for label, document in (("as written", compose), ("after interpolation", resolved)):
        errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
        messages = [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}" for error in errors]
        assert not messages, f"docker-compose.yaml ({label}) violates the Compose spec:\n" + "\n".join(messages)


def _bogus_top_level_key(document: dict[str, Any]) -> None:
    document["servicez"] = {}


def _ports_not_a_list(document: dict[str, Any]) -> None:
    document["services"]["moto"]["ports"] = "abc"


def _unknown_depends_on_condition(document: dict[str, Any]) -> None:
    document["services"]["airflow-worker"]["depends_on"]["redis"]["condition"] = "service_ready"


def _unknown_service_key(document: dict[str, Any]) -> None:
    document["services"]["postgres"]["imagee"] = "postgres:16"


@pytest.mark.parametrize(
    "mutate",
    [_bogus_top_level_key, _ports_not_a_list, _unknown_depends_on_condition, _unknown_service_key],
    ids=lambda mutate: mutate.__name__.strip("_"),
)
def test_schema_validation_rejects_broken_files(
    validator: Validator, compose: dict[str, Any], mutate: Callable[[dict[str, Any]], None]
) -> None:
    """Guard against a vacuous schema check: each mutation of the real file must fail validation."""
    broken = copy.deepcopy(compose)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


# --------------------------------------------------------------------------- interpolation


def test_every_interpolation_has_a_default_or_a_committed_value(compose: dict[str, Any]) -> None:
    committed: set[str] = set()
    for env_file in COMMITTED_ENV_FILES:
        committed |= _env_file_names(env_file)
    offenders: set[str] = set()
    for value in _iter_strings(compose):
        for match in _INTERPOLATION.finditer(value.replace("$$", "")):
            name = match.group("braced") or match.group("bare")
            has_default = match.group("op") in (":-", "-")
            if not has_default and name not in committed:
                offenders.add(match.group(0))
    assert not offenders, (
        "interpolations without a ${VAR:-default} and not set in a committed env file "
        f"({', '.join(str(path.name) for path in COMMITTED_ENV_FILES)}): {sorted(offenders)}"
    )


def test_interpolation_helper_resolves_defaults_and_escapes() -> None:
    assert _interpolate_defaults("${A:-x}:${B-y}/${C}") == "x:y/"
    assert _interpolate_defaults('"$${HOSTNAME}"') == '"${HOSTNAME}"'
    assert _interpolate_defaults("${A:-${B:-nested}}") == "nested"


# --------------------------------------------------------------------------- services


def test_required_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"missing services: {missing}"


def test_depends_on_names_existing_services(services: dict[str, dict[str, Any]]) -> None:
    dangling = {
        f"{name} -> {dependency}"
        for name, service in services.items()
        for dependency in _depends_on(service)
        if dependency not in services
    }
    assert not dangling, f"depends_on names unknown services: {sorted(dangling)}"


def test_service_healthy_dependencies_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    unhealthy = {
        f"{name} -> {dependency}"
        for name, service in services.items()
        for dependency, spec in _depends_on(service).items()
        if spec.get("condition") == "service_healthy"
        and dependency in services
        and not (services[dependency].get("healthcheck") or {}).get("test")
    }
    assert not unhealthy, f"service_healthy on services without a healthcheck: {sorted(unhealthy)}"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    one_shot = {"airflow-init", "tenant-release-bootstrap"}
    missing = [
        name
        for name in REQUIRED_SERVICES
        if name not in one_shot and not (services.get(name, {}).get("healthcheck") or {}).get("test")
    ]
    assert not missing, f"services without a healthcheck: {missing}"


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["airflow-worker"]
    assert "container_name" not in worker, "container_name prevents --scale airflow-worker=N"
    assert not worker.get("ports"), "published host ports prevent --scale airflow-worker=N"


def test_bootstrap_runs_tenant_release_after_moto_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    bootstrap = services["tenant-release-bootstrap"]
    command = bootstrap.get("command")
    text = command if isinstance(command, str) else " ".join(command or [])
    assert "tenant-release bootstrap" in text
    assert _depends_on(bootstrap).get(MOTO_SERVICE, {}).get("condition") == "service_healthy"
    assert bootstrap.get("restart", "no") == "no", "a one-shot service must not be restarted"


def test_moto_service(services: dict[str, dict[str, Any]]) -> None:
    moto = services[MOTO_SERVICE]
    assert moto.get("image") == MOTO_IMAGE
    targets = {str(port).rsplit(":", 1)[-1].split("/")[0] for port in moto.get("ports", [])}
    assert str(MOTO_PORT) in targets, f"moto must expose container port {MOTO_PORT}, got {moto.get('ports')}"


# --------------------------------------------------------------------------- volumes


def test_bind_mounts_exist_and_named_volumes_are_declared(resolved: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set((resolved.get("volumes") or {}).keys())
    problems: list[str] = []
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                kind, source = volume.get("type"), volume.get("source")
            else:
                source = volume.split(":", 1)[0] if ":" in volume else None
                kind = "bind" if source and source.startswith((".", "/", "~")) else "volume"
            if source is None:
                continue  # anonymous volume
            if kind == "bind":
                host = Path(source)
                if not host.is_absolute() and not source.startswith("~"):
                    if not (REPO_ROOT / host).exists():
                        problems.append(f"{name}: bind-mounted host path {source!r} does not exist")
            elif kind == "volume" and source not in declared:
                problems.append(f"{name}: named volume {source!r} is not declared under top-level volumes")
    assert not problems, "\n".join(problems)


def test_airflow_services_mount_the_project(services: dict[str, dict[str, Any]]) -> None:
    expected = {f"./{part}:/opt/airflow/{part}" for part in ("dags", "plugins", "include", "config")}
    for name in AIRFLOW_SERVICES:
        mounts = {volume for volume in services[name].get("volumes", []) if isinstance(volume, str)}
        assert expected <= mounts, f"{name} lacks mounts {sorted(expected - mounts)}"


def test_env_files_exist(services: dict[str, dict[str, Any]]) -> None:
    missing: list[str] = []
    for name, service in services.items():
        entries = service.get("env_file") or []
        for entry in [entries] if isinstance(entries, str) else entries:
            path, required = (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
            if required and not (REPO_ROOT / path).is_file():
                missing.append(f"{name}: {path}")
    assert not missing, f"env_file entries that do not exist: {missing}"


# --------------------------------------------------------------------------- build


def test_build_context_has_a_dockerfile_copying_existing_files(services: dict[str, dict[str, Any]]) -> None:
    contexts = {context for service in services.values() if (context := _build_context(service)) is not None}
    assert contexts, "no service builds the project image (expected `build: .`)"
    for context, dockerfile_name in contexts:
        dockerfile = context / dockerfile_name
        assert dockerfile.is_file(), f"{dockerfile} does not exist"
        instructions = list(_dockerfile_instructions(dockerfile))
        base_images = [arguments.split()[0] for keyword, arguments in instructions if keyword == "FROM"]
        assert base_images and base_images[0] == "apache/airflow:3.3.2-python3.11"
        copied: list[str] = []
        for keyword, arguments in instructions:
            if keyword in ("COPY", "ADD"):
                sources = _copy_sources(arguments)
                if sources is not None:
                    copied.extend(sources)
        missing = [source for source in copied if not list(context.glob(source))]
        assert not missing, f"{dockerfile} copies paths missing from the build context: {missing}"
        for needed in ("requirements.txt", "pyproject.toml", "plugins"):
            assert any(Path(source).parts[:1] == (needed,) for source in copied), f"{dockerfile} does not COPY {needed}"


def test_airflow_services_use_the_built_image(services: dict[str, dict[str, Any]]) -> None:
    for name in (*AIRFLOW_SERVICES, "tenant-release-bootstrap"):
        assert _build_context(services[name]) == (REPO_ROOT, "Dockerfile"), f"{name} must use `build: .`"


# --------------------------------------------------------------------------- environment


def _host_of(url: str) -> str | None:
    # Celery's "db+postgresql://" scheme is not special to urlsplit; the netloc still parses.
    return urlsplit(url).hostname


def test_airflow_services_use_celery_with_postgres_and_redis(services: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES:
        env = _environment(services[name])
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        sql = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
        broker = env.get("AIRFLOW__CELERY__BROKER_URL", "")
        backend = env.get("AIRFLOW__CELERY__RESULT_BACKEND", "")
        assert sql.startswith("postgresql") and _host_of(sql) == "postgres", f"{name}: {sql!r}"
        assert broker.startswith("redis://") and _host_of(broker) == "redis", f"{name}: {broker!r}"
        assert backend.startswith("db+postgresql") and _host_of(backend) == "postgres", f"{name}: {backend!r}"
        assert env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL") == "http://airflow-apiserver:8080/execution/"
        assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false", name
        assert env.get("TENANT_RELEASE_CONFIG") == "/opt/airflow/config/tenants.yaml", name
        assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS") == "admin:admin", name
        assert env.get("AIRFLOW__API_AUTH__JWT_SECRET"), f"{name}: components need one shared JWT secret"


FLEET_SCALE_SETTINGS = (
    "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY",
    "AIRFLOW__TRIGGERER__CAPACITY",
    "AIRFLOW__TRIGGERER__MAX_TRIGGER_TO_SELECT_PER_LOOP",
    "AIRFLOW__CORE__LAZY_LOAD_PLUGINS",
    "AIRFLOW__LOGGING__NAMESPACE_LEVELS",
)


def test_airflow_services_carry_the_fleet_scale_settings_of_the_local_stack(
    services: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import local_stack

    for name in FLEET_SCALE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    local = local_stack.environment(local_stack.Stack(state_dir=tmp_path))
    for service in AIRFLOW_SERVICES:
        env = _environment(services[service])
        for name in FLEET_SCALE_SETTINGS:
            assert env.get(name, "").lower() == local[name].lower(), f"{service}: {name}"


def test_aws_endpoint_points_at_moto(services: dict[str, dict[str, Any]]) -> None:
    for name in (*AIRFLOW_SERVICES, "tenant-release-bootstrap"):
        env = _environment(services[name])
        endpoint = env.get("AWS_ENDPOINT_URL", "")
        parts = urlsplit(endpoint)
        assert parts.scheme == "http" and parts.hostname == MOTO_SERVICE and parts.port == MOTO_PORT, (
            f"{name}: AWS_ENDPOINT_URL={endpoint!r} must point at the {MOTO_SERVICE} service"
        )
        assert env.get("AWS_DEFAULT_REGION") == "us-east-1", name
        assert env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"), name
        connection = json.loads(env.get("AIRFLOW_CONN_AWS_DEFAULT", "{}"))
        assert connection.get("conn_type") == "aws", name
        assert connection.get("extra", {}).get("endpoint_url") == endpoint, name
        assert connection.get("extra", {}).get("region_name") == "us-east-1", name
