"""The container RPCs in domain types: create, start, exec, signal, wait, stdio, update, stats,
pause, resume, remove, OOM events. The engine (agent/container) does the work; this service adds
the agent's concerns: storages per container, buffered stdio (agent/services/streams.py), the OOM
watcher, and which containers asked for CPUs (for CPU hotplug's cpuset update)."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.container.engine import Container, Engine, PipeIO, Process
from agent.container.hooks import add_guest_hooks
from agent.errors import AgentError, DeadlineExceeded, IncorrectState, InvalidArgument, NotFound
from agent.services import container_devices, shared_mounts
from agent.services.container_devices import Device
from agent.services.passfd import PassfdStreams, PtyRelay, put_back
from agent.services.sandbox import SandboxInfo, sandbox_spec
from agent.services.shared_mounts import SharedMount, container_name
from agent.services.streams import StreamBuffer
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

MAX_READ = 4 * 1024 * 1024  # one ReadStdout never returns more (the ttrpc frame limit)
ANSWER_MARGIN = 0.05  # seconds before a call's deadline a waiting WriteStdin stops, to answer in time


class StreamEnded(NotFound):
    """ReadStdout/ReadStderr after the process closed the stream and everything was read."""


@dataclass
class ProcessStreams:
    stdout: StreamBuffer | None = None
    stderr: StreamBuffer | None = None
    stdin: int | None = None
    stdin_lock: threading.Lock = field(default_factory=threading.Lock)
    waited: bool = False  # WaitProcess reported the exit
    passfd: dict[str, int] = field(default_factory=dict)  # streams the runtime's passfd streams are, by host port
    relay: PtyRelay | None = None  # a terminal's copy to and from its passfd streams
    eof_reported: set[str] = field(default_factory=set)  # "stdout"/"stderr" whose EOF a reader saw

    def drained(self) -> bool:
        """A reader saw the end of every output stream."""
        return all(
            b is None or name in self.eof_reported for name, b in (("stdout", self.stdout), ("stderr", self.stderr))
        )

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        with self.stdin_lock:
            if self.stdin is not None:
                os.close(self.stdin)
                self.stdin = None
        for buffer in (self.stdout, self.stderr):
            if buffer is not None:
                buffer.close()


def _streams_for(
    process: Process, limit: int, name: str, passfd: dict[str, socket.socket] | None = None
) -> ProcessStreams:
    """Take the process's stdio descriptors over (the buffers close them). ``passfd``: the runtime's
    streams the process got as its own (closed here) or, with a terminal, that its pty is copied to."""
    io = process.io
    passfd = passfd or {}
    streams = ProcessStreams(passfd={stream: int(sock.getpeername()[1]) for stream, sock in passfd.items()})
    if io.pty_master is not None and passfd:
        tty_streams = {stream: sock for stream, sock in passfd.items() if stream != "stderr"}
        for sock in (sock for stream, sock in passfd.items() if stream == "stderr"):
            sock.close()  # a terminal has no stderr: the host's stream ends at once
        streams.relay = PtyRelay(io.pty_master, tty_streams, name)
        if "stdout" not in passfd:
            streams.stdout = StreamBuffer(os.dup(io.pty_master), limit, f"{name} tty")
        if "stdin" not in passfd:
            streams.stdin = os.dup(io.pty_master)
        return streams
    for sock in passfd.values():
        sock.close()  # the process has its own copy
    if io.pty_master is not None:
        # one pty: the buffer reads (and owns) the master, stdin writes go to a second descriptor
        # of it, and a third stays in the process's io for TtyWinResize (the engine closes it)
        master = io.pty_master
        streams.stdin = os.dup(master)
        io.pty_master = os.dup(master)
        streams.stdout = StreamBuffer(master, limit, f"{name} tty")
        return streams
    if io.stdout is not None:
        streams.stdout = StreamBuffer(io.stdout, limit, f"{name} stdout")
        io.stdout = None
    if io.stderr is not None:
        streams.stderr = StreamBuffer(io.stderr, limit, f"{name} stderr")
        io.stderr = None
    streams.stdin, io.stdin = io.stdin, None
    return streams


def _refuse_passfd(streams: ProcessStreams, stream: str, name: str) -> None:
    port = streams.passfd.get(stream)
    if port is not None:
        raise IncorrectState(f"{name} is the runtime's passfd stream from host port {port}: use that stream")


class ContainerService:
    def __init__(
        self,
        paths: HostPaths,
        config: AgentConfig,
        *,
        storage: Callable[[], Any] | None = None,
        engine: Engine | None = None,
        guest_hook_path: Callable[[], str] | None = None,
        sandbox: Callable[[], SandboxInfo | None] | None = None,
        passfd: PassfdStreams | None = None,
    ) -> None:
        self.paths = paths
        self.passfd = passfd  # the runtime's stdio streams (agent.passfd_listener_port), when on
        self.config = config
        # Kata's runtime passes the host's AppArmor profile on unchanged, and the guest has no AppArmor
        # (the Kata agent ignores the profile too); an SELinux label it sends only for a guest that has it
        self.engine = engine or Engine(paths, ignore_missing_apparmor=True)
        self._storage = storage  # returns the StorageService, built only when a request has storages
        self._guest_hook_path = guest_hook_path or (lambda: "")
        self._sandbox = sandbox or (lambda: None)
        self._streams: dict[tuple[str, str], ProcessStreams] = {}
        self._lock = threading.Lock()
        self._oom: Any = None
        self._sandbox_pidns: Any = None  # the pause process's handle, when the sandbox shares a pid ns
        self._oom_lock = threading.Lock()

    @classmethod
    def from_services(cls, services: Services) -> ContainerService:
        def sandbox() -> SandboxInfo | None:
            built = services.built().get("sandbox")
            return getattr(built, "sandbox", None)

        def guest_hook_path() -> str:
            info = sandbox()
            return info.guest_hook_path if info is not None else ""

        return cls(
            services.paths,
            services.config,
            storage=lambda: services.storage,
            guest_hook_path=guest_hook_path,
            sandbox=sandbox,
            passfd=services.passfd,
        )

    # --- helpers
    def _container(self, container_id: str) -> Container:
        return self.engine.get(container_id)

    def _io(self, passfd: dict[str, socket.socket] | None = None) -> PipeIO:
        given = {stream: sock.fileno() for stream, sock in (passfd or {}).items()}
        return PipeIO(pipe_size=self.config.container_pipe_size, given=given)

    def _take_streams(self, ports: dict[str, int] | None, deadline: float | None) -> dict[str, socket.socket]:
        """The passfd streams ``ports`` names ({} when it names none)."""
        if not ports or not any(ports.values()):
            return {}
        if self.passfd is None:
            named = ", ".join(f"{stream}_port={port}" for stream, port in ports.items() if port)
            raise IncorrectState(f"the request names passfd streams ({named}) but agent.passfd_listener_port is off")
        return self.passfd.take(ports, deadline)

    def _adopt(
        self, container_id: str, exec_id: str, process: Process, passfd: dict[str, socket.socket] | None = None
    ) -> None:
        name = f"{container_id}/{exec_id or 'init'}"
        streams = _streams_for(process, self.config.output_buffer_limit, name, passfd)
        with self._lock:
            self._streams[(container_id, exec_id)] = streams

    def _stream_key(self, container_id: str, exec_id: str) -> tuple[str, str]:
        container = self._container(container_id)
        return (container_id, "" if exec_id in ("", container.id) else exec_id)

    def _process_streams(self, container_id: str, exec_id: str) -> ProcessStreams:
        key = self._stream_key(container_id, exec_id)
        with self._lock:
            streams = self._streams.get(key)
        if streams is None:
            raise NotFound(f"container {container_id} has no process {exec_id or 'init'}")
        return streams

    def _storage_service(self) -> Any:
        if self._storage is None:
            raise InvalidArgument("the request has storages but this agent has no storage service")
        return self._storage()

    def _oom_watcher(self) -> Any:
        with self._oom_lock:
            if self._oom is None:
                from agent.container.cgroups import OomWatcher

                self._oom = OomWatcher(self.paths)
            return self._oom

    # --- RPCs
    def start_sandbox_pidns(self) -> int:
        """Start the sandbox's shared pid namespace (a waiting pid 1); returns its pid."""
        with self._lock:
            if self._sandbox_pidns is None or self._sandbox_pidns.exit_code is not None:
                self._sandbox_pidns = self.engine.start_pause()
            return int(self._sandbox_pidns.pid)

    def stop_sandbox_pidns(self) -> None:
        with self._lock:
            handle, self._sandbox_pidns = self._sandbox_pidns, None
        if handle is not None and handle.exit_code is None and handle.pid > 0:
            try:
                os.kill(handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            handle.wait(10)
            handle.wait_closed(5)

    def _join_sandbox_pidns(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            handle = self._sandbox_pidns
        if handle is None or handle.exit_code is not None:
            raise IncorrectState("the container asks for the sandbox's pid namespace, but the sandbox has none")
        linux = dict(spec.get("linux") or {})
        others = [ns for ns in linux.get("namespaces") or [] if ns.get("type") != "pid"]
        linux["namespaces"] = [*others, {"type": "pid", "path": f"{self.paths.proc_pid(handle.pid)}/ns/pid"}]
        return {**spec, "linux": linux}

    def create_container(
        self,
        container_id: str,
        spec: dict[str, Any],
        *,
        storages: list[Any] | None = None,
        sandbox_pidns: bool = False,
        stdio_ports: dict[str, int] | None = None,
        deadline: float | None = None,
        shared_mounts: list[SharedMount] | None = None,
        devices: list[Device] | None = None,
    ) -> Container:
        """Mount the request's storages (owned by the container), then create it. With
        ``sandbox_pidns`` the container joins the sandbox's shared pid namespace; ``stdio_ports``
        names the passfd streams that are the init's stdin, stdout, stderr (by host port);
        ``shared_mounts``: mounts of other containers of the sandbox this one gets (shared_mounts.py);
        ``devices``: hot-plugged devices it gets, waited for and renumbered (container_devices.py)."""
        for mount in shared_mounts or ():
            mount.validate()
        if sandbox_pidns:
            spec = self._join_sandbox_pidns(spec)
        sandbox = self._sandbox()
        if sandbox is not None:
            spec = sandbox_spec(spec, sandbox)
        hook_dir = self._guest_hook_path()
        if hook_dir:
            spec = add_guest_hooks(spec, self.paths.inside(hook_dir))
        if devices:
            spec, placed = container_devices.apply(
                self.paths, spec, devices, self._storage_service().table.block_device, self.config.hotplug_timeout
            )
            log.info("container %s devices: %s", container_id, "; ".join(placed))
        passfd = self._take_streams(stdio_ports, deadline)
        try:
            if storages:
                self._storage_service().mount_all(storages, container_id)
            try:
                container = self.engine.create(container_id, spec, io=self._io(passfd))
            except BaseException:
                if storages:
                    self._storage_service().release(container_id)
                raise
        except BaseException:
            put_back(self.passfd, passfd)
            raise
        assert container.init is not None
        if shared_mounts:
            self._attach_shared_mounts(container, shared_mounts, passfd, bool(storages))
        self._adopt(container_id, "", container.init, passfd)
        try:
            self._oom_watcher().add(container_id, container.cgroup)
        except AgentError as exc:
            log.warning("container %s: no OOM events: %s", container_id, exc)
        return container

    def _attach_shared_mounts(
        self, container: Container, mounts: list[SharedMount], passfd: dict[str, socket.socket], storages: bool
    ) -> None:
        """The shared mounts, in the created container; on failure it is removed with what it had."""
        assert container.init is not None
        sources = {}
        for other in self.engine.list():
            name = container_name(other.spec.annotations)
            if name and other.id != container.id and other.init is not None and other.init.pid > 0:
                sources[name] = other.init.pid
        try:
            attached = shared_mounts.setup(self.paths, container.init.pid, sources, mounts)
        except BaseException:
            self.engine.remove(container.id, 10)
            for sock in passfd.values():
                sock.close()
            if storages:
                self._storage_service().release(container.id)
            raise
        if attached:
            log.info("container %s: shared mounts at %s", container.id, ", ".join(attached))

    def start_container(self, container_id: str) -> None:
        self._container(container_id).start()

    def exec_process(
        self,
        container_id: str,
        exec_id: str,
        process: dict[str, Any],
        *,
        stdio_ports: dict[str, int] | None = None,
        deadline: float | None = None,
    ) -> Process:
        container = self._container(container_id)
        passfd = self._take_streams(stdio_ports, deadline)
        try:
            proc = container.exec(exec_id, process, io=self._io(passfd))
        except BaseException:
            put_back(self.passfd, passfd)
            raise
        self._adopt(container_id, exec_id, proc, passfd)
        return proc

    def signal_process(self, container_id: str, exec_id: str, signum: int) -> None:
        """An empty exec_id signals every process of the container."""
        container = self._container(container_id)
        if signum <= 0 or signum >= 65:
            raise InvalidArgument(f"signal {signum} is not a signal number (1..64)")
        if exec_id == "":
            container.signal(signum, all_processes=True)
        else:
            container.signal(signum, exec_id)

    def wait_process(self, container_id: str, exec_id: str, deadline: float | None = None) -> int:
        """The exit status, as the shell shows it (128+N for signal N)."""
        container = self._container(container_id)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        code = container.wait(exec_id, timeout)
        key = self._stream_key(container_id, exec_id)
        if key[1]:
            with self._lock:
                streams = self._streams.get(key)
                if streams is not None:
                    streams.waited = True
            self._forget_if_done(container, key)
        return code

    def _forget_if_done(self, container: Container, key: tuple[str, str]) -> None:
        """Drop an exec process once its exit was reported and its output read to EOF (as Kata's
        agent forgets exec processes), so probes that exec every few seconds cost nothing later."""
        with self._lock:
            streams = self._streams.get(key)
            if streams is None or not streams.waited or not streams.drained():
                return
            del self._streams[key]
        streams.close()
        container.forget(key[1])

    def write_stdin(self, container_id: str, exec_id: str, data: bytes, deadline: float | None = None) -> int:
        """Write ``data`` to the process's stdin; the number of bytes written. While the process reads
        none, wait until ``deadline`` (monotonic): then what went in so far counts (the caller writes
        the rest again, as Kata's runtime does), or DeadlineExceeded when nothing did. A process that
        no longer reads its stdin (ended, or closed it) is IncorrectState."""
        streams = self._process_streams(container_id, exec_id)
        name = f"stdin of {container_id}/{exec_id or 'init'}"
        _refuse_passfd(streams, "stdin", name)
        with streams.stdin_lock:
            if streams.stdin is None:
                raise InvalidArgument(f"{name} is closed")
            # our end never blocks (a pty's master is non-blocking already): a full pipe is waited
            # for below, within the call's deadline, not in write(2)
            os.set_blocking(streams.stdin, False)
            written = 0
            view = memoryview(data)
            while written < len(data):
                try:
                    written += os.write(streams.stdin, view[written:])
                except BlockingIOError:
                    # the answer must leave before the deadline (at it, the server answers for us and
                    # the count of what went in is lost)
                    left = None if deadline is None else deadline - ANSWER_MARGIN - time.monotonic()
                    if left is not None and left <= 0:
                        if written:
                            break
                        raise DeadlineExceeded(
                            f"{name}: the process read none of it before the call's deadline"
                        ) from None
                    poller = select.poll()  # not select(): descriptors may be above FD_SETSIZE
                    poller.register(streams.stdin, select.POLLOUT)
                    poller.poll(None if left is None else max(1, int(left * 1000)))
                except BrokenPipeError:
                    if written:
                        break
                    raise IncorrectState(f"{name}: the process no longer reads it (it ended or closed it)") from None
            return written

    def close_stdin(self, container_id: str, exec_id: str) -> None:
        streams = self._process_streams(container_id, exec_id)
        _refuse_passfd(streams, "stdin", f"stdin of {container_id}/{exec_id or 'init'}")
        with streams.stdin_lock:
            if streams.stdin is not None:
                os.close(streams.stdin)
                streams.stdin = None

    def read_stream(
        self, container_id: str, exec_id: str, length: int, *, stderr: bool, deadline: float | None = None
    ) -> bytes:
        """Block until there is output or the stream ended (StreamEnded)."""
        streams = self._process_streams(container_id, exec_id)
        buffer = streams.stderr if stderr else streams.stdout
        name = "stderr" if stderr else "stdout"
        _refuse_passfd(streams, name, f"{name} of {container_id}/{exec_id or 'init'}")
        if buffer is None:
            raise StreamEnded(f"{container_id}/{exec_id or 'init'} has no {name} (a terminal has only stdout)")
        length = min(length or MAX_READ, MAX_READ)
        while True:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded(f"no {name} from {container_id}/{exec_id or 'init'} before the deadline")
            data = buffer.read(length, timeout)
            if data is None:
                key = self._stream_key(container_id, exec_id)
                streams.eof_reported.add(name)
                if key[1]:
                    self._forget_if_done(self._container(container_id), key)
                raise StreamEnded(f"{name} of {container_id}/{exec_id or 'init'} is at EOF")
            if data:
                return data

    def tty_win_resize(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        self._container(container_id).process(exec_id).resize(rows, cols)

    def update_container(self, container_id: str, resources: dict[str, Any]) -> None:
        self._container(container_id).update(resources)

    def stats_container(self, container_id: str) -> Any:
        return self._container(container_id).stats()

    def pause_container(self, container_id: str) -> None:
        self._container(container_id).pause()

    def resume_container(self, container_id: str) -> None:
        self._container(container_id).resume()

    def list_processes(self, container_id: str) -> list[int]:
        return self._container(container_id).pids()

    def remove_container(self, container_id: str, timeout: float = 0) -> None:
        """Kill and reap every process (``timeout`` seconds; 0 waits for ever), remove the cgroup,
        close the stdio, release the container's storages."""
        self._container(container_id)
        if self._oom is not None:
            self._oom.remove(container_id)
        self.engine.remove(container_id, timeout or None)
        with self._lock:
            keys = [key for key in self._streams if key[0] == container_id]
            streams = [self._streams.pop(key) for key in keys]
        for item in streams:
            item.close()
        if self._storage is not None:
            try:
                storage = self._storage()
            except AgentError:
                storage = None
            if storage is not None:
                storage.release(container_id)

    def get_oom_event(self, deadline: float | None = None) -> str:
        """Block until a container's process is OOM-killed; return the container id."""
        watcher = self._oom_watcher()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        container_id: str | None = watcher.next_event(timeout)
        if container_id is None:
            raise DeadlineExceeded("no OOM event before the deadline")
        return container_id

    def cpuset_targets(self) -> list[str]:
        """cpuset dirs of the containers whose spec set linux.resources.cpu.cpus."""
        targets = []
        for container in self.engine.list():
            try:
                directory = container.cpuset_dir()
            except (OSError, AgentError):
                continue
            if directory is not None:
                targets.append(directory)
        return targets

    def container_ids(self) -> list[str]:
        return [c.id for c in self.engine.list()]

    def remove_all(self, timeout: float = 10) -> None:
        for container_id in self.container_ids():
            try:
                self.remove_container(container_id, timeout)
            except Exception as exc:
                log.warning("removing container %s: %s", container_id, exc)

    def close(self) -> None:
        self.remove_all()
        self.stop_sandbox_pidns()
        if self._oom is not None:
            self._oom.close()
        self.engine.close()
