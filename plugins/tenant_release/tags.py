"""Release tags: `v1.4.0` ships to the default group, `v-1.4.0-qa` ships to the group `qa`."""

from __future__ import annotations

import re

from tenant_release.errors import ReleaseTagError
from tenant_release.models import Release

# [0-9], not \d: Python's \d also matches non-ASCII digits, which the browser's form check rejects.
_VERSION = r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-rc\.(?:0|[1-9][0-9]*))?"
_GROUP = r"[a-z][a-z0-9-]{0,38}[a-z0-9]"
_PLAIN = re.compile(rf"^v(?P<version>{_VERSION})$")
_GROUPED = re.compile(rf"^v-(?P<version>{_VERSION})-(?P<group>{_GROUP})$")

# The same rule as a JSON-schema pattern, for the trigger form (rejects a bad tag before a run exists).
TAG_JSON_SCHEMA_PATTERN = rf"^(v{_VERSION}|v-{_VERSION}-{_GROUP})$"

TAG_HELP = "use v<MAJOR>.<MINOR>.<PATCH> (default group) or v-<MAJOR>.<MINOR>.<PATCH>-<group>, e.g. v1.4.0 or v-1.4.0-qa"


def parse_release_tag(tag: str) -> Release:
    """Parse a tag; the version may carry an `-rc.N` suffix, the group is lowercase."""
    if not isinstance(tag, str):
        raise ReleaseTagError(f"release tag must be a string, got {type(tag).__name__}; {TAG_HELP}")
    cleaned = tag.strip()
    if match := _PLAIN.match(cleaned):
        return Release(tag=cleaned, version=match["version"], group=None)
    if match := _GROUPED.match(cleaned):
        return Release(tag=cleaned, version=match["version"], group=match["group"])
    raise ReleaseTagError(f"release tag {tag!r} is not valid: {TAG_HELP}")


_ORDERED_VERSION = re.compile(rf"^{_VERSION}$")


def version_key(version: str | None) -> tuple[int, int, int, int, int] | None:
    """A sortable key of a release version: 1.10.0 > 1.9.0, and 1.5.0-rc.2 < 1.5.0 (a release candidate comes first).

    None for anything that is not a version of ours (a stack tagged by hand, or by another tool): it cannot be ordered.
    """
    match = _ORDERED_VERSION.match(version or "")
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    candidate = (version or "").partition("-rc.")[2]
    # A final release sorts after each of its candidates: (1, 0) > (0, N).
    return (major, minor, patch, 0, int(candidate)) if candidate else (major, minor, patch, 1, 0)


def is_newer(version: str | None, than: str) -> bool:
    """True when `version` orders after `than`; False when either cannot be ordered."""
    mine, theirs = version_key(version), version_key(than)
    return mine is not None and theirs is not None and mine > theirs
