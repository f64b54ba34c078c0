"""Sample tenant application: a Lambda handler that reports the release and tenant it runs as."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger()
logger.setLevel(os.environ.get("LOG_LEVEL", "INFO"))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer every invocation with the deployed release version, which verification reads back."""
    version = os.environ["RELEASE_VERSION"]
    tenant = os.environ.get("TENANT_NAME")
    logger.debug("invoked for tenant %s at release %s", tenant, version)
    return {
        "statusCode": 200,
        "body": json.dumps({"message": "Hello!", "version": version, "tenant": tenant}),
    }
