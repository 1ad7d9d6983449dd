"""Thin adapters between pykata-runc, whose every call is a new process, and the container engine.

The engine (agent.container.engine) does the container work. Two things here fit it to a CLI:

- ``LocalForkServer``: the CLI runs one thread, so it may fork the engine's shim itself instead of
  starting a fork server process (a Python start-up saved on every ``create`` and ``exec``). When a
  thread runs already, it falls back to the engine's fork server.
- ``FoundProcess`` and ``Backend.open``: a later call finds the container again from what ``create``
  saved in ``<root>/<id>/state.json`` (the spec, the init's pid and start time, the shim's pid) and
  hands the engine a container it can start, signal, exec into, pause, update and destroy.

``create`` asks the engine for a start FIFO (``<root>/<id>/exec.fifo``): the init waits on it after
setup, and ``start`` (another call) writes it, as runc's exec fifo works. startContainer hooks run
in the container (runtime-spec), as processes exec'd into it just before the start.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.container.cli_state import process_start_time
from agent.container.engine import Container, Engine, FdIO
from agent.container.forkserver import ForkServerClient, ProcessHandle
from agent.container.hooks import DEFAULT_HOOK_TIMEOUT
from agent.container.state import Status
from agent.errors import ResourceError
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.container.cli_state import Record

EXEC_FIFO = "exec.fifo"
TIOCSPTLCK = 0x40045431  # linux/tty ioctls Python's termios lacks
TIOCGPTPEER = 0x5441


class LocalForkServer(ForkServerClient):
    """Forks the engine's shim from this (single-threaded) process; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.shims: list[int] = []

    def spawn(self, payload: dict[str, Any], fds: list[int], description: str, control_fd: int | None,
              status_fd: int) -> ProcessHandle:  # fmt: skip
        if threading.active_count() > 1:
            return super().spawn(payload, fds, description, control_fd, status_fd)
        from agent.container import init  # the shim's code, loaded before the fork (the child changes root)

        shim = os.fork()
        if shim == 0:
            code = 1
            try:
                _close_all_but([0, 1, 2, *fds])
                code = init.run_shim(payload, list(fds))
            finally:
                os._exit(code)
        self.shims.append(shim)
        handle = ProcessHandle(status_fd, control_fd, description)  # its reader thread starts after the fork
        handle.shim_pid = shim
        return handle

    def close(self) -> None:
        """Reap the shims that ended; the others (detached containers) outlive this process."""
        for shim in self.shims:
            try:
                os.waitpid(shim, os.WNOHANG)
            except ChildProcessError:
                pass
        super().close()


def _close_all_but(keep: list[int]) -> None:
    low = 0
    for fd in sorted(set(keep)):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


class FoundProcess(ProcessHandle):
    """A container process another call started, known by pid and start time (against pid reuse).

    Its exit code is not ours to collect: once it is gone it reads 255 ("ended, status unknown")."""

    def __init__(self, paths: HostPaths, pid: int, pid_start: int, shim_pid: int = 0, shim_start: int = 0) -> None:
        # no reader thread: the status pipe belonged to the call that made the process
        self.description = f"process {pid}"
        self.paths = paths
        self.pid = pid
        self.pid_start = pid_start
        self.shim_pid = shim_pid
        self.shim_start = shim_start
        self.created = True
        self.error = None
        self._exit_code: int | None = None
        self._control_fd = None
        self.timeline = {}

    def _alive(self, pid: int, start: int) -> bool:
        return pid > 0 and process_start_time(self.paths.proc_pid(pid)) == start

    @property
    def exit_code(self) -> int | None:
        if self._exit_code is None and not self._alive(self.pid, self.pid_start):
            self._exit_code = 255
        return self._exit_code

    @exit_code.setter
    def exit_code(self, value: int | None) -> None:
        self._exit_code = value

    def _wait_gone(self, pid: int, start: int, timeout: float | None) -> bool:
        if not self._alive(pid, start):
            return True
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            if not self._alive(pid, start):  # the pid was reused before the open
                return True
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else int(timeout * 1000)))
        finally:
            os.close(pidfd)

    def wait_for(self, what: str, timeout: float | None = None) -> bool:
        if what in ("pid", "created"):
            return True
        return self._wait_gone(self.pid, self.pid_start, timeout)

    def wait(self, timeout: float | None = None) -> int | None:
        self._wait_gone(self.pid, self.pid_start, timeout)
        return self.exit_code

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._wait_gone(self.shim_pid, self.shim_start, timeout)

    def control(self, message: bytes) -> None:
        pass

    def close_control(self) -> None:
        pass


def _status_of(record: Record) -> Status:
    if not record.started:
        return Status.CREATED
    return Status.PAUSED if record.paused else Status.RUNNING


class SharedForkServer(ForkServerClient):
    """``pykata-runc serve``'s fork server, started once by the server and used by the workers it
    forks: they share its socket (requests get no answer, so several writers are fine), and the
    server's warm shim and container process spare each ``create`` its forks. Only the process that
    started it stops it; in a worker ``close`` just lets go of the socket."""

    def __init__(self) -> None:
        # several workers share the socket: a pair offered to one that then ends would be lost
        super().__init__(direct=False)
        self._owner = os.getpid()

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


# Set by ``pykata-runc serve`` for its workers (see SharedForkServer).
SHARED_FORK_SERVER: SharedForkServer | None = None


class Backend:
    """The engine, set up for one CLI call."""

    def __init__(self, paths: HostPaths, *, no_pivot: bool = False) -> None:
        self.paths = paths
        self.forker: ForkServerClient = SHARED_FORK_SERVER if SHARED_FORK_SERVER is not None else LocalForkServer()
        self.engine = Engine(paths, forkserver=self.forker, no_pivot=True if no_pivot else None)

    def create(self, record: Record, spec: dict[str, Any], state_dir: Path, io: FdIO) -> Container:
        """Make the container (created, waiting on its exec fifo) and note in ``record`` what a later
        call needs to find it again."""
        fifo = state_dir / EXEC_FIFO
        os.mkfifo(fifo, 0o600)
        container = self.engine.create(record.id, _engine_spec(spec), bundle=Path(record.bundle), io=io,
                                       start_fifo=fifo)  # fmt: skip
        assert container.init is not None
        record.pid = container.init.pid
        record.pid_start = process_start_time(self.paths.proc_pid(record.pid)) or 0
        shim = container.init.handle.shim_pid
        record.engine = {"spec": spec, "shim_pid": shim,
                         "shim_start": process_start_time(self.paths.proc_pid(shim)) or 0}  # fmt: skip
        return container

    def open(self, record: Record, state_dir: Path) -> Container:
        """The container ``record`` describes, as the engine's Container."""
        init = FoundProcess(self.paths, record.pid, record.pid_start, int(record.engine.get("shim_pid") or 0),
                            int(record.engine.get("shim_start") or 0))  # fmt: skip
        fifo = state_dir / EXEC_FIFO
        if "spec" not in record.engine:  # saved by an older pykata-runc: the bundle's config is what it ran
            import json

            record.engine["spec"] = json.loads((Path(record.bundle) / "config.json").read_text())
        return self.engine.restore(record.id, _engine_spec(record.engine["spec"]), bundle=Path(record.bundle),
                                   init=init, status=_status_of(record),
                                   start_fifo=fifo if not record.started else None)  # fmt: skip

    def start(self, container: Container, spec: dict[str, Any], state_dir: Path) -> None:
        """startContainer hooks in the container, then the user's program."""
        for index, hook in enumerate((spec.get("hooks") or {}).get("startContainer") or []):
            run_in_container(container, f"startContainer-{index}", hook)
        container.start()
        (state_dir / EXEC_FIFO).unlink(missing_ok=True)

    def close(self) -> None:
        self.forker.close()


def _engine_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the engine gets it: startContainer hooks run here (in the container), not by it."""
    hooks = spec.get("hooks")
    if not hooks or "startContainer" not in hooks:
        return spec
    return {**spec, "hooks": {k: v for k, v in hooks.items() if k != "startContainer"}}


def run_in_container(container: Container, exec_id: str, hook: dict[str, Any]) -> None:
    """Run one hook as a process exec'd into the container, with its state JSON on stdin;
    ResourceError when it fails or outlives its timeout (the container is then not started)."""
    import json

    from agent.container.launch import spawn_exec
    from agent.container.spec import parse_process

    process = parse_process({"args": [hook["path"], *(hook.get("args") or [hook["path"]])[1:]],
                             "env": list(hook.get("env") or []), "cwd": "/"})  # fmt: skip
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(stdin_w, json.dumps(container.state()).encode())  # a pipe holds it: a state is small
        os.close(stdin_w)
        stdin_w = -1
        proc = spawn_exec(container.engine, container, exec_id, process, FdIO(stdin_r, 2, 2))
    finally:
        os.close(stdin_r)
        if stdin_w >= 0:
            os.close(stdin_w)
    timeout = float(hook.get("timeout") or DEFAULT_HOOK_TIMEOUT)
    code = proc.handle.wait(timeout)
    if code is None:
        proc.signal(signal.SIGKILL)
        proc.handle.wait()
        raise ResourceError(f"startContainer hook {hook['path']} did not end within {timeout:.0f} s")
    if code != 0:
        raise ResourceError(f"startContainer hook {hook['path']} failed with exit status {code}")


def open_container_pty(paths: HostPaths, pid: int) -> tuple[int, int] | None:
    """A pty pair (master, slave) from the devpts of the container whose process is ``pid``, so the
    terminal's name resolves inside the container (as runc's do); None when it has no /dev/ptmx."""
    try:
        master = os.open(paths.proc_pid(pid) / "root" / "dev" / "ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    return master, slave
