"""The container operations pykata-runc needs, for a CLI whose every call is a new process.

``create`` forks the container's init from the CLI (a single-threaded process, so fork is safe). The
init sets up its namespaces and root, then blocks opening ``<state>/exec.fifo`` for writing, as
runc's init does; ``start`` (a later CLI call) opens the fifo for reading, which lets it exec the
user's program. Cgroups are found again from the record's ``cgroups`` paths.

This is the CLI's standalone path while the shared engine (agent/container/engine.py) is written;
the CLI calls only the methods of ``Backend``, so switching to the engine changes this module only.
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

import prctl  # imported here, not in the child: after pivot_root the host's modules are out of reach

from agent.container.cgroups import CgroupManager, detect, manager_for
from agent.errors import InvalidArgument, NotFound, ResourceError
from agent.system import libc
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.container.cli import Record

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
MOUNT_FLAGS = {
    "ro": (libc.MS_RDONLY, True), "rw": (libc.MS_RDONLY, False),
    "nosuid": (libc.MS_NOSUID, True), "suid": (libc.MS_NOSUID, False),
    "nodev": (libc.MS_NODEV, True), "dev": (libc.MS_NODEV, False),
    "noexec": (libc.MS_NOEXEC, True), "exec": (libc.MS_NOEXEC, False),
    "relatime": (libc.MS_RELATIME, True), "strictatime": (libc.MS_STRICTATIME, True),
    "noatime": (libc.MS_NOATIME, True), "bind": (libc.MS_BIND, True), "rbind": (libc.MS_BIND | libc.MS_REC, True),
    "sync": (libc.MS_SYNCHRONOUS, True),
}  # fmt: skip
PROPAGATION = {
    "private": libc.MS_PRIVATE, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED, "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE, "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE, "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}  # fmt: skip
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx", "core": "/proc/kcore"}  # fmt: skip
READY = b"\0"
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2


class MountStep:
    """One mount(2) call, as data: printed in errors, executed in order."""

    __slots__ = ("data", "flags", "fstype", "source", "target")

    def __init__(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
    ) -> None:
        self.source = source
        self.target = target
        self.fstype = fstype
        self.flags = flags
        self.data = data

    def __repr__(self) -> str:
        fields = f"{self.source!r}, {self.target!r}, {self.fstype!r}, {self.flags:#x}, {self.data!r}"
        return f"{type(self).__name__}({fields})"

    def run(self) -> None:
        libc.mount(self.source, self.target, self.fstype, self.flags, self.data)

    def __str__(self) -> str:
        names = [name for name, (bit, on) in MOUNT_FLAGS.items() if on and bit and self.flags & bit == bit]
        names += [name for name, bits in PROPAGATION.items() if self.flags & bits == bits]
        options = ",".join(names + ([self.data] if self.data else []))
        kind = f" type {self.fstype}" if self.fstype else ""
        return f"mount {self.source or 'none'} on {self.target}{kind}" + (f" ({options})" if options else "")


def parse_mount_options(options: list[str]) -> tuple[int, int, str]:
    """Mount flags, propagation flags and the leftover data string (``mode=755,size=...``)."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if option in MOUNT_FLAGS:
            bit, on = MOUNT_FLAGS[option]
            flags = flags | bit if on else flags & ~bit
        elif option in PROPAGATION:
            propagation |= PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


# What every container may use whatever its spec's device rules say, as runc allows them: the
# default nodes made in /dev, the pty multiplexer and its slaves, and mknod of anything.
DEFAULT_DEVICE_RULES = (
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pty slaves
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
)


def with_default_devices(resources: dict[str, Any]) -> dict[str, Any]:
    """``resources`` with the default device rules after the spec's own (a later rule wins)."""
    return {**resources, "devices": [*(resources.get("devices") or []), *DEFAULT_DEVICE_RULES]}


class Backend:
    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

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
        return manager_for(self.paths, record.engine.get("cgroups_path", ""), record.id)

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
                _init(self.paths, spec, Path(record.rootfs), flags & ~libc.CLONE_NEWPID, joins, stdio,
                      fifo_fd, no_pivot, preserve_fds, error_write, ready_read, console)  # fmt: skip
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
                    _exec_process(process, self.paths)
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
    rootfs_path: Path,
    flags: int,
    joins: list[tuple[str, str]],
    stdio: tuple[int, int, int],
    fifo_fd: int,
    no_pivot: bool,
    preserve_fds: int,
    report_fd: int,
    placed_fd: int,
    console: int | None,
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
    if flags & libc.CLONE_NEWNS:
        rootfs = Path(os.path.realpath(rootfs_path))
        for step in rootfs_plan(paths, spec, rootfs, console is not None):
            try:
                step.run()
            except OSError as exc:
                raise OSError(exc.errno, f"{exc.strerror}: {step}") from None
        if (spec.get("hooks") or {}).get("startContainer"):
            import agent.system.run  # noqa: F401  (needed after pivot_root, where host modules are gone)
        _container_hooks(spec, "createContainer")  # in our namespaces, before the root moves
        _enter_root(rootfs, no_pivot)
        _mask_and_protect(linux, bool((spec.get("root") or {}).get("readonly")))
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
    _exec_process(process, paths)


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


def rootfs_plan(paths: HostPaths, spec: dict[str, Any], rootfs: Path, console: bool = False) -> list[MountStep]:
    """The mounts that build the container's root, in order, as data."""
    linux = spec.get("linux") or {}
    propagation = PROPAGATION.get(linux.get("rootfsPropagation") or "rslave", libc.MS_SLAVE | libc.MS_REC)
    steps = [
        MountStep(None, "/", None, propagation),
        MountStep(str(rootfs), str(rootfs), None, libc.MS_BIND | libc.MS_REC),
    ]
    for mount in spec.get("mounts") or []:
        destination = mount.get("destination", "")
        if not destination.startswith("/"):
            raise InvalidArgument(f"mount destination {destination!r} must be an absolute path")
        target = rootfs / destination.lstrip("/")
        kind = mount.get("type") or ("bind" if "bind" in (mount.get("options") or []) else "none")
        flags, mount_propagation, data = parse_mount_options(list(mount.get("options") or []))
        source = mount.get("source")
        is_bind = kind == "bind" or flags & libc.MS_BIND
        if target.is_symlink():
            raise InvalidArgument(f"mount target {target} is a symlink; refusing to follow it out of the rootfs")
        directory = not (is_bind and source and not os.path.isdir(source))
        steps.append(_Mkdir(target) if directory else _Touch(target))
        if kind == "cgroup":
            steps += _cgroup_mount(paths, target, flags)
        elif is_bind:
            steps.append(MountStep(source, str(target), None, libc.MS_BIND | (flags & libc.MS_REC)))
            extra = flags & ~(libc.MS_BIND | libc.MS_REC)
            if extra:
                steps.append(MountStep(None, str(target), None, libc.MS_BIND | libc.MS_REMOUNT | extra))
        else:
            steps.append(MountStep(source, str(target), kind, flags, data or None))
        if mount_propagation:
            steps.append(MountStep(None, str(target), None, mount_propagation))
        if destination == "/dev":
            steps += _default_devices(paths, target, console)
    return steps


def _cgroup_mount(paths: HostPaths, target: Path, flags: int) -> list[MountStep]:
    layout = detect(paths)
    if layout.version == 2:
        return [MountStep("cgroup", str(target), "cgroup2", flags)]
    # v1: a tmpfs holding each hierarchy; the container sees the host's hierarchies read-only.
    steps: list[MountStep] = [MountStep("tmpfs", str(target), "tmpfs", flags & ~libc.MS_RDONLY, "mode=755")]
    hardened = libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    for source in sorted(set(layout.controllers.values()), key=str):
        inside = target / source.name
        steps.append(_Mkdir(inside))
        steps.append(MountStep(str(source), str(inside), None, libc.MS_BIND | libc.MS_REC))
        steps.append(MountStep(None, str(inside), None, libc.MS_BIND | libc.MS_REMOUNT | hardened))
    if flags & libc.MS_RDONLY:
        steps.append(MountStep(None, str(target), None, libc.MS_REMOUNT | flags))
    return steps


class _Mkdir(MountStep):
    def __init__(self, path: Path) -> None:
        super().__init__(None, str(path), "mkdir", 0)

    def run(self) -> None:
        Path(self.target).mkdir(parents=True, exist_ok=True)


class _Symlink(MountStep):
    def __init__(self, link: Path, points_to: str) -> None:
        super().__init__(points_to, str(link), "symlink", 0)

    def run(self) -> None:
        if not os.path.lexists(self.target):
            os.symlink(str(self.source), self.target)


class _Touch(MountStep):
    def __init__(self, path: Path) -> None:
        super().__init__(None, str(path), "touch", 0)

    def run(self) -> None:
        Path(self.target).parent.mkdir(parents=True, exist_ok=True)
        Path(self.target).touch(exist_ok=True)


def _default_devices(paths: HostPaths, dev: Path, console: bool) -> list[MountStep]:
    steps: list[MountStep] = []
    for name in DEFAULT_DEVICES:
        steps.append(_Touch(dev / name))
        steps.append(MountStep(str(paths.dev / name), str(dev / name), None, libc.MS_BIND))
    for name, points_to in DEV_LINKS.items():
        steps.append(_Symlink(dev / name, points_to))
    if console:
        steps.append(_Touch(dev / "console"))  # the pty made later is bound here
    return steps


def _enter_root(rootfs: Path, no_pivot: bool) -> None:
    os.chdir(rootfs)
    if no_pivot:
        libc.mount(str(rootfs), "/", None, libc.MS_MOVE)
        os.chroot(".")
    else:
        # pivot_root(".", ".") stacks the old root under the new one; detaching "." then drops it.
        libc.pivot_root(".", ".")
        libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def _mask_and_protect(linux: dict[str, Any], readonly_root: bool) -> None:
    for path in linux.get("maskedPaths") or []:
        try:
            if os.path.isdir(path):
                libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY, None)
            else:
                libc.mount("/dev/null", path, None, libc.MS_BIND)
        except FileNotFoundError:
            continue
    for path in linux.get("readonlyPaths") or []:
        try:
            libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
            libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC)
        except FileNotFoundError:
            continue
    if readonly_root:
        libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)


def _exec_process(process: dict[str, Any], paths: HostPaths) -> None:
    """Become the user's process: identity, capabilities, limits, then execve. Never returns."""
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
    _set_capabilities(process.get("capabilities"), user)
    if process.get("noNewPrivileges"):
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    program = _find_program(args[0], env.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    os.execve(program, args, env)


def _set_capabilities(capabilities: dict[str, list[str]] | None, user: dict[str, Any]) -> None:
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    caps = capabilities or {}

    def numbers(kind: str) -> list[int]:
        found = []
        for name in caps.get(kind) or []:
            number = getattr(prctl, str(name).upper(), None)
            if not isinstance(number, int):
                continue  # a capability this kernel or library does not know: runc warns and skips too
            found.append(number)
        return found

    prctl.capbset.limit(*numbers("bounding"))
    if uid != 0:
        prctl.set_keepcaps(True)
    os.setgroups([int(g) for g in user.get("additionalGids") or []])
    os.setgid(gid)
    os.setuid(uid)
    # Inheritable first (raising it needs CAP_SETPCAP, still ours), then effective, then permitted:
    # the kernel refuses a permitted set that no longer covers the effective one.
    for flag, kinds in (
        (prctl.CAP_INHERITABLE, ("inheritable", "ambient")),
        (prctl.CAP_EFFECTIVE, ("effective",)),
        (prctl.CAP_PERMITTED, ("permitted",)),
    ):
        wanted = {n for kind in kinds for n in numbers(kind)}
        prctl.set_caps(
            (sorted(wanted), flag, True), ([n for n in prctl.ALL_CAPS if n not in wanted], flag, False)
        )
    for number in numbers("ambient"):
        try:
            libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number)
        except OSError:
            continue  # not in permitted+inheritable: the kernel refuses, as it does for runc


def _find_program(name: str, search: str) -> str:
    if "/" in name:
        return name
    for directory in search.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise NotFound(f"executable {name!r} not found in PATH {search}")
