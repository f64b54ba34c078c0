"""The second application of the tests (tests/fixtures/orders_app), in a git repository with release tags.

Shared by the AWS-layer tests and the DAG test: a repository whose v1.4.0 and v1.5.0 tags hold different api
code, and a fleet file (the test fleet) whose application section builds it from that repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ORDERS_APP = FIXTURES / "orders_app"
BUILD = "mkdir -p build/api && cp src/api.py build/api/app.py"
ORDER_RESOURCE_TYPES = ["AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::CloudFormation::Stack"]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "d@example.com",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "d@example.com",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env={**os.environ, **GIT_ENV}
    )
    return done.stdout.strip()


def commit_api(repo: Path, code_version: str, tag: str, *, force: bool = False) -> str:
    """Commit api code reporting `code_version` and tag it (annotated); returns the commit."""
    (repo / "src" / "api.py").write_text(
        f'CODE_VERSION = "{code_version}"\n\n\ndef handler(event, context):\n    return CODE_VERSION\n'
    )
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", code_version)
    git(repo, "tag", *(["--force"] if force else []), "-a", tag, "-m", tag)
    return git(repo, "rev-parse", "HEAD")


def orders_repository(root: Path) -> tuple[Path, dict[str, str]]:
    """`root/orders`, a git repository of the orders application with tags v1.4.0 and v1.5.0 (their commits)."""
    repo = root / "orders"
    shutil.copytree(ORDERS_APP, repo)
    git(repo, "init", "--quiet", "--initial-branch", "main")
    return repo, {"v1.4.0": commit_api(repo, "api 1", "v1.4.0"), "v1.5.0": commit_api(repo, "api 2", "v1.5.0")}


def orders_fleet(root: Path, *, fleet: str = "fleet.yaml") -> Path:
    """`root/fleet.yaml`: the test fleet shipping the orders application from the repository beside it."""
    spec = yaml.safe_load((FIXTURES / fleet).read_text())
    spec["defaults"].update(parameters={}, stack_name="orders-{name}", function_name="orders-{name}-api")
    for tenant in spec["tenants"]:
        tenant.pop("parameters", None)
    spec["application"] = {
        "source": {"git": "orders"},  # relative: beside the fleet file
        "build": BUILD,
        "parameters": {
            "version": "OrdersVersion",
            "tenant": "Customer",
            "bucket": "ArtifactsBucket",
            "name": None,
            "permissions_boundary": "Boundary",
        },
        "capabilities": ["CAPABILITY_IAM"],
        "execution_role": {"resource_types": ORDER_RESOURCE_TYPES},
    }
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
