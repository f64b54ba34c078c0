"""Which AWS regions exist, from the partitions file botocore ships (no network call)."""

from __future__ import annotations

import difflib
import json
from functools import cache
from pathlib import Path

# Regions opened after an older botocore was released: known even when the installed data file predates them.
_RECENT = ("ap-southeast-5", "ap-southeast-6", "ap-southeast-7", "ap-east-2", "mx-central-1", "ca-west-1")


@cache
def _partitions() -> dict[str, str]:
    """Region -> partition (aws, aws-cn, aws-us-gov, aws-iso...)."""
    regions = dict.fromkeys(_RECENT, "aws")
    try:
        import botocore

        data = json.loads((Path(botocore.__file__).parent / "data" / "partitions.json").read_text(encoding="utf-8"))
        for partition in data.get("partitions", []):
            regions.update(dict.fromkeys(partition.get("regions", {}), partition.get("id", "aws")))
    except (ImportError, OSError, ValueError):
        pass  # the pattern check in models still applies
    return {name: partition for name, partition in regions.items() if not name.startswith("aws-")}  # not "aws-global"


def known_regions() -> frozenset[str]:
    return frozenset(_partitions())


def unknown_region(region: str) -> str | None:
    """None when `region` exists, else a message naming it, the closest real names, and the fix."""
    regions = known_regions()
    if not regions or region in regions:
        return None
    close = difflib.get_close_matches(region, sorted(regions), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see `aws ec2 describe-regions` for the names"
    return f"region {region!r} does not exist in AWS; {hint}"
