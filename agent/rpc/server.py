"""The agent's one listener: vsock, unix or tcp; each connection is sniffed for its protocol.

A connection whose first bytes are the HTTP/2 client preface is gRPC, served by our own HTTP/2 server in
h2grpc.py (unary calls only, as Kata's API is; imported with the first gRPC connection, since Kata's
runtime speaks ttrpc and the agent's start should not pay for it); anything else is served as ttrpc.
Both run calls on one pool and expire them with one deadline thread. The sniff reads at most the
preface's 24 bytes, stops at the first byte that differs, and gives up after ``sniff_timeout`` seconds,
on the connection's own thread, so a silent client holds nobody else up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.address import VMADDR_CID_ANY, Address
from agent.errors import InvalidArgument, ResourceError
from agent.rpc.registry import CallContext
from agent.rpc.ttrpc import MESSAGE_LENGTH_MAX, ByteBudget, Deadlines, TtrpcConnection

if TYPE_CHECKING:
    from agent.rpc.servicer import Servicer

log = logging.getLogger(__name__)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Calls run on a pool of up to ``max_workers`` threads (created as needed): Kata keeps long polls open
# (WaitProcess, ReadStdout and ReadStderr for every process), which must not starve other calls. The
# request bytes held by calls in flight are bounded across connections.
REQUEST_BYTES_IN_FLIGHT = 16 * MESSAGE_LENGTH_MAX


def sniff(sock: socket.socket, timeout: float) -> tuple[str, bytes]:
    """Classify a fresh connection: ("grpc" | "ttrpc" | "closed", the bytes read so far)."""
    sock.settimeout(timeout)
    seen = b""
    try:
        while len(seen) < len(HTTP2_PREFACE):
            chunk = sock.recv(len(HTTP2_PREFACE) - len(seen))
            if not chunk:
                return "closed", seen
            seen += chunk
            if not HTTP2_PREFACE.startswith(seen[: len(HTTP2_PREFACE)]):
                return "ttrpc", seen
    except TimeoutError:
        return "closed", seen
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)
    return "grpc", seen


def listen(address: Address, backlog: int = 64) -> socket.socket:
    """A listening socket for ``address``; the agent owns it (grpcio cannot listen on vsock)."""
    if address.scheme == "vsock":
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        cid = socket.VMADDR_CID_ANY if address.cid == VMADDR_CID_ANY else address.cid
        target: tuple[Any, ...] | str = (cid, address.port)
    elif address.scheme == "unix":
        path = Path(address.path)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # a stale socket from an earlier run
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResourceError(f"cannot listen on {address}: {path.parent}: {exc.strerror or exc}") from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address.path
    elif address.scheme == "tcp":
        log.warning("listening on tcp://%s:%d: unauthenticated, for development only", address.host, address.port)
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target = (address.host, address.port)
    else:
        raise InvalidArgument(f"cannot listen on {address}: use vsock://, unix:// or tcp://")
    try:
        sock.bind(target)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ResourceError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return sock


class AgentServer:
    def __init__(
        self,
        address: Address,
        servicer: Servicer,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        max_workers: int = 256,
        max_connections: int = 128,
        sniff_timeout: float = 30.0,
    ) -> None:
        self.address = address
        self.servicer = servicer
        self._run_dir = run_dir
        self._sniff_timeout = sniff_timeout
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc")
        self._deadlines = Deadlines()
        self._budget = ByteBudget(REQUEST_BYTES_IN_FLIGHT)
        self._connection_slots = threading.BoundedSemaphore(max_connections)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def bind(self) -> None:
        self._sock = listen(self.address)

    @property
    def bound(self) -> str:
        """The address actually bound (tcp port 0 becomes the real port)."""
        if self._sock is not None and self.address.scheme == "tcp":
            host, port = self._sock.getsockname()[:2]
            return f"tcp://{host}:{port}"
        return str(self.address)

    def start(self) -> None:
        if self._sock is None:
            self.bind()
        self._thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting, close every connection. Idempotent."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            open_now = list(self._open)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.address.scheme == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.address.path)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.warning("accept failed: %s", exc)
                self._stopping.wait(0.1)  # e.g. out of file descriptors: do not spin
                continue
            if not self._connection_slots.acquire(blocking=False):
                log.warning("too many open connections; refusing a new one")
                conn.close()
                continue
            with self._lock:
                self._open.add(conn)
            try:
                threading.Thread(target=self._serve_connection, args=(conn,), name="conn", daemon=True).start()
            except RuntimeError:
                self._forget(conn)
                conn.close()

    def _forget(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)
        self._connection_slots.release()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            protocol, seen = sniff(conn, self._sniff_timeout)
            if protocol == "ttrpc":
                TtrpcConnection(
                    conn, self._dispatch, self._pool, self._deadlines, prefix=seen, budget=self._budget
                ).serve()
            elif protocol == "grpc":
                from agent.rpc.h2grpc import GrpcConnection

                # gRPC request bytes are bounded per connection by its HTTP/2 flow-control window
                # (h2grpc.CONNECTION_WINDOW), not by the shared budget: an HTTP/2 reader must never wait,
                # or the window updates its own answers need would go unread.
                GrpcConnection(conn, self._dispatch, self._pool, prefix=seen, deadlines=self._deadlines).serve()
        except Exception:
            log.exception("connection failed")
        finally:
            self._forget(conn)
            conn.close()

    def _dispatch(self, service: str, method: str, payload: bytes, ctx: CallContext) -> tuple[int, str, bytes]:
        return self.servicer.call(service, method, payload, ctx)
