"""The OCI runtime spec (config.json) as typed dataclasses.

``parse_spec`` takes the dict exactly as a bundle's config.json holds it (the CLI reads the file;
the agent converts Kata's grpc.Spec with agent/rpc/convert_oci.py) and returns a ``Spec``. Parsing
only reshapes; agent/container/validate.py decides what is acceptable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.errors import InvalidArgument

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")


@dataclass(frozen=True)
class Mount:
    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Namespace:
    type: str
    path: str = ""


@dataclass(frozen=True)
class IdMapping:
    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class Rlimit:
    type: str
    hard: int
    soft: int


@dataclass(frozen=True)
class Capabilities:
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    terminal: bool = False
    user: User = field(default_factory=User)
    capabilities: Capabilities | None = None
    no_new_privileges: bool = False
    rlimits: tuple[Rlimit, ...] = ()
    oom_score_adj: int | None = None
    console_size: tuple[int, int] | None = None  # (height, width)

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
        }


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class Hooks:
    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class Linux:
    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    cgroups_path: str = ""
    sysctl: dict[str, str] = field(default_factory=dict)
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    rootfs_propagation: str = ""
    seccomp: dict[str, Any] | None = None
    devices: tuple[dict[str, Any], ...] = ()

    def namespace(self, kind: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.type == kind:
                return ns
        return None


@dataclass(frozen=True)
class Spec:
    oci_version: str
    root_path: str
    root_readonly: bool
    process: Process | None
    hostname: str = ""
    mounts: tuple[Mount, ...] = ()
    hooks: Hooks = field(default_factory=Hooks)
    linux: Linux = field(default_factory=Linux)
    annotations: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


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
    )


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
            )
        )
    namespaces = []
    for i, item in enumerate(_list(linux.get("namespaces"), "linux.namespaces")):
        n = _dict(item, f"linux.namespaces[{i}]")
        namespaces.append(Namespace(type=str(n.get("type", "")), path=str(n.get("path") or "")))
    sysctl = _dict(linux.get("sysctl"), "linux.sysctl")
    return Spec(
        oci_version=str(data.get("ociVersion", "")),
        root_path=str(root.get("path", "")),
        root_readonly=bool(root.get("readonly", False)),
        process=None if data.get("process") is None else parse_process(data.get("process")),
        hostname=str(data.get("hostname") or ""),
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
        ),
        annotations={str(k): str(v) for k, v in _dict(data.get("annotations"), "annotations").items()},
        raw=data,
    )
