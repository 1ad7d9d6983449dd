"""The table of RPC handlers. Area modules under agent/rpc/methods register with ``@rpc``.

A handler is thin: log, convert, delegate to a service, return the response message. It raises
domain errors (agent.errors) and never formats status codes itself; agent/rpc/status.py does.
Request and response types come from the generated descriptors, so a handler only names its method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.services import Services


@dataclass(frozen=True)
class CallContext:
    protocol: str  # "ttrpc" or "grpc"
    deadline: float | None = None  # time.monotonic() by which the call must end, if the client set one
    metadata: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[["Services", Any, CallContext], Any]

# "grpc.AgentService/CreateContainer" -> handler
METHODS: dict[str, Handler] = {}


def rpc(service: str, method: str) -> Callable[[Handler], Handler]:
    key = f"{service}/{method}"

    def register(handler: Handler) -> Handler:
        if key in METHODS:
            raise RuntimeError(f"two handlers for {key}: {METHODS[key].__module__} and {handler.__module__}")
        METHODS[key] = handler
        return handler

    return register
