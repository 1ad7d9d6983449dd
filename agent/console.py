"""The debug console: a shell on a pty for each connection to vsock port ``config.console_vport``.

Off unless ``agent.debug_console`` is set; then nothing else changes in the agent. Each connection
gets its own shell in a fresh session with the pty as its controlling terminal. The shell is spawned
with subprocess (fork+exec in C, no Python in the child), never by forking the threaded agent.

The stream is raw bytes both ways, so any vsock client works (``socat - VSOCK-CONNECT:3:1026``).
One in-band message goes from client to agent, the window size, as an APC string that no keyboard
sends::

    ESC _ pykata-resize;ROWS;COLS ESC \\        (bytes 1b 5f ... 1b 5c; ROWS and COLS in decimal)

The agent removes it from the stream and sets the pty's size (TIOCSWINSZ), which signals SIGWINCH
to the shell's foreground job. ``agentctl console`` sends one on attach and on every SIGWINCH.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import threading

from agent.config import AgentConfig
from agent.system import children
from agent.system.paths import HostPaths

log = logging.getLogger(__name__)

RESIZE_PREFIX = b"\x1b_pykata-resize;"
RESIZE_END = b"\x1b\\"
RESIZE_MAX = 32  # bytes after the prefix before we give up on a resize message
SHELLS = ("/bin/bash", "/bin/sh")
SHELL_ENV = {"TERM": "linux", "HOME": "/root", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
MAX_SESSIONS = 8
CHUNK = 16384


def resize_message(rows: int, cols: int) -> bytes:
    """The in-band window size message a client sends."""
    return RESIZE_PREFIX + f"{rows};{cols}".encode() + RESIZE_END


class ResizeFilter:
    """Takes resize messages out of a client byte stream; partial ones wait for the next chunk."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """(bytes for the pty, window sizes found) for the next chunk from the client."""
        data = self._pending + data
        self._pending = b""
        out = bytearray()
        sizes: list[tuple[int, int]] = []
        while data:
            start = data.find(RESIZE_PREFIX)
            if start < 0:
                # Keep a tail that could be the start of a prefix split across chunks.
                keep = 0
                for n in range(min(len(RESIZE_PREFIX) - 1, len(data)), 0, -1):
                    if RESIZE_PREFIX.startswith(data[-n:]):
                        keep = n
                        break
                out += data[: len(data) - keep]
                self._pending = data[len(data) - keep :]
                break
            out += data[:start]
            body_start = start + len(RESIZE_PREFIX)
            end = data.find(RESIZE_END, body_start)
            if end < 0:
                if len(data) - body_start > RESIZE_MAX:
                    out += data[start:body_start]  # not one of ours after all: pass it through
                    data = data[body_start:]
                    continue
                self._pending = data[start:]
                break
            size = _parse_size(data[body_start:end])
            if size is None:
                out += data[start : end + len(RESIZE_END)]
            else:
                sizes.append(size)
            data = data[end + len(RESIZE_END) :]
        return bytes(out), sizes


def _parse_size(body: bytes) -> tuple[int, int] | None:
    rows, sep, cols = body.partition(b";")
    if not sep or not rows.isdigit() or not cols.isdigit():
        return None
    r, c = int(rows), int(cols)
    if not (0 < r < 10000 and 0 < c < 10000):
        return None
    return r, c


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def find_shell(paths: HostPaths) -> str:
    for shell in SHELLS:
        if os.access(paths.inside(shell), os.X_OK):
            return shell
    return SHELLS[-1]


def setsid_command() -> list[str]:
    """How to run setsid here: the program, or busybox's applet (an initrd may have only busybox)."""
    setsid = shutil.which("setsid", path=SHELL_ENV["PATH"])
    if setsid is not None:
        return [setsid]
    busybox = shutil.which("busybox", path=SHELL_ENV["PATH"])
    return [busybox, "setsid"] if busybox is not None else []


def spawn_shell(shell: str, slave_fd: int) -> subprocess.Popen[bytes]:
    """The shell on the pty slave, in a new session with the pty as its controlling terminal."""
    setsid = setsid_command()
    if setsid:
        # setsid -c: new session, then TIOCSCTTY on stdin (util-linux and busybox both have it).
        argv = [*setsid, "-c", shell, "-i"]
        new_session = False
    else:
        argv, new_session = [shell, "-i"], True  # a session without a controlling terminal
    with children.spawning() as own:  # so PID 1's reaper leaves its exit status to us
        child = subprocess.Popen(
            argv,
            stdin=slave_fd,
            stdout=slave_fd,
            stderr=slave_fd,
            start_new_session=new_session,
            close_fds=True,
            env=dict(SHELL_ENV),
            cwd="/",
        )
        own(child.pid)
    return child


def serve_session(conn: socket.socket, shell: str) -> None:
    """Relay between ``conn`` and a new shell until either side ends; then end the other."""
    master, slave = os.openpty()
    try:
        child = spawn_shell(shell, slave)
    except OSError as exc:
        os.close(master)
        os.close(slave)
        with contextlib.suppress(OSError):
            conn.sendall(f"debug console: cannot start {shell}: {exc}\r\n".encode())
        return
    os.close(slave)
    log.info("debug console session started", extra={"shell": shell, "pid": child.pid})
    filter_ = ResizeFilter()
    try:
        _relay(conn, master, filter_)
    finally:
        os.close(master)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGHUP)
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        children.release(child.pid)
        log.info("debug console session ended", extra={"pid": child.pid, "status": child.returncode})


def _relay(conn: socket.socket, master: int, filter_: ResizeFilter) -> None:
    sock_fd = conn.fileno()
    poller = select.poll()  # not select(): the agent may hold more than FD_SETSIZE descriptors
    poller.register(sock_fd, select.POLLIN)
    poller.register(master, select.POLLIN)
    while True:
        readable = {fd for fd, _ in poller.poll()}
        if sock_fd in readable:
            data = conn.recv(CHUNK)
            if not data:
                return
            payload, sizes = filter_.feed(data)
            for rows, cols in sizes:
                set_window_size(master, rows, cols)
            view = memoryview(payload)
            while view:
                written = os.write(master, view)
                view = view[written:]
        if master in readable:
            try:
                data = os.read(master, CHUNK)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the shell and everything on the pty exited
                    return
                raise
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:
                return


class ConsoleServer:
    """Accepts console connections on ``listener`` in a daemon thread; one thread per session."""

    def __init__(self, listener: socket.socket, shell: str) -> None:
        self.listener = listener
        self.shell = shell
        self.sessions: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="debug-console", daemon=True)

    def start(self) -> ConsoleServer:
        self._thread.start()
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.sessions = {t for t in self.sessions if t.is_alive()}
                if len(self.sessions) >= MAX_SESSIONS:
                    with contextlib.suppress(OSError):
                        conn.sendall(b"debug console: too many sessions\r\n")
                    conn.close()
                    continue
                thread = threading.Thread(target=self._session, args=(conn,), name="console-session", daemon=True)
                self.sessions.add(thread)
            thread.start()

    def _session(self, conn: socket.socket) -> None:
        with conn:
            try:
                serve_session(conn, self.shell)
            except Exception:
                log.exception("debug console session failed")


def vsock_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(MAX_SESSIONS)
    except OSError:
        sock.close()
        raise
    return sock


def start_console(config: AgentConfig, paths: HostPaths) -> ConsoleServer | None:
    """Serve the debug console when the config turns it on; None (and no listener) otherwise."""
    port = config.console_vport
    if not port:
        return None
    try:
        listener = vsock_listener(port)
    except OSError as exc:
        log.error("debug console: cannot listen on vsock port %d: %s", port, exc)
        return None
    from agent.init import wait_for_deferred_files

    wait_for_deferred_files("the debug console's shell")  # busybox comes with the initrd's deferred files
    shell = find_shell(paths)
    log.info("debug console listening", extra={"vport": port, "shell": shell})
    return ConsoleServer(listener, shell).start()
