"""One dispatch for both protocols: find the handler, decode, call, encode, map errors.

ttrpc and gRPC both hand this class a service name, a method name and the request bytes, and get back
a status code, a message and the response bytes. Nothing a client sends escapes as an exception.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError, Message

from agent.rpc import registry
from agent.rpc.convert import MethodInfo, method_table
from agent.rpc.status import Code, RpcError, status_for

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)


# The area whose module holds grpc.Health: loaded before serving so the first Check never waits.
FIRST_AREA = "agent.rpc.methods.guest"
LOAD_WAIT = 60.0  # seconds a call waits for the other areas' handlers while they load
LOAD_DELAY = 1.0  # seconds the background load waits for the first call before starting anyway


class Servicer:
    """Dispatches calls to the handlers in agent.rpc.registry.

    With ``background_load`` only the health area is imported up front and the other areas load on a
    thread, so the agent answers its first Check without paying for every area's imports; a call
    for a method that is not registered yet waits for that load to finish.
    """

    def __init__(self, services: Services, *, background_load: bool = False) -> None:
        self.services = services
        self.methods: dict[str, MethodInfo] = method_table()
        self._loaded = threading.Event()
        self._first_call = threading.Event()
        importlib.import_module(FIRST_AREA)
        if background_load:
            threading.Thread(target=self._load_all, args=(LOAD_DELAY,), name="load-handlers", daemon=True).start()
        else:
            self._load_all()

    def _load_all(self, delay: float = 0.0) -> None:
        from agent.rpc import methods

        # On a small guest the imports would compete with the first calls for the only CPU: start
        # once the first call has been answered (or after ``delay`` if none comes).
        if delay:
            self._first_call.wait(delay)
        try:
            methods.load_all()
        except Exception:
            log.exception("loading RPC handlers failed; their methods answer UNIMPLEMENTED")
        finally:
            self._loaded.set()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def implemented(self) -> list[str]:
        return sorted(name for name in self.methods if name in registry.METHODS)

    def call(self, service: str, method: str, payload: bytes, ctx: registry.CallContext) -> tuple[Code, str, bytes]:
        """Run one unary call; returns (code, message, response bytes). Never raises."""
        full_name = f"{service}/{method}"
        started = time.monotonic()
        try:
            response = self._dispatch(full_name, payload, ctx)
            encoded = response.SerializeToString()
            log.debug("%s over %s: OK in %.1f ms", full_name, ctx.protocol, (time.monotonic() - started) * 1000)
            return Code.OK, "", encoded
        except Exception as exc:
            code, message = status_for(exc, full_name)
            log.info("%s over %s: %s: %s", full_name, ctx.protocol, code.name, message)
            return code, message, b""
        finally:
            self._first_call.set()

    def _dispatch(self, full_name: str, payload: bytes, ctx: registry.CallContext) -> Message:
        info = self.methods.get(full_name)
        if info is None:
            raise RpcError(Code.UNIMPLEMENTED, f"{full_name}: unknown service or method")
        handler = registry.METHODS.get(full_name)
        if handler is None and not self._loaded.is_set():
            self._loaded.wait(LOAD_WAIT)
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
