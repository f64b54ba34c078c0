"""The scale-out path: Airflow's metadata DB on PostgreSQL, CeleryExecutor with a real Celery worker on Redis.

Asserts exactly what the SQLite/LocalExecutor test asserts (tests/stack/release.py), so both paths are held
to one outcome. Skips, saying why, when PostgreSQL or Redis does not answer on loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack.release import assert_release_succeeded, isolated_stack


@pytest.mark.scaleout
@pytest.mark.slow
def test_release_on_postgres_and_celery(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    args = ("--executor", "celery", "--sql-alchemy-conn", postgres_url, "--broker", redis_url)
    with isolated_stack(tmp_path / "stack", *args) as run:
        assert "CeleryExecutor" in run.output
        assert_release_succeeded(run)
