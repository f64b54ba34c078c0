"""Shared fixtures: fake AWS credentials, a test fleet file, and moto accounts bootstrapped from our templates."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: point it at a throwaway home before any test
# module imports it, so tests never touch a user's ~/airflow and never load example DAGs.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="tenant-release-tests-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
# moto settles stacks at once; the triggers need not wait between polls.
os.environ.setdefault("AIRFLOW__TENANT_RELEASE__STACK_POLL_SECONDS", "0")
os.environ.setdefault("AIRFLOW__TENANT_RELEASE__APPROVAL_POLL_SECONDS", "0")
os.environ.setdefault("AIRFLOW__TENANT_RELEASE__WINDOW_POLL_SECONDS", "0")
sys.path.insert(0, str(ROOT / "scripts"))

import moto_compat  # noqa: E402  (lives in scripts/: the local moto server applies the same fixes)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The one identity the emulated orchestrator role trusts: moto's caller for the fake keys (what `make run` passes).
ORCHESTRATOR_PRINCIPAL = "arn:aws:iam::123456789012:user/moto"


def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for moto; never let a test reach a real endpoint or profile."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "MOTO_ACCOUNT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@contextmanager
def emulated_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process moto with our fixes and fake credentials (module-scoped worlds pass their own patcher)."""
    from moto import mock_aws

    fake_credentials(monkeypatch)
    moto_compat.apply()
    with mock_aws(config={"lambda": {"use_docker": False}}):
        yield


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_credentials(monkeypatch)


def use_fleet(fixture: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy a fleet file from tests/fixtures into the test's folder and point TENANT_RELEASE_CONFIG at it."""
    path = tmp_path / "tenants.yaml"
    shutil.copy(FIXTURES / fixture, path)
    monkeypatch.setenv("TENANT_RELEASE_CONFIG", str(path))
    return path


def bootstrap(path: Path):
    """Tooling and every target account of the fleet file, as `tenant-release bootstrap` leaves them."""
    from tenant_release.aws.bootstrap import bootstrap_fleet
    from tenant_release.aws.session import AwsSessions
    from tenant_release.config import load_fleet

    loaded = load_fleet(path)
    bootstrap_fleet(AwsSessions(), loaded, tooling_principal_arn=ORCHESTRATOR_PRINCIPAL, sleep=lambda _: None)
    return loaded


@pytest.fixture
def fleet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_fleet("fleet.yaml", tmp_path, monkeypatch)


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with emulated_aws(monkeypatch):
        yield


@pytest.fixture
def bootstrapped(moto: None, fleet_file: Path):
    """Tooling and every target account as `tenant-release bootstrap` leaves them."""
    return bootstrap(fleet_file)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated SQLite metadata database in the throwaway AIRFLOW_HOME (what dag.test() needs)."""
    from airflow.utils import db

    db.resetdb(skip_init=False)
