"""A small fault injector around real (moto) boto3 clients: moto cannot throttle, deny or roll back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError


@dataclass
class Fault:
    service: str
    operation: str  # "*": every operation of the service
    account: str | None = None  # "tooling", a tenant account id, or None for any
    code: str | None = None
    message: str = "injected"
    when: Callable[[dict[str, Any]], bool] = lambda kwargs: True
    times: int | None = None  # None: every matching call
    rewrite: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    hits: int = 0

    def applies(self, service: str, account: str, operation: str, kwargs: dict[str, Any]) -> bool:
        if self.service != service or self.operation not in ("*", operation):
            return False
        if self.account is not None and self.account != account:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        return self.when(kwargs)


@dataclass
class Faults:
    """Register faults, then pass `faults.hook` as `AwsSessions(client_hook=...)`."""

    faults: list[Fault] = field(default_factory=list)
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def hook(self, service: str, account: str, client: Any) -> Any:
        return _FaultyClient(client, service, account, self)


class _FaultyClient:
    def __init__(self, client: Any, service: str, account: str, faults: Faults) -> None:
        self._client, self._service, self._account, self._faults = client, service, account, faults

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("_") or name in {"get_paginator", "get_waiter", "can_paginate"}:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._faults.calls.append((self._service, self._account, name))
            rewrites = []
            for fault in self._faults.faults:
                if fault.applies(self._service, self._account, name, kwargs):
                    fault.hits += 1
                    if fault.rewrite is not None:
                        rewrites.append(fault)
                        continue
                    raise ClientError(
                        {"Error": {"Code": fault.code, "Message": fault.message}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                        _operation_name(name),
                    )
            response = attr(*args, **kwargs)
            for fault in rewrites:
                response = fault.rewrite(response, kwargs)
            return response

        return call


def _operation_name(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_"))
