"""pykata-runc: a runc-compatible command line on the pykata container engine.

Anything that drives runc (containerd, podman, a shell script) can drive this engine: the same
commands, the same global flags (``--root``, ``--log``, ``--log-format``, ``--debug``), the same
per-command flags where runc has them, and runc's state JSON. Errors print ``pykata-runc: <message>``
to stderr (and to the ``--log`` file in the chosen format) and exit 1; ``run`` without ``--detach``
exits with the container process's status (128+N when a signal ended it).

Every call is a new process, so what a later call needs is kept in ``<root>/<id>/state.json``
(cli_state.py); the flags are parsed in cli_args.py; the container work is the engine's
(agent.container.engine), which cli_backend.py fits to a CLI (forking from this single-threaded
process, and finding a container again from its state). This module holds the commands. It
imports little at start (python start-up is most of a short command's cost); the engine is imported
by the commands that need it, and ``pykata-runc serve`` (cli_serve.py) with its client
(cli_client.py) pays that once for many commands.

A cold ``create`` (or ``run``) is serial: start-up, imports, the spec's checks and the rootfs plan,
the cgroup, then the fork of the shim, its pid namespace, the fork of the container process and its
setup. So once the bundle's spec is read, and before the engine is imported, ``create`` forks a
warm pair (agent/container/warm.py) when the spec fits one: the shim and the container process
import their code, make their namespaces and wait, on the other core, while this process does the
rest; the engine's request is then handed to them instead of forked (cli_backend.LocalForkServer).
"""

from __future__ import annotations

import _signal  # the C module: ``signal`` imports enum, which a short command cannot afford
import os
import sys
import time

from agent.container.cli_args import (
    COMMANDS,
    DEFAULT_ROOT,
    GLOBAL_FLAGS,
    PROGRAM,
    CliError,
    Invocation,
    UsageError,
    command_help,
    parse_args,
)
from agent.container.cli_state import (
    OCI_VERSION,
    STATUS_CREATED,
    STATUS_PAUSED,
    STATUS_RUNNING,
    STATUS_STOPPED,
    Record,
    Store,
    format_time,
    process_start_time,
    validate_id,
)
from agent.system import jsonlite
from agent.system.paths import normal_path

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

    from agent.container.cli_backend import Backend
    from agent.container.engine import Container, Process
    from agent.container.state import Status
    from agent.container.warm import WarmPair

# ---------------------------------------------------------------------------------------------
# Logging as runc does it (logrus text or JSON lines), so containerd can read our --log file.


class Log:
    LEVELS = ("debug", "info", "warning", "error")

    def __init__(self, path: str | None, fmt: str | None, debug: bool) -> None:
        if fmt not in (None, "text", "json"):
            raise UsageError(f"unknown --log-format {fmt!r}; use text or json")
        self.path = path
        self.json = fmt == "json"
        self.debug_enabled = debug
        self.started = time.perf_counter()

    def _write(self, level: str, message: str) -> None:
        if self.path is None:
            return
        now = format_time(time.time_ns())
        if self.json:
            line = jsonlite.dumps({"level": level, "msg": message, "time": now})
        else:
            line = f"time={jsonlite.dumps(now)} level={level} msg={jsonlite.dumps(message)}"
        try:
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(line + "\n")
        except OSError as exc:
            print(f"{PROGRAM}: cannot write log {self.path}: {exc.strerror}", file=sys.stderr)
            self.path = None

    def debug(self, message: str) -> None:
        """With --debug: ``message`` and the milliseconds since the command started (where time goes)."""
        if self.debug_enabled:
            message = f"+{(time.perf_counter() - self.started) * 1000:.1f} ms {message}"
            self._write("debug", message)
            if self.path is None:
                print(f"{PROGRAM}: debug: {message}", file=sys.stderr)

    def warning(self, message: str) -> None:
        self._write("warning", message)
        print(f"{PROGRAM}: warning: {message}", file=sys.stderr)

    def error(self, message: str) -> None:
        self._write("error", message)
        print(f"{PROGRAM}: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The default spec (``spec``): runc's default config.json, so tools that start from it work the same.


def default_spec() -> dict[str, Any]:
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    hardened = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {s: list(caps) for s in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": [*hardened, "mode=1777", "size=65536k"],
            },
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": list(hardened)},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*hardened, "ro"]},
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": [*hardened, "relatime", "ro"],
            },
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def rootless_spec(spec: dict[str, Any], uid: int, gid: int) -> dict[str, Any]:
    """``spec`` for a container an unprivileged user makes (runc's ``spec --rootless``): a user namespace
    mapping root in it to ``uid``/``gid`` (what the user may map without newuidmap), no network
    namespace (it could not be given an interface), /sys bound from the host (sysfs cannot be mounted without
    one), no uid=/gid= mount options (those ids are not mapped), and no cgroup limits (the user has
    no cgroup to set them in)."""
    namespaces = [ns for ns in spec["linux"]["namespaces"] if ns["type"] not in ("network", "user")]
    linux = {key: value for key, value in spec["linux"].items() if key != "resources"}
    linux.update(
        namespaces=[*namespaces, {"type": "user"}],
        uidMappings=[{"containerID": 0, "hostID": uid, "size": 1}],
        gidMappings=[{"containerID": 0, "hostID": gid, "size": 1}],
    )
    mounts = []
    for mount in spec["mounts"]:
        if normal_path(mount["destination"]) == "/sys":
            mount = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}  # fmt: skip
        elif mount.get("options"):
            mount = {**mount, "options": [o for o in mount["options"] if not o.startswith(("uid=", "gid="))]}
        mounts.append(mount)
    return {**spec, "linux": linux, "mounts": mounts}


def rootless() -> bool:
    """Whether this command runs as a user other than root (runc's rootless mode)."""
    return os.geteuid() != 0


def default_root() -> str:
    """Where state goes without ``--root``: runc's choice, /run/pykata-runc, or for a user other than root
    $XDG_RUNTIME_DIR/pykata-runc (when the session has one)."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    return f"{runtime_dir}/pykata-runc" if rootless() and runtime_dir else DEFAULT_ROOT


def check_rootless(spec: dict[str, Any], uid: int, gid: int, search_path: str | None = None) -> None:
    """What a user other than root can make: a container in a user namespace of its own. Its maps are
    the user's own id (the kernel lets the user write that map itself; ``spec --rootless`` writes such
    a spec) or, as with runc, anything newuidmap and newgidmap on ``search_path`` (default $PATH) write
    for it from /etc/subuid and /etc/subgid (which those tools check when the container is made)."""
    from agent.container.namespaces import mapping_tool
    from agent.errors import InvalidArgument

    linux: dict[str, Any] = spec["linux"] if isinstance(spec.get("linux"), dict) else {}
    namespaces = [ns.get("type") for ns in linux.get("namespaces") or [] if isinstance(ns, dict) and not ns.get("path")]
    if "user" not in namespaces:
        raise CliError(
            "a user other than root can only make a container in a new user namespace: add one to "
            "linux.namespaces (pykata-runc spec --rootless writes such a spec)"
        )
    for index, mount in enumerate(spec.get("mounts") or []):
        if not isinstance(mount, dict):
            continue  # (validation names it)
        words = {word for option in mount.get("options") or [] if isinstance(option, str) for word in option.split(",")}
        if mount.get("uidMappings") or mount.get("gidMappings") or words & {"idmap", "ridmap"}:
            raise CliError(
                f"mounts[{index}] ({mount.get('destination')}): an idmapped mount takes privilege over its source's "
                "file system, which a user other than root does not have: leave the mappings out"
            )
    if linux.get("netDevices"):
        raise CliError("linux.netDevices: moving a network device takes privilege over the host's network, which a "
                       "user other than root does not have: leave it out")  # fmt: skip
    for kind, own in (("uid", uid), ("gid", gid)):
        mappings = [m for m in linux.get(f"{kind}Mappings") or [] if isinstance(m, dict)]
        try:
            mapping_tool(kind, [(m.get("containerID"), m.get("hostID"), m.get("size")) for m in mappings], own,
                         search_path)  # fmt: skip
        except InvalidArgument as exc:
            raise CliError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Small pieces runc's callers rely on: paths, pid files, signal names, the console socket.


def _absolute(path: str) -> str:
    """``path`` made absolute against the working directory, as pathlib's ``absolute()``."""
    return normal_path(path if path.startswith("/") else f"{os.getcwd()}/{path}")


def write_pid_file(path: str, pid: int) -> None:
    """Write ``pid`` atomically (a reader never sees an empty file), as runc does."""
    target = _absolute(path)
    directory, name = target.rsplit("/", 1)
    temporary = f"{directory}/.{name}.{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(str(pid))
    os.replace(temporary, target)


def parse_signal(text: str) -> int:
    """``KILL``, ``SIGKILL`` and ``9`` all mean SIGKILL."""
    if text.isdigit():
        number = int(text)
        if not 0 < number < _signal.NSIG:
            raise CliError(f"invalid signal number {number}")
        return number
    name = text.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    # the names signal.Signals has: the C module's SIG* constants (SIG_DFL and the like are not signals)
    found = getattr(_signal, name, None) if not name.startswith("SIG_") else None
    if not isinstance(found, int):
        raise CliError(f"unknown signal {text!r}")
    return found


def send_console(socket_path: str, master_fd: int, name: str) -> None:
    """Hand the pty master to whoever listens on ``socket_path`` (SCM_RIGHTS), as runc's --console-socket.

    The message body is the terminal's name, as runc sends it; the receiver owns the fd from then on.
    """
    import _socket  # the C module: ``socket`` imports enum and selectors

    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            connection.connect(socket_path)
        except OSError as exc:
            raise CliError(f"cannot connect to console socket {socket_path}: {exc.strerror}") from None
        fds = master_fd.to_bytes(4, sys.byteorder, signed=True)  # one C int, as SCM_RIGHTS carries it
        connection.sendmsg([name.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------
# Commands. Each takes the parsed invocation and returns the exit status.


class Context:
    def __init__(self, invocation: Invocation, log: Log) -> None:
        from agent.system.paths import HostPaths

        self.invocation = invocation
        self.flags = invocation.flags
        self.args = invocation.args
        self.log = log
        self.paths = HostPaths("/")
        self.store = Store(invocation.options.get("root") or default_root())
        self._backend: Backend | None = None
        self._warm: WarmPair | None = None  # forked for this call's create, until the backend has it

    def backend(self) -> Backend:
        if self._backend is None:
            from agent.container.cli_backend import Backend

            self._backend = Backend(self.paths, no_pivot=bool(self.flags.get("no_pivot")), warm=self._warm,
                                    rootless=rootless(),
                                    systemd_cgroup=bool(self.invocation.options.get("systemd_cgroup")))  # fmt: skip
            self._warm = None
        return self._backend

    def fork_warm_pair(self, spec: dict[str, Any]) -> None:
        """Fork a warm pair for this call's create, when ``spec`` fits one (warm.fits_warm_pair: a new
        pid namespace, no user namespace, no pid namespace joined), making ahead the namespaces of
        warm.PREUNSHARE_KINDS it unshares. Not before a backend exists already, nor where a fork is
        unsafe (a thread runs), nor in ``pykata-runc serve``'s workers (its fork server has pairs of
        its own). A pair that cannot be forked is no error: the create forks its shim as ever."""
        request = _namespace_request(spec)
        if request is None or self._backend is not None or self._warm is not None:
            return
        import gc

        from agent.container import warm

        if not warm.fits_warm_pair(request) or warm.threads_run():
            return
        backend = sys.modules.get("agent.container.cli_backend")
        if backend is not None and backend.SHARED_FORK_SERVER is not None:
            return
        kinds = [kind for kind in warm.PREUNSHARE_KINDS if kind in request["unshare"]]
        # After the fork each first write to a page the pair shares is a copy-on-write fault (several
        # microseconds on a virtual machine, some hundreds of them): the collector, once it has frozen
        # what exists, never walks those objects again, so neither process writes their headers.
        gc.freeze()
        try:
            self._warm = warm.WarmPair({"prefault": [], "preunshare": kinds}, keep_stdio=True)
        except OSError:
            return
        self.log.debug(f"create: warm pair {self._warm.pid} forked")

    def open(self, container_id: str) -> tuple[Record, Container]:
        """The saved record and the engine's container, found again from ``<root>/<id>/state.json``."""
        record = self.store.load(container_id)
        return record, self.backend().open(record, self.store.dir(container_id))

    def close(self) -> None:
        if self._warm is not None:  # forked, but the create failed before the engine was loaded
            self._warm.discard()
            self._warm = None
        if self._backend is not None:
            self._backend.close()

    def status(self, record: Record) -> str:
        if record.pid <= 0 or process_start_time(self.paths.proc_pid(record.pid)) != record.pid_start:
            return STATUS_STOPPED
        if not record.started:
            return STATUS_CREATED
        return STATUS_PAUSED if record.paused else STATUS_RUNNING

    def state_json(self, record: Record, owner: str = "") -> dict[str, Any]:
        status = self.status(record)
        state: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": record.id,
            "pid": record.pid if status != STATUS_STOPPED else 0,
            "status": status,
            "bundle": record.bundle,
            "rootfs": record.rootfs,
            "created": record.created,
            "owner": owner,
        }
        if record.annotations:
            state["annotations"] = record.annotations
        return state


def cmd_events(ctx: Context) -> int:
    from agent.container.cli_events import cmd_events as events

    return events(ctx)


def cmd_features(ctx: Context) -> int:
    """The runtime-spec features document of this engine (agent/container/features.py), as runc prints its own."""
    from agent.container.features import features

    print(jsonlite.dumps(features(), indent=4))
    return 0


def cmd_spec(ctx: Context) -> int:
    bundle = ctx.flags["bundle"] or "."
    spec = default_spec()
    if ctx.flags["rootless"]:
        spec = rootless_spec(spec, os.geteuid(), os.getegid())
    target = normal_path(f"{bundle}/config.json")
    if os.path.exists(target):
        raise CliError(f"file {target} exists. Remove it first")
    with open(target, "w", encoding="utf-8") as stream:
        stream.write(jsonlite.dumps(spec, indent="\t"))
    return 0


def cmd_state(ctx: Context) -> int:
    record = ctx.store.load(ctx.args[0])
    print(jsonlite.dumps(ctx.state_json(record), indent=2))
    return 0


def _owner(path: str) -> str:
    import pwd

    try:
        uid = os.stat(path).st_uid
    except OSError:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def cmd_list(ctx: Context) -> int:
    states = []
    for container_id in ctx.store.ids():
        try:
            record = ctx.store.load(container_id)
        except CliError:
            continue  # removed while we listed
        states.append(ctx.state_json(record, _owner(ctx.store.dir(container_id))))
    fmt = ctx.flags["format"] or "table"
    if ctx.flags["quiet"]:
        for state in states:
            print(state["id"])
    elif fmt == "json":
        print(jsonlite.dumps(states, separators=(",", ":")))
    elif fmt == "table":
        header = ("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")
        rows = [header] + [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"]) for s in states]
        print(_table(rows), end="")
    else:
        raise CliError(f"invalid format option {fmt!r}: use table or json")
    return 0


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Columns as Go's tabwriter lays them out for runc (minimum width 12, padding 3)."""
    widths = [max(12, *(len(row[i]) + 3 for row in rows)) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("".join(cells) + row[-1])
    return "".join(line + "\n" for line in lines)


def _size(text: str, what: str) -> int:
    """Bytes from ``64m``/``1g``/``512k``/``1048576`` (runc's units), or -1 for unlimited."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    raw = text.strip().lower().removesuffix("b")
    try:
        if raw == "-1":
            return -1
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(raw)
    except ValueError:
        raise CliError(f"invalid value for {what}: {text!r}") from None


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(f"invalid value for {what}: {text!r} is not an integer") from None


def resources_from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The OCI ``linux.resources`` object that ``update``'s flags (or ``-r FILE``) describe."""
    resources: dict[str, Any] = {}
    if flags.get("resources"):
        source = flags["resources"]
        text = sys.stdin.read() if source == "-" else _read_text(source)
        try:
            loaded = jsonlite.loads(text)
        except ValueError as exc:
            raise CliError(f"invalid resources JSON in {source}: {exc}") from None
        if not isinstance(loaded, dict):
            raise CliError(f"invalid resources JSON in {source}: expected an object")
        resources = loaded
    memory = resources.setdefault("memory", {})
    for flag, key in (("memory", "limit"), ("memory_reservation", "reservation"), ("memory_swap", "swap")):
        if flags.get(flag) is not None:
            memory[key] = _size(flags[flag], f"--{flag.replace('_', '-')}")
    for flag in ("l3_cache_schema", "mem_bw_schema"):
        if flags.get(flag) is not None:
            raise CliError(f"--{flag.replace('_', '-')}: Intel RDT is not supported by this runtime")
    cpu = resources.setdefault("cpu", {})
    for flag, key in (("cpu_quota", "quota"), ("cpu_period", "period"), ("cpu_shares", "shares"),
                      ("cpu_rt_period", "realtimePeriod"), ("cpu_rt_runtime", "realtimeRuntime")):  # fmt: skip
        if flags.get(flag) is not None:
            cpu[key] = _integer(flags[flag], f"--{flag.replace('_', '-')}")
    for flag, key in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if flags.get(flag) is not None:
            cpu[key] = flags[flag]
    if flags.get("pids_limit") is not None:
        resources.setdefault("pids", {})["limit"] = _integer(flags["pids_limit"], "--pids-limit")
    if flags.get("blkio_weight") is not None:
        resources.setdefault("blockIO", {})["weight"] = _integer(flags["blkio_weight"], "--blkio-weight")
    return {key: value for key, value in resources.items() if value}


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as stream:
        return stream.read()


def load_bundle(bundle_flag: str | None) -> tuple[str, dict[str, Any], str]:
    """The bundle's absolute path, its parsed config.json and its absolute rootfs."""
    bundle = _absolute(bundle_flag or ".")
    config_path = normal_path(f"{bundle}/config.json")
    try:
        spec = jsonlite.loads(_read_text(config_path))
    except FileNotFoundError:
        raise CliError(f"{config_path} not found: pass --bundle DIR or run from the bundle") from None
    except ValueError as exc:
        raise CliError(f"{config_path}: invalid JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise CliError(f"{config_path}: the spec has no process to run")
    root = (spec.get("root") or {}).get("path")
    if not root:
        raise CliError(f"{config_path}: root.path is missing")
    rootfs = normal_path(root if root.startswith("/") else f"{bundle}/{root}")
    return bundle, spec, rootfs


def _namespace_request(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The namespaces part of the engine's create request for ``spec`` (what it unshares, what it
    joins), as agent.container.launch makes it; None when the spec's namespaces are malformed (the
    engine's checks say how, later)."""
    linux = spec.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    if not isinstance(namespaces, list):
        return None
    unshare: list[str] = []
    join: dict[str, str] = {}
    for namespace in namespaces:
        if not isinstance(namespace, dict) or not isinstance(namespace.get("type"), str):
            return None
        if namespace.get("path"):
            join[namespace["type"]] = namespace["path"]
        else:
            unshare.append(namespace["type"])
    return {"op": "create", "unshare": unshare, "join": join}


TIOCGPTN = 0x80045430  # the pty number of a master (linux/tty ioctls; Python's termios lacks it)


def _check_terminal(process: dict[str, Any], console_socket: str | None) -> None:
    if process.get("terminal") and console_socket is None:
        raise CliError(
            "the process asks for a terminal: pass --console-socket (pykata-runc does not attach to "
            "its own tty), or set process.terminal to false"
        )


def _hand_over_terminal(ctx: Context, master: int | None) -> None:
    """Send a pty master to --console-socket, then drop ours."""
    if master is None:
        return
    import _struct
    import fcntl

    try:
        number = _struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        send_console(ctx.flags["console_socket"], master, f"/dev/pts/{number}")
    finally:
        os.close(master)


MAX_PRESERVED_FDS = 240  # what one request's descriptors leave of the kernel's SCM_MAX_FD (253)


def preserved_fds(ctx: Context) -> tuple[int, ...]:
    """``--preserve-fds N``: our descriptors 3 .. 2+N, which the process gets as its own 3 .. 2+N
    (runc's; the caller sets LISTEN_FDS or the like in the process's env). Each must be open."""
    count = _integer(ctx.flags.get("preserve_fds") or "0", "--preserve-fds")
    if not 0 <= count <= MAX_PRESERVED_FDS:
        raise CliError(f"--preserve-fds {count}: give a number from 0 to {MAX_PRESERVED_FDS}")
    for fd in range(3, 3 + count):
        try:
            os.fstat(fd)
        except OSError:
            raise CliError(f"--preserve-fds {count}: descriptor {fd} is not open in this process") from None
    return tuple(range(3, 3 + count))


def _refuse(record: Record, status: Status, action: str, needs: str) -> NoReturn:
    raise CliError(f"cannot {action} container {record.id}: it is {status.value} (needs {needs})")


def do_create(ctx: Context, container_id: str) -> tuple[Record, Container]:
    bundle, spec, rootfs = load_bundle(ctx.flags.get("bundle"))
    validate_id(container_id)
    preserved = preserved_fds(ctx)
    _check_terminal(spec["process"], ctx.flags.get("console_socket"))
    if rootless():
        check_rootless(spec, os.geteuid(), os.getegid())
    ctx.fork_warm_pair(spec)  # before the engine's imports, which the pair's preparation overlaps
    from agent.container.engine import FdIO

    backend = ctx.backend()
    ctx.log.debug("create: bundle read, engine loaded")
    state_dir = ctx.store.reserve(container_id)
    record = Record(
        id=container_id,
        bundle=str(bundle),
        rootfs=str(rootfs),
        created=format_time(time.time_ns()),
        oci_version=str(spec.get("ociVersion", OCI_VERSION)),
        annotations=dict(spec.get("annotations") or {}),
    )
    container = None
    try:
        container = backend.create(record, spec, state_dir, FdIO(0, 1, 2, extra=preserved),
                                   new_keyring=not ctx.flags.get("no_new_keyring"))  # fmt: skip
        ctx.log.debug(f"create: init {record.pid} waits to start")
        if ctx.log.debug_enabled:
            timeline = container.init.handle.timeline if container.init is not None else {}
            spawned = timeline.get("spawn", 0.0)
            steps = ", ".join(f"{event} +{(at - spawned) * 1000:.1f}" for event, at in timeline.items())
            ctx.log.debug(f"create: the init's events, ms after its fork: {steps}")
        ctx.store.save(record)
        assert container.init is not None
        # the engine made the init's pty before the container existed (its /dev/console is bound to it)
        master, container.init.io.pty_master = container.init.io.pty_master, None
        _hand_over_terminal(ctx, master)
        if ctx.flags.get("pid_file"):
            write_pid_file(ctx.flags["pid_file"], record.pid)
    except BaseException:
        try:
            if container is not None:
                container.destroy(timeout=10)
        finally:
            ctx.store.remove(container_id)
        raise
    return record, container


def cmd_create(ctx: Context) -> int:
    do_create(ctx, ctx.args[0])
    return 0


def do_start(ctx: Context, record: Record, container: Container) -> None:
    from agent.container.state import Status

    status = container.status
    if status is not Status.CREATED:
        _refuse(record, status, "start", "created")
    ctx.backend().start(container, record.engine["spec"], ctx.store.dir(record.id))
    ctx.log.debug("start: init released")
    record.started = True
    ctx.store.save(record)


def cmd_start(ctx: Context) -> int:
    record, container = ctx.open(ctx.args[0])
    do_start(ctx, record, container)
    return 0


def cmd_kill(ctx: Context) -> int:
    from agent.container.state import Status

    record, container = ctx.open(ctx.args[0])
    number = parse_signal(ctx.args[1]) if len(ctx.args) > 1 else _signal.SIGTERM
    status = container.status
    if ctx.flags["all"]:
        if status is Status.STOPPED and not container.pids():
            raise CliError(f"container {record.id} is not running")
        container.signal(number, all_processes=True)
        return 0
    if not status.can_signal():
        _refuse(record, status, "signal", "created, running or paused")
    container.signal(number)
    return 0


def do_delete(ctx: Context, record: Record, container: Container, *, force: bool) -> None:
    from agent.container.state import Status

    status = container.status
    if status in (Status.RUNNING, Status.PAUSED) and not force:
        raise CliError(f"cannot delete container {record.id}: it is {status.value}; stop it first or use --force")
    # The engine waits for the processes it knows; a later call knows only the init, so wait for
    # the cgroup to empty (processes that earlier calls exec'd) before the engine removes it. An empty
    # cgroup (a `run` whose init ended with its pid namespace) needs neither.
    container.return_net_devices()  # before the kill ends the network namespace they are in
    if container.pids():
        container.signal(_signal.SIGKILL, all_processes=True)
        _wait_empty(container, record)
    container.destroy(timeout=10)
    ctx.store.remove(record.id)


def _wait_empty(container: Container, record: Record, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while container.pids():
        if time.monotonic() > deadline:
            raise CliError(f"container {record.id}: processes still alive {timeout:.0f} s after SIGKILL")
        time.sleep(0.005)


def cmd_delete(ctx: Context) -> int:
    force = bool(ctx.flags["force"])
    try:
        record, container = ctx.open(ctx.args[0])
    except CliError:
        if force and not os.path.exists(ctx.store.dir(ctx.args[0])):
            return 0  # as runc: forcing the delete of what is gone already succeeds
        raise
    do_delete(ctx, record, container, force=force)
    return 0


class _Forwarder:
    """Pass the signals a foreground ``run``/``exec`` receives on to the container process: those a
    served command's client passes on to its worker (cli_client.FORWARDED)."""

    def __init__(self, process: Process) -> None:
        from agent.container.cli_client import FORWARDED

        self.previous: dict[int, Any] = {}
        for name in FORWARDED:
            number = getattr(_signal, name)
            self.previous[number] = _signal.signal(number, lambda n, _f: process.signal(n))

    def restore(self) -> None:
        for number, handler in self.previous.items():
            _signal.signal(number, handler)


def wait_process(process: Process) -> int:
    """The process's exit status (128+N for signal N), passing our signals on while it runs."""
    forwarder = _Forwarder(process)
    try:
        return process.wait()
    finally:
        forwarder.restore()


def cmd_run(ctx: Context) -> int:
    container_id = ctx.args[0]
    detach = bool(ctx.flags["detach"])
    record, container = do_create(ctx, container_id)
    assert container.init is not None
    # in the foreground our signals go to the container from before it starts: the program may
    # already run (and a caller already signal us) when do_start returns
    forwarder = None if detach else _Forwarder(container.init)
    try:
        try:
            do_start(ctx, record, container)
        except BaseException:
            do_delete(ctx, record, container, force=True)
            raise
        if detach:
            return 0
        status = container.init.wait()
    finally:
        if forwarder is not None:
            forwarder.restore()
    ctx.log.debug(f"run: init exited with {status}")
    if not ctx.flags["keep"]:
        do_delete(ctx, record, container, force=True)
        ctx.log.debug("run: deleted")
    return status


def _exec_process(ctx: Context, record: Record) -> dict[str, Any]:
    flags = ctx.flags
    if flags["process"]:
        try:
            process: dict[str, Any] = jsonlite.loads(_read_text(flags["process"]))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read process {flags['process']}: {exc}") from None
    else:
        if len(ctx.args) < 2:
            raise CliError("exec needs a command (after the id) or --process FILE")
        base = record.engine["spec"]["process"]
        process = {
            "args": ctx.args[1:],
            "env": list(base.get("env") or []),
            "cwd": base.get("cwd", "/"),
            "user": dict(base.get("user") or {"uid": 0, "gid": 0}),
            "capabilities": base.get("capabilities"),
            "noNewPrivileges": base.get("noNewPrivileges", False),
            "rlimits": base.get("rlimits"),
            "terminal": False,
        }
    if flags["tty"]:
        process["terminal"] = True
    if flags["cwd"]:
        process["cwd"] = flags["cwd"]
    if flags["env"]:
        process["env"] = [*process.get("env", []), *flags["env"]]
    if flags["user"]:
        uid, _, gid = flags["user"].partition(":")
        process["user"] = {"uid": _integer(uid, "--user"), "gid": _integer(gid or "0", "--user")}
    if flags["additional_gids"]:
        process.setdefault("user", {})["additionalGids"] = [_integer(g, "-g") for g in flags["additional_gids"]]
    if flags["no_new_privs"]:
        process["noNewPrivileges"] = True
    if flags["cap"]:
        caps = process.setdefault("capabilities", {}) or {}
        process["capabilities"] = caps
        for kind in ("bounding", "effective", "permitted", "ambient"):
            caps[kind] = sorted({*caps.get(kind, []), *flags["cap"]})
    return process


def parse_sub_cgroups(values: list[str]) -> dict[str, str]:
    """exec's ``--cgroup`` values, as runc takes them: ``PATH`` (every controller) or
    ``CONTROLLER[,CONTROLLER...]:PATH``; controller ("" for every one) -> path."""
    sub: dict[str, str] = {}
    for value in values:
        controllers, separator, path = value.partition(":")
        if not separator:
            controllers, path = "", value
        for controller in controllers.split(","):
            if controller in sub:
                raise CliError(f"--cgroup {value}: {controller or 'the path for every controller'} is given twice")
            sub[controller] = path
    return sub


def cmd_exec(ctx: Context) -> int:
    from agent.container.cli_backend import open_container_pty
    from agent.container.engine import FdIO
    from agent.container.launch import spawn_exec
    from agent.container.spec import parse_process
    from agent.container.state import Status

    record, container = ctx.open(ctx.args[0])
    status = container.status
    # as runc: a created container takes exec too (its init waits before the user's program)
    if status not in (Status.RUNNING, Status.CREATED) and not (status is Status.PAUSED and ctx.flags["ignore_paused"]):
        _refuse(record, status, "exec in", "created or running")
    process = _exec_process(ctx, record)
    _check_terminal(process, ctx.flags["console_socket"])
    exec_id = f"exec-{os.getpid()}"
    io = FdIO(0, 1, 2, extra=preserved_fds(ctx))
    pty = open_container_pty(ctx.paths, record.pid) if process.get("terminal") else None
    if pty is not None:
        io.console = pty[1]
    sub_cgroups = parse_sub_cgroups(ctx.flags["cgroup"] or [])
    try:
        if status is Status.RUNNING:
            proc = container.exec(exec_id, process, io=io, sub_cgroups=sub_cgroups)
        else:  # created, or paused with --ignore-paused (it waits in the freezer): past the engine's check
            proc = spawn_exec(container.engine, container, exec_id, parse_process(process), io, sub_cgroups)
    except BaseException:
        if pty is not None:
            os.close(pty[0])
        raise
    finally:
        if pty is not None:
            os.close(pty[1])
    master = pty[0] if pty is not None else proc.io.pty_master
    proc.io.pty_master = None
    _hand_over_terminal(ctx, master)
    if ctx.flags["pid_file"]:
        write_pid_file(ctx.flags["pid_file"], proc.pid)
    if ctx.flags["detach"]:
        return 0
    return wait_process(proc)


def cmd_ps(ctx: Context) -> int:
    _record, container = ctx.open(ctx.args[0])
    pids = container.pids()
    fmt = ctx.flags["format"] or "table"
    if fmt == "json":
        print(jsonlite.dumps(pids))
        return 0
    if fmt != "table":
        raise CliError(f"invalid format option {fmt!r}: use table or json")
    from agent.system.run import run

    options = ctx.args[1:] or ["-ef"]
    lines = run(["ps", *options], package="procps").stdout.decode().splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise CliError(f"ps {' '.join(options)}: its output has no PID column")
    column = header.index("PID")
    wanted = {str(pid) for pid in pids}
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column] in wanted:
            print(line)
    return 0


def _freeze(ctx: Context, frozen: bool) -> int:
    record, container = ctx.open(ctx.args[0])
    container.pause() if frozen else container.resume()
    record.paused = frozen
    ctx.store.save(record)
    return 0


def cmd_pause(ctx: Context) -> int:
    return _freeze(ctx, True)


def cmd_resume(ctx: Context) -> int:
    return _freeze(ctx, False)


def cmd_update(ctx: Context) -> int:
    _record, container = ctx.open(ctx.args[0])
    resources = resources_from_flags(ctx.flags)
    if not resources:
        raise CliError("update: nothing to change; pass --memory, --cpu-quota, ... or -r FILE")
    container.update(resources)
    return 0


def cmd_serve(ctx: Context) -> int:
    from agent.container.cli_client import SERVER_ENV

    path = ctx.flags["socket"] or os.environ.get(SERVER_ENV)
    if not path:
        raise CliError(f"serve needs --socket PATH (or {SERVER_ENV})")
    from agent.container.cli_serve import serve

    serve(path, ctx.log)
    return 0


HANDLERS: dict[str, Callable[[Context], int]] = {
    "create": cmd_create,
    "start": cmd_start,
    "state": cmd_state,
    "kill": cmd_kill,
    "delete": cmd_delete,
    "run": cmd_run,
    "exec": cmd_exec,
    "ps": cmd_ps,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "update": cmd_update,
    "spec": cmd_spec,
    "list": cmd_list,
    "events": cmd_events,
    "features": cmd_features,
    "serve": cmd_serve,
}


def usage() -> str:
    lines = [f"usage: {PROGRAM} [global flags] COMMAND [flags] [ID]", "", "commands:"]
    lines += [f"  {c.usage}" for c in COMMANDS.values()]
    lines += ["  help [COMMAND]", "", "global flags:"]
    lines += [f"  --{f.names[0]:<16} {f.help}" for f in GLOBAL_FLAGS if f.help]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``pykata-runc`` console script."""
    code = run_cli(sys.argv[1:] if argv is None else argv)
    # Nothing is left to clean up (run_cli closed what it opened and reaped what it waits for):
    # skip the interpreter's teardown, several milliseconds of a short command.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or 120  # what the interpreter's own exit gives when it cannot flush stdout
    os._exit(code)


def run_cli(argv: Sequence[str]) -> int:
    from agent.errors import AgentError

    log = Log(None, None, False)
    try:
        invocation = parse_args(argv)
        options = invocation.options
        log = Log(options.get("log"), options.get("log_format"), bool(options.get("debug")))
        if options.get("version"):
            print(f"{PROGRAM} version 0.1.0\nspec: {OCI_VERSION}")
            return 0
        if invocation.command is not None and invocation.flags.get("help"):
            print(command_help(invocation.command))
            return 0
        if invocation.command is None or options.get("help"):
            print(usage())
            return 0 if options.get("help") else 1
        handler = HANDLERS.get(invocation.command.name)
        if handler is None:
            raise CliError(f"{invocation.command.name}: not implemented")
        log.debug(f"{invocation.command.name} {' '.join(invocation.args)}")
        ctx = Context(invocation, log)
        try:
            return handler(ctx)
        finally:
            ctx.close()
    except CliError as exc:
        log.error(str(exc))
        return 1
    except AgentError as exc:
        log.error(str(exc))
        return 1
    except OSError as exc:
        log.error(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    main()
