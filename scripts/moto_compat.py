"""Works around moto 5.2.5 bugs that real AWS does not have, for the tests and the local moto server.

- A KMS key created by CloudFormation keeps its `KeyPolicy` as a dict; moto's key-policy check then
  calls `json.loads` on it and every DescribeKey/Encrypt on that key fails with a TypeError.
  We store the policy as the JSON text real KMS returns (without the nulls that a statement removed by
  `!If … AWS::NoValue` leaves in moto's list).
- Executing a change set leaves the stack's tags as they were; AWS applies the change set's tags (ours
  carry ReleaseVersion and DeployDigest, read back as "version before" and to decide "unchanged").
- A deleted stack keeps its change sets, found by name alone, so a stack created again under the same
  name "finds" the old executed change set; AWS deletes a stack's change sets with the stack.
"""

from __future__ import annotations

import json
from typing import Any


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


def _apply_change_set_fixes() -> None:
    from moto.cloudformation.models import CloudFormationBackend

    original_execute = CloudFormationBackend.execute_change_set
    original_delete = CloudFormationBackend.delete_stack

    def execute_change_set(self: Any, change_set_name: str, stack_name: str | None = None) -> Any:
        result = original_execute(self, change_set_name, stack_name)
        for change_set in self.change_sets.values():
            named = change_set_name in (change_set.change_set_id, change_set.change_set_name)
            if named and stack_name in (None, change_set.stack_name, change_set.stack_id) and change_set.tags:
                change_set.stack.tags = dict(change_set.tags)
        return result

    def delete_stack(self: Any, name_or_stack_id: str) -> Any:
        doomed = {s.stack_id for s in self.stacks.values() if name_or_stack_id in (s.stack_id, s.name)}
        result = original_delete(self, name_or_stack_id)
        for change_set_id in [key for key, cs in self.change_sets.items() if cs.stack_id in doomed]:
            del self.change_sets[change_set_id]
        return result

    CloudFormationBackend.execute_change_set = execute_change_set
    CloudFormationBackend.delete_stack = delete_stack


if __name__ == "__main__":
    # `python scripts/moto_compat.py [moto_server args]`: the moto server with the fixes applied.
    import sys

    apply()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
