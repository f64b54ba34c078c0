"""A tenant's health alarms: which CloudWatch alarms its patterns name, and which of them are firing."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Both kinds are valid CloudFormation rollback triggers; DescribeAlarms returns only metric alarms unless asked.
ALARM_TYPES = ("MetricAlarm", "CompositeAlarm")
ROLLBACK_TRIGGER_TYPES = {"MetricAlarm": "AWS::CloudWatch::Alarm", "CompositeAlarm": "AWS::CloudWatch::CompositeAlarm"}
FIRING = "ALARM"


@dataclass(frozen=True)
class FiringAlarm:
    """One of the tenant's alarms in ALARM: what the history, the log and a wave's verdict say about it."""

    name: str
    arn: str
    since: str  # when it entered ALARM (its StateUpdatedTimestamp), ISO
    reason: str  # CloudWatch's StateReason

    def describe(self) -> str:
        return f"alarm {self.name} in ALARM since {self.since}"


def pattern_matcher(pattern: str) -> re.Pattern[str]:
    """`*` matches anything; every other character is itself.

    Not fnmatch: alarm names may hold `?`, `[` and `]`, which fnmatch would read as wildcards and classes.
    """
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def name_prefix(pattern: str) -> str:
    """What every name the pattern matches starts with: lets DescribeAlarms filter server-side."""
    return pattern.split("*", 1)[0]


def _prefixes(patterns: Iterable[str]) -> list[str]:
    """The fewest prefixes to list: one that starts with another is covered by the other's listing."""
    kept: list[str] = []
    for prefix in sorted({name_prefix(p) for p in patterns}, key=len):
        if not any(prefix.startswith(shorter) for shorter in kept):
            kept.append(prefix)
    return kept


def matching_alarms(cloudwatch: Any, patterns: Iterable[str]) -> list[dict[str, Any]]:
    """The alarms (DescribeAlarms items, metric and composite, with `AlarmType` added) any pattern matches, by name."""
    patterns = list(patterns)
    if not patterns:
        return []
    matchers = [pattern_matcher(p) for p in patterns]
    found: dict[str, dict[str, Any]] = {}
    paginator = cloudwatch.get_paginator("describe_alarms")
    for prefix in _prefixes(patterns):
        query: dict[str, Any] = {"AlarmTypes": list(ALARM_TYPES)}
        if prefix:  # a pattern starting with `*` lists every alarm of the account and region
            query["AlarmNamePrefix"] = prefix
        for page in paginator.paginate(**query):
            for kind in ALARM_TYPES:
                for alarm in page.get(f"{kind}s", []):
                    name = alarm["AlarmName"]
                    if name not in found and any(m.fullmatch(name) for m in matchers):
                        found[name] = {**alarm, "AlarmType": kind}
    return [found[name] for name in sorted(found)]


def firing_alarms(cloudwatch: Any, patterns: Iterable[str]) -> list[FiringAlarm]:
    """The matching alarms in ALARM now, oldest first (the first to fire is most likely the cause)."""
    firing = [as_firing(alarm) for alarm in matching_alarms(cloudwatch, patterns) if alarm.get("StateValue") == FIRING]
    return sorted(firing, key=lambda alarm: (alarm.since, alarm.name))


def as_firing(alarm: dict[str, Any]) -> FiringAlarm:
    since = alarm.get("StateUpdatedTimestamp")
    return FiringAlarm(
        name=alarm["AlarmName"],
        arn=alarm["AlarmArn"],
        since=since.isoformat(timespec="seconds") if isinstance(since, datetime) else str(since or "an unknown time"),
        reason=alarm.get("StateReason", ""),
    )


def rollback_triggers(alarms: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """CloudFormation's RollbackTriggers for these alarms (DescribeAlarms items as `matching_alarms` returns them)."""
    return [{"Arn": alarm["AlarmArn"], "Type": ROLLBACK_TRIGGER_TYPES[alarm.get("AlarmType", "MetricAlarm")]} for alarm in alarms]
