"""``pykata-runc serve``: run commands handed over by agent/container/cli_client.py in warm workers.

Everything a command may need is imported once, by the server; each connection gets a forked worker
(the server runs no threads, so forking is safe) that runs the command with the client's stdio and
working directory, exactly as ``pykata-runc`` would, and reports its exit status. The next worker is
forked before its client comes: it waits in accept(), so no client waits for a fork.

A fresh fork shares the server's pages copy-on-write, and the first write to each is a fault: a
served ``run`` wrote ~900 of them, ~10 ms of faults on a virtual machine. So a worker that ran a
container command reports the pages it wrote (agent.system.prefault, after its client has its
answer), and the spare workers forked after that fault exactly those in while they wait, once the
server has been idle for SPARE_IDLE (a client that comes sooner is served at once, faults and all).
"""

from __future__ import annotations

import os
import sys

from agent.container.forkserver import ForkServerClient
from agent.system import prefault
from agent.system.polling import readable

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from agent.container.cli import Log


SPARE_IDLE = 0.05  # seconds without a client before a spare worker faults in the learned pages
LEARN_FROM = ("run", "create", "exec")  # commands whose written pages the spare workers fault in


class SharedForkServer(ForkServerClient):
    """``pykata-runc serve``'s fork server, started once by the server and used by the workers it
    forks: they share its socket (requests get no answer, so several writers are fine), and the
    server's warm shim and container process spare each ``create`` its forks. Only the process that
    started it stops it; in a worker ``close`` just lets go of the socket.

    What one worker's create taught the fork server (the pages a setup writes, which namespaces
    creates make) must not be learned again by every later worker, each a fresh fork of the server:
    the two facts live in a page shared by the server and all its workers (an anonymous shared
    mapping made before the first fork), not in a worker's copy of this object."""

    def __init__(self) -> None:
        import mmap

        from agent.container.init import PREUNSHARE_KINDS

        self._kinds = PREUNSHARE_KINDS
        # byte 0: the pages are known; byte 1: a bit per PREUNSHARE_KINDS entry the warm processes make
        self._shared = mmap.mmap(-1, 2, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        # several workers share the socket: a pair offered to one that then ends would be lost
        super().__init__(direct=False)
        self._owner = os.getpid()

    @property
    def _pages_known(self) -> bool:
        return bool(self._shared[0])

    @_pages_known.setter
    def _pages_known(self, known: bool) -> None:
        self._shared[0] = int(known)

    @property
    def preunshare(self) -> tuple[str, ...]:
        return tuple(kind for bit, kind in enumerate(self._kinds) if self._shared[1] & (1 << bit))

    @preunshare.setter
    def preunshare(self, kinds: tuple[str, ...]) -> None:
        self._shared[1] = sum(1 << bit for bit, kind in enumerate(self._kinds) if kind in kinds)

    def send(self, payload: dict[str, Any], fds: list[int]) -> None:
        if payload.get("op") == "create" and fds:
            with self._lock:
                # the server hands the request to its warm pair itself (direct=False): tell it which
                # namespaces its next warm processes should make, as a direct client does
                self._follow_namespaces(self._ensure(), payload)
        super().send(payload, fds)

    def _ensure(self) -> Any:
        # a worker cannot wait for the server's child (Popen.poll would call it gone): use the socket
        if os.getpid() != self._owner and self._sock is not None:
            return self._sock
        return super()._ensure()

    def close(self) -> None:
        if os.getpid() == self._owner:
            super().close()
        elif self._sock is not None:
            self._sock.close()
            self._sock = None


def serve(path: str, log: Log) -> None:
    """Serve commands from agent/container/cli_client.py until SIGTERM or SIGINT.

    Everything a command may need is imported once, here; each connection gets a forked worker
    (this process runs no threads) that runs the command with the client's stdio and working
    directory and reports its exit status. Only the server's own uid (root) may connect.
    """
    import gc
    import select
    import signal
    import socket
    import stat

    # Imported once here so no worker imports anything. agent.container.cli too: when the server was
    # started as ``python -m agent.container.cli`` that module runs as __main__, not under its name.
    import agent.container.capabilities
    import agent.container.cgroups
    import agent.container.cli
    import agent.container.cli_backend
    import agent.container.cli_client
    import agent.container.engine
    import agent.container.hooks
    import agent.container.init
    import agent.container.launch
    import agent.container.rootfs
    import agent.container.seccomp
    import agent.container.spec
    import agent.container.stdio
    import agent.container.syscalls_i386
    import agent.container.syscalls_x86_64
    import agent.container.validate
    import agent.system.run
    from agent.container.cgroups.layout import detect
    from agent.system.paths import HostPaths

    for name in agent.container.cgroups.__all__:  # the package loads its modules on first use
        getattr(agent.container.cgroups, name)
    for module in ("array", "importlib", "pwd", "struct"):  # what the commands import on their own
        __import__(module)

    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket from a server that died
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(previous_umask)
    listener.listen(64)
    # One fork server for every worker: its warm shim and container process take each create.
    from agent.container import cli_backend

    cli_backend.SHARED_FORK_SERVER = SharedForkServer()
    cli_backend.SHARED_FORK_SERVER.start()
    cli_backend.CGROUP_LAYOUT = detect(HostPaths("/"))
    # Workers are short-lived: keep the collector away from the objects they share with us (each
    # one it touched would be copied), and off in the workers.
    gc.freeze()
    stopping = False

    def stop(_number: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    handlers = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    # One spare worker waits in accept() at all times, so a client never waits for a fork: when the
    # spare takes a connection it says so on ``taken`` and this process forks the next spare.
    taken_r, taken_w = os.pipe2(os.O_CLOEXEC)
    # a worker that ran a container command reports the pages it wrote here (one message each)
    pages_server, pages_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    learned: list[tuple[int, int]] = []
    spare = 0
    log.debug(f"serving on {path}")
    try:
        while not stopping:
            if spare in _reap_workers():
                spare = 0  # it died before taking a connection
            if not spare:
                spare = os.fork()
                if spare == 0:
                    gc.disable()
                    for number, handler in handlers.items():
                        signal.signal(number, handler)
                    os.close(taken_r)
                    pages_server.close()
                    os._exit(_accept_one(listener, taken_w, log, learned, None if learned else pages_worker))
            try:
                ready, _, _ = select.select([taken_r, pages_server.fileno()], [], [], 1.0)
            except InterruptedError:
                continue
            if pages_server.fileno() in ready:
                runs = _learned(pages_server)
                if runs and not learned:
                    learned = runs
                    log.debug(f"learned {sum(length for _, length in runs) // 1024} KiB of pages a command writes")
            if taken_r in ready:
                os.read(taken_r, 64)
                spare = 0
    finally:
        if spare:
            os.kill(spare, signal.SIGTERM)  # idle in accept(): it has no client yet
            os.waitpid(spare, 0)
        cli_backend.SHARED_FORK_SERVER.close()
        cli_backend.SHARED_FORK_SERVER = None
        cli_backend.CGROUP_LAYOUT = None
        os.close(taken_r)
        os.close(taken_w)
        pages_server.close()
        pages_worker.close()
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _reap_workers() -> set[int]:
    """Collect the workers that ended; their pids."""
    reaped: set[int] = set()
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.add(pid)


def _accept_one(listener: Any, taken_w: int, log: Log, prefault_runs: list[tuple[int, int]], report: Any) -> int:
    """In the spare worker: wait for one client (faulting in ``prefault_runs`` once idle), tell the
    server (which forks the next spare), serve it; then, given a ``report`` socket, report the pages
    a container command wrote."""
    if prefault_runs and not readable(listener, SPARE_IDLE):
        prefault.populate(prefault_runs)
    while True:
        try:
            connection, _ = listener.accept()
            break
        except InterruptedError:
            continue
    os.write(taken_w, b".")
    os.close(taken_w)
    listener.close()
    command = [""]
    code = _serve_one(connection, log, command)
    if report is not None and command[0] in LEARN_FROM:
        _report_pages(report)
    return code


def _report_pages(report: Any) -> None:
    """Send the server the pages this worker wrote (its client has its answer already)."""
    import marshal

    fds = prefault.open_page_maps()
    if fds is None:
        return  # no report: the next workers learn instead
    try:
        report.send(marshal.dumps(prefault.written_pages(*fds)))
    except (OSError, ValueError):
        pass
    finally:
        for fd in fds:
            os.close(fd)


def _learned(pages: Any) -> list[tuple[int, int]]:
    """A worker's report: its written pages, checked."""
    import marshal

    try:
        return prefault.checked_runs(marshal.loads(pages.recv(1 << 20)))
    except (OSError, ValueError, EOFError, TypeError):
        return []


def _serve_one(connection: Any, log: Log, command: list[str]) -> int:
    """In a worker: run one client's command as if pykata-runc had been started by it; its name
    goes to ``command[0]``."""
    import socket
    import struct

    from agent.container.cli import run_cli
    from agent.container.cli_client import decode_request

    try:
        _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.getuid():
            log.error(f"refused a client with uid {uid}: only uid {os.getuid()} may use this server")
            return 1
        data, fds, _flags, _addr = socket.recv_fds(connection, 1 << 16, 3)
        while chunk := connection.recv(1 << 16):
            data += chunk
        if len(fds) != 3:
            log.error("a client sent no stdio descriptors")
            return 1
        cwd, argv = decode_request(data)
        command[0] = command_of(argv)
        connection.sendall(f"P{os.getpid()}\n".encode())
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(cwd)
        code = run_cli(argv)
        sys.stdout.flush()
        sys.stderr.flush()
        connection.sendall(f"X{code}\n".encode())
        return 0
    except BaseException as exc:
        try:
            log.error(f"worker failed: {exc}")
            connection.sendall(b"X1\n")
        except OSError:
            pass
        return 1


def command_of(argv: list[str]) -> str:
    """The command a pykata-runc argument list runs (its first word that names one), or ""."""
    from agent.container.cli import HANDLERS

    return next((word for word in argv if word in HANDLERS), "")
