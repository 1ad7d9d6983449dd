"""Clients of the agent API: one interface, a ttrpc and a gRPC implementation.

Addresses: unix://PATH, tcp://HOST:PORT, vsock://CID:PORT and hvsock://UDS_PATH:PORT (hybrid vsock:
connect to the unix socket, send "CONNECT <port>\\n", read "OK <n>\\n", then speak the protocol).

grpcio can dial unix and tcp itself. For vsock and hybrid vsock the gRPC client runs a local relay: a
unix socket in a private 0700 temp directory; each connection grpcio makes to it is joined to a fresh
connection dialled our way (vsock, or hybrid vsock with its CONNECT handshake), so grpcio never needs to
know about vsock.
"""

from __future__ import annotations

import abc
import contextlib
import shutil
import socket
import tempfile
import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from google.protobuf.message import Message

from agent.address import Address, parse_address
from agent.rpc.convert import MethodInfo, resolve_method
from agent.rpc.status import Code, code_name
from agent.rpc.ttrpc import TtrpcCallError, TtrpcClientConnection

PROTOCOLS = ("ttrpc", "grpc")
DEFAULT_TIMEOUT = 10.0


class AgentCallError(Exception):
    """A call ended with a non-OK status (or could not be made: UNAVAILABLE, DEADLINE_EXCEEDED)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code_name(code)}: {message}")
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        return code_name(self.code)


def dial(address: Address, timeout: float | None = DEFAULT_TIMEOUT) -> socket.socket:
    """A connected stream socket to the agent at ``address``."""
    try:
        if address.scheme == "hvsock":
            from agentctl import hvsock

            return hvsock.connect(address.path, address.port, timeout or DEFAULT_TIMEOUT)
        if address.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = address.path
        elif address.scheme == "vsock":
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            target = (address.cid, address.port)
        elif address.scheme == "tcp":
            return socket.create_connection((address.host, address.port), timeout=timeout)
        else:
            raise AgentCallError(Code.INVALID_ARGUMENT, f"cannot dial {address}")
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock
    except OSError as exc:
        raise AgentCallError(Code.UNAVAILABLE, f"cannot connect to {address}: {exc}") from exc


class AgentClient(abc.ABC):
    """Unary calls by full method name ("grpc.AgentService/CreateContainer") or short name."""

    def __init__(self, address: Address, timeout: float | None) -> None:
        self.address = address
        self.timeout = timeout

    def call(self, method: str, request: Message | None = None, timeout: float | None = None) -> Message:
        try:
            info = resolve_method(method)
        except KeyError as exc:
            raise AgentCallError(Code.UNIMPLEMENTED, str(exc.args[0])) from None
        if request is None:
            request = info.request_class()
        if not isinstance(request, info.request_class):
            raise TypeError(f"{info.full_name} takes {info.request_class.__name__}, not {type(request).__name__}")
        return self._call(info, request, timeout if timeout is not None else self.timeout)

    def _call(self, info: MethodInfo, request: Message, timeout: float | None) -> Message:
        return info.response_class.FromString(self.call_raw(info.full_name, request.SerializeToString(), timeout))

    def read_to_end(self, container_id: str, exec_id: str, stream: str = "stdout", chunk: int = 65536) -> bytes:
        """Everything a process writes to ``stream`` (stdout or stderr), read ``chunk`` bytes a call until
        the stream ends (the agent answers the call after the last with an error, or with nothing)."""
        from agent.rpc.pb import agent_pb2

        method = f"grpc.AgentService/Read{stream.capitalize()}"
        data = b""
        while True:
            try:
                reply = self.call(method, agent_pb2.ReadStreamRequest(container_id=container_id, exec_id=exec_id,
                                                                      len=chunk))  # fmt: skip
            except AgentCallError:
                return data
            assert isinstance(reply, agent_pb2.ReadStreamResponse)
            if not reply.data:
                return data
            data += reply.data

    @abc.abstractmethod
    def call_raw(self, method: str, payload: bytes, timeout: float | None = None) -> bytes:
        """``method`` (its full name, "grpc.AgentService/CreateContainer") given ``payload`` as its
        request's bytes, whatever they are; the response's bytes. AgentCallError on a status."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TtrpcAgentClient(AgentClient):
    def __init__(self, address: Address, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__(address, timeout)
        self._connection = TtrpcClientConnection(dial(address, timeout))

    def call_raw(self, method: str, payload: bytes, timeout: float | None = None) -> bytes:
        service, _, name = method.rpartition("/")
        try:
            answer: bytes = self._connection.call(service, name, payload, timeout)
        except TtrpcCallError as exc:
            raise AgentCallError(exc.code, exc.message) from None
        except TimeoutError:
            raise AgentCallError(Code.DEADLINE_EXCEEDED, f"{method}: no answer within {timeout} s") from None
        except OSError as exc:
            raise AgentCallError(Code.UNAVAILABLE, f"{method}: {exc}") from None
        return answer

    def close(self) -> None:
        self._connection.close()


class LocalRelay:
    """A private unix socket whose connections are joined to fresh connections to ``address``."""

    def __init__(self, address: Address, timeout: float | None) -> None:
        self._address = address
        self._timeout = timeout
        self._dir = Path(tempfile.mkdtemp(prefix="agentctl-relay-"))
        # removed on close(), and at exit or collection when a caller forgot to close
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self.path = self._dir / "relay.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(8)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(local,), daemon=True).start()

    def _join(self, local: socket.socket) -> None:
        from agentctl.pump import pump

        try:
            remote = dial(self._address, self._timeout)
        except AgentCallError:
            local.close()
            return
        remote.settimeout(None)
        try:
            pump(local, remote)
        finally:
            remote.close()
            local.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._cleanup()


class GrpcAgentClient(AgentClient):
    def __init__(self, address: Address, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        import grpc

        super().__init__(address, timeout)
        self._relay: LocalRelay | None = None
        if address.scheme == "unix":
            target = f"unix:{address.path}"
        elif address.scheme == "tcp":
            target = f"{address.host}:{address.port}"
        else:
            self._relay = LocalRelay(address, timeout)
            target = f"unix:{self._relay.path}"
        self._grpc = grpc
        self._channel = grpc.insecure_channel(target)
        self._stubs: dict[str, Any] = {}

    def call_raw(self, method: str, payload: bytes, timeout: float | None = None) -> bytes:
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._channel.unary_unary(f"/{method}")  # bytes in, bytes out
            self._stubs[method] = stub
        try:
            answer: bytes = stub(payload, timeout=timeout)
        except self._grpc.RpcError as exc:
            raise AgentCallError(exc.code().value[0], exc.details() or "") from None
        return answer

    def close(self) -> None:
        self._channel.close()
        if self._relay is not None:
            self._relay.close()


def connect(address: str | Address, protocol: str = "ttrpc", timeout: float | None = DEFAULT_TIMEOUT) -> AgentClient:
    """A client for ``address`` speaking ``protocol`` ("ttrpc" or "grpc")."""
    parsed = parse_address(address) if isinstance(address, str) else address
    if protocol == "ttrpc":
        return TtrpcAgentClient(parsed, timeout)
    if protocol == "grpc":
        return GrpcAgentClient(parsed, timeout)
    raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
