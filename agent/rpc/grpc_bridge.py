"""gRPC through grpcio, started on the first gRPC connection.

grpcio's wheels cannot listen on vsock, and importing grpc costs ~100 ms, so the agent's own listener
accepts every connection and only a connection that opens with the HTTP/2 preface reaches this module.
The bridge runs a grpcio server on a private unix socket (a 0700 directory of its own) serving the same
servicer through generic handlers, and pumps bytes between the accepted connection and that socket,
sniffed bytes first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from agent.rpc.convert import SERVICES, MethodInfo
from agent.rpc.registry import CallContext
from agent.rpc.servicer import Servicer

log = logging.getLogger(__name__)

_PUMP_CHUNK = 64 * 1024
_STATUS_BY_NUMBER: dict[int, grpc.StatusCode] = {sc.value[0]: sc for sc in grpc.StatusCode}
MAX_MESSAGE = 16 * 1024 * 1024
_MAX_PARENT_LENGTH = 80  # leaves room for "/pykata-grpc-XXXXXXXX/grpc.sock" within sun_path


def _unary(servicer: Servicer, info: MethodInfo) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def behaviour(request: bytes, context: grpc.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None and remaining < 1e8 else None
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        code, message, payload = servicer.call(
            info.service, info.name, request, CallContext("grpc", deadline, metadata)
        )
        if code != 0:
            context.abort(_STATUS_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN), message)
        return payload

    return behaviour


def generic_handlers(servicer: Servicer) -> list[grpc.GenericRpcHandler]:
    """One generic handler per served service, covering every method of its proto."""
    handlers = []
    for service in SERVICES:
        methods: dict[str, Any] = {
            info.name: grpc.unary_unary_rpc_method_handler(_unary(servicer, info))
            for info in servicer.methods.values()
            if info.service == service
        }
        handlers.append(grpc.method_handlers_generic_handler(service, methods))
    return handlers


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides have closed (half-closes are passed on)."""
    with selectors.DefaultSelector() as selector:
        peers = {a: b, b: a}
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)
        open_sides = 2
        while open_sides:
            for key, _ in selector.select():
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = source.recv(_PUMP_CHUNK)
                except OSError:
                    data = b""
                target = peers[source]
                if data:
                    try:
                        target.sendall(data)
                        continue
                    except OSError:
                        return
                selector.unregister(source)
                open_sides -= 1
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)


class GrpcBridge:
    def __init__(self, servicer: Servicer, run_dir: Path | None = None, max_workers: int = 128) -> None:
        parent = None
        if run_dir is not None:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                parent = run_dir
            except OSError as exc:
                log.warning("gRPC bridge: cannot use %s (%s); using the temp directory", run_dir, exc)
        if parent is not None and len(str(parent)) > _MAX_PARENT_LENGTH:
            parent = None  # unix socket paths are limited to 107 bytes
        self._dir = Path(tempfile.mkdtemp(prefix="pykata-grpc-", dir=parent))
        os.chmod(self._dir, 0o700)
        self.socket_path = self._dir / "grpc.sock"
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            handlers=generic_handlers(servicer),
            options=options,
        )
        if not self._server.add_insecure_port(f"unix:{self.socket_path}"):
            raise OSError(f"grpc cannot listen on unix:{self.socket_path}")
        self._server.start()
        log.info("gRPC bridge started", extra={"socket": str(self.socket_path)})

    def handle(self, conn: socket.socket, sniffed: bytes) -> None:
        """Serve one accepted connection through the internal grpc server."""
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(str(self.socket_path))
            upstream.sendall(sniffed)
            pump(conn, upstream)
        finally:
            upstream.close()

    def stop(self) -> None:
        self._server.stop(grace=1.0).wait(2.0)
        shutil.rmtree(self._dir, ignore_errors=True)
