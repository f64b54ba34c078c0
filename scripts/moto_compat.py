"""Works around moto 5.2.5 bugs that real AWS does not have, for the tests and the local moto server.

- A KMS key created by CloudFormation keeps its `KeyPolicy` as a dict; moto's key-policy check then
  calls `json.loads` on it and every DescribeKey/Encrypt on that key fails with a TypeError.
  We store the policy as the JSON text real KMS returns.
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
        if isinstance(properties.get("KeyPolicy"), dict):
            properties["KeyPolicy"] = json.dumps(properties["KeyPolicy"])
        return original(cls, resource_name, cloudformation_json, *args, **kwargs)

    models.Key.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)
    models.Key._tenant_release_patched = True


if __name__ == "__main__":
    # `python scripts/moto_compat.py [moto_server args]`: the moto server with the fixes applied.
    import sys

    apply()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
