"""The table of RPC handlers. Area modules under agent/rpc/methods register with ``@rpc``.

A handler is thin: log, convert, delegate to a service, return the response message. It raises
domain errors (agent.errors) and never formats status codes itself; agent/rpc/status.py does.
Request and response types come from the generated descriptors, so a handler only names its method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from agent.system.records import Record

if TYPE_CHECKING:
    from agent.services import Services


class CallContext(Record):
    _fields = ("protocol", "deadline", "metadata")
    __slots__ = _fields
    protocol: str  # "ttrpc" or "grpc"
    deadline: float | None  # time.monotonic() by which the call must end, if the client set one
    metadata: Mapping[str, str]

    def __init__(self, protocol: str, deadline: float | None = None, metadata: Mapping[str, str] | None = None) -> None:
        self._assign(protocol, deadline, {} if metadata is None else metadata)


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
