"""Fixtures for the stack tests: a fresh PostgreSQL database and an empty Redis DB, or a skip saying which is missing."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator

import pytest

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS = {"host": "127.0.0.1", "port": 6379}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database for Airflow's metadata (dropped afterwards); skips when PostgreSQL does not answer."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as exc:
        where = f"{PG['host']}:{PG['port']} as {PG['user']}"
        pytest.skip(f"PostgreSQL does not answer on {where} ({exc}); the scale-out test needs it")
    admin.autocommit = True
    name = f"tenant_release_stack_{secrets.token_hex(4)}"
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis DB number for the Celery broker (flushed afterwards); skips when Redis does not answer."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(socket_timeout=3, **REDIS).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis does not answer on {REDIS['host']}:{REDIS['port']} ({exc}); the scale-out test needs it")
    # DB 0 is left to whoever else uses this Redis; take an empty one of 1-15 so a concurrent run is not disturbed.
    numbers = list(range(1, 16))
    random.shuffle(numbers)
    for number in numbers:
        client = redis.Redis(db=number, socket_timeout=3, **REDIS)
        if client.dbsize() == 0:
            break
    else:
        pytest.skip("Redis has no empty DB among 1-15 for the Celery broker")
    try:
        yield f"redis://{REDIS['host']}:{REDIS['port']}/{number}"
    finally:
        client.flushdb()
        client.close()
