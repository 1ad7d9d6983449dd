"""What runs in the fork server's children: the shim and the container process (ends in exec).

Both run in a process forked from the single-threaded fork server, so fork() is safe here, and
every module they need is imported before the root changes (after pivot_root the host's Python
tree is out of reach). Messages to the engine are JSON lines on the status pipe (fds[0]); the
engine's orders arrive on the control pipe (fds[1]): ``g`` (the engine has moved the process into
its cgroup by pid: go on with setup), ``h`` (the runtime's hooks ran) and, for a container's init,
``s`` (start the user's program). EOF on the control pipe before ``s`` means the container was
destroyed before it started: the process exits.

When the request lists the files to join its cgroup by (``attach``), the cgroup exists already and
the process joins it itself, first thing, without waiting for ``g``. Joining from inside (writing
"0") rather than being moved by pid saves two process wake-ups (the pid's report and ``g``) and, on
cgroup v1, the kernel's global cgroup_threadgroup_rwsem: a single thread moving itself through
``tasks`` does not take it, and taking it cold waits for an RCU grace period (6-18 ms measured on a
2-core host, most of a container's start). Only a process in a user namespace (which may not write
the host's cgroup files) is moved by pid.
"""

from __future__ import annotations

import _signal
import errno
import fcntl
import os
import resource
import sys
import time

from agent.container import capabilities, rootfs, seccomp, stdio
from agent.container.hooks import DEFAULT_HOOK_TIMEOUT
from agent.container.namespaces import CLONE_FLAGS, JOIN_ORDER, PROC_NAMES
from agent.container.warm import PREUNSHARE_KINDS  # what a warm process may make ahead (see there)
from agent.system import jsonlite, libc

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PAGE_RUNS_PER_EVENT = 100  # [address, length] pairs: at most ~3.5 KB of JSON, below PIPE_BUF (4096)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}


class SetupError(Exception):
    pass


# what agent.container.procattrs sets on the process before execve (that module is loaded only for a
# request that has one of them)
PROCESS_ATTRIBUTES = ("ioPriority", "scheduler", "execCPUAffinity", "apparmorProfile", "selinuxLabel")


def _wants_attributes(request: dict[str, Any]) -> bool:
    process = request.get("process") or {}
    return bool(request.get("personality") or request.get("memory_policy")) or any(
        process.get(key) for key in PROCESS_ATTRIBUTES
    )


def _report(fd: int, event: dict[str, Any]) -> None:
    try:
        os.write(fd, jsonlite.dumps(event).encode() + b"\n")
    except OSError:
        pass


def _read_order(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 1)
        except InterruptedError:
            continue


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _setns_path(path: str, kind: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd, CLONE_FLAGS[kind], path)
    finally:
        os.close(fd)


def _enter_user_namespace(request: dict[str, Any]) -> None:
    """Unshare a user namespace and have a forked helper write its id maps (only a process outside
    the namespace may write them)."""
    ready_r, ready_w = os.pipe()
    error_r, error_w = os.pipe()
    me = os.getpid()
    helper = os.fork()
    if helper == 0:
        os.close(ready_w)
        os.close(error_r)
        code = 0
        try:
            if _read_order(ready_r):
                _map_ids(request, me)
            else:
                code = 1
        except (OSError, SetupError) as exc:
            os.write(error_w, str(exc).encode(errors="replace")[:4096])  # a pipe holds it: no reader waits
            code = 2
        os._exit(code)
    os.close(ready_r)
    os.close(error_w)
    try:
        try:
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
        finally:
            os.close(ready_w)  # without the order (unshare failed) the helper exits at once
            _, status = os.waitpid(helper, 0)
        message = _read_to_end(error_r).decode(errors="replace")
    finally:
        os.close(error_r)
    if _exit_code(status) != 0:
        raise SetupError(
            f"writing the user namespace's id maps failed: {message or f'its helper exited with {_exit_code(status)}'}"
            " (check linux.uidMappings and linux.gidMappings)"
        )
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _map_ids(request: dict[str, Any], pid: int) -> None:
    """Write the id maps of ``pid``'s new user namespace, gid first: each directly, or through
    newgidmap/newuidmap where the request names one (a rootless container that maps more than its
    user's own id: namespaces.mapping_tool). An unprivileged writer mapping its own gid must deny
    setgroups(2) in the namespace first (the kernel's rule); newgidmap decides that for its ranges
    (allowed where /etc/subgid grants them), and a denial could not be undone."""
    for kind in ("gid", "uid"):
        text = request.get(f"{kind}_map")
        if not text:
            continue
        tool = request.get(f"{kind}_map_tool")
        if tool:
            _run_mapping_tool(tool, pid, text)
            continue
        if kind == "gid" and os.geteuid() != 0:
            with open(f"{request['proc']}/{pid}/setgroups", "w") as f:
                f.write("deny")
        with open(f"{request['proc']}/{pid}/{kind}_map", "w") as f:
            f.write(text)


def _run_mapping_tool(tool: str, pid: int, text: str) -> None:
    """``tool PID inside outside count...`` (the map's lines, flattened); a failure keeps its words."""
    from agent.system.run import CommandError, CommandNotFound, run  # loaded only on this rare path

    try:
        run([tool, str(pid), *text.split()], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except (CommandError, CommandNotFound) as exc:
        raise SetupError(str(exc)) from None
    except OSError as exc:
        raise SetupError(f"cannot run {tool}: {exc.strerror}") from None


def _read_to_end(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _set_time_offsets(request: dict[str, Any]) -> None:
    """linux.timeOffsets, into the time namespace just unshared: written before any process enters it
    (our children and our own execve do; the kernel refuses offsets after that)."""
    try:
        with open(f"{request['proc']}/self/timens_offsets", "w") as f:
            f.write(request["time_offsets"])
    except OSError as exc:
        raise SetupError(
            f"setting linux.timeOffsets ({request['time_offsets'].strip()!r}) failed: {exc.strerror}"
        ) from None


def _become_namespace_root() -> None:
    """After setns into a user namespace: be its root (what it maps uid and gid 0 to), as runc's
    nsexec is; the ids we came with are unmapped there, and what we make (a session keyring, files)
    should belong to the container. A namespace that maps no 0 leaves us as we are."""
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


def _shim_namespaces(request: dict[str, Any]) -> None:
    """The namespaces the shim itself must be in before it forks: user (owner of the rest) and pid
    (which only applies to children). For exec, every namespace of the container."""
    if request["op"] == "exec":
        proc = request["proc"]
        target = request["target_pid"]
        root_fd = os.open(f"{proc}/{target}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        opened = []
        own = f"{proc}/self/ns"
        for kind in JOIN_ORDER:
            name = PROC_NAMES[kind]
            path = f"{proc}/{target}/ns/{name}"
            try:
                if os.stat(path).st_ino == os.stat(f"{own}/{name}").st_ino:
                    continue  # same namespace as ours: setns on the user namespace would fail
            except FileNotFoundError:
                continue
            opened.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC), path))
        for kind, fd, path in opened:
            libc.setns(fd, CLONE_FLAGS[kind], path)
            os.close(fd)
            if kind == "user":
                _become_namespace_root()
        # the container's root, even when it was entered with MS_MOVE + chroot (no pivot)
        os.fchdir(root_fd)
        os.chroot(".")
        os.close(root_fd)
        return
    joins: dict[str, str] = request.get("join") or {}
    unshare: list[str] = request.get("unshare") or []
    if "user" in joins:
        _setns_path(joins["user"], "user")
        _become_namespace_root()
    elif "user" in unshare:
        _enter_user_namespace(request)
    if "pid" in joins:
        _setns_path(joins["pid"], "pid")
    elif "pid" in unshare:
        libc.unshare(libc.CLONE_NEWPID)


def run_shim(request: dict[str, Any], fds: list[int]) -> int:
    """Fork the container process, report its pid and exit status, reap orphans. Returns the
    shim's own exit code."""
    status_fd, control_fd, io_fds = fds[0], fds[1], fds[2:]
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    os.setsid()
    libc.set_child_subreaper()
    try:
        # opened here, before the namespaces and the root change: an exec's process starts inside
        # the container's root, where the host's cgroup files are out of reach
        attach_fds = open_attach_roots(request)
        detached = idmapped_trees(request)  # as well: in the runtime's user namespace
        # and the start FIFO: in a user namespace the runtime's state directory may be out of reach
        start_fd = open_start_fifo(request) if request["op"] == "create" and request.get("start_fifo") else None
        _shim_namespaces(request)
        keeper, keeper_child = namespace_keeper() if request["op"] == "create" else (-1, -1)
        child = os.fork()
    except Exception as exc:
        _report(status_fd, {"error": _describe(exc), "exit": 255})
        return 1
    if child == 0:
        code = 1
        try:
            if keeper >= 0:
                os.close(keeper)
            code = container_main(request, status_fd, control_fd, io_fds, attach_fds, keeper=keeper_child,
                                  detached=detached, start_fd=start_fd)  # fmt: skip
        except BaseException as exc:
            report_error(status_fd, exc)
        finally:
            os._exit(code)
    os.close(control_fd)
    for fd in (*io_fds, *attach_fds, *detached, *([] if start_fd is None else [start_fd])):
        os.close(fd)
    if keeper_child >= 0:
        os.close(keeper_child)
    return shim_wait(status_fd, child, keeper)


def namespace_keeper() -> tuple[int, int]:
    """(the shim's end, the container process's end) of a datagram socketpair in which the process
    parks a descriptor of its new mount namespace (_park_mount_namespace).

    While that descriptor is in flight the namespace outlives the process, so the process's exit does
    not unmount the container's tree (synchronously, with an expedited RCU grace period: about half
    a millisecond here) before its parent learns of the exit; the shim lets go of it once it has
    reported the exit. Both ends are close-on-exec."""
    import _socket

    shim_end, process_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM, 0)
    return shim_end.detach(), process_end.detach()


def _park_mount_namespace(keeper: int, proc: str) -> None:
    """Send a descriptor of this process's mount namespace to the shim's end of ``keeper`` (best
    effort: without it the namespace just goes with the process, as it would anyway)."""
    import _socket

    sock = _socket.socket(fileno=keeper)
    try:
        ns = os.open(f"{proc}/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            rights = ns.to_bytes(4, sys.byteorder, signed=True)
            sock.sendmsg([b"m"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        finally:
            os.close(ns)
    except OSError:
        pass
    finally:
        sock.close()


def shim_wait(status_fd: int, child: int, keeper: int = -1) -> int:
    """The shim's life once the container process is forked: report its pid, then its exit status,
    reaping every orphan left to this subreaper. ``keeper`` (namespace_keeper's shim end) is closed
    once the exit is reported: what it holds is torn down then."""
    _report(status_fd, {"pid": child, "shim": os.getpid()})
    reported = False
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            _report(status_fd, {"exit": _exit_code(status)})
            reported = True
            if keeper >= 0:
                os.close(keeper)
                keeper = -1
    if not reported:
        _report(status_fd, {"exit": 255})
    if keeper >= 0:
        os.close(keeper)
    return 0


def warm_shim_prepare() -> None:
    """A warm shim, before any request: the shim's own setup and a new pid namespace for the
    container process it forks next (what most containers ask for)."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    os.setsid()
    libc.set_child_subreaper()
    libc.unshare(libc.CLONE_NEWPID)


def prepare_warm_child(prefault_runs: Sequence[tuple[int, int]] = (), preunshare: Sequence[str] = ()) -> dict[str, int]:
    """What a warm container process does while it waits for a request: every signal back to its
    default (see container_main), the pages a container's setup wrote last time faulted in, and the
    namespaces the last creates asked for made (``preunshare``, of PREUNSHARE_KINDS; a network
    namespace alone takes ~0.6 ms to make). Returns descriptors of the namespaces it left, by kind,
    for a request that wants those after all (container_main goes back into them)."""
    libc.reset_all_signals()
    if prefault_runs:
        from agent.system import prefault

        prefault.populate(prefault_runs)
    kinds = [kind for kind in preunshare if kind in PREUNSHARE_KINDS]
    origins: dict[str, int] = {}
    try:
        for kind in kinds:
            origins[kind] = os.open(f"/proc/self/ns/{PROC_NAMES[kind]}", os.O_RDONLY | os.O_CLOEXEC)
        flags = 0
        for kind in kinds:
            flags |= CLONE_FLAGS[kind]
        if flags:
            libc.unshare(flags)
    except OSError:
        for fd in origins.values():
            os.close(fd)
        return {}
    return origins


def warm_child_main(
    request: dict[str, Any], fds: list[int], keeper: int = -1, preunshared: dict[str, int] | None = None
) -> int:
    """A warm container process (pid 1 of the warm shim's pid namespace) given its request;
    ``keeper`` is its end of namespace_keeper's pair, ``preunshared`` what prepare_warm_child returned."""
    status_fd, control_fd, io_fds = fds[0], fds[1], fds[2:]
    try:
        attach_fds = open_attach_roots(request)
        detached = idmapped_trees(request)  # (a warm pair serves no container with a user namespace)
    except OSError as exc:
        report_error(status_fd, exc)
        return 1
    return container_main(request, status_fd, control_fd, io_fds, attach_fds, signals_reset=True, keeper=keeper,
                          preunshared=preunshared or {}, detached=detached)  # fmt: skip


def open_start_fifo(request: dict[str, Any]) -> int:
    """The FIFO ``start`` writes to, opened read-write before the root changes: it never blocks, and
    while we hold a writer end the read for the order waits for ``start`` instead of seeing EOF."""
    return os.open(request["start_fifo"], os.O_RDWR | os.O_CLOEXEC)


def idmapped_trees(request: dict[str, Any]) -> list[int]:
    """The idmapped bind mounts of a create's plan, made as detached trees while this process is still
    in the runtime's user namespace (rootfs.detach_idmapped); [] for a plan without any."""
    if request["op"] != "create":
        return []
    binds = [rootfs.IdmappedBind(*item[1:]) for item in request["plan"]["operations"] if item[0] == "IdmappedBind"]
    return rootfs.detach_idmapped(binds, request["proc"]) if binds else []


def open_attach_roots(request: dict[str, Any]) -> list[int]:
    """The cgroup hierarchy roots the process joins its cgroup through (request["attach"])."""
    return [os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for root, _ in request.get("attach") or []]


def report_error(status_fd: int, exc: BaseException) -> None:
    _report(status_fd, {"error": _describe(exc)})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, SetupError | OSError):
        return str(exc)
    # No import here (traceback's format would pull linecache, tokenize...): after the root changed
    # there is no Python library to import from, and a failing report would lose the error itself.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _plan_from(data: dict[str, Any]) -> rootfs.RootfsPlan:
    classes = (rootfs.Mkdir, rootfs.Mount, rootfs.Remount, rootfs.SetAttr, rootfs.Propagate, rootfs.Mknod,
               rootfs.Symlink, rootfs.BindDevice, rootfs.IdmappedBind)  # fmt: skip
    kinds = {cls.__name__: cls for cls in classes}
    operations: list[rootfs.Operation] = [kinds[item[0]](*item[1:]) for item in data["operations"]]
    return rootfs.RootfsPlan(
        rootfs=data["rootfs"],
        operations=operations,
        masked_paths=tuple(data["masked_paths"]),
        readonly_paths=tuple(data["readonly_paths"]),
        readonly_root=data["readonly_root"],
        no_pivot=data["no_pivot"],
        propagation=data["propagation"],
    )


def container_main(
    request: dict[str, Any],
    status_fd: int,
    control_fd: int,
    io_fds: list[int],
    attach_fds: list[int] = (),  # type: ignore[assignment]
    *,
    signals_reset: bool = False,
    keeper: int = -1,
    preunshared: dict[str, int] | None = None,
    detached: list[int] | None = None,
    start_fd: int | None = None,
) -> int:
    """The container process: wait for its cgroup, join it, set up, report, wait for start, exec.
    ``detached``: the plan's idmapped trees (idmapped_trees), placed with the other mounts;
    ``start_fd``: the start FIFO, when the shim opened it (open_start_fifo)."""
    fcntl.fcntl(status_fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    preserved = int(request.get("preserved_fds") or 0)
    if preserved:
        # the preserved descriptors become 3, 4, ... right before execve (_run): ours go above them now
        floor = 3 + preserved
        status_fd, control_fd = _lift(status_fd, floor), _lift(control_fd, floor)
        io_fds = [_lift(fd, floor) for fd in io_fds]
    # Python ignores SIGPIPE and SIGXFSZ, the fork server SIGINT, and whoever started the agent may
    # have ignored others; an ignored signal stays ignored across execve, so give the user's program
    # every default back (a warm process did it while it waited)
    if not signals_reset:
        libc.reset_all_signals()
    if request["op"] == "pause":
        return pause_main(status_fd, control_fd, io_fds)
    if _wants_attributes(request):
        # imported now: once the root (or the mount namespace, for an exec) changed, there is nothing to
        # import from; _prepare finds the module loaded
        from agent.container import procattrs

        procattrs.apply_initial_affinity(request["process"])
    if request.get("attach"):
        _attach_self(attach_fds, request["attach"])  # first thing: the cgroup exists already
    elif _read_order(control_fd) != b"g":
        return 0  # the engine moves this process by pid, then says ``g``; EOF: the create was undone
    process = request["process"]
    if request["op"] == "exec":
        os.close(control_fd)
        _report(status_fd, {"created": True})  # in its cgroup and namespaces; execve is next
        _exec_process(request, process, io_fds, status_fd)
        return 127
    plan = _plan_from(request["plan"])
    learning = None
    if request.get("learn_pages"):
        # imported only for a create that reports its pages (the fork server's), and here, before the
        # root changes: _report_written_pages finds the module loaded
        from agent.system import prefault

        learning = prefault.open_page_maps(request["proc"])
    joins: dict[str, str] = request.get("join") or {}
    unshare: list[str] = request.get("unshare") or []
    made = preunshared or {}
    for kind, origin in made.items():  # made ahead, but the runtime's own is wanted: back into it
        if kind not in joins and kind not in unshare:
            libc.setns(origin, CLONE_FLAGS[kind], f"the runtime's {kind} namespace")
        os.close(origin)
    for kind in JOIN_ORDER:
        if kind in joins and kind not in ("user", "pid"):
            _setns_path(joins[kind], kind)
    flags = 0
    for kind in unshare:
        if kind not in ("user", "pid") and kind not in joins and kind not in made:
            flags |= CLONE_FLAGS[kind]
    if flags:
        libc.unshare(flags)
    if request.get("time_offsets"):
        _set_time_offsets(request)
    if keeper >= 0:
        if flags & libc.CLONE_NEWNS:
            _park_mount_namespace(keeper, request["proc"])
        else:
            os.close(keeper)
    if request.get("hostname"):
        libc.sethostname(request["hostname"])
    if request.get("domainname"):
        libc.setdomainname(request["domainname"])
    for key, value in (request.get("sysctl") or {}).items():
        with open(os.path.join(request["proc"], "sys", *key.split(".")), "w") as f:
            f.write(value)
    if process.get("oomScoreAdj") is not None:
        with open(f"{request['proc']}/self/oom_score_adj", "w") as f:
            f.write(str(process["oomScoreAdj"]))
    if start_fd is None and request.get("start_fifo"):
        start_fd = open_start_fifo(request)
    new_mount_ns = "mount" in (request.get("unshare") or [])
    if new_mount_ns:
        rootfs.execute(plan, detached)
        if process.get("terminal") and io_fds:
            rootfs.bind_console(plan, os.ttyname(io_fds[0]))
    state = dict(request.get("state") or {})
    if request.get("create_container_hooks") or request.get("start_container_hooks"):
        state["pid"] = _runtime_pid(request["proc"])  # only hooks see the state: no /proc read without
    if request.get("wait_for_runtime_hooks"):
        _report(status_fd, {"mounted": True})  # the engine runs prestart and createRuntime now
        if _read_order(control_fd) != b"h":
            return 0
    # createContainer: in the container's namespaces, before the root changes
    run_hooks(request.get("create_container_hooks") or [], state, "createContainer")
    if new_mount_ns:
        rootfs.enter_root(plan)
        rootfs.finish(plan)
    else:
        os.chroot(plan.rootfs)
        os.chdir("/")
    ready = None
    if can_prepare_early(request, process):
        try:
            ready = _prepare(request, process, io_fds)
        except BaseException as exc:
            _fail(status_fd, exc)
    if learning is not None:
        _report_written_pages(status_fd, learning)
    _report(status_fd, {"created": True})
    if start_fd is not None:
        os.close(control_fd)  # our starter is another process; the engine that made us may be gone
        order = _read_order(start_fd)
        os.close(start_fd)
    else:
        order = _read_order(control_fd)
        os.close(control_fd)
    if order != b"s":
        return 0
    if request.get("start_container_hooks"):
        # in the container, after the root changed: the hooks' paths are the container's
        state["status"] = "created"
        try:
            run_hooks(request["start_container_hooks"], state, "startContainer")
        except SetupError as exc:
            _report(status_fd, {"error": str(exc)})
            return 1
        _report(status_fd, {"started": True})
    if ready is None:
        _exec_process(request, process, io_fds, status_fd)
    else:
        try:
            _run(ready)
        except BaseException as exc:
            _fail(status_fd, exc)
    return 127


def _report_written_pages(status_fd: int, fds: tuple[int, int]) -> None:
    """Tell the engine which pages this setup made its own (agent.system.prefault; ``fds`` are
    prefault.open_page_maps', opened before the root changed), so the warm
    processes forked next fault them in while they wait. In events of under PIPE_BUF bytes: the
    shim writes to the same pipe, and only such writes are atomic."""
    from agent.system import prefault  # loaded already, by container_main before the root changed

    try:
        runs = prefault.written_pages(*fds)
    except OSError:
        return
    finally:
        for fd in fds:
            os.close(fd)
    for index in range(0, len(runs), PAGE_RUNS_PER_EVENT):
        _report(status_fd, {"pages": runs[index : index + PAGE_RUNS_PER_EVENT]})


def _attach_self(root_fds: list[int], files: list[tuple[str, str]]) -> None:
    """Move this (single-threaded) process into its cgroup: "0" to each hierarchy's file, opened
    relative to the hierarchy's root (opened by the shim before any namespace or root change)."""
    for root_fd, (root, name) in zip(root_fds, files, strict=True):
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=root_fd)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as exc:
            # ENOSPC: a v1 cpuset without cpus or mems (a sub-cgroup someone made) takes no process
            hint = "; a cgroup v1 cpuset needs its cpuset.cpus and cpuset.mems set first"
            hint = hint if exc.errno == errno.ENOSPC else ""
            where = os.path.join(root, os.path.dirname(name))
            raise SetupError(f"cannot join cgroup {where}: {exc.strerror}{hint}") from exc
        finally:
            os.close(root_fd)


def _runtime_pid(proc: str) -> int:
    """This process's pid in the runtime's pid namespace (the first NSpid field of the runtime's
    /proc, still mounted here before the root changes); 0 when unknown."""
    try:
        with open(f"{proc}/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_hooks(hooks: list[dict[str, Any]], state: dict[str, Any], kind: str) -> None:
    """Run OCI hooks from this (single-threaded) process: each gets ``state`` as JSON on its stdin and
    must exit 0 within its timeout (default 60 s), or SetupError names it."""
    payload = jsonlite.dumps(state).encode()
    for hook in hooks:
        path = str(hook["path"])
        argv = [str(a) for a in hook.get("args") or []] or [path]
        env = dict(str(item).split("=", 1) for item in hook.get("env") or [] if "=" in str(item))
        timeout = float(hook.get("timeout") or DEFAULT_HOOK_TIMEOUT)
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(stdin_r, 0)
                os.execve(path, argv, env)
            except BaseException as exc:
                try:
                    os.write(2, f"pykata: {kind} hook {path}: {_describe(exc)}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(127)
        os.close(stdin_r)
        try:
            os.write(stdin_w, payload)  # the state is small: it fits the pipe
        except OSError:
            pass  # a hook that does not read its stdin
        finally:
            os.close(stdin_w)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() >= deadline:
                os.kill(pid, _signal.SIGKILL)
                os.waitpid(pid, 0)
                raise SetupError(f"{kind} hook {path} did not end within {timeout:g} s")
            time.sleep(0.002)
        code = _exit_code(status)
        if code != 0:
            raise SetupError(f"{kind} hook {path} failed with exit status {code}")


def pause_main(status_fd: int, control_fd: int, io_fds: list[int]) -> int:
    """Pid 1 of a sandbox's shared pid namespace: hold it open and reap what is orphaned into it,
    until SIGKILL (which ends the namespace and everything in it)."""
    for fd in (control_fd, *io_fds):
        os.close(fd)
    _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)  # wakes pause() below
    for signum in (_signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, _signal.SIG_IGN)
    _report(status_fd, {"created": True})
    os.close(status_fd)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            _signal.pause()
        except InterruptedError:
            continue


def _lift(fd: int, floor: int) -> int:
    """``fd`` moved to ``floor`` or above (close-on-exec), unless it is there already."""
    if fd < 0 or fd >= floor:
        return fd
    lifted = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    os.close(fd)
    return lifted


def _place_preserved(fds: list[int]) -> None:
    """The preserved descriptors to 3, 4, ... (inherited by the program). Everything of ours that is
    still open sits above that range (container_main lifted it), so no dup2 here clobbers one."""
    for offset, fd in enumerate(fds):
        os.dup2(fd, 3 + offset)  # the copy is not close-on-exec; the original (close-on-exec) goes at execve


def _take_stdio(io_fds: list[int], terminal: bool) -> None:
    if terminal:
        stdio.take_controlling_terminal(io_fds[0])
        return
    os.setsid()
    # move the fds out of 0..2 first so dup2 cannot clobber one we still need
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in io_fds]
    for fd in io_fds:
        os.close(fd)
    for target, fd in enumerate(high):
        os.dup2(fd, target)
        os.close(fd)


def _find_program(name: str, path: str) -> str:
    if "/" in name:
        if not os.path.isfile(name) or not os.access(name, os.X_OK):
            raise SetupError(f"executable {name!r} not found (or not an executable file)")
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SetupError(f"executable {name!r} not found in PATH {path}")


class _Ready:
    """What execve needs once the process is prepared: the program, its argv and env, and the
    seccomp filter still to load."""

    def __init__(
        self, program: str, args: list[str], env: dict[str, str], bpf: bytes | None, preserved: list[int], flags: int
    ) -> None:
        self.program, self.args, self.env, self.bpf, self.preserved = program, args, env, bpf, preserved
        self.flags = flags  # the seccomp filter's


def can_prepare_early(request: dict[str, Any], process: dict[str, Any]) -> bool:
    """Whether the process may become the user's (stdio, limits, uid, capabilities) before start.

    Then start costs only the execve, as runc's init waits for start with everything else done. Not
    with startContainer hooks (they run as the runtime's root, after start), nor with a seccomp
    filter and no no_new_privileges (the filter must be loaded before the capability drop, and it
    would apply to the wait for start itself)."""
    if request.get("start_container_hooks"):
        return False
    if request.get("seccomp_listener"):
        return True  # a notifying filter is installed before the create returns (seccomp.py), as runc's
    return not (request.get("seccomp") and not process.get("noNewPrivileges"))


def _prepare(request: dict[str, Any], process: dict[str, Any], io_fds: list[int]) -> _Ready:
    """Become the user's program but for the last steps: stdio, limits, identity, capabilities,
    cwd, the program's path. A seccomp filter that can wait (no_new_privileges) is left to _run, but
    for one that notifies, whose listener goes to the runtime now (its channel: the last of ``io_fds``)."""
    channel = io_fds[-1] if request.get("seccomp_listener") else None
    if channel is not None:
        io_fds = io_fds[:-1]
    preserved = int(request.get("preserved_fds") or 0)
    kept = io_fds[len(io_fds) - preserved :] if preserved else []
    io_fds = io_fds[: len(io_fds) - preserved]
    if io_fds:
        _take_stdio(io_fds, bool(process.get("terminal")))
    for limit in process.get("rlimits") or []:
        kind = RLIMITS.get(str(limit["type"]))
        if kind is None:
            raise SetupError(f"unknown rlimit {limit['type']!r}")
        resource.setrlimit(kind, (int(limit["soft"]), int(limit["hard"])))
    user = process.get("user") or {}
    if user.get("umask") is not None:
        os.umask(int(user["umask"]))
    env = dict(item.split("=", 1) for item in process.get("env") or [] if "=" in item)
    args = list(process["args"])
    os.chdir(process.get("cwd") or "/")
    program = _find_program(args[0], env.get("PATH", DEFAULT_PATH))
    if request.get("session_keyring"):
        _join_session_keyring(request["session_keyring"])
    if _wants_attributes(request):
        from agent.container import procattrs  # loaded already, by container_main before the root changed

        procattrs.apply(request["proc"], process, request.get("personality"), request.get("memory_policy"))
    bpf: bytes | None = request.get("seccomp") or None
    flags = int(request.get("seccomp_flags") or 0)
    no_new_privs = bool(process.get("noNewPrivileges"))
    if bpf and not no_new_privs:
        _load_filter(bpf, flags, channel)  # needs CAP_SYS_ADMIN without no_new_privs: before the drop
        bpf = None
    capabilities.become_user(user, process.get("capabilities"))
    if no_new_privs:
        capabilities.set_no_new_privs()
    if bpf and channel is not None:
        _load_filter(bpf, flags, channel)
        bpf = None
    return _Ready(program, args, env, bpf, kept, flags)


def _load_filter(bpf: bytes, flags: int, channel: int | None) -> None:
    """Install the seccomp filter; a notifying one's listener goes to the runtime over ``channel``."""
    listener = seccomp.load(bpf, flags)
    if channel is not None and listener is not None:
        seccomp.hand_over(channel, listener)


def _join_session_keyring(keyring: dict[str, Any]) -> None:
    """Leave the session keyring inherited from the runtime for the container's own (as runc does),
    searchable by the process's user. A kernel without keyrings (ENOSYS) is let be: the keyring only
    adds to what file permissions already protect."""
    try:
        serial = libc.join_session_keyring(keyring["name"])
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return
        raise SetupError(f"cannot join session keyring {keyring['name']}: {exc.strerror}") from exc
    try:
        permissions = int(libc.describe_key(serial).split(";")[3], 16)
        libc.set_key_permissions(serial, permissions | keyring["search"])
    except (OSError, ValueError, IndexError) as exc:  # a keyring with other permissions than asked: refuse
        raise SetupError(f"cannot set the permissions of session keyring {keyring['name']}: {exc}") from exc


def _run(ready: _Ready) -> None:
    if ready.preserved:
        _place_preserved(ready.preserved)
    if ready.bpf:
        _load_filter(ready.bpf, ready.flags, None)  # last, so the filter sees only the user's program
    os.execve(ready.program, ready.args, ready.env)


def _fail(status_fd: int, exc: BaseException) -> None:
    """Report why the process could not become the user's program, and end it (127)."""
    report_error(status_fd, exc)
    try:
        os.write(2, f"pykata: {_describe(exc)}\n".encode())
        import traceback

        os.write(2, "".join(traceback.format_exception(exc)).encode())
    except (OSError, ImportError):  # ImportError: after the root changed there is no library to import
        pass
    sys.stderr.flush()
    os._exit(127)


def _exec_process(request: dict[str, Any], process: dict[str, Any], io_fds: list[int], status_fd: int) -> None:
    """Become the user's program: stdio, limits, identity, capabilities, seccomp, cwd, execve."""
    try:
        _run(_prepare(request, process, io_fds))
    except BaseException as exc:
        _fail(status_fd, exc)
