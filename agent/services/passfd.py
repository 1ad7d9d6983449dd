"""Process stdio over streams the runtime opens to the agent (Kata's "passfd" I/O).

With ``agent.passfd_listener_port`` set, the agent listens on that vsock port. The runtime opens one
connection per stdio stream it wants to hand a process (its hybrid vsock answers ``OK <host port>``,
the port the guest sees as the connection's peer), then names those host ports in CreateContainer or
ExecProcess (``stdin_port``, ``stdout_port``, ``stderr_port``; 0: the usual pipe, read with ReadStdout).
The connection itself becomes the process's stdin, stdout or stderr: its output goes to the host
without the agent copying it, and the host sees EOF when the process (and what it started) closes it.
A process with a terminal gets its pty, and the agent copies between the pty and the streams.

Streams wait in a table by host port until a request takes them: at most ``MAX_PENDING_STREAMS``
(the oldest is closed to make room); a request waits up to ``STREAM_WAIT`` seconds for a stream that
has not come yet, since the runtime may connect and call at the same time.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket
import threading
import time

from agent.errors import IncorrectState, InvalidArgument

log = logging.getLogger(__name__)

MAX_PENDING_STREAMS = 256
STREAM_WAIT = 5.0  # seconds a request waits for a stream it names
STDIO = ("stdin", "stdout", "stderr")
COPY_CHUNK = 64 * 1024


class PassfdStreams:
    """The listener and the table of streams not yet taken, by the peer's (host's) port."""

    def __init__(self, listener: socket.socket, port: int) -> None:
        self.listener = listener
        self.port = port  # the listening port, for messages
        self._pending: collections.OrderedDict[int, socket.socket] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="passfd-accept", daemon=True)

    @classmethod
    def listen_vsock(cls, port: int) -> PassfdStreams:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.bind((socket.VMADDR_CID_ANY, port))
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        return cls(sock, port)

    def start(self) -> PassfdStreams:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("passfd listener: accept failed: %s", exc)
                    time.sleep(0.1)
                continue
            self._add(conn, int(peer[1]))

    def _add(self, conn: socket.socket, host_port: int) -> None:
        dropped: list[tuple[int, socket.socket]] = []
        with self._cond:
            if self._closed:
                conn.close()
                return
            old = self._pending.pop(host_port, None)
            if old is not None:
                dropped.append((host_port, old))  # the host reused the port: its old stream is gone
            self._pending[host_port] = conn
            while len(self._pending) > MAX_PENDING_STREAMS:
                dropped.append(self._pending.popitem(last=False))
            self._cond.notify_all()
        for port, sock in dropped:
            log.warning("passfd: closing the stream from host port %d, never taken", port)
            sock.close()
        log.debug("passfd: stream from host port %d", host_port)

    def pending(self) -> list[int]:
        with self._cond:
            return list(self._pending)

    def take(self, ports: dict[str, int], deadline: float | None = None) -> dict[str, socket.socket]:
        """The streams ``ports`` names (stdin/stdout/stderr -> host port; 0 skips), waiting for the
        ones not here yet until STREAM_WAIT seconds or ``deadline`` pass. All or none: when one does
        not come, the others stay in the table and IncorrectState names what is missing."""
        wanted = {name: port for name, port in ports.items() if port}
        if len(set(wanted.values())) != len(wanted):
            raise InvalidArgument(f"passfd: one host port names two streams: {wanted}")
        until = time.monotonic() + STREAM_WAIT
        if deadline is not None:
            until = min(until, deadline)
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or all(p in self._pending for p in wanted.values()), until - time.monotonic()
            )
            missing = {name: port for name, port in wanted.items() if port not in self._pending}
            if missing:
                names = ", ".join(f"{name} (host port {port})" for name, port in missing.items())
                raise IncorrectState(
                    f"no stream for {names} on the passfd listener (vsock port {self.port}): the runtime "
                    f"must connect it before the call (waited {STREAM_WAIT:.0f} s)"
                )
            return {name: self._pending.pop(port) for name, port in wanted.items()}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending.values()), collections.OrderedDict()
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in pending:
            sock.close()


def put_back(streams: PassfdStreams | None, taken: dict[str, socket.socket]) -> None:
    """Return streams a failed request took, so the runtime's retry finds them."""
    for sock in taken.values():
        if streams is None:
            sock.close()
            continue
        try:
            port = int(sock.getpeername()[1])
        except OSError:
            sock.close()
            continue
        streams._add(sock, port)


def _copy(source: int, target: int, what: str) -> None:
    """Copy ``source`` to ``target`` until either ends, then close both: the thread that copies owns
    its descriptors (copies of the relay's), so none is closed under it and reused meanwhile."""
    try:
        os.set_blocking(source, True)
        while True:
            try:
                chunk = os.read(source, COPY_CHUNK)
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: a pty whose last slave closed, its usual end
                    log.debug("passfd %s: read failed: %s", what, exc)
                break
            if not chunk:
                break
            view = memoryview(chunk)
            try:
                while view:
                    view = view[os.write(target, view) :]
            except OSError as exc:
                log.debug("passfd %s: write failed: %s", what, exc)
                break
    finally:
        for fd in (source, target):
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyRelay:
    """Copies a terminal process's pty to and from its passfd streams (a pty cannot be handed over):
    host stdin -> pty, pty -> host stdout (a terminal's one output). When the pty ends (the process
    and what it started have exited), the host's stdout gets EOF and the stdin copy stops."""

    def __init__(self, master: int, streams: dict[str, socket.socket], name: str) -> None:
        self.name = name
        self._streams = streams  # kept to shut the connections down; the copies use their own fds
        self._lock = threading.Lock()
        stdout, stdin = streams.get("stdout"), streams.get("stdin")
        if stdout is not None:
            out_fds = (os.dup(master), os.dup(stdout.fileno()))
            threading.Thread(target=self._output, args=out_fds, name=f"passfd-{name}-out", daemon=True).start()
        if stdin is not None:
            in_fds = (os.dup(stdin.fileno()), os.dup(master))
            threading.Thread(
                target=_copy, args=(*in_fds, f"{name} stdin"), name=f"passfd-{name}-in", daemon=True
            ).start()

    def _output(self, master: int, stdout: int) -> None:
        _copy(master, stdout, f"{self.name} tty")
        self.close()

    def close(self) -> None:
        """Shut every stream down (the host sees EOF; the copies stop) and close ours."""
        with self._lock:
            streams, self._streams = self._streams, {}
        for name, sock in streams.items():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR if name == "stdout" else socket.SHUT_RDWR)
            sock.close()
