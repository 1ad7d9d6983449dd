"""One dispatch for both protocols: find the handler, decode, call, encode, map errors.

ttrpc and gRPC both hand this class a service name, a method name and the request bytes, and get back
a status code, a message and the response bytes. Nothing a client sends escapes as an exception.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError, Message

from agent.rpc import registry
from agent.rpc.convert import MethodInfo, method_table
from agent.rpc.status import Code, RpcError, status_for

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)


class Servicer:
    def __init__(self, services: Services) -> None:
        from agent.rpc import methods

        methods.load_all()
        self.services = services
        self.methods: dict[str, MethodInfo] = method_table()

    def implemented(self) -> list[str]:
        return sorted(name for name in self.methods if name in registry.METHODS)

    def call(self, service: str, method: str, payload: bytes, ctx: registry.CallContext) -> tuple[Code, str, bytes]:
        """Run one unary call; returns (code, message, response bytes). Never raises."""
        full_name = f"{service}/{method}"
        try:
            response = self._dispatch(full_name, payload, ctx)
            return Code.OK, "", response.SerializeToString()
        except Exception as exc:
            code, message = status_for(exc, full_name)
            log.debug("%s over %s: %s %s", full_name, ctx.protocol, code.name, message)
            return code, message, b""

    def _dispatch(self, full_name: str, payload: bytes, ctx: registry.CallContext) -> Message:
        info = self.methods.get(full_name)
        if info is None:
            raise RpcError(Code.UNIMPLEMENTED, f"{full_name}: unknown service or method")
        handler = registry.METHODS.get(full_name)
        if handler is None:
            raise RpcError(Code.UNIMPLEMENTED, f"{full_name} is not implemented")
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{full_name}: deadline passed before the call started")
        try:
            request = info.request_class.FromString(payload)
        except (DecodeError, ValueError) as exc:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"{full_name}: cannot decode {info.request_class.__name__}: {exc}"
            ) from None
        response = handler(self.services, request, ctx)
        if not isinstance(response, info.response_class):
            raise TypeError(f"handler returned {type(response).__name__}, expected {info.response_class.__name__}")
        return response
