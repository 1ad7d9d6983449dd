"""One dispatch for both protocols: find the handler, decode, call, encode, map errors.

ttrpc and gRPC both hand this class a service name, a method name and the request bytes, and get back
a status code, a message and the response bytes. Nothing a client sends escapes as an exception.

With ``background_load`` (the agent) nothing of the protobuf runtime, the generated code or the
handlers is imported before serving: on a small guest under TCG that is about half a second before
the first Check. Until they have loaded, grpc.Health/Check is answered here from its encoded reply
(agent/rpc/wire.py); every other call waits for the load.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from agent.rpc import registry, wire
from agent.rpc.status import Code, RpcError, status_for

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from agent.rpc.convert import MethodInfo
    from agent.services import Services

log = logging.getLogger(__name__)


LOAD_WAIT = 60.0  # seconds a call waits for the handlers while they load
LOAD_DELAY = 1.0  # seconds the background load waits for the first call before starting anyway
CHECK = "grpc.Health/Check"
# HealthCheckResponse{status: SERVING} (health.proto: field 1, enum value 1): what the registered
# handler (agent/rpc/methods/guest.py) always answers.
CHECK_SERVING = wire.varint_field(1, 1)


class Servicer:
    """Dispatches calls to the handlers in agent.rpc.registry.

    With ``background_load`` the method table and every area's handlers load on a thread once the
    first call has been answered, so the agent answers its first Check without paying for those
    imports; any other call that comes before the load has finished waits for it.
    """

    def __init__(self, services: Services, *, background_load: bool = False) -> None:
        self.services = services
        self.methods: dict[str, MethodInfo] = {}
        self._loaded = threading.Event()
        self._first_call = threading.Event()
        if background_load:
            threading.Thread(target=self._load_all, args=(LOAD_DELAY,), name="load-handlers", daemon=True).start()
        else:
            self._load_all()

    def _load_all(self, delay: float = 0.0) -> None:
        # On a small guest the imports would compete with the first calls for the only CPU: start
        # once the first call has been answered (or after ``delay`` if none comes).
        if delay:
            self._first_call.wait(delay)
        try:
            from agent.rpc.convert import method_table

            self.methods = method_table()
            from agent.rpc import methods

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
            if full_name == CHECK and not self._loaded.is_set():
                encoded = self._check_before_load(payload, ctx)
            else:
                encoded = self._dispatch(full_name, payload, ctx).SerializeToString()
            log.debug("%s over %s: OK in %.1f ms", full_name, ctx.protocol, (time.monotonic() - started) * 1000)
            return Code.OK, "", encoded
        except Exception as exc:
            code, message = status_for(exc, full_name)
            log.info("%s over %s: %s: %s", full_name, ctx.protocol, code.name, message)
            return code, message, b""
        finally:
            self._first_call.set()

    def _check_before_load(self, payload: bytes, ctx: registry.CallContext) -> bytes:
        """grpc.Health/Check without the protobuf runtime: the request is checked as a CheckRequest
        (field 1, the service name, a string) and the reply is SERVING, as the handler's is."""
        try:
            for number, wire_type, value in wire.fields(payload):
                if number == 1 and wire_type == wire.LENGTH_DELIMITED:
                    assert isinstance(value, bytes)
                    wire.text(value)
        except wire.WireError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"{CHECK}: cannot decode CheckRequest: {exc}") from None
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{CHECK}: deadline passed before the call started")
        return CHECK_SERVING

    def _dispatch(self, full_name: str, payload: bytes, ctx: registry.CallContext) -> Message:
        if not self._loaded.is_set():
            self._loaded.wait(LOAD_WAIT)
        info = self.methods.get(full_name)
        if info is None:
            raise RpcError(Code.UNIMPLEMENTED, f"{full_name}: unknown service or method")
        handler = registry.METHODS.get(full_name)
        if handler is None:
            raise RpcError(Code.UNIMPLEMENTED, f"{full_name} is not implemented")
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{full_name}: deadline passed before the call started")
        from google.protobuf.message import DecodeError

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
