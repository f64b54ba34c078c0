"""Works around moto 5.2.5 bugs that real AWS does not have, for the tests and the local moto server.

- A KMS key created by CloudFormation keeps its `KeyPolicy` as a dict; moto's key-policy check then
  calls `json.loads` on it and every DescribeKey/Encrypt on that key fails with a TypeError.
  We store the policy as the JSON text real KMS returns (without the nulls that a statement removed by
  `!If … AWS::NoValue` leaves in moto's list).
- Executing a change set leaves the stack's tags and parameters as they were; AWS applies the change set's
  (our tags carry ReleaseVersion and DeployDigest, read back as "version before" and to decide "unchanged").
  With stale parameters, going back to an earlier version (1.4 → 1.5 → 1.4) made moto answer "no changes".
- A deleted stack keeps its change sets, found by name alone, so a stack created again under the same
  name "finds" the old executed change set; AWS deletes a stack's change sets with the stack.
- Executing a change set leaves the stack's outputs as they were (none, for a stack a change set created);
  AWS recomputes them from the new template. (Health checks read outputs.)
- A nested stack (`AWS::CloudFormation::Stack`) is created, but `!GetAtt Nested.Outputs.Name` fails with an
  AttributeError; AWS resolves it to the nested stack's output.

And one thing moto cannot do at all, for benchmarks: stacks that take time to settle. moto applies a change
set at once; with a settle time set, the stack reports `CREATE_IN_PROGRESS`/`UPDATE_IN_PROGRESS` for that
many seconds after the change set is executed, as CloudFormation does while it works. The time is read from
the file named by `TENANT_RELEASE_MOTO_SETTLE_FILE` (a number of seconds; changeable while the server runs:
a stack in progress settles by the time the file says when it is next described, so a test can hold stacks
in progress and then let them go) or from `TENANT_RELEASE_MOTO_SETTLE_SECONDS`; unset, stacks settle at once
as before. With
`TENANT_RELEASE_MOTO_QUIET` set, the server logs no line per request.

Nor can moto fail a stack. For tests of what a failing stack does to a rollout, the file named by
`TENANT_RELEASE_MOTO_FAIL_FILE` maps stack names to a failure reason (JSON); executing a change set on such a
stack ends it as CloudFormation would after a resource failed (`ROLLBACK_COMPLETE` for a create,
`UPDATE_ROLLBACK_COMPLETE` for an update), with the resource's failure event carrying that reason. Read at each
execution, so a test can make a stack fail for one release and let it succeed on the redeploy.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

SETTLE_FILE_ENV = "TENANT_RELEASE_MOTO_SETTLE_FILE"
SETTLE_SECONDS_ENV = "TENANT_RELEASE_MOTO_SETTLE_SECONDS"
QUIET_ENV = "TENANT_RELEASE_MOTO_QUIET"
FAIL_FILE_ENV = "TENANT_RELEASE_MOTO_FAIL_FILE"


def failing_stacks() -> dict[str, str]:
    path = os.environ.get(FAIL_FILE_ENV)
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {str(name): str(reason) for name, reason in found.items()} if isinstance(found, dict) else {}


def _fail_stack(stack: Any, change_set_type: str, reason: str) -> str:
    """Add the events CloudFormation leaves when a resource fails and the stack rolls back; return the final status."""
    from moto.cloudformation.models import Event

    failed, rolling, final = (
        ("CREATE_FAILED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE")
        if change_set_type == "CREATE"
        else ("UPDATE_FAILED", "UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE")
    )
    stack.events.append(
        Event(
            stack_id=stack.stack_id,
            stack_name=stack.name,
            logical_resource_id="Function",
            physical_resource_id=None,
            resource_type="AWS::Lambda::Function",
            resource_status=failed,
            resource_status_reason=reason,
            resource_properties=None,
        )
    )
    stack._add_stack_event(rolling, resource_status_reason="The following resource(s) failed: [Function]")
    stack._add_stack_event(final)
    return final


def settle_seconds() -> float:
    path = os.environ.get(SETTLE_FILE_ENV)
    text = os.environ.get(SETTLE_SECONDS_ENV, "0")
    if path:
        try:
            with open(path) as handle:
                text = handle.read().strip() or "0"
        except OSError:
            pass
    try:
        return max(0.0, float(text))
    except ValueError:
        return 0.0


def apply() -> None:
    from moto.kms import models

    if getattr(models.Key, "_tenant_release_patched", False):
        return
    original = models.Key.create_from_cloudformation_json.__func__

    def create_from_cloudformation_json(cls: Any, resource_name: str, cloudformation_json: Any, *args: Any, **kwargs: Any) -> Any:
        properties = cloudformation_json.get("Properties", {})
        policy = properties.get("KeyPolicy")
        if isinstance(policy, dict):
            if isinstance(policy.get("Statement"), list):
                policy = {**policy, "Statement": [statement for statement in policy["Statement"] if statement]}
            properties["KeyPolicy"] = json.dumps(policy)
        return original(cls, resource_name, cloudformation_json, *args, **kwargs)

    models.Key.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)
    models.Key._tenant_release_patched = True
    _apply_change_set_fixes()
    _apply_nested_stack_outputs()


def _apply_nested_stack_outputs() -> None:
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException
    from moto.cloudformation.models import Stack

    def get_cfn_attribute(self: Any, attribute_name: str) -> Any:
        if attribute_name.startswith("Outputs."):
            wanted = attribute_name.split(".", 1)[1]
            for output in self.output_map.values():
                if output and output.key == wanted:
                    return output.value
        raise UnformattedGetAttTemplateException()

    Stack.get_cfn_attribute = get_cfn_attribute


def _apply_change_set_fixes() -> None:
    from moto.cloudformation.models import CloudFormationBackend

    original_execute = CloudFormationBackend.execute_change_set
    original_delete = CloudFormationBackend.delete_stack

    original_describe = CloudFormationBackend.describe_stacks

    def execute_change_set(self: Any, change_set_name: str, stack_name: str | None = None) -> Any:
        result = original_execute(self, change_set_name, stack_name)
        delay = settle_seconds()
        for change_set in self.change_sets.values():
            named = change_set_name in (change_set.change_set_id, change_set.change_set_name)
            if not (named and stack_name in (None, change_set.stack_name, change_set.stack_id)):
                continue
            if change_set.tags:
                change_set.stack.tags = dict(change_set.tags)
            if change_set.parameters:
                change_set.stack.parameters = change_set.parameters
            change_set.stack.template_dict = change_set.stack.parse_template(change_set.template)
            change_set.stack.output_map = change_set.stack._create_output_map()
            failure = failing_stacks().get(change_set.stack.name)
            if failure is not None:
                change_set.stack.status = _fail_stack(change_set.stack, change_set.change_set_type, failure)
            if delay > 0:
                stack = change_set.stack
                stack._executed_at, stack._settled_status = time.time(), stack.status
                stack.status = f"{change_set.change_set_type}_IN_PROGRESS"
        return result

    def describe_stacks(self: Any, name_or_stack_id: str) -> Any:
        stacks = original_describe(self, name_or_stack_id)
        for stack in stacks:
            executed_at = getattr(stack, "_executed_at", None)
            if executed_at is not None and time.time() >= executed_at + settle_seconds():
                stack.status, stack._executed_at = stack._settled_status, None
        return stacks

    def delete_stack(self: Any, name_or_stack_id: str) -> Any:
        doomed = {s.stack_id for s in self.stacks.values() if name_or_stack_id in (s.stack_id, s.name)}
        result = original_delete(self, name_or_stack_id)
        for change_set_id in [key for key, cs in self.change_sets.items() if cs.stack_id in doomed]:
            del self.change_sets[change_set_id]
        return result

    CloudFormationBackend.execute_change_set = execute_change_set
    CloudFormationBackend.describe_stacks = describe_stacks
    CloudFormationBackend.delete_stack = delete_stack


if __name__ == "__main__":
    # `python scripts/moto_compat.py [moto_server args]`: the moto server with the fixes applied.
    import sys

    apply()
    if os.environ.get(QUIET_ENV):
        import logging

        # One log line per request costs the server about a sixth of its time under load (a benchmark's
        # thousand tenants); the benchmark, which measures the emulation as a floor, turns it off.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
