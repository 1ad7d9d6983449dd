"""Warm pairs: a shim and its container process, forked ahead of the request they will serve.

A create costs two forks before the container's own setup begins: the shim's (which then unshares a
pid namespace, since pid namespaces apply to children only) and the container process's. A warm
pair has done both, and the process (pid 1 of the new pid namespace) has imported
agent.container.init and made the namespaces it may make ahead (``preunshare``); it waits on a
SOCK_SEQPACKET socket. A request that wants a new pid namespace in the runtime's user namespace (most
creates: fits_warm_pair) is then handed over with two sendmsg calls (hand_over): the request and its
descriptors to the process, the status pipe to the shim.

Two callers fork pairs, with this one implementation:

- the fork server (forkserver.py) forks one whenever it is idle, for the agent's next create;
- a cold ``pykata-runc create``/``run`` (cli.py) forks one as soon as it has read the bundle's spec,
  so the pair imports and prepares on the other core while the command imports the engine, checks
  the spec, plans the rootfs and makes the cgroup; cli_backend.LocalForkServer hands it the request.

So this module imports no more than that command may afford before it has forked: the C modules
``_socket`` and ``marshal`` (``socket`` imports enum and selectors), no typing, json or logging at
run time; the pair imports agent.container.init after the fork. Messages are dicts in ``marshal``
form (the same interpreter is at both ends). Parked processes are named ``pykata-parked`` in ps;
when their sockets close unused, they exit.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys

from agent.errors import ResourceError

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 253  # the kernel's SCM_MAX_FD: a request's status and control pipes, stdio and preserved fds
PARKED_NAME = "pykata-parked"  # a parked process's name in ps and /proc/<pid>/comm until it has work
_INT = 4  # bytes of a C int: SCM_RIGHTS carries descriptors as an array of them

# Namespaces a warm process may make before its request: nothing in them depends on the request
# or on anything the runtime does meanwhile. (Not mount: a copy of the runtime's mounts made now
# would miss what the runtime mounts for the container later. Not cgroup: its root is the cgroup the
# process is in when it unshares. Not pid or user: the shim's business.) Their kernel objects are
# charged to the forking process's cgroup rather than the container's, a few pages.
PREUNSHARE_KINDS = ("network", "ipc", "uts")


def send_message(sock: _socket.socket, payload: dict[str, Any], fds: Iterable[int] = ()) -> None:
    send_raw(sock, marshal.dumps(payload), fds)


def send_raw(sock: _socket.socket, data: bytes, fds: Iterable[int] = ()) -> None:
    if len(data) > MAX_MESSAGE:
        raise ResourceError(f"fork server request is {len(data)} bytes; the limit is {MAX_MESSAGE}")
    rights = b"".join(fd.to_bytes(_INT, sys.byteorder, signed=True) for fd in fds)
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)] if rights else []
    sock.sendmsg([data], ancillary)


def receive_message(sock: _socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its descriptors; (None, []) at EOF."""
    data, fds = receive_raw(sock)
    return (marshal.loads(data) if data else None), fds


def receive_raw_nowait(sock: _socket.socket) -> tuple[bytes, list[int]]:
    """receive_raw, or BlockingIOError when no message waits."""
    return receive_raw(sock, _socket.MSG_DONTWAIT)


def receive_raw(sock: _socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One message's bytes (empty at EOF) and its descriptors (close-on-exec)."""
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, _socket.CMSG_SPACE(MAX_FDS * _INT), flags)
    received = []
    for level, kind, raw in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            for at in range(0, len(raw) - len(raw) % _INT, _INT):
                received.append(int.from_bytes(raw[at : at + _INT], sys.byteorder, signed=True))
    for fd in received:
        os.set_inheritable(fd, False)
    return data, received


def report_failure(status_fd: int, message: str) -> None:
    """An error event on a status pipe, for a process that could not be forked or handed its request."""
    from agent.system import jsonlite

    try:
        os.write(status_fd, jsonlite.dumps({"error": message, "exit": 255}).encode() + b"\n")
    except OSError:
        pass


def fits_warm_pair(request: dict[str, Any]) -> bool:
    """Whether a warm pair (new pid namespace, the runtime's user namespace) can serve ``request``."""
    joins = request.get("join") or {}
    unshare = request.get("unshare") or []
    return (
        request.get("op") == "create"
        and "pid" in unshare
        and "pid" not in joins
        and not ("user" in unshare or "user" in joins)
    )


def threads_run() -> bool:
    """Whether a thread other than this one runs (a fork could then inherit a lock it held)."""
    if "threading" not in sys.modules:
        return False  # no Python thread was ever started
    import threading

    return threading.active_count() > 1


class WarmPair:
    """A shim and its container process, forked ahead of the request they will serve (see the module
    docstring). ``settings`` says what the process does while it waits: ``prefault`` (the pages a
    container's setup wrote, agent.system.prefault) and ``preunshare`` (of PREUNSHARE_KINDS).

    In the pair, ``inherited`` (the forking process's sockets) are closed first; with ``keep_stdio``
    every other descriptor but 0, 1 and 2 is closed too, as the CLI's own shims do (the container
    process gets its stdio with the request; the shim holds on to the caller's, as those do)."""

    def __init__(
        self, settings: dict[str, Any], inherited: Iterable[_socket.socket] = (), *, keep_stdio: bool = False
    ) -> None:
        shim_ours, shim_theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            child_ours, child_theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        except OSError:
            shim_ours.close()
            shim_theirs.close()
            raise
        try:
            pid = os.fork()
        except OSError:
            for sock in (shim_ours, shim_theirs, child_ours, child_theirs):
                sock.close()
            raise
        if pid == 0:
            code = 1
            try:
                for sock in (*inherited, shim_ours, child_ours):
                    sock.close()
                if keep_stdio:
                    close_all_but([0, 1, 2, shim_theirs.fileno(), child_theirs.fileno()])
                code = _pair_main(shim_theirs, child_theirs, settings)
            finally:
                os._exit(code)
        shim_theirs.close()
        child_theirs.close()
        self.pid = pid
        self._shim = shim_ours
        self._child = child_ours

    def hand_over(self, request: bytes, fds: list[int]) -> bool:
        """Give the request (marshal'd) to the pair; False when the shim is gone (the caller forks one
        instead). Either way our sockets are closed."""
        return hand_over(self._shim, self._child, request, fds)

    def offer(self, sock: _socket.socket) -> None:
        """Give the pair's sockets to the client (which asked for ``direct``), and let go of ours."""
        try:
            send_message(sock, {"warm": self.pid}, [self._shim.fileno(), self._child.fileno()])
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the pair: unused, it sees EOF and exits."""
        self._shim.close()
        self._child.close()

    def discard(self) -> None:
        """Close the pair and reap its shim, for the process that forked it (and does not ignore
        SIGCHLD); the shim reaps the container process before it exits."""
        self.close()
        while True:
            try:
                os.waitpid(self.pid, 0)
            except InterruptedError:
                continue
            except ChildProcessError:
                pass
            return


def close_all_but(keep: list[int]) -> None:
    """Close every descriptor of this process but ``keep``."""
    low = 0
    for fd in sorted(set(keep)):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def hand_over(shim: _socket.socket, child: _socket.socket, request: bytes, fds: list[int]) -> bool:
    """Give a request (marshal'd bytes; fds[0] is its status pipe) to a warm pair, and close the pair's
    sockets. False when the pair is gone (nothing was handed over: fork a shim instead).

    The process gets its request first: it has the setup to do, and a shim woken first can take the
    CPU the sender needs to wake the process."""
    try:
        if not (_parked(shim) and _parked(child)):
            return False
        try:
            send_raw(child, request, fds)
        except OSError:
            return False
        try:
            send_message(shim, {"go": True}, fds[:1])
        except OSError as exc:  # the engine sees the failure and closes the control pipe: the process ends
            report_failure(fds[0], f"fork server: the container process's shim is gone: {exc}")
        return True
    finally:
        shim.close()
        child.close()


def _parked(sock: _socket.socket) -> bool:
    """Whether a parked process is still there: it never writes, so anything to read is its end."""
    try:
        sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _pair_main(shim_sock: _socket.socket, child_sock: _socket.socket, settings: dict[str, Any]) -> int:
    """In the pair's shim, just forked: its setup, a new pid namespace, the container process forked."""
    from agent.container import init
    from agent.system import libc

    libc.set_process_name(PARKED_NAME)
    init.warm_shim_prepare()
    keeper, keeper_child = init.namespace_keeper()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(keeper)
            code = _warm_child(shim_sock, child_sock, settings, keeper_child)
        finally:
            os._exit(code)
    child_sock.close()
    os.close(keeper_child)
    return _warm_shim(shim_sock, child, keeper)


def _warm_shim(sock: _socket.socket, child: int, keeper: int) -> int:
    from agent.container import init
    from agent.system import libc

    message, fds = receive_message(sock)
    sock.close()
    if message is None or not fds:
        os.close(keeper)
        os.waitpid(child, 0)  # unused: the process saw EOF too and ends
        return 0
    libc.set_process_name("pykata-shim")
    return init.shim_wait(fds[0], child, keeper)


def _warm_child(shim_sock: _socket.socket, sock: _socket.socket, settings: dict[str, Any], keeper: int) -> int:
    from agent.container import init
    from agent.system import libc

    shim_sock.close()
    preunshared = init.prepare_warm_child(settings["prefault"], settings["preunshare"])
    request, fds = receive_message(sock)
    sock.close()
    if request is None:
        return 0
    libc.set_process_name("pykata-init")
    try:
        return init.warm_child_main(request, fds, keeper, preunshared)
    except BaseException as exc:
        init.report_error(fds[0], exc)
        return 1
