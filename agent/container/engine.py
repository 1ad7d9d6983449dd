"""The container engine: create, start, exec, signal, wait, pause, update and destroy containers.

Input is the OCI runtime spec as a dict (a bundle's config.json). The engine never forks the calling
process (the agent runs threads): every container init and exec process is forked by the
single-threaded fork server (agent/container/forkserver.py), which reports each process's pid and
exit status through a status pipe. A ``Process`` object tracks one of them; its exit code follows the
shell (128+N when signal N killed it), as Kata's WaitProcess reports it.

Public API (stable; the CLI and the agent's services code against it):

    engine = Engine(HostPaths())
    c = engine.create("c1", spec_dict, bundle="/path/to/bundle", io=PipeIO())
    c.start()
    p = c.exec("e1", process_dict, io=PipeIO())
    c.signal(signal.SIGTERM, exec_id="", all_processes=False)
    code = c.wait("")          # init's exit code; exec ids for exec processes
    c.pause(); c.resume(); c.update(resources); c.stats()
    c.destroy(timeout=10)      # kill, reap, poststop hooks, cgroup removal
"""

from __future__ import annotations

import _signal
import _thread
import os
import time

from agent.container import hooks as hooks_mod
from agent.container.spec import Spec, parse_process, parse_spec
from agent.container.state import Status, require
from agent.container.validate import validate_container_id, validate_spec
from agent.errors import AgentError, AlreadyExists, DeadlineExceeded, InvalidArgument, NotFound, ResourceError
from agent.system import jsonlite
from agent.system.paths import HostPaths, normal_path

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from agent.container.forkserver import ForkServerClient, ProcessHandle


class _Log:
    """This module's logger, imported when there is something to log: logging (with the threading,
    traceback and regular-expression modules it loads) is not on the path of a container start."""

    def warning(self, message: str, *args: Any) -> None:
        import logging

        logging.getLogger(__name__).warning(message, *args)


log = _Log()


class PipeIO:
    """The engine makes pipes (or a pty when the process asks for a terminal) and returns our ends.

    ``given`` ("stdin", "stdout", "stderr" -> a descriptor of the caller's) replaces those pipes: the
    process gets a copy of the descriptor itself, and our end of that stream is None (the agent's
    passfd streams). A terminal process gets its pty whatever ``given`` holds."""

    def __init__(self, pipe_size: int = 0, given: dict[str, int] | None = None) -> None:
        self.pipe_size = pipe_size  # F_SETPIPE_SZ for stdout/stderr; 0 keeps the kernel default
        self.given = given or {}


class FdIO:
    """The caller's own descriptors become the process's stdin, stdout and stderr (the CLI's case).

    With a terminal, ``console`` is the pty slave the caller allocated (or None: the engine makes a
    pty and the master is returned in ``ProcessIO.pty_master``). ``extra`` descriptors become the
    process's 3, 4, ... (runc's ``--preserve-fds``).
    """

    def __init__(
        self,
        stdin: int | None,
        stdout: int | None,
        stderr: int | None,
        console: int | None = None,
        extra: tuple[int, ...] = (),
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.console = console
        self.extra = extra


class ProcessIO:
    """Our ends of a process's stdio: write to ``stdin``, read ``stdout``/``stderr`` or the pty."""

    def __init__(
        self,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pty_master: int | None = None,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.pty_master = pty_master

    def __repr__(self) -> str:
        ends = ", ".join(f"{name}={getattr(self, name)}" for name in ("stdin", "stdout", "stderr", "pty_master"))
        return f"ProcessIO({ends})"

    def close(self) -> None:
        for name in ("stdin", "stdout", "stderr", "pty_master"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)


class Process:
    """One process of a container: its init (exec_id "") or an exec'd process."""

    def __init__(self, container_id: str, exec_id: str, handle: ProcessHandle, io: ProcessIO, terminal: bool) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.handle = handle
        self.io = io
        self.terminal = terminal
        self.started = time.monotonic()

    def __repr__(self) -> str:
        return f"Process(container_id={self.container_id!r}, exec_id={self.exec_id!r}, pid={self.handle.pid})"

    @property
    def pid(self) -> int:
        """The host pid (as seen from the engine's pid namespace)."""
        return self.handle.pid

    @property
    def exit_code(self) -> int | None:
        return self.handle.exit_code

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends; return its exit code (128+N for signal N).

        Raises DeadlineExceeded when ``timeout`` passes first.
        """
        code = self.handle.wait(timeout)
        if code is None:
            raise DeadlineExceeded(f"process {self.exec_id or 'init'} of container {self.container_id} still runs")
        return code

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process; a process that has ended is not an error."""
        if self.handle.exit_code is not None:
            return
        if self.handle.pid <= 0:  # never kill(0) or kill(-1): those reach whole process groups
            raise ResourceError(f"process {self.exec_id or 'init'} of container {self.container_id} has no pid yet")
        try:
            os.kill(self.handle.pid, signum)
        except ProcessLookupError:
            pass

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size (TtyWinResize); InvalidArgument for a process without a terminal."""
        from agent.container.stdio import set_winsize

        if self.io.pty_master is None:
            raise InvalidArgument(f"process {self.exec_id or 'init'} of container {self.container_id} has no terminal")
        set_winsize(self.io.pty_master, rows, cols)


SHIM_EXIT_TIMEOUT = 5.0
if TYPE_CHECKING:
    CgroupFactory = Callable[[HostPaths, str, str], Any]


class Container:
    """A container the engine made. Methods check the status first and raise IncorrectState."""

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        spec: Spec,
        bundle: str,
        cgroup: Any,
    ) -> None:
        self.engine = engine
        self.id = container_id
        self.spec = spec
        self.bundle = bundle
        self._cgroup = cgroup
        self.systemd_cgroup: bool | None = None  # the driver of a restored container's cgroup (make_cgroup)
        self.init: Process | None = None
        self.execs: dict[str, Process] = {}
        self.created_at = time.time()
        self.start_fifo: str | None = None
        # each of its processes joins a session keyring of the container's own (runc's default)
        self.new_keyring = True
        self._net_devices_returned = False  # (return_net_devices)
        # CPU hotplug widens the cpusets of containers that chose their CPUs (at create or update)
        self.asked_for_cpus = bool((spec.linux.resources.get("cpu") or {}).get("cpus"))
        self._status = Status.CREATING
        self._lock = _thread.RLock()

    @property
    def cgroup(self) -> Any:
        """The container's cgroup manager. A restored container makes it on first use: a later call
        of a runtime CLI that starts the container, or signals its init, needs none (and the managers'
        imports and the read of the host's cgroup mounts are milliseconds of such a call)."""
        if self._cgroup is None:
            self._cgroup = self.engine.make_cgroup(self.spec.linux.cgroups_path, self.id, self.systemd_cgroup)
        return self._cgroup

    # --- status
    @property
    def status(self) -> Status:
        with self._lock:
            live = self._status in (Status.CREATED, Status.RUNNING, Status.PAUSED)
            if live and self.init is not None and self.init.exit_code is not None:
                self._status = Status.STOPPED
            return self._status

    def state(self) -> dict[str, Any]:
        """The OCI state JSON (ociVersion, id, status, pid, bundle, annotations)."""
        pid = self.init.pid if self.init is not None and self.status != Status.STOPPED else 0
        return {
            "ociVersion": self.spec.oci_version or "1.0.2",
            "id": self.id,
            "status": self.status.value,
            "pid": pid,
            "bundle": str(self.bundle),
            "annotations": dict(self.spec.annotations),
        }

    def in_namespace(self, kind: str) -> bool:
        """Whether the container's processes have a ``kind`` namespace other than the engine's."""
        return any(ns.type == kind for ns in self.spec.linux.namespaces)

    def process(self, exec_id: str) -> Process:
        """The init for "" (or the container id), else the exec process; NotFound otherwise."""
        with self._lock:
            if exec_id in ("", self.id):
                if self.init is None:
                    raise NotFound(f"container {self.id} has no init process")
                return self.init
            try:
                return self.execs[exec_id]
            except KeyError:
                raise NotFound(f"container {self.id} has no process {exec_id}") from None

    def processes(self) -> list[Process]:
        with self._lock:
            out = [self.init] if self.init is not None else []
            return out + list(self.execs.values())

    # --- lifecycle
    def start(self) -> None:
        """Run the user's program (created -> running), with startContainer and poststart hooks."""
        with self._lock:
            status = self.status
            require(self.id, status, status.can_start(), "start", "created")
            assert self.init is not None
            if self.start_fifo is not None:
                start_detached(self.start_fifo)
                self.init.handle.close_control()
            else:
                self.engine.forkserver.release(self.init.handle)
            if self.spec.hooks.start_container:
                # the process runs them, in the container, before its program: wait for their verdict
                handle = self.init.handle
                handle.wait_for("started", SHIM_EXIT_TIMEOUT + max(_hook_timeouts(self.spec.hooks.start_container)))
                if not handle.started:
                    self.signal(_signal.SIGKILL, all_processes=True)
                    raise ResourceError(f"container {self.id}: {handle.error or 'startContainer hooks did not finish'}")
            self._status = Status.RUNNING
        for hook in self.spec.hooks.poststart:
            try:
                hooks_mod.run_hook(hook, self.state(), "poststart")
            except Exception as exc:  # poststart failures are logged, not fatal (runtime-spec)
                log.warning("container %s: %s", self.id, exc)

    def exec(
        self,
        exec_id: str,
        process: dict[str, Any],
        *,
        io: PipeIO | FdIO | None = None,
        sub_cgroups: dict[str, str] | None = None,
    ) -> Process:
        """Start ``process`` (config.json's process object) in the container's namespaces and cgroup, or
        in sub-cgroups of it that exist (``sub_cgroups``: controller, or "" for all, -> relative path)."""
        with self._lock:
            status = self.status
            require(self.id, status, status.can_exec(), "exec", "running")
            if not exec_id or exec_id == self.id:
                raise InvalidArgument(f"exec id {exec_id!r} is taken by the container's init")
            if exec_id in self.execs:
                raise AlreadyExists(f"container {self.id} already has a process {exec_id}")
            parsed = parse_process(process)
            if not parsed.args:
                raise InvalidArgument("process.args is empty: there is nothing to exec")
            assert self.init is not None
            proc = self.engine._spawn_exec(self, exec_id, parsed, io or PipeIO(), sub_cgroups)
            self.execs[exec_id] = proc
            return proc

    def signal(self, signum: int, exec_id: str = "", *, all_processes: bool = False) -> None:
        """Signal the init or ``exec_id``; ``all_processes`` signals every process in the cgroup."""
        with self._lock:
            status = self.status
            if status is Status.STOPPED and not all_processes:
                return
            if all_processes:
                pids = set(self.pids())
                pids.update(p.pid for p in self.processes() if p.exit_code is None and p.pid > 0)
                for pid in pids:
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass
                if status is Status.PAUSED and signum == _signal.SIGKILL:
                    self._thaw_quietly()
                return
            self.process(exec_id).signal(signum)

    def wait(self, exec_id: str = "", timeout: float | None = None) -> int:
        """The exit code of the init (exec_id "") or an exec process, blocking until it ends."""
        return self.process(exec_id).wait(timeout)

    def forget(self, exec_id: str) -> None:
        """Drop an ended exec process (after WaitProcess reported it) and close its stdio."""
        with self._lock:
            proc = self.execs.pop(exec_id, None)
        if proc is not None:
            proc.io.close()
            proc.handle.close_control()
            proc.handle.wait_closed(SHIM_EXIT_TIMEOUT)

    def pause(self) -> None:
        with self._lock:
            status = self.status
            require(self.id, status, status.can_pause(), "pause", "running")
            self.cgroup.freeze()
            self._status = Status.PAUSED

    def resume(self) -> None:
        with self._lock:
            status = self.status
            require(self.id, status, status.can_resume(), "resume", "paused")
            self.cgroup.thaw()
            self._status = Status.RUNNING

    def update(self, resources: dict[str, Any]) -> None:
        """Apply new linux.resources to the container's cgroup."""
        from agent.container.cgroups.plan import validate_resources

        with self._lock:
            status = self.status
            require(self.id, status, status.can_update(), "update", "created, running or paused")
            validate_resources(resources)
            self.cgroup.update(resources)
            if (resources.get("cpu") or {}).get("cpus"):
                self.asked_for_cpus = True

    def stats(self) -> Any:
        """The cgroup's statistics (agent.container.cgroups.CgroupStats)."""
        return self.cgroup.stats()

    def pids(self) -> list[int]:
        try:
            return list(self.cgroup.pids())
        except OSError:
            return []

    def cpuset_dir(self) -> str | None:
        """The cgroup dir holding cpuset.cpus, when the spec set linux.resources.cpu.cpus."""
        if not self.asked_for_cpus:
            return None
        return os.fspath(self.cgroup.cpuset_dir())

    def return_net_devices(self) -> None:
        """Give the spec's linux.netDevices back to the runtime's network namespace, while the
        container's is there (its init alive): before the processes are killed. Once only."""
        init = self.init
        if not self.spec.linux.net_devices or self._net_devices_returned or init is None:
            return
        if init.handle.pid > 0 and init.handle.exit_code is None:
            from agent.container.launch import return_net_devices

            return_net_devices(self.engine, self.id, init.handle.pid, self.spec.linux.net_devices)
        self._net_devices_returned = True

    def destroy(self, timeout: float | None = None) -> None:
        """Kill every process, wait for the init (``timeout`` seconds; None or 0 waits forever),
        run the poststop hooks and remove the cgroup. Safe to call twice."""
        with self._lock:
            if self._status is Status.STOPPED and self.init is None:
                return
            status = self.status
            self._thaw_quietly() if status is Status.PAUSED else None
            procs = self.processes()
            self.return_net_devices()
            if not self._pid_namespace_ended(procs):
                self.signal(_signal.SIGKILL, all_processes=True)
        deadline = None if not timeout else time.monotonic() + timeout
        for proc in procs:
            if proc.handle.exit_code is None and proc.handle.pid > 0:
                try:
                    proc.signal(_signal.SIGKILL)
                except OSError:
                    pass
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if proc.handle.wait(left) is None:
                raise DeadlineExceeded(f"container {self.id}: process {proc.pid} did not end within {timeout} s")
        self.engine.forkserver.forget_all(p.handle for p in procs)
        # The cgroup goes while the shims finish (a shim tears the container's mount namespace down
        # after it reported the exit); if something still holds the cgroup, once the shims are gone.
        try:
            self.cgroup.destroy()
            removed = True
        except (OSError, AgentError):
            removed = False
        for proc in procs:
            # the shim reports the exit, then reaps what is left and ends; its end closes our pipe
            if not proc.handle.wait_closed(SHIM_EXIT_TIMEOUT):
                log.warning("container %s: the shim of process %d is still running", self.id, proc.pid)
        for proc in procs:
            proc.io.close()
        if not removed:
            self._remove_cgroup()
        with self._lock:
            self._status = Status.STOPPED
        for hook in self.spec.hooks.poststop:
            try:
                hooks_mod.run_hook(hook, self.state(), "poststop")
            except Exception as exc:
                log.warning("container %s: %s", self.id, exc)

    def _pid_namespace_ended(self, procs: list[Process]) -> bool:
        """Whether every process of the container is gone already, without reading its cgroup: its
        init, pid 1 of a pid namespace of its own, has exited (the kernel kills the namespace's other
        processes and reaps them before it reports that exit) and no exec'd process is left."""
        own_pid_namespace = any(ns.type == "pid" and not ns.path for ns in self.spec.linux.namespaces)
        # procs is self.processes(): the init (when there is one) and the exec'd processes
        return own_pid_namespace and self.init is not None and all(p.handle.exit_code is not None for p in procs)

    def _thaw_quietly(self) -> None:
        try:
            self.cgroup.thaw()
        except Exception as exc:
            log.warning("container %s: thaw failed: %s", self.id, exc)

    def _remove_cgroup(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            try:
                self.cgroup.destroy()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ResourceError(f"container {self.id}: removing its cgroup failed: {exc}") from exc
                time.sleep(0.01)


class Engine:
    """Every container this process manages, by id. Thread-safe."""

    def __init__(
        self,
        paths: HostPaths,
        *,
        forkserver: ForkServerClient | None = None,
        cgroups: CgroupFactory | None = None,
        no_pivot: bool | None = None,
        ignore_missing_apparmor: bool = False,
        rootless: bool = False,
        systemd_cgroup: bool | None = None,
    ) -> None:
        """``no_pivot`` None: detect (pivot_root cannot leave an initramfs root, so use MS_MOVE there).
        ``ignore_missing_apparmor``: a process's AppArmor profile is dropped, not refused, where the
        host has no AppArmor (see launch.process_request). ``rootless``: run by a user other than root,
        whose containers go without a cgroup where the user may make none (cgroups.NoCgroup).
        ``systemd_cgroup``: the cgroup driver (cgroups.manager_for's ``systemd``): None chooses by the
        cgroupsPath's form and whether systemd is init (the agent), True and False are a runtime CLI's
        ``--systemd-cgroup`` or its absence."""
        self.paths = paths
        self.systemd_cgroup = systemd_cgroup
        self.ignore_missing_apparmor = ignore_missing_apparmor
        self.rootless = rootless
        if forkserver is None:
            from agent.container.forkserver import ForkServerClient

            forkserver = ForkServerClient()
        self.forkserver = forkserver
        self._cgroups = cgroups  # None: the host's cgroups (manager_for, the layout read once)
        self._cgroup_layout: Any = None
        self.no_pivot = no_pivot
        self._containers: dict[str, Container] = {}
        self._lock = _thread.allocate_lock()

    def create(
        self,
        container_id: str,
        spec: dict[str, Any],
        *,
        bundle: str | os.PathLike[str] | None = None,
        io: PipeIO | FdIO | None = None,
        start_fifo: str | os.PathLike[str] | None = None,
        new_keyring: bool = True,
    ) -> Container:
        """Validate, then make the container up to the point where only exec of the user's program
        is left (status created). Any failure undoes every step taken and raises.

        ``new_keyring`` False: its processes keep the session keyring they inherit (runc's
        ``--no-new-keyring``), instead of joining one named for the container.

        ``start_fifo`` (a FIFO the caller made with mkfifo) is for callers that start the container
        from another process, as a runtime CLI does: the container waits for a byte on the FIFO
        instead of the engine's order, and ``start_detached(fifo)`` sends it. Without ``bundle``, the
        directory holding root.path is the bundle."""
        bundle_dir = None if bundle is None else os.fspath(bundle)
        fifo = None if start_fifo is None else os.fspath(start_fifo)
        validate_container_id(container_id)
        parsed = parse_spec(spec)
        validate_spec(parsed, bundle_dir)
        with self._lock:
            if container_id in self._containers:
                raise AlreadyExists(f"container {container_id} already exists")
            self._containers[container_id] = None  # type: ignore[assignment]  # reserve the id
        try:
            bundle_dir = bundle_dir or os.path.dirname(normal_path(parsed.root_path))
            container = self._create(container_id, parsed, bundle_dir, io or PipeIO(), fifo, new_keyring)
        except BaseException:
            with self._lock:
                self._containers.pop(container_id, None)
            raise
        with self._lock:
            self._containers[container_id] = container
        return container

    def restore(
        self,
        container_id: str,
        spec: dict[str, Any],
        *,
        bundle: str | os.PathLike[str],
        init: ProcessHandle,
        status: Status,
        start_fifo: str | os.PathLike[str] | None = None,
        new_keyring: bool = True,
        cgroupless: bool = False,
        systemd_cgroup: bool | None = None,
    ) -> Container:
        """A container that another process made (an earlier call of a runtime CLI), found again from
        what that call saved: its spec, bundle, status and a handle on its init. The init is not this
        engine's child, so its exit code is whatever ``init`` reports; the rest (signal, exec, pause,
        update, destroy) works as for a container this engine created. ``systemd_cgroup``: the cgroup
        driver it was made with (None: the engine's)."""
        validate_container_id(container_id)
        parsed = parse_spec(spec)
        cgroup = None  # made on first use
        if cgroupless:  # a rootless container that was made without a cgroup (cgroups.NoCgroup)
            from agent.container.cgroups import NoCgroup

            cgroup = NoCgroup(self.paths, init.pid)
        container = Container(self, container_id, parsed, os.fspath(bundle), cgroup)
        container.systemd_cgroup = systemd_cgroup
        terminal = parsed.process.terminal if parsed.process is not None else False
        container.init = Process(container_id, "", init, ProcessIO(), terminal)
        container.start_fifo = None if start_fifo is None else os.fspath(start_fifo)
        container.new_keyring = new_keyring
        container._status = status
        with self._lock:
            if container_id in self._containers:
                raise AlreadyExists(f"container {container_id} already exists")
            self._containers[container_id] = container
        return container

    def get(self, container_id: str) -> Container:
        with self._lock:
            container = self._containers.get(container_id)
        if container is None:
            raise NotFound(f"container {container_id} does not exist")
        return container

    def list(self) -> list[Container]:
        with self._lock:
            return [c for c in self._containers.values() if c is not None]

    def remove(self, container_id: str, timeout: float | None = None) -> None:
        """Destroy the container and forget it."""
        container = self.get(container_id)
        container.destroy(timeout)
        with self._lock:
            self._containers.pop(container_id, None)

    def close(self) -> None:
        """Destroy every container and stop the fork server."""
        for container in self.list():
            try:
                self.remove(container.id, timeout=10)
            except Exception as exc:
                log.warning("container %s: %s", container.id, exc)
        self.forkserver.close()

    # --- internals (filled in by engine_impl helpers below)
    def _create(
        self, container_id: str, spec: Spec, bundle: str, io: PipeIO | FdIO, start_fifo: str | None, new_keyring: bool
    ) -> Container:
        from agent.container.launch import create_container

        return create_container(self, container_id, spec, bundle, io, start_fifo, new_keyring)

    def _spawn_exec(
        self, container: Container, exec_id: str, process: Any, io: PipeIO | FdIO, sub_cgroups: dict[str, str] | None
    ) -> Process:
        from agent.container.launch import spawn_exec

        return spawn_exec(self, container, exec_id, process, io, sub_cgroups)

    def start_pause(self, description: str = "sandbox pid namespace") -> ProcessHandle:
        """A waiting pid 1 of a new pid namespace that containers can join by path."""
        from agent.container.launch import spawn_pause

        return spawn_pause(self, description)

    def make_cgroup(self, cgroups_path: str, container_id: str, systemd: bool | None = None) -> Any:
        """The cgroup manager for a container; ``systemd`` (when not None) overrides the engine's driver."""
        if systemd is None:
            systemd = self.systemd_cgroup
        if self._cgroups is not None and systemd is not True:
            made = self._cgroups(self.paths, cgroups_path, container_id)
        else:
            from agent.container.cgroups import manager_for
            from agent.container.cgroups.layout import detect

            # the cgroup mounts are made at boot, before any container: read them once
            if self._cgroup_layout is None:
                self._cgroup_layout = detect(self.paths)
            made = manager_for(self.paths, cgroups_path, container_id, layout=self._cgroup_layout, systemd=systemd)
        made.skip_devices = self.rootless  # whichever made it (see CgroupManager.skip_devices)
        return made


def _hook_timeouts(hooks: Any) -> list[float]:
    return [float(hook.timeout or hooks_mod.DEFAULT_HOOK_TIMEOUT) for hook in hooks]


def start_detached(start_fifo: str | os.PathLike[str]) -> None:
    """Start a container created with ``start_fifo`` (from any process). NotFound when no
    container waits on that FIFO any more (it was started already, or it ended)."""
    import errno

    try:
        fd = os.open(start_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            raise NotFound(f"no container waits on {start_fifo}") from exc
        raise
    try:
        os.write(fd, b"s")
    finally:
        os.close(fd)


def state_json(container: Container) -> str:
    return jsonlite.dumps(container.state())
