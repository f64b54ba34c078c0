"""The release on the stack `make run` starts (SQLite, LocalExecutor), in a tmp dir on free ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack.release import assert_release_succeeded, isolated_stack


@pytest.mark.slow
def test_release_on_sqlite_and_local_executor(tmp_path: Path) -> None:
    with isolated_stack(tmp_path / "stack") as run:
        assert_release_succeeded(run)
