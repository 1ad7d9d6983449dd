"""Thin adapters between pykata-runc, whose every call is a new process, and the container engine.

The engine (agent.container.engine) does the container work. Two things here fit it to a CLI:

- ``LocalForkServer``: the CLI runs one thread, so it may fork the engine's shim itself instead of
  starting a fork server process (a Python start-up saved on every ``create`` and ``exec``), and
  ``LocalProcessHandle`` reads the process's events from its status pipe when the engine asks for
  them, with no reader thread. When a thread runs already, it falls back to the engine's fork server.
  A cold ``create`` forks a warm pair (agent/container/warm.py) before it imports the engine: the
  pair prepares while the engine plans, and LocalForkServer hands it the create instead of forking.
- ``FoundProcess`` and ``Backend.open``: a later call finds the container again from what ``create``
  saved in ``<root>/<id>/state.json`` (the spec, the init's pid and start time, the shim's pid) and
  hands the engine a container it can start, signal, exec into, pause, update and destroy.

``create`` asks the engine for a start FIFO (``<root>/<id>/exec.fifo``): the init waits on it after
setup, and ``start`` (another call) writes it, as runc's exec fifo works. startContainer hooks run
in the container (runtime-spec), as processes exec'd into it just before the start.

A short command's cost is mostly Python's start-up and imports, so this module and what it imports
on the way to a ``run`` leave out the agent's machinery: no fork server module (socket, subprocess,
logging, threading), no reader threads.
"""

from __future__ import annotations

import _signal  # the C modules: ``signal`` imports enum, ``struct`` is one more import
import _struct
import fcntl
import marshal
import os
import time

from agent.container.cli_state import process_start_time
from agent.container.engine import Container, Engine, FdIO
from agent.container.events import ProcessEvents
from agent.container.hooks import DEFAULT_HOOK_TIMEOUT
from agent.container.state import Status
from agent.errors import ResourceError
from agent.system import jsonlite
from agent.system.paths import HostPaths

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from agent.container.cli_state import Record
    from agent.container.forkserver import ForkServerClient, ProcessHandle
    from agent.container.warm import WarmPair

EXEC_FIFO = "exec.fifo"
TIOCSPTLCK = 0x40045431  # linux/tty ioctls Python's termios lacks
TIOCGPTPEER = 0x5441


def _read_now(fd: int) -> bytes | None:
    """What ``fd`` has now (b"" at its end), or None when it has nothing yet."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return None
    finally:
        os.set_blocking(fd, True)


class LocalProcessHandle(ProcessEvents):
    """The fork server's ProcessHandle without its reader thread, for a single-threaded caller: the
    events on the status pipe (agent/container/events.py) are read when the engine waits for one or
    looks at the exit code."""

    def __init__(self, status_fd: int, control_fd: int | None, description: str) -> None:
        super().__init__(status_fd, control_fd, description)

    @property
    def exit_code(self) -> int | None:
        if self._exit is None:
            self._read(0)
        return self._exit

    def _read(self, timeout: float | None) -> None:
        """Take what the status pipe has, waiting up to ``timeout`` seconds (None: forever) for it."""
        if self._eof:
            return
        while True:
            try:
                if timeout == 0:
                    chunk = _read_now(self._status_fd)
                    if chunk is None:
                        return
                else:
                    if timeout is not None:
                        # select: loaded at the first wait with a deadline (a look, or a wait without
                        # one, reads directly)
                        from agent.system.polling import readable

                        if not readable(self._status_fd, timeout):
                            return
                    chunk = os.read(self._status_fd, 4096)  # blocks until the shim writes
            except InterruptedError:
                continue
            break
        if not chunk:
            os.close(self._status_fd)
            self._ended()
            return
        for event in self._events(chunk):
            self._apply(event)

    def wait_for(self, what: str, timeout: float | None = None) -> bool:
        """As ProcessHandle.wait_for: ``pid``, ``mounted``, ``created``, ``started``, ``exit`` or ``closed``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready(what):
            if self._eof:
                return False
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._read(left)
        return True

    def wait(self, timeout: float | None = None) -> int | None:
        self.wait_for("exit", timeout)
        return self._exit

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the shim and the process are gone (the status pipe's EOF)."""
        return self.wait_for("closed", timeout)


class LocalForkServer:
    """Forks the engine's shim from this (single-threaded) process; see the module docstring. The
    engine's fork server (a process of its own) does it when a thread runs here.

    ``warm`` is a pair the command forked ahead (cli.Context.fork_warm_pair): the first request it
    fits is handed to it, marshal'd as the fork server's pairs get theirs. A request it does not fit,
    or a pair that is gone, is forked as ever; an unused pair is let go of and reaped."""

    def __init__(self, warm: WarmPair | None = None) -> None:
        self.shims: list[int] = []
        self._server: ForkServerClient | None = None
        self._warm = warm
        self._unused: list[WarmPair] = []  # pairs let go of, reaped at close

    def spawn(self, payload: dict[str, Any], fds: list[int], description: str, control_fd: int | None,
              status_fd: int) -> Any:  # fmt: skip
        # here, not at the top: only a create or an exec spawns (a start, kill or delete never loads it)
        from agent.container.warm import close_all_but, fits_warm_pair, threads_run

        warm, self._warm = self._warm, None
        if warm is not None:
            if fds and fits_warm_pair(payload) and warm.hand_over(marshal.dumps(payload), fds):
                self.shims.append(warm.pid)
                handle = LocalProcessHandle(status_fd, control_fd, description)
                handle.shim_pid = warm.pid
                return handle
            warm.close()  # unused or gone: it exits (reaped at close, not waited for now)
            self._unused.append(warm)
        if threads_run():
            if self._server is None:
                from agent.container.forkserver import ForkServerClient

                self._server = ForkServerClient()
            return self._server.spawn(payload, fds, description, control_fd, status_fd)
        from agent.container import init  # the shim's code, loaded before the fork (the child changes root)

        shim = os.fork()
        if shim == 0:
            code = 1
            try:
                close_all_but([0, 1, 2, *fds])
                code = init.run_shim(payload, list(fds))
            finally:
                os._exit(code)
        self.shims.append(shim)
        handle = LocalProcessHandle(status_fd, control_fd, description)
        handle.shim_pid = shim
        return handle

    def release(self, handle: Any) -> None:
        """Let a created container run its program."""
        handle.control(b"s")
        handle.close_control()

    def forget_all(self, handles: Any) -> None:
        for handle in handles:
            handle.close_control()

    def close(self) -> None:
        """Reap the shims that ended, and the warm pair that was not used (it exits on our closing
        its sockets); the other shims (detached containers) outlive this process."""
        if self._warm is not None:
            self._unused.append(self._warm)
            self._warm = None
        for pair in self._unused:
            pair.discard()
        self._unused = []
        for shim in self.shims:
            try:
                os.waitpid(shim, os.WNOHANG)
            except ChildProcessError:
                pass
        if self._server is not None:
            self._server.close()
            self._server = None


class FoundProcess:
    """A container process another call started, known by pid and start time (against pid reuse);
    the engine uses it as it uses a ProcessHandle.

    Its exit code is not ours to collect: once it is gone it reads 255 ("ended, status unknown")."""

    def __init__(self, paths: HostPaths, pid: int, pid_start: int, shim_pid: int = 0, shim_start: int = 0) -> None:
        # no status pipe: it belonged to the call that made the process
        self.description = f"process {pid}"
        self.paths = paths
        self.pid = pid
        self.pid_start = pid_start
        self.shim_pid = shim_pid
        self.shim_start = shim_start
        self.created = True
        self.mounted = True
        self.started = False
        self.error: str | None = None
        self._exit_code: int | None = None
        self.timeline: dict[str, float] = {}

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
            from agent.system.polling import readable

            return readable(pidfd, timeout)
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


# Set by ``pykata-runc serve`` for its workers (cli_serve.SharedForkServer).
SHARED_FORK_SERVER: Any = None
# Set by ``pykata-runc serve``: the host's cgroup mounts, read once for all its workers (a short
# command reads them once anyway).
CGROUP_LAYOUT: Any = None


class Backend:
    """The engine, set up for one CLI call."""

    def __init__(
        self,
        paths: HostPaths,
        *,
        no_pivot: bool = False,
        warm: WarmPair | None = None,
        rootless: bool = False,
        systemd_cgroup: bool = False,
    ) -> None:
        """``warm``: a pair forked ahead for this call's create (not with the shared fork server);
        ``rootless``: the command runs as a user other than root; ``systemd_cgroup``: ``--systemd-cgroup``
        (a container's cgroup is a scope systemd makes: cgroups/systemd.py)."""
        self.paths = paths
        # LocalForkServer and its handles are duck-typed stand-ins for the fork server's classes
        self.forker: ForkServerClient = SHARED_FORK_SERVER or LocalForkServer(warm)  # type: ignore[assignment]
        if SHARED_FORK_SERVER is not None and warm is not None:
            warm.discard()  # the shared server serves creates with warm pairs of its own
        cgroups = _cgroups_of(CGROUP_LAYOUT) if CGROUP_LAYOUT is not None else None
        self.engine = Engine(paths, forkserver=self.forker, cgroups=cgroups, no_pivot=True if no_pivot else None,
                             rootless=rootless, systemd_cgroup=systemd_cgroup)  # fmt: skip

    def create(
        self, record: Record, spec: dict[str, Any], state_dir: str, io: FdIO, *, new_keyring: bool = True
    ) -> Container:
        """Make the container (created, waiting on its exec fifo) and note in ``record`` what a later
        call needs to find it again."""
        fifo = f"{state_dir}/{EXEC_FIFO}"
        os.mkfifo(fifo, 0o600)
        container = self.engine.create(record.id, _engine_spec(spec), bundle=record.bundle, io=io,
                                       start_fifo=fifo, new_keyring=new_keyring)  # fmt: skip
        assert container.init is not None
        record.pid = container.init.pid
        record.pid_start = process_start_time(self.paths.proc_pid(record.pid)) or 0
        shim = container.init.handle.shim_pid
        record.engine = {"spec": spec, "shim_pid": shim,
                         "shim_start": process_start_time(self.paths.proc_pid(shim)) or 0}  # fmt: skip
        if not new_keyring:
            record.engine["no_new_keyring"] = True  # its exec'd processes keep theirs too
        from agent.container.cgroups import NoCgroup

        if isinstance(container.cgroup, NoCgroup):
            record.engine["no_cgroup"] = True  # rootless, without a cgroup: later calls do without it too
        if self.engine.systemd_cgroup:
            record.engine["systemd_cgroup"] = True  # a systemd scope: later calls stop it through systemd
        return container

    def open(self, record: Record, state_dir: str) -> Container:
        """The container ``record`` describes, as the engine's Container."""
        found = FoundProcess(self.paths, record.pid, record.pid_start, int(record.engine.get("shim_pid") or 0),
                             int(record.engine.get("shim_start") or 0))  # fmt: skip
        init: ProcessHandle = found  # type: ignore[assignment]  # duck-typed, as LocalProcessHandle
        fifo = f"{state_dir}/{EXEC_FIFO}"
        if "spec" not in record.engine:  # saved by an older pykata-runc: the bundle's config is what it ran
            with open(f"{record.bundle}/config.json", encoding="utf-8") as stream:
                record.engine["spec"] = jsonlite.loads(stream.read())
        return self.engine.restore(record.id, _engine_spec(record.engine["spec"]), bundle=record.bundle,
                                   init=init, status=_status_of(record),
                                   start_fifo=fifo if not record.started else None,
                                   new_keyring=not record.engine.get("no_new_keyring"),
                                   cgroupless=bool(record.engine.get("no_cgroup")),
                                   systemd_cgroup=bool(record.engine.get("systemd_cgroup")))  # fmt: skip

    def start(self, container: Container, spec: dict[str, Any], state_dir: str) -> None:
        """startContainer hooks in the container, then the user's program."""
        for index, hook in enumerate((spec.get("hooks") or {}).get("startContainer") or []):
            run_in_container(container, f"startContainer-{index}", hook)
        container.start()
        try:
            os.unlink(f"{state_dir}/{EXEC_FIFO}")
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.forker.close()


def _cgroups_of(layout: Any) -> Any:
    """The engine's cgroup factory for a layout read before (the engine's own reads it once)."""
    from agent.container.cgroups import manager_for

    def make(paths: HostPaths, cgroups_path: str, container_id: str) -> Any:
        return manager_for(paths, cgroups_path, container_id, layout=layout)

    return make


def _engine_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the engine gets it: startContainer hooks run here (in the container), not by it."""
    hooks = spec.get("hooks")
    if not hooks or "startContainer" not in hooks:
        return spec
    return {**spec, "hooks": {k: v for k, v in hooks.items() if k != "startContainer"}}


def run_in_container(container: Container, exec_id: str, hook: dict[str, Any]) -> None:
    """Run one hook as a process exec'd into the container, with its state JSON on stdin;
    ResourceError when it fails or outlives its timeout (the container is then not started)."""

    from agent.container.launch import spawn_exec
    from agent.container.spec import parse_process

    process = parse_process({"args": [hook["path"], *(hook.get("args") or [hook["path"]])[1:]],
                             "env": list(hook.get("env") or []), "cwd": "/"})  # fmt: skip
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(stdin_w, jsonlite.dumps(container.state()).encode())  # a pipe holds it: a state is small
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
        proc.signal(_signal.SIGKILL)
        proc.handle.wait()
        raise ResourceError(f"startContainer hook {hook['path']} did not end within {timeout:.0f} s")
    if code != 0:
        raise ResourceError(f"startContainer hook {hook['path']} failed with exit status {code}")


def open_container_pty(paths: HostPaths, pid: int) -> tuple[int, int] | None:
    """A pty pair (master, slave) from the devpts of the container whose process is ``pid``, so the
    terminal's name resolves inside the container (as runc's do); None when it has no /dev/ptmx."""
    try:
        master = os.open(f"{paths.proc_pid(pid)}/root/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.ioctl(master, TIOCSPTLCK, _struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    return master, slave
