"""The container operations pykata-runc needs, for a CLI whose every call is a new process.

``create`` forks the container's init from the CLI (a single-threaded process, so fork is safe). The
init sets up its namespaces and root, then blocks opening ``<state>/exec.fifo`` for writing, as
runc's init does; ``start`` (a later CLI call) opens the fifo for reading, which lets it exec the
user's program. Cgroups are found again from the saved ``linux.cgroupsPath``.

The engine's parts do the work: spec parsing and validation (agent.container.spec, .validate), the
rootfs plan (.rootfs), capabilities (.capabilities) and cgroups (.cgroups). What is here is what the
engine's in-process API (agent.container.engine, whose containers live in one long-running process
and whose processes come from its fork server) does not offer yet: an init that outlives the command
that created it, found again by a later command.
"""

from __future__ import annotations

import fcntl
import os
import resource
import select
import socket
import termios
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.container.cgroups import CgroupManager, manager_for
from agent.errors import InvalidArgument, NotFound, ResourceError
from agent.system import libc
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.container.cli import Record
    from agent.container.rootfs import RootfsPlan

EXEC_FIFO = "exec.fifo"
NAMESPACE_FLAGS = {
    "pid": libc.CLONE_NEWPID,
    "network": libc.CLONE_NEWNET,
    "ipc": libc.CLONE_NEWIPC,
    "uts": libc.CLONE_NEWUTS,
    "mount": libc.CLONE_NEWNS,
    "cgroup": libc.CLONE_NEWCGROUP,
    "user": libc.CLONE_NEWUSER,
}
# /proc/<pid>/ns names, for exec to join the container's namespaces (user first, mount last).
JOIN_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt")
READY = b"\0"


class Backend:
    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self._cgroups: dict[tuple[str, str], CgroupManager] = {}

    def validate(self, spec: dict[str, Any], bundle: Path) -> None:
        """The engine's ordered checks (InvalidArgument naming the field); call before any side effect."""
        from agent.container.spec import parse_spec
        from agent.container.validate import validate_spec

        validate_spec(parse_spec(spec), bundle)
        linux = spec.get("linux") or {}
        if linux.get("resources"):
            from agent.container.cgroups import validate_resources

            validate_resources(linux["resources"])

    def cgroups(self, record: Record) -> CgroupManager:
        """The container's cgroup, found again from what create saved (a manager holds no other state)."""
        key = (record.id, record.engine.get("cgroups_path", ""))
        if key not in self._cgroups:
            self._cgroups[key] = manager_for(self.paths, key[1], record.id)  # reads mountinfo: once
        return self._cgroups[key]

    # --- create / start
    def create(
        self,
        record: Record,
        spec: dict[str, Any],
        state_dir: Path,
        *,
        stdio: tuple[int, int, int],
        console: int | None = None,
        no_pivot: bool = False,
        preserve_fds: int = 0,
    ) -> int:
        """Fork the container's init and return its pid once it waits on the exec fifo.

        With ``console`` (one end of a socketpair) the init makes its pty inside the container, as
        runc does (so the terminal's name resolves there), and sends the master back through it.
        """
        linux = spec.get("linux") or {}
        flags = 0
        joins: list[tuple[str, str]] = []
        for namespace in linux.get("namespaces") or []:
            kind = namespace.get("type")
            if kind not in NAMESPACE_FLAGS:
                raise InvalidArgument(f"unknown namespace type {kind!r} in linux.namespaces")
            if namespace.get("path"):
                joins.append((kind, namespace["path"]))
            else:
                flags |= NAMESPACE_FLAGS[kind]
        # Imported here, not at module level: commands that fork nothing (state, kill, delete) skip them.
        # The child uses them after pivot_root, where the host's modules are out of reach.
        from agent.container import capabilities, rootfs  # noqa: F401  (seccomp below)
        from agent.container.spec import parse_spec

        plan = None
        if flags & libc.CLONE_NEWNS:
            plan = rootfs.plan_rootfs(self.paths, parse_spec(spec), Path(os.path.realpath(record.rootfs)),
                                      Path(record.bundle), no_pivot=no_pivot)  # fmt: skip
        from agent.container import seccomp
        from agent.container.launch import with_default_devices

        # Compiled before any side effect (an unknown action or architecture is refused here), kept
        # for exec processes, which run under the container's profile too.
        program = seccomp.compile_profile(linux["seccomp"]) if linux.get("seccomp") else b""
        record.engine["seccomp"] = program.hex()
        record.engine["cgroups_path"] = linux.get("cgroupsPath") or ""
        cgroups = self.cgroups(record)
        fifo = state_dir / EXEC_FIFO
        os.mkfifo(fifo, 0o622)
        cgroups.create()
        cgroups.apply(with_default_devices(linux.get("resources") or {}))

        # parent -> child: "you are in your cgroups". The child builds its root meanwhile (cgroup v1
        # moves are slow, a few ms per hierarchy), and waits for this before it may run anything.
        ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        error_read, error_write = os.pipe2(os.O_CLOEXEC)  # child -> parent: setup failed (or EOF: waiting)
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        new_pid = bool(flags & libc.CLONE_NEWPID)
        own_pid_ns = self._own_pid_namespace()
        if new_pid:
            libc.unshare(libc.CLONE_NEWPID)  # only our children enter it: the next fork is its init
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                self._restore_pid_namespace(own_pid_ns)
        if pid == 0:  # the container's init
            os.close(ready_write)
            os.close(error_read)
            code = 1
            try:
                _init(self.paths, spec, plan, flags & ~libc.CLONE_NEWPID, joins, stdio,
                      fifo_fd, no_pivot, preserve_fds, error_write, ready_read, console, program)  # fmt: skip
            except BaseException as exc:
                text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
                _report_and_exit(error_write, text, code)
            os._exit(code)
        os.close(ready_read)
        os.close(error_write)
        os.close(fifo_fd)
        try:
            cgroups.add_pid(pid)
            try:
                os.write(ready_write, b"1")
            except BrokenPipeError:
                pass  # the child failed already; its report says why
            os.close(ready_write)
            message = _read_report(error_read)  # READY once the init waits on the fifo
        except BaseException:
            _kill(pid)
            raise
        finally:
            os.close(error_read)
        if message != READY:
            os.waitpid(pid, 0)
            raise ResourceError(f"container {record.id}: init failed: {message.decode(errors='replace')}")
        return pid

    def start(self, record: Record, state_dir: Path) -> None:
        fifo = state_dir / EXEC_FIFO
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFound(f"container {record.id} was started already ({fifo} is gone)") from None
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(10_000):
                raise ResourceError(f"container {record.id}: init did not answer on {fifo}")
            os.read(fd, 1)
        finally:
            os.close(fd)
            fifo.unlink(missing_ok=True)

    def _own_pid_namespace(self) -> int:
        return os.open(self.paths.proc_pid(os.getpid()) / "ns" / "pid", os.O_RDONLY | os.O_CLOEXEC)

    def _restore_pid_namespace(self, fd: int) -> None:
        """Later children of ours (hooks, ps) belong in our pid namespace, not the container's."""
        try:
            libc.setns(fd, libc.CLONE_NEWPID, "pid namespace of pykata-runc")
        finally:
            os.close(fd)

    # --- the rest
    def pids(self, record: Record) -> list[int]:
        return self.cgroups(record).pids()

    def freeze(self, record: Record, *, frozen: bool) -> None:
        cgroups = self.cgroups(record)
        cgroups.freeze() if frozen else cgroups.thaw()

    def update(self, record: Record, resources: dict[str, Any]) -> None:
        self.cgroups(record).update(resources)

    def destroy(self, record: Record, state_dir: Path) -> None:
        cgroups = self.cgroups(record)
        if cgroups.exists():
            cgroups.destroy()

    def exec(
        self, record: Record, process: dict[str, Any], *, stdio: tuple[int, int, int], console: int | None = None
    ) -> int:
        from agent.container import capabilities, seccomp  # noqa: F401  (for the child, see create)
        from agent.container.spec import parse_process

        parse_process(process)  # InvalidArgument naming the field, before anything is forked
        ns_dir = self.paths.proc_pid(record.pid) / "ns"
        fds = []
        own_pid_ns = self._own_pid_namespace()
        try:
            for name in JOIN_ORDER:
                path = ns_dir / name
                own = self.paths.proc_pid(os.getpid()) / "ns" / name
                if not path.exists() or os.readlink(path) == os.readlink(own):
                    continue
                fds.append((name, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            root_fd = os.open(self.paths.proc_pid(record.pid) / "root", os.O_PATH | os.O_CLOEXEC)
            for name, fd in fds:
                if name == "pid":  # affects our children only: the fork below enters it
                    libc.setns(fd, libc.CLONE_NEWPID, name)
            cgroups = self.cgroups(record)
            error_read, error_write = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid != 0:
                self._restore_pid_namespace(own_pid_ns)
            if pid == 0:
                os.close(error_read)
                try:
                    for name, fd in fds:
                        if name != "pid":
                            libc.setns(fd, 0, name)
                    os.fchdir(root_fd)
                    os.chroot(".")
                    _take_stdio(stdio, 0)
                    if console is not None:
                        _open_console(console, None)
                    _exec_process(process, self.paths, bytes.fromhex(record.engine.get("seccomp", "")))
                except BaseException as exc:
                    _report_and_exit(error_write, str(exc), 127)
                os._exit(127)
            os.close(error_write)
            cgroups.add_pid(pid)
            message = _read_all(error_read)
            os.close(error_read)
            if message:
                os.waitpid(pid, 0)
                raise ResourceError(f"exec in {record.id} failed: {message.decode(errors='replace')}")
            return pid
        finally:
            for _, fd in fds:
                os.close(fd)


def _report_and_exit(fd: int, text: str, code: int) -> None:
    """In the child: tell the waiting parent, or (after READY, when it no longer listens) stderr."""
    try:
        try:
            os.write(fd, text.encode()[:4000])
        except OSError:
            os.write(2, f"pykata-runc: container process: {text}\n".encode())
    finally:
        os._exit(code)


def _read_report(fd: int) -> bytes:
    """READY, or the error the child wrote before it died (empty if it died silently)."""
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
        if chunks[0][:1] == READY:
            return READY
    return b"".join(chunks) or b"the init exited before it was ready"


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


# ---------------------------------------------------------------------------------------------
# What runs in the forked child: it ends in execve or in os._exit.


def _init(
    paths: HostPaths,
    spec: dict[str, Any],
    plan: RootfsPlan | None,
    flags: int,
    joins: list[tuple[str, str]],
    stdio: tuple[int, int, int],
    fifo_fd: int,
    no_pivot: bool,
    preserve_fds: int,
    report_fd: int,
    placed_fd: int,
    console: int | None,
    seccomp_program: bytes,
) -> None:
    process = spec["process"]
    linux = spec.get("linux") or {}
    _take_stdio(stdio, preserve_fds)
    for kind, path in joins:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, NAMESPACE_FLAGS[kind], path)
        finally:
            os.close(fd)
    libc.unshare(flags & ~libc.CLONE_NEWCGROUP)
    from agent.container import rootfs  # loaded by the parent already: no file access here

    if plan is not None:
        # The engine's rootfs plan: the spec's mounts, default devices and /dev links, then the
        # root change and the masked and read-only paths.
        rootfs.execute(plan)
        if console is not None:
            _make_file(rootfs.secure_join(plan.rootfs, "/dev/console"))  # the pty made below is bound here
        if (spec.get("hooks") or {}).get("startContainer"):
            import agent.system.run  # noqa: F401  (needed after pivot_root, where host modules are gone)
        _container_hooks(spec, "createContainer")  # in our namespaces, before the root moves
        rootfs.enter_root(plan)
        rootfs.finish(plan)
    if console is not None:
        _open_console(console, "/dev/console" if flags & libc.CLONE_NEWNS else None)
    if os.read(placed_fd, 1) != b"1":
        raise ResourceError("the runtime could not place the container in its cgroups")
    os.close(placed_fd)
    if flags & libc.CLONE_NEWCGROUP:  # after the move: the namespace's root is the cgroup we are in
        libc.unshare(libc.CLONE_NEWCGROUP)
    if flags & libc.CLONE_NEWUTS and spec.get("hostname"):
        libc.sethostname(spec["hostname"])
    for key, value in (linux.get("sysctl") or {}).items():
        (paths.proc / "sys" / key.replace(".", "/")).write_text(str(value))
    if process.get("oomScoreAdj") is not None:
        (paths.proc_pid(os.getpid()) / "oom_score_adj").write_text(str(process["oomScoreAdj"]))
    os.write(report_fd, READY)
    os.close(report_fd)
    # Block until ``start`` opens the fifo for reading (the fd was opened before pivot_root).
    gate = os.open(paths.proc_pid(os.getpid()) / "fd" / str(fifo_fd), os.O_WRONLY | os.O_CLOEXEC)
    os.write(gate, b"0")
    os.close(gate)
    os.close(fifo_fd)
    _container_hooks(spec, "startContainer")
    _exec_process(process, paths, seccomp_program)


def _container_hooks(spec: dict[str, Any], kind: str) -> None:
    hooks = (spec.get("hooks") or {}).get(kind) or []
    if not hooks:
        return
    # Imported on demand (subprocess is costly at start-up); the first call comes before pivot_root.
    from agent.system.run import CommandError, CommandNotFound, run

    for hook in hooks:
        argv = [hook["path"], *(hook.get("args") or [hook["path"]])[1:]]
        env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
        try:
            run(argv, env=env, timeout=hook.get("timeout"))
        except (CommandError, CommandNotFound) as exc:
            raise ResourceError(f"{kind} hook failed: {exc}") from None


def _open_console(console: int, console_file: str | None) -> None:
    """Make a pty here (inside the container's /dev), take its slave as stdio and controlling
    terminal, bind it to ``console_file``, and send the master back through ``console``."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    for target in range(3):
        os.dup2(slave, target)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    if console_file is not None and os.path.exists(console_file):
        libc.mount(name, console_file, None, libc.MS_BIND)
    with socket.socket(fileno=console) as channel:
        socket.send_fds(channel, [name.encode()], [master])
    os.close(master)
    os.close(slave)


def _take_stdio(stdio: tuple[int, int, int], preserve_fds: int) -> None:
    os.setsid()
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
        os.set_inheritable(target, True)
    for fd in range(3, 3 + preserve_fds):
        os.set_inheritable(fd, True)


def _make_file(path: str) -> None:
    if not os.path.lexists(path):
        with open(path, "a"):
            pass


def _exec_process(process: dict[str, Any], paths: HostPaths, seccomp_program: bytes = b"") -> None:
    """Become the user's process: limits, identity, capabilities, seccomp, then execve. Never returns."""
    from agent.container import capabilities, seccomp  # loaded by the parent already: no file access here

    args = list(process.get("args") or [])
    if not args:
        raise InvalidArgument("process.args is empty")
    env = dict(item.split("=", 1) for item in process.get("env") or [] if "=" in item)
    os.chdir(process.get("cwd") or "/")
    for limit in process.get("rlimits") or []:
        kind = getattr(resource, str(limit["type"]), None)
        if kind is None:
            raise InvalidArgument(f"unknown rlimit {limit['type']!r}")
        resource.setrlimit(kind, (int(limit["soft"]), int(limit["hard"])))
    user = process.get("user") or {}
    if user.get("umask") is not None:
        os.umask(int(user["umask"]))
    program = _find_program(args[0], env.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    no_new_privs = bool(process.get("noNewPrivileges"))
    if seccomp_program and not no_new_privs:
        seccomp.load(seccomp_program)  # without no_new_privs the kernel wants CAP_SYS_ADMIN: before the drop
    capabilities.become_user(user, process.get("capabilities"))
    if no_new_privs:
        capabilities.set_no_new_privs()
        if seccomp_program:
            seccomp.load(seccomp_program)  # last, so the filter sees only the user's program
    os.execve(program, args, env)


def _find_program(name: str, search: str) -> str:
    if "/" in name:
        return name
    for directory in search.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise NotFound(f"executable {name!r} not found in PATH {search}")
