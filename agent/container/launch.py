"""The engine's side of making a container or an exec process: build the request, make the stdio,
ask the fork server, put the new process in its cgroup, wait for its report; undo everything when
a step fails (the cgroup, the process, our pipe ends).

The seccomp compiler and the pty helpers (termios) are imported when a spec asks for them: a cold
``pykata-runc create`` imports this module, and most containers have neither."""

from __future__ import annotations

import _signal  # the C module: ``signal`` imports enum, on every cold container start
import errno
import fcntl
import os

from agent.container import hooks as hooks_mod
from agent.container.rootfs import RootfsPlan, needs_cgroup_binds, plan_rootfs, root_is_initramfs
from agent.container.spec import Process as ProcessSpec
from agent.container.spec import Spec, id_map_text
from agent.container.state import Status
from agent.container.validate import resolve_root
from agent.errors import AgentError, ResourceError, Unsupported

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from agent.container.engine import Container, Engine, FdIO, PipeIO, Process

SETUP_TIMEOUT = 60.0
F_SETPIPE_SZ = 1031


# Devices every container may use, allowed after the spec's own device rules (as runc does):
# null, zero, full, random, urandom, tty, console, ptmx and the pty slaves.
DEFAULT_DEVICE_RULES: tuple[dict[str, Any], ...] = tuple(
    {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
    for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, None))
)


def with_default_devices(resources: dict[str, Any]) -> dict[str, Any]:
    """``resources`` with the default device rules appended when it has device rules at all."""
    if not resources.get("devices"):
        return resources
    rules = [dict(rule) for rule in DEFAULT_DEVICE_RULES]
    for rule in rules:
        if rule["minor"] is None:
            del rule["minor"]
    return {**resources, "devices": [*resources["devices"], *rules]}


def plan_to_json(plan: RootfsPlan) -> dict[str, Any]:
    return {
        "rootfs": plan.rootfs,
        # the operations are flat records of str/int/bool fields: [kind, field values in order]
        "operations": [[type(op).__name__, *(getattr(op, name) for name in op._fields)] for op in plan.operations],
        "masked_paths": list(plan.masked_paths),
        "readonly_paths": list(plan.readonly_paths),
        "readonly_root": plan.readonly_root,
        "no_pivot": plan.no_pivot,
        "propagation": plan.propagation,
    }


def make_io(io: PipeIO | FdIO, terminal: bool, console_size: tuple[int, int] | None) -> tuple[list[int], Any]:
    """(the fds the process gets, our ProcessIO). The child's fds are ours to close after sending."""
    from agent.container.engine import FdIO, ProcessIO

    ours = ProcessIO()
    if terminal:
        from agent.container.stdio import open_pty, set_winsize
    if isinstance(io, FdIO):
        extra = [os.dup(fd) for fd in io.extra]  # after the stdio: the process's 3, 4, ... (preserved_fds)
        if terminal:
            if io.console is not None:
                return [os.dup(io.console), *extra], ours
            master, slave = open_pty()
            ours.pty_master = master
            return [slave, *extra], ours
        given = [fd if fd is not None else os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                 for fd in (io.stdin, io.stdout, io.stderr)]  # fmt: skip
        return [*(os.dup(fd) for fd in given), *extra], ours
    if terminal:
        master, slave = open_pty()
        if console_size:
            set_winsize(master, console_size[0], console_size[1])
        ours.pty_master = master
        return [slave], ours
    theirs = []
    for name in ("stdin", "stdout", "stderr"):
        if name in io.given:
            theirs.append(os.dup(io.given[name]))
            continue
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        if name == "stdin":
            theirs.append(read_end)
            ours.stdin = write_end
            continue
        if io.pipe_size:
            try:
                fcntl.fcntl(write_end, F_SETPIPE_SZ, io.pipe_size)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size: keep the default
        theirs.append(write_end)
        setattr(ours, name, read_end)
    return theirs, ours


_initramfs_roots: dict[Any, bool] = {}


def _mapping_tools(spec: Spec) -> dict[str, str | None]:
    """A rootless container's newuidmap and newgidmap, where its id maps need them (see
    namespaces.mapping_tool; raises InvalidArgument when one is needed and missing)."""
    from agent.container.namespaces import mapping_tool

    maps = {"uid": (spec.linux.uid_mappings, os.geteuid()), "gid": (spec.linux.gid_mappings, os.getegid())}
    return {
        kind: mapping_tool(kind, [(m.container_id, m.host_id, m.size) for m in mappings], own)
        for kind, (mappings, own) in maps.items()
    }


def _rootless_cgroup(engine: Engine, cgroup: Any, spec: Spec) -> Any:
    """For a user other than root: ``cgroup`` where the user may make it (a delegated subtree), else
    none (cgroups.NoCgroup), as runc's rootless containers; limits without a cgroup are refused."""
    from agent.container.cgroups import NoCgroup

    try:
        cgroup.create()
        return cgroup
    except ResourceError as exc:
        cause = exc.__cause__
        if not (isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
            raise
    cgroupless = NoCgroup(engine.paths)
    cgroupless.apply(with_default_devices(spec.linux.resources))  # refuses limits by name
    return cgroupless


def session_keyring(container_id: str, spec: Spec) -> dict[str, Any]:
    """The session keyring the container's processes join (runc's: ``_ses.<id>``, so they do not share
    the runtime's; exec'd processes join the init's), and the search permission it gets: its owner's,
    or everyone's in a user namespace, where the owner is not mapped (KEY_USR_SEARCH, KEY_OTH_SEARCH)."""
    in_user_ns = spec.linux.namespace("user") is not None
    return {"name": f"_ses.{container_id}", "search": 0x8 if in_user_ns else 0x80000}


def process_request(engine: Engine, process: ProcessSpec, mount_label: str = "") -> dict[str, Any]:
    """``process`` as the container process gets it, its LSM labels checked against this host first:
    an SELinux label where SELinux is off is refused (as runc does); so is an AppArmor profile where
    AppArmor is off, unless the engine ignores that (the agent: Kata's runtime passes the host's
    profile on, and the guest kernel has no AppArmor)."""
    data = process.as_dict()
    if not (process.apparmor_profile or process.selinux_label or mount_label):
        return data
    from agent.container import procattrs

    if process.apparmor_profile and not procattrs.apparmor_enabled(engine.paths):
        if not engine.ignore_missing_apparmor:
            raise Unsupported(
                f"process.apparmorProfile {process.apparmor_profile!r}: AppArmor is not enabled on this host; "
                "leave the profile out of the spec, or enable AppArmor and load the profile"
            )
        import logging  # not on the path of a container start without a profile

        log = logging.getLogger(__name__)
        log.info("AppArmor is not enabled here: profile %r not applied", process.apparmor_profile)
        data["apparmorProfile"] = ""
    if (process.selinux_label or mount_label) and not procattrs.selinux_enabled(engine.paths):
        field = "process.selinuxLabel" if process.selinux_label else "linux.mountLabel"
        raise Unsupported(f"{field} is set, but SELinux is not enabled on this host: leave the label out of the spec")
    return data


def _root_is_initramfs(paths: Any) -> bool:
    """root_is_initramfs, once per host root: what "/" is does not change under a running engine."""
    known = _initramfs_roots.get(paths)
    if known is None:
        known = _initramfs_roots[paths] = root_is_initramfs(paths)
    return known


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _spawn(engine: Engine, request: dict[str, Any], child_fds: list[int], description: str) -> Any:
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    control_r, control_w = os.pipe2(os.O_CLOEXEC)
    try:
        handle = engine.forkserver.spawn(request, [status_w, control_r, *child_fds], description,
                                         control_w, status_r)  # fmt: skip
    except BaseException:
        _close([status_r, control_w])
        raise
    finally:
        _close([status_w, control_r, *child_fds])
    return handle


def _move_into_cgroup(handle: Any, cgroup: Any, description: str, sub: dict[str, str] | None = None) -> None:
    """A process in a user namespace cannot write the host's cgroup files to join its cgroup: move it
    by pid, then let it go on with its setup (``g``). (Every other process joins it itself, first
    thing: its request lists the files, and the cgroup exists before the request is sent.)"""
    handle.wait_for("pid", SETUP_TIMEOUT)
    if handle.pid <= 0:
        raise ResourceError(f"{description}: {handle.error or 'the fork server reported no pid'}")
    cgroup.add_pid(handle.pid, sub)
    handle.control(b"g")


def hook_to_json(hook: Any) -> dict[str, Any]:
    return {"path": hook.path, "args": list(hook.args), "env": list(hook.env), "timeout": hook.timeout}


def _run_runtime_hooks(
    engine: Engine, handle: Any, spec: Spec, state: dict[str, Any], container_id: str, moved: list[tuple[str, str]]
) -> None:
    """Once the process has made its mounts (it reports ``mounted`` and waits): linux.netDevices into
    its network namespace (each one moved is added to ``moved``), then the prestart and createRuntime
    hooks; then ``h`` lets it go on to the createContainer hooks and the root change."""
    if not handle.wait_for("mounted", SETUP_TIMEOUT):
        raise ResourceError(f"container {container_id}: setup did not reach its hooks within {SETUP_TIMEOUT} s")
    if not handle.mounted:
        raise ResourceError(f"container {container_id}: setup failed: {handle.error or 'the process ended'}")
    if spec.linux.net_devices:
        from agent.system.netdev import move_link

        proc = str(engine.paths.proc)
        target = os.open(f"{proc}/{handle.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for host_name, name in spec.linux.net_devices:
                try:
                    move_link(host_name, name, target, proc=proc)
                except OSError as exc:
                    raise ResourceError(f"container {container_id}: linux.netDevices[{host_name!r}]: cannot move "
                                        f"it into the container: {exc.strerror}") from None  # fmt: skip
                moved.append((host_name, name))
        finally:
            os.close(target)
    hook_state = {**state, "pid": handle.pid}
    for kind, hooks in (("prestart", spec.hooks.prestart), ("createRuntime", spec.hooks.create_runtime)):
        for hook in hooks:
            hooks_mod.run_hook(hook, hook_state, kind)
    handle.control(b"h")


def return_net_devices(engine: Engine, container_id: str, pid: int, devices: Sequence[tuple[str, str]]) -> None:
    """Move the container's net devices back from the network namespace of its process ``pid`` to
    this thread's, under their first names and down (as runc does when it destroys a container). A
    device that cannot go back is logged: its namespace ends with the container (a physical device
    then returns to the host's first namespace, a virtual one is gone)."""
    import contextlib  # (not at the top: a cold container start does without it)

    from agent.container.engine import log
    from agent.system.netdev import move_link

    proc = str(engine.paths.proc)
    with contextlib.ExitStack() as opened:
        try:
            source = os.open(f"{proc}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            opened.callback(os.close, source)
            target = os.open(f"{proc}/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            opened.callback(os.close, target)
        except OSError as exc:
            log.warning("container %s: its net devices cannot go back: %s", container_id, exc)
            return
        for host_name, name in devices:
            try:
                move_link(name, host_name, target, proc=proc, source_ns=source, up=False)
            except OSError as exc:
                log.warning("container %s: net device %s cannot go back as %s: %s", container_id, name, host_name,
                            exc.strerror)  # fmt: skip


def _abort(handle: Any) -> None:
    """End a process whose setup failed or was abandoned; when this returns, its shim is gone too and
    our end of its status pipe is closed."""
    handle.close_control()  # a process waiting for an order sees EOF and exits
    handle.wait_for("pid", 5.0)
    if handle.pid > 0 and handle.exit_code is None:
        try:
            os.kill(handle.pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
    handle.wait(SETUP_TIMEOUT)
    handle.wait_closed(SETUP_TIMEOUT)


def _seccomp_filter(spec_seccomp: dict[str, Any] | None) -> dict[str, Any]:
    """The request's fields for the spec's seccomp profile: the compiled program (the request travels
    in marshal form: bytes as they are), its filter flags, and whether the process passes a notify
    listener back (its last descriptor is then the channel: ``_listener_channel``)."""
    if not spec_seccomp:
        return {"seccomp": None, "seccomp_flags": 0, "seccomp_listener": False}
    from agent.container import seccomp

    return {
        "seccomp": seccomp.compile_profile(spec_seccomp),
        "seccomp_flags": seccomp.filter_flags(spec_seccomp),
        "seccomp_listener": seccomp.uses_notify(spec_seccomp),
    }


def _listener_channel(request: dict[str, Any]) -> tuple[Any, int] | None:
    """For a process whose seccomp profile notifies: a socket pair, our end (a socket object) and the
    descriptor of the process's end, over which it passes its notify listener (seccomp.hand_over)."""
    if not request.get("seccomp_listener"):
        return None
    import _socket

    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    return ours, theirs.detach()


def _pass_listener(profile: dict[str, Any], channel: Any, pid: int, state: dict[str, Any], description: str) -> None:
    """Take the notify listener the process passes over ``channel`` and send it to the seccomp agent at
    the profile's listenerPath with the container process state (``pid``, ``state``), as runc does.
    ResourceError when the process passes none or the agent cannot be reached."""
    from agent.container import seccomp

    try:
        listener = seccomp.receive(channel, SETUP_TIMEOUT)
    except (TimeoutError, EOFError, OSError) as exc:
        raise ResourceError(f"{description}: {exc}") from exc
    try:
        seccomp.send_to_agent(profile, listener, seccomp.process_state(profile, pid, state))
    finally:
        os.close(listener)


def create_container(
    engine: Engine,
    container_id: str,
    spec: Spec,
    bundle: str,
    io: PipeIO | FdIO,
    start_fifo: str | None = None,
    new_keyring: bool = True,
) -> Container:
    from agent.container.engine import Container, Process

    paths = engine.paths
    assert spec.process is not None
    root = resolve_root(spec, bundle)
    no_pivot = engine.no_pivot if engine.no_pivot is not None else _root_is_initramfs(paths)
    joins = {ns.type: ns.path for ns in spec.linux.namespaces if ns.path}
    unshare = [ns.type for ns in spec.linux.namespaces if not ns.path]
    in_user_ns = "user" in joins or "user" in unshare
    process = process_request(engine, spec.process, spec.linux.mount_label)  # may refuse: before anything is made
    map_tools = _mapping_tools(spec) if engine.rootless and "user" in unshare else {}  # as may this
    cgroup = engine.make_cgroup(spec.linux.cgroups_path, container_id)
    if engine.rootless:
        cgroup = _rootless_cgroup(engine, cgroup, spec)  # made already, where the user may make it
    try:
        binds = None
        cgroup_ns = "cgroup" in joins or "cgroup" in unshare
        if any(mount.type in ("cgroup", "cgroup2") for mount in spec.mounts) and needs_cgroup_binds(
            paths, in_user_ns, cgroup_ns
        ):
            from agent.container.cgroups import NoCgroup
            from agent.container.rootfs import cgroup_binds

            binds = cgroup_binds(paths, None if isinstance(cgroup, NoCgroup) else cgroup.hierarchy_directories())
        plan = plan_rootfs(paths, spec, root, bundle, no_pivot=no_pivot, cgroup_binds=binds)
        program = _seccomp_filter(spec.linux.seccomp)
    except BaseException:
        if engine.rootless:
            cgroup.destroy()
        raise
    state: dict[str, Any] = {
        "ociVersion": spec.oci_version or "1.0.2",
        "id": container_id,
        "status": "creating",
        "pid": 0,  # the process puts its own pid here (as the runtime's pid namespace sees it)
        "bundle": str(bundle),
        "annotations": dict(spec.annotations),
    }
    request = {
        "op": "create",
        "id": container_id,
        "proc": str(paths.proc),
        "join": joins,
        "unshare": unshare,
        "uid_map": id_map_text(spec.linux.uid_mappings),
        "gid_map": id_map_text(spec.linux.gid_mappings),
        "uid_map_tool": map_tools.get("uid"),
        "gid_map_tool": map_tools.get("gid"),
        "time_offsets": "".join(f"{clock} {secs} {nanosecs}\n" for clock, secs, nanosecs in spec.linux.time_offsets),
        "hostname": spec.hostname,
        "domainname": spec.domainname,
        "personality": spec.linux.personality,
        "memory_policy": spec.linux.memory_policy,
        "sysctl": dict(spec.linux.sysctl),
        "plan": plan_to_json(plan),
        "process": process,
        "session_keyring": session_keyring(container_id, spec) if new_keyring else None,
        "preserved_fds": len(getattr(io, "extra", ())),
        **program,
        "start_fifo": str(start_fifo) if start_fifo is not None else "",
        # prestart and createRuntime run here, in the runtime's namespaces, once the process has made
        # its mounts; createContainer runs in the process, in the container's namespaces, before the
        # root changes; startContainer runs in the process after the root changed (runtime-spec)
        "wait_for_runtime_hooks": bool(spec.hooks.prestart or spec.hooks.create_runtime or spec.linux.net_devices),
        "create_container_hooks": [hook_to_json(h) for h in spec.hooks.create_container],
        "start_container_hooks": [hook_to_json(h) for h in spec.hooks.start_container],
        "state": state,
    }
    request["attach"] = [] if in_user_ns else cgroup.self_attach_files()
    ours = None
    handle = None
    channel = None
    moved: list[tuple[str, str]] = []  # the net devices in the container's network namespace by now
    try:
        if request["attach"]:
            cgroup.create()  # the process joins it first thing; its limits follow while it sets up
        child_fds, ours = make_io(io, spec.process.terminal, spec.process.console_size)
        channel = _listener_channel(request)
        if channel is not None:
            child_fds.append(channel[1])  # the last: the process's end of its listener's channel
        handle = _spawn(engine, request, child_fds, f"container {container_id}")
        if not request["attach"]:
            cgroup.create()  # while the fork server forks; then the process is moved by pid
        cgroup.apply(with_default_devices(spec.linux.resources))
        if not request["attach"]:
            _move_into_cgroup(handle, cgroup, f"container {container_id}")
        if request["wait_for_runtime_hooks"]:
            _run_runtime_hooks(engine, handle, spec, state, container_id, moved)
        if not handle.wait_for("created", SETUP_TIMEOUT):
            raise ResourceError(f"container {container_id}: setup did not finish within {SETUP_TIMEOUT} s")
        if not handle.created:
            raise ResourceError(f"container {container_id}: setup failed: {handle.error or 'the process ended'}")
        if channel is not None:  # (the process installed its filter before it reported "created")
            _pass_listener(spec.linux.seccomp or {}, channel[0], handle.pid, {**state, "pid": handle.pid},
                           f"container {container_id}")  # fmt: skip
            channel[0].close()
        container = Container(engine, container_id, spec, bundle, cgroup)
        container.init = Process(container_id, "", handle, ours, spec.process.terminal)
        container.start_fifo = start_fifo
        container.new_keyring = new_keyring
        container._status = Status.CREATED
        return container
    except BaseException as exc:
        if moved and handle is not None:
            return_net_devices(engine, container_id, handle.pid, moved)  # before the namespace ends
        if handle is not None:
            _abort(handle)
        if ours is not None:
            ours.close()
        if channel is not None:
            channel[0].close()
        try:
            cgroup.destroy()
        except (OSError, AgentError) as cleanup:
            exc.add_note(f"removing the cgroup also failed: {cleanup}")
        raise


def spawn_exec(
    engine: Engine,
    container: Container,
    exec_id: str,
    process: ProcessSpec,
    io: PipeIO | FdIO,
    sub_cgroups: dict[str, str] | None = None,
) -> Process:
    """``process`` in the container's namespaces and cgroup (or its ``sub_cgroups``: see
    CgroupManager.directories_below)."""
    from agent.container.engine import Process

    assert container.init is not None
    request = {
        "op": "exec",
        "id": container.id,
        "proc": str(engine.paths.proc),
        "target_pid": container.init.pid,
        "personality": container.spec.linux.personality,
        "memory_policy": container.spec.linux.memory_policy,
        "process": process_request(engine, process),
        "session_keyring": session_keyring(container.id, container.spec) if container.new_keyring else None,
        "preserved_fds": len(getattr(io, "extra", ())),
        **_seccomp_filter(container.spec.linux.seccomp),
    }
    # The exec'd process starts in the container's namespaces: from inside a user namespace it cannot
    # write the host's cgroup files, and from inside a cgroup namespace (v2) it may not move itself
    # from the fork server's cgroup, outside that namespace. The engine moves those by pid.
    self_attach = not container.in_namespace("user") and not container.in_namespace("cgroup")
    request["attach"] = container.cgroup.self_attach_files(sub_cgroups) if self_attach else []
    if not self_attach:
        container.cgroup.directories_below(sub_cgroups)  # checked before anything is forked
    child_fds, ours = make_io(io, process.terminal, process.console_size)
    handle = None
    channel = _listener_channel(request)
    if channel is not None:
        child_fds.append(channel[1])  # the last: the process's end of its listener's channel
    try:
        handle = _spawn(engine, request, child_fds, f"exec {exec_id} in {container.id}")
        if not request["attach"]:
            _move_into_cgroup(handle, container.cgroup, f"exec {exec_id} in container {container.id}", sub_cgroups)
        handle.close_control()
        # "created": in the container's cgroup and namespaces, about to execve
        handle.wait_for("created", SETUP_TIMEOUT)
        if handle.pid <= 0 or not handle.created:
            raise ResourceError(f"exec {exec_id} in container {container.id}: {handle.error or 'the process ended'}")
        if channel is not None:  # the filter goes in next, then its listener comes over the channel
            _pass_listener(container.spec.linux.seccomp or {}, channel[0], handle.pid, container.state(),
                           f"exec {exec_id} in container {container.id}")  # fmt: skip
        return Process(container.id, exec_id, handle, ours, process.terminal)
    except BaseException:
        if handle is not None:
            _abort(handle)
        ours.close()
        raise
    finally:
        if channel is not None:
            channel[0].close()


def spawn_pause(engine: Engine, description: str) -> Any:
    """A process that is pid 1 of a new pid namespace and only waits: the sandbox's shared pid
    namespace (CreateSandbox's sandbox_pidns). Returns its ProcessHandle; SIGKILL ends it."""
    request = {"op": "pause", "proc": str(engine.paths.proc), "unshare": ["pid"]}
    handle = _spawn(engine, request, [], description)
    if not handle.wait_for("created", SETUP_TIMEOUT) or not handle.created:
        _abort(handle)
        raise ResourceError(f"{description}: {handle.error or 'the process did not start'}")
    handle.close_control()
    return handle
