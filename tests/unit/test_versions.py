"""Which release is newer than which: what the rollback refusal compares (a stack's version tag with the release's)."""

from __future__ import annotations

import pytest
from tenant_release.tags import is_newer, version_key


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("1.10.0", "1.9.0"),  # numerically, not as text
        ("2.0.0", "1.99.99"),
        ("1.5.1", "1.5.0"),
        ("1.5.0", "1.5.0-rc.2"),  # a final release follows its candidates
        ("1.5.0-rc.10", "1.5.0-rc.9"),
        ("1.5.0-rc.0", "1.4.9"),
    ],
)
def test_newer_versions_order_after_older_ones(newer: str, older: str) -> None:
    assert is_newer(newer, older)
    assert not is_newer(older, newer)


@pytest.mark.parametrize("other", [None, "", "-", "1.5", "v1.5.0", "1.5.0-beta", "latest"])
def test_a_version_tag_that_is_not_ours_is_never_called_newer(other: str | None) -> None:
    # A stack tagged by hand or by another tool cannot be ordered: the deploy goes on rather than refuse on a guess.
    assert version_key(other) is None
    assert not is_newer(other, "1.4.0")
    assert not is_newer("1.4.0", other or "")


def test_the_same_version_is_not_newer() -> None:
    assert not is_newer("1.4.0", "1.4.0")
