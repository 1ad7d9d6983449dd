"""The OCI runtime spec (config.json) as typed, immutable records.

``parse_spec`` takes the dict exactly as a bundle's config.json holds it (the CLI reads the file;
the agent converts Kata's grpc.Spec with agent/rpc/convert_oci.py) and returns a ``Spec``. Parsing
only reshapes; agent/container/validate.py decides what is acceptable.

The records are small classes on ``Record`` (agent/system/records.py) rather than dataclasses:
every container start imports this module, and a dataclass costs about a millisecond to define
(its methods are generated and compiled at import). They behave as frozen dataclasses would: fields
set once by ``__init__``, compared, hashed and shown by value.
"""

from __future__ import annotations

from agent.errors import InvalidArgument
from agent.system.records import Record

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


class Mount(Record):
    _fields = ("destination", "type", "source", "options", "uid_mappings", "gid_mappings")
    __slots__ = _fields
    destination: str
    type: str
    source: str
    options: tuple[str, ...]
    uid_mappings: tuple[IdMapping, ...]  # an idmapped bind mount's (runtime-spec 1.2)
    gid_mappings: tuple[IdMapping, ...]

    def __init__(
        self,
        destination: str,
        type: str = "",
        source: str = "",
        options: tuple[str, ...] = (),
        uid_mappings: tuple[IdMapping, ...] = (),
        gid_mappings: tuple[IdMapping, ...] = (),
    ) -> None:
        self._assign(destination, type, source, options, uid_mappings, gid_mappings)


class Namespace(Record):
    _fields = ("type", "path")
    __slots__ = _fields
    type: str
    path: str

    def __init__(self, type: str, path: str = "") -> None:
        self._assign(type, path)


class IdMapping(Record):
    _fields = ("container_id", "host_id", "size")
    __slots__ = _fields
    container_id: int
    host_id: int
    size: int

    def __init__(self, container_id: int, host_id: int, size: int) -> None:
        self._assign(container_id, host_id, size)


def id_map_text(mappings: tuple[IdMapping, ...]) -> str:
    """/proc/<pid>/uid_map (gid_map) text: one "inside outside count" line per mapping."""
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)


class Rlimit(Record):
    _fields = ("type", "hard", "soft")
    __slots__ = _fields
    type: str
    hard: int
    soft: int

    def __init__(self, type: str, hard: int, soft: int) -> None:
        self._assign(type, hard, soft)


class Capabilities(Record):
    _fields = ("bounding", "effective", "inheritable", "permitted", "ambient")
    __slots__ = _fields
    bounding: tuple[str, ...]
    effective: tuple[str, ...]
    inheritable: tuple[str, ...]
    permitted: tuple[str, ...]
    ambient: tuple[str, ...]

    def __init__(
        self,
        bounding: tuple[str, ...] = (),
        effective: tuple[str, ...] = (),
        inheritable: tuple[str, ...] = (),
        permitted: tuple[str, ...] = (),
        ambient: tuple[str, ...] = (),
    ) -> None:
        self._assign(bounding, effective, inheritable, permitted, ambient)


class User(Record):
    _fields = ("uid", "gid", "additional_gids", "umask")
    __slots__ = _fields
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    umask: int | None

    def __init__(
        self, uid: int = 0, gid: int = 0, additional_gids: tuple[int, ...] = (), umask: int | None = None
    ) -> None:
        self._assign(uid, gid, additional_gids, umask)


class Process(Record):
    _fields = (
        "args",
        "env",
        "cwd",
        "terminal",
        "user",
        "capabilities",
        "no_new_privileges",
        "rlimits",
        "oom_score_adj",
        "console_size",
        "apparmor_profile",
        "selinux_label",
        "io_priority",
        "scheduler",
        "exec_cpu_affinity",
    )
    __slots__ = _fields
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    terminal: bool
    user: User
    capabilities: Capabilities | None
    no_new_privileges: bool
    rlimits: tuple[Rlimit, ...]
    oom_score_adj: int | None
    console_size: tuple[int, int] | None  # (height, width)
    apparmor_profile: str
    selinux_label: str
    # checked by agent.container.procattrs, in config.json's shape (None: not asked for)
    io_priority: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    exec_cpu_affinity: dict[str, str] | None

    def __init__(
        self,
        args: tuple[str, ...],
        env: tuple[str, ...] = (),
        cwd: str = "/",
        terminal: bool = False,
        user: User | None = None,
        capabilities: Capabilities | None = None,
        no_new_privileges: bool = False,
        rlimits: tuple[Rlimit, ...] = (),
        oom_score_adj: int | None = None,
        console_size: tuple[int, int] | None = None,
        apparmor_profile: str = "",
        selinux_label: str = "",
        io_priority: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        exec_cpu_affinity: dict[str, str] | None = None,
    ) -> None:
        self._assign(args, env, cwd, terminal, User() if user is None else user, capabilities, no_new_privileges,
                     rlimits, oom_score_adj, console_size, apparmor_profile, selinux_label, io_priority, scheduler,
                     exec_cpu_affinity)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The config.json shape, for the process that runs it (it gets plain JSON)."""
        caps = None
        if self.capabilities is not None:
            c = self.capabilities
            caps = {
                "bounding": list(c.bounding),
                "effective": list(c.effective),
                "inheritable": list(c.inheritable),
                "permitted": list(c.permitted),
                "ambient": list(c.ambient),
            }
        return {
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "terminal": self.terminal,
            "user": {
                "uid": self.user.uid,
                "gid": self.user.gid,
                "additionalGids": list(self.user.additional_gids),
                "umask": self.user.umask,
            },
            "capabilities": caps,
            "noNewPrivileges": self.no_new_privileges,
            "rlimits": [{"type": r.type, "hard": r.hard, "soft": r.soft} for r in self.rlimits],
            "oomScoreAdj": self.oom_score_adj,
            "apparmorProfile": self.apparmor_profile,
            "selinuxLabel": self.selinux_label,
            "ioPriority": self.io_priority,
            "scheduler": self.scheduler,
            "execCPUAffinity": self.exec_cpu_affinity,
        }


class Hook(Record):
    _fields = ("path", "args", "env", "timeout")
    __slots__ = _fields
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    timeout: int | None

    def __init__(
        self, path: str, args: tuple[str, ...] = (), env: tuple[str, ...] = (), timeout: int | None = None
    ) -> None:
        self._assign(path, args, env, timeout)


class Hooks(Record):
    _fields = ("prestart", "create_runtime", "create_container", "start_container", "poststart", "poststop")
    __slots__ = _fields
    prestart: tuple[Hook, ...]
    create_runtime: tuple[Hook, ...]
    create_container: tuple[Hook, ...]
    start_container: tuple[Hook, ...]
    poststart: tuple[Hook, ...]
    poststop: tuple[Hook, ...]

    def __init__(
        self,
        prestart: tuple[Hook, ...] = (),
        create_runtime: tuple[Hook, ...] = (),
        create_container: tuple[Hook, ...] = (),
        start_container: tuple[Hook, ...] = (),
        poststart: tuple[Hook, ...] = (),
        poststop: tuple[Hook, ...] = (),
    ) -> None:
        self._assign(prestart, create_runtime, create_container, start_container, poststart, poststop)


class Linux(Record):
    _fields = (
        "namespaces",
        "uid_mappings",
        "gid_mappings",
        "resources",
        "cgroups_path",
        "sysctl",
        "masked_paths",
        "readonly_paths",
        "rootfs_propagation",
        "seccomp",
        "devices",
        "mount_label",
        "personality",
        "time_offsets",
        "memory_policy",
        "net_devices",
    )
    __slots__ = _fields
    namespaces: tuple[Namespace, ...]
    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]
    resources: dict[str, Any]
    cgroups_path: str
    sysctl: dict[str, str]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    rootfs_propagation: str
    seccomp: dict[str, Any] | None
    devices: tuple[dict[str, Any], ...]
    mount_label: str
    personality: dict[str, Any] | None  # checked by agent.container.procattrs
    time_offsets: tuple[tuple[str, int, int], ...]  # (clock, secs, nanosecs) of a new time namespace
    memory_policy: dict[str, Any] | None  # checked by agent.container.procattrs
    net_devices: tuple[tuple[str, str], ...]  # (name in the runtime's network namespace, name in the container's)

    def __init__(
        self,
        namespaces: tuple[Namespace, ...] = (),
        uid_mappings: tuple[IdMapping, ...] = (),
        gid_mappings: tuple[IdMapping, ...] = (),
        resources: dict[str, Any] | None = None,
        cgroups_path: str = "",
        sysctl: dict[str, str] | None = None,
        masked_paths: tuple[str, ...] = (),
        readonly_paths: tuple[str, ...] = (),
        rootfs_propagation: str = "",
        seccomp: dict[str, Any] | None = None,
        devices: tuple[dict[str, Any], ...] = (),
        mount_label: str = "",
        personality: dict[str, Any] | None = None,
        time_offsets: tuple[tuple[str, int, int], ...] = (),
        memory_policy: dict[str, Any] | None = None,
        net_devices: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._assign(namespaces, uid_mappings, gid_mappings, {} if resources is None else resources, cgroups_path,
                     {} if sysctl is None else sysctl, masked_paths, readonly_paths, rootfs_propagation, seccomp,
                     devices, mount_label, personality, time_offsets, memory_policy, net_devices)  # fmt: skip

    def namespace(self, kind: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.type == kind:
                return ns
        return None


class Spec(Record):
    _fields = (
        "oci_version",
        "root_path",
        "root_readonly",
        "process",
        "hostname",
        "domainname",
        "mounts",
        "hooks",
        "linux",
        "annotations",
        "raw",
    )
    __slots__ = _fields
    _compared = _fields[:-1]  # not raw: the parsed fields are the spec
    oci_version: str
    root_path: str
    root_readonly: bool
    process: Process | None
    hostname: str
    domainname: str
    mounts: tuple[Mount, ...]
    hooks: Hooks
    linux: Linux
    annotations: dict[str, str]
    raw: dict[str, Any]  # the config.json dict it was parsed from

    def __init__(
        self,
        oci_version: str,
        root_path: str,
        root_readonly: bool,
        process: Process | None,
        hostname: str = "",
        domainname: str = "",
        mounts: tuple[Mount, ...] = (),
        hooks: Hooks | None = None,
        linux: Linux | None = None,
        annotations: dict[str, str] | None = None,
        raw: dict[str, Any] | None = None,
    ) -> None:
        self._assign(oci_version, root_path, root_readonly, process, hostname, domainname, mounts,
                     Hooks() if hooks is None else hooks, Linux() if linux is None else linux,
                     {} if annotations is None else annotations, {} if raw is None else raw)  # fmt: skip


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object, not {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a list, not {type(value).__name__}")
    return value


def _int(value: Any, where: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where} must be an integer, not {value!r}")
    return value


def _strs(value: Any, where: str) -> tuple[str, ...]:
    items = _list(value, where)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidArgument(f"{where}[{i}] must be a string, not {item!r}")
    return tuple(items)


def parse_capabilities(value: Any, where: str) -> Capabilities | None:
    if value is None:
        return None
    caps = _dict(value, where)
    return Capabilities(
        bounding=_strs(caps.get("bounding"), f"{where}.bounding"),
        effective=_strs(caps.get("effective"), f"{where}.effective"),
        inheritable=_strs(caps.get("inheritable"), f"{where}.inheritable"),
        permitted=_strs(caps.get("permitted"), f"{where}.permitted"),
        ambient=_strs(caps.get("ambient"), f"{where}.ambient"),
    )


def parse_process(value: Any, where: str = "process") -> Process:
    proc = _dict(value, where)
    user = _dict(proc.get("user"), f"{where}.user")
    size = proc.get("consoleSize")
    console_size = None
    if size:
        size = _dict(size, f"{where}.consoleSize")
        console_size = (_int(size.get("height"), f"{where}.consoleSize.height"),
                        _int(size.get("width"), f"{where}.consoleSize.width"))  # fmt: skip
    rlimits = []
    for i, item in enumerate(_list(proc.get("rlimits"), f"{where}.rlimits")):
        r = _dict(item, f"{where}.rlimits[{i}]")
        rlimits.append(
            Rlimit(
                type=str(r.get("type", "")),
                hard=_int(r.get("hard"), f"{where}.rlimits[{i}].hard"),
                soft=_int(r.get("soft"), f"{where}.rlimits[{i}].soft"),
            )
        )
    oom = proc.get("oomScoreAdj")
    attributes: dict[str, Any] = {}
    if any(proc.get(key) for key in ("ioPriority", "scheduler", "execCPUAffinity")):
        from agent.container import procattrs  # most specs have none of these: not loaded for them

        for key, name, check in (("ioPriority", "io_priority", procattrs.check_io_priority),
                                 ("scheduler", "scheduler", procattrs.check_scheduler),
                                 ("execCPUAffinity", "exec_cpu_affinity", procattrs.check_cpu_affinity)):  # fmt: skip
            if proc.get(key):
                attributes[name] = check(proc[key], f"{where}.{key}")
    return Process(
        args=_strs(proc.get("args"), f"{where}.args"),
        env=_strs(proc.get("env"), f"{where}.env"),
        cwd=str(proc.get("cwd") or "/"),
        terminal=bool(proc.get("terminal", False)),
        user=User(
            uid=_int(user.get("uid"), f"{where}.user.uid"),
            gid=_int(user.get("gid"), f"{where}.user.gid"),
            additional_gids=tuple(
                _int(g, f"{where}.user.additionalGids") for g in _list(user.get("additionalGids"), where)
            ),
            umask=None if user.get("umask") is None else _int(user.get("umask"), f"{where}.user.umask"),
        ),
        capabilities=parse_capabilities(proc.get("capabilities"), f"{where}.capabilities"),
        no_new_privileges=bool(proc.get("noNewPrivileges", False)),
        rlimits=tuple(rlimits),
        oom_score_adj=None if oom is None else _int(oom, f"{where}.oomScoreAdj"),
        console_size=console_size,
        apparmor_profile=_label(proc.get("apparmorProfile"), f"{where}.apparmorProfile"),
        selinux_label=_label(proc.get("selinuxLabel"), f"{where}.selinuxLabel"),
        **attributes,
    )


def _label(value: Any, where: str) -> str:
    """An LSM profile or label: a string without control characters ("" when unset)."""
    if value is None:
        return ""
    if not isinstance(value, str) or any(ord(c) < 32 for c in value):
        raise InvalidArgument(f"{where} must be a string without control characters, not {value!r}")
    return value


def _hooks(value: Any, where: str) -> tuple[Hook, ...]:
    hooks = []
    for i, item in enumerate(_list(value, where)):
        h = _dict(item, f"{where}[{i}]")
        timeout = h.get("timeout")
        hooks.append(
            Hook(
                path=str(h.get("path", "")),
                args=_strs(h.get("args"), f"{where}[{i}].args"),
                env=_strs(h.get("env"), f"{where}[{i}].env"),
                timeout=None if timeout is None else _int(timeout, f"{where}[{i}].timeout"),
            )
        )
    return tuple(hooks)


def _net_devices(value: Any) -> tuple[tuple[str, str], ...]:
    """linux.netDevices (runtime-spec 1.3): {name in the runtime's network namespace: {"name": name in
    the container's, default the same}}; names by the kernel's rule, none given twice in the container."""
    if not value:
        return ()
    from agent.system.netdev import valid_link_name

    devices = []
    for host_name, entry in _dict(value, "linux.netDevices").items():
        where = f"linux.netDevices[{host_name!r}]"
        name = _dict(entry, where).get("name") or host_name
        for what, link in (("", host_name), (".name", name)):
            if not isinstance(link, str) or not valid_link_name(link):
                raise InvalidArgument(
                    f"{where}{what}: {link!r} is not an interface name (1 to 15 bytes, not . or .., no /, : or spaces)"
                )
        devices.append((host_name, name))
    seen: set[str] = set()
    for _, name in devices:
        if name in seen:
            raise InvalidArgument(f"linux.netDevices: two devices would be named {name!r} in the container")
        seen.add(name)
    return tuple(devices)


TIME_NAMESPACE_CLOCKS = ("monotonic", "boottime")  # the clocks a time namespace offsets (time_namespaces(7))


def _time_offsets(value: Any) -> tuple[tuple[str, int, int], ...]:
    """linux.timeOffsets: {clock: {"secs": int64, "nanosecs": 0..999999999}}, clocks in the kernel's order."""
    offsets = _dict(value, "linux.timeOffsets")
    for clock in offsets:
        if clock not in TIME_NAMESPACE_CLOCKS:
            raise InvalidArgument(
                f"linux.timeOffsets: {clock!r} is not a clock a time namespace offsets "
                f"({', '.join(TIME_NAMESPACE_CLOCKS)})"
            )
    out = []
    for clock in TIME_NAMESPACE_CLOCKS:
        if clock not in offsets:
            continue
        where = f"linux.timeOffsets.{clock}"
        offset = _dict(offsets[clock], where)
        secs, nanosecs = _int(offset.get("secs"), f"{where}.secs"), _int(offset.get("nanosecs"), f"{where}.nanosecs")
        if not -(1 << 63) <= secs < 1 << 63:
            raise InvalidArgument(f"{where}.secs {secs} does not fit in 64 bits")
        if not 0 <= nanosecs < 1_000_000_000:
            raise InvalidArgument(f"{where}.nanosecs {nanosecs} must be from 0 to 999999999")
        out.append((clock, secs, nanosecs))
    return tuple(out)


def _mappings(value: Any, where: str) -> tuple[IdMapping, ...]:
    out = []
    for i, item in enumerate(_list(value, where)):
        m = _dict(item, f"{where}[{i}]")
        out.append(
            IdMapping(
                container_id=_int(m.get("containerID"), f"{where}[{i}].containerID"),
                host_id=_int(m.get("hostID"), f"{where}[{i}].hostID"),
                size=_int(m.get("size"), f"{where}[{i}].size"),
            )
        )
    return tuple(out)


def parse_spec(raw: dict[str, Any]) -> Spec:
    """Reshape a config.json dict into a Spec; a wrongly typed field raises InvalidArgument naming it."""
    data = _dict(raw, "spec")
    root = _dict(data.get("root"), "root")
    linux = _dict(data.get("linux"), "linux")
    hooks = _dict(data.get("hooks"), "hooks")
    mounts = []
    for i, item in enumerate(_list(data.get("mounts"), "mounts")):
        m = _dict(item, f"mounts[{i}]")
        mounts.append(
            Mount(
                destination=str(m.get("destination", "")),
                type=str(m.get("type") or ""),
                source=str(m.get("source") or ""),
                options=_strs(m.get("options"), f"mounts[{i}].options"),
                # (most mounts have none: no field names formatted for them, on every create)
                uid_mappings=_mappings(m["uidMappings"], f"mounts[{i}].uidMappings") if m.get("uidMappings") else (),
                gid_mappings=_mappings(m["gidMappings"], f"mounts[{i}].gidMappings") if m.get("gidMappings") else (),
            )
        )
    namespaces = []
    for i, item in enumerate(_list(linux.get("namespaces"), "linux.namespaces")):
        n = _dict(item, f"linux.namespaces[{i}]")
        namespaces.append(Namespace(type=str(n.get("type", "")), path=str(n.get("path") or "")))
    sysctl = _dict(linux.get("sysctl"), "linux.sysctl")
    personality = memory_policy = None
    if linux.get("personality") or linux.get("memoryPolicy"):
        from agent.container import procattrs

        if linux.get("personality"):
            personality = procattrs.check_personality(linux["personality"])
        if linux.get("memoryPolicy"):
            memory_policy = procattrs.check_memory_policy(linux["memoryPolicy"])
    return Spec(
        oci_version=str(data.get("ociVersion", "")),
        root_path=str(root.get("path", "")),
        root_readonly=bool(root.get("readonly", False)),
        process=None if data.get("process") is None else parse_process(data.get("process")),
        hostname=str(data.get("hostname") or ""),
        domainname=_label(data.get("domainname"), "domainname"),
        mounts=tuple(mounts),
        hooks=Hooks(
            prestart=_hooks(hooks.get("prestart"), "hooks.prestart"),
            create_runtime=_hooks(hooks.get("createRuntime"), "hooks.createRuntime"),
            create_container=_hooks(hooks.get("createContainer"), "hooks.createContainer"),
            start_container=_hooks(hooks.get("startContainer"), "hooks.startContainer"),
            poststart=_hooks(hooks.get("poststart"), "hooks.poststart"),
            poststop=_hooks(hooks.get("poststop"), "hooks.poststop"),
        ),
        linux=Linux(
            namespaces=tuple(namespaces),
            uid_mappings=_mappings(linux.get("uidMappings"), "linux.uidMappings"),
            gid_mappings=_mappings(linux.get("gidMappings"), "linux.gidMappings"),
            resources=_dict(linux.get("resources"), "linux.resources"),
            cgroups_path=str(linux.get("cgroupsPath") or ""),
            sysctl={str(k): str(v) for k, v in sysctl.items()},
            masked_paths=_strs(linux.get("maskedPaths"), "linux.maskedPaths"),
            readonly_paths=_strs(linux.get("readonlyPaths"), "linux.readonlyPaths"),
            rootfs_propagation=str(linux.get("rootfsPropagation") or ""),
            seccomp=None if linux.get("seccomp") is None else _dict(linux.get("seccomp"), "linux.seccomp"),
            devices=tuple(_dict(d, "linux.devices") for d in _list(linux.get("devices"), "linux.devices")),
            mount_label=_label(linux.get("mountLabel"), "linux.mountLabel"),
            personality=personality,
            time_offsets=_time_offsets(linux.get("timeOffsets")),
            memory_policy=memory_policy,
            net_devices=_net_devices(linux.get("netDevices")),
        ),
        annotations={str(k): str(v) for k, v in _dict(data.get("annotations"), "annotations").items()},
        raw=data,
    )
