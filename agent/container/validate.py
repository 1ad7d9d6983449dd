"""Checks run on a parsed spec before the engine does anything, in order; the first failure raises
InvalidArgument naming the field (Unsupported for a field this engine does not implement). Each check
is a small function so a test can name the one it exercises and the order stays readable (the shape
of runc's validator)."""

from __future__ import annotations

import os

from agent.container.spec import NAMESPACE_TYPES, Spec
from agent.errors import InvalidArgument, Unsupported
from agent.system.paths import normal_path

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_ID_LENGTH = 1024
MAX_ID_MAP_LINES = 340  # lines a uid_map or gid_map may hold (Linux 4.15 and later)
# What an id may hold (no regular expressions: ``re`` costs milliseconds at import, on every container start)
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-.")
MOUNT_TYPES_NEEDING_NO_SOURCE = ("proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2")
# linux fields of the runtime spec this engine does not implement: refused by name, never ignored
UNSUPPORTED_LINUX_FIELDS = {
    "intelRdt": "Intel RDT (resctrl) cache and memory bandwidth allocation",
}


def validate_container_id(container_id: str) -> None:
    if not container_id:
        raise InvalidArgument("container id is empty")
    if len(container_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"container id is {len(container_id)} characters long; the limit is {MAX_ID_LENGTH}")
    if "/" in container_id or container_id in (".", "..") or ".." in container_id:
        raise InvalidArgument(f"container id {container_id!r} contains '/' or '..'")
    if not _ID_CHARS.issuperset(container_id):
        raise InvalidArgument(f"container id {container_id!r} has characters outside [A-Za-z0-9_+-.]")


def check_root(spec: Spec, bundle: str | None) -> None:
    if not spec.root_path:
        raise InvalidArgument("root.path is missing: the spec names no root filesystem")
    root = spec.root_path
    if not root.startswith("/"):
        if bundle is None:
            raise InvalidArgument(f"root.path {spec.root_path!r} is relative and there is no bundle to resolve it")
        root = os.path.join(bundle, root)
    if not os.path.isdir(root):
        raise InvalidArgument(f"root.path {normal_path(root)!r} is not a directory")


def check_process(spec: Spec, bundle: str | None) -> None:
    proc = spec.process
    if proc is None:
        raise InvalidArgument("process is missing: the spec names nothing to run")
    if not proc.args:
        raise InvalidArgument("process.args is empty: there is nothing to exec")
    if not proc.cwd.startswith("/"):
        raise InvalidArgument(f"process.cwd {proc.cwd!r} must be an absolute path")
    for i, item in enumerate(proc.env):
        if "=" not in item:
            raise InvalidArgument(f"process.env[{i}] {item!r} is not NAME=value")


def check_namespaces(spec: Spec, bundle: str | None) -> None:
    seen: set[str] = set()
    for i, ns in enumerate(spec.linux.namespaces):
        if ns.type not in NAMESPACE_TYPES:
            raise InvalidArgument(
                f"linux.namespaces[{i}].type {ns.type!r} is not a namespace type ({', '.join(NAMESPACE_TYPES)})"
            )
        if ns.type in seen:
            raise InvalidArgument(f"linux.namespaces[{i}]: namespace {ns.type} is listed twice")
        seen.add(ns.type)
        if ns.path and not ns.path.startswith("/"):
            raise InvalidArgument(f"linux.namespaces[{i}].path {ns.path!r} must be an absolute path")
    if (spec.linux.uid_mappings or spec.linux.gid_mappings) and "user" not in seen:
        raise InvalidArgument("linux.uidMappings/gidMappings are set but there is no user namespace")
    if spec.hostname and "uts" not in seen:
        raise InvalidArgument("hostname is set but the spec has no uts namespace")
    if spec.domainname and "uts" not in seen:
        raise InvalidArgument("domainname is set but the spec has no uts namespace")
    if spec.linux.time_offsets and not any(ns.type == "time" and not ns.path for ns in spec.linux.namespaces):
        raise InvalidArgument(
            "linux.timeOffsets sets the clocks of a new time namespace: "
            "add one (type time, no path) to linux.namespaces"
        )
    if spec.linux.net_devices and "network" not in seen:
        raise InvalidArgument(
            "linux.netDevices moves devices into the container's network namespace: the spec has none of its own"
        )
    if spec.linux.sysctl and "ipc" not in seen and "network" not in seen:
        for key in spec.linux.sysctl:
            if key.startswith(("net.", "kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.")):
                raise InvalidArgument(f"linux.sysctl {key!r} needs its namespace (network or ipc) in the spec")


def check_mounts(spec: Spec, bundle: str | None) -> None:
    for i, mount in enumerate(spec.mounts):
        if not mount.destination.startswith("/"):
            raise InvalidArgument(f"mounts[{i}].destination {mount.destination!r} must be an absolute path")
        if ".." in mount.destination.split("/"):
            raise InvalidArgument(f"mounts[{i}].destination {mount.destination!r} contains '..'")
        is_bind = mount.type in ("bind", "") or "bind" in mount.options or "rbind" in mount.options
        if is_bind and mount.type not in MOUNT_TYPES_NEEDING_NO_SOURCE:
            if not mount.source:
                raise InvalidArgument(f"mounts[{i}] ({mount.destination}): a bind mount needs a source")
            if not mount.source.startswith("/") and bundle is None:
                raise InvalidArgument(f"mounts[{i}].source {mount.source!r} must be an absolute path")


def check_paths(spec: Spec, bundle: str | None) -> None:
    for where, items in (("linux.maskedPaths", spec.linux.masked_paths),
                         ("linux.readonlyPaths", spec.linux.readonly_paths)):  # fmt: skip
        for i, path in enumerate(items):
            if not path.startswith("/"):
                raise InvalidArgument(f"{where}[{i}] {path!r} must be an absolute path")
    if spec.linux.rootfs_propagation and spec.linux.rootfs_propagation not in (
        "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"
    ):  # fmt: skip
        raise InvalidArgument(f"linux.rootfsPropagation {spec.linux.rootfs_propagation!r} is not a propagation")
    if spec.linux.cgroups_path and not (
        spec.linux.cgroups_path.startswith("/") or spec.linux.cgroups_path.count(":") == 2
    ):
        raise InvalidArgument(
            f"linux.cgroupsPath {spec.linux.cgroups_path!r} must be absolute or slice:prefix:name (systemd form)"
        )


def check_devices(spec: Spec, bundle: str | None) -> None:
    for i, device in enumerate(spec.linux.devices):
        where = f"linux.devices[{i}]"
        path = device.get("path")
        if not isinstance(path, str) or not path.startswith("/dev/"):
            raise InvalidArgument(f"{where}.path {path!r} must be an absolute path under /dev")
        if device.get("type") not in ("c", "b", "u", "p"):
            raise InvalidArgument(f"{where}.type {device.get('type')!r} is not c, b, u or p")
        for key in ("major", "minor", "fileMode", "uid", "gid"):
            _number(device.get(key), f"{where}.{key}", minimum=0)


def check_hooks(spec: Spec, bundle: str | None) -> None:
    h = spec.hooks
    for kind, items in (("prestart", h.prestart), ("createRuntime", h.create_runtime),
                        ("createContainer", h.create_container), ("startContainer", h.start_container),
                        ("poststart", h.poststart), ("poststop", h.poststop)):  # fmt: skip
        for i, hook in enumerate(items):
            if not hook.path.startswith("/"):
                raise InvalidArgument(f"hooks.{kind}[{i}].path {hook.path!r} must be an absolute path")
            if hook.timeout is not None and hook.timeout <= 0:
                raise InvalidArgument(f"hooks.{kind}[{i}].timeout must be > 0")


def _number(value: Any, where: str, *, minimum: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where} must be an integer, not {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"{where} is {value}; it must be >= {minimum}")


def check_spec_resources(spec: Spec, bundle: str | None) -> None:
    """The cgroup planner's checks of every resource field, before any cgroup is made (it is loaded
    for the create anyway)."""
    from agent.container.cgroups.plan import validate_resources

    validate_resources(spec.linux.resources)


def check_seccomp(spec: Spec, bundle: str | None) -> None:
    if spec.linux.seccomp is not None:
        from agent.container.seccomp import check_profile, uses_notify  # loaded only for a spec that has a profile

        check_profile(spec.linux.seccomp)
        if uses_notify(spec.linux.seccomp) and spec.hooks.start_container:
            raise Unsupported(
                "linux.seccomp: SCMP_ACT_NOTIFY with startContainer hooks: a notifying filter is installed before "
                "the create returns, and the hooks, which run after start, would be under it; leave one out"
            )


def check_unsupported(spec: Spec, bundle: str | None) -> None:
    linux = spec.raw.get("linux") or {}
    for field, what in UNSUPPORTED_LINUX_FIELDS.items():
        if linux.get(field):
            raise Unsupported(f"linux.{field} ({what}) is not supported by this runtime: leave it out of the spec")


def check_mappings(spec: Spec, bundle: str | None) -> None:
    every = [("linux.uidMappings", spec.linux.uid_mappings), ("linux.gidMappings", spec.linux.gid_mappings)]
    for index, mount in enumerate(spec.mounts):
        if not (mount.uid_mappings or mount.gid_mappings):
            continue
        every += [
            (f"mounts[{index}].uidMappings", mount.uid_mappings),
            (f"mounts[{index}].gidMappings", mount.gid_mappings),
        ]
    for where, maps in every:
        if len(maps) > MAX_ID_MAP_LINES:
            raise InvalidArgument(f"{where} has {len(maps)} mappings; the kernel takes at most {MAX_ID_MAP_LINES}")
        for i, m in enumerate(maps):
            if m.size <= 0 or m.container_id < 0 or m.host_id < 0:
                raise InvalidArgument(f"{where}[{i}] needs containerID, hostID >= 0 and size > 0")


def check_idmapped_mounts(spec: Spec, bundle: str | None) -> None:
    """runtime-spec 1.2's idmapped mounts, by runc's rules: a bind mount with uidMappings and
    gidMappings (given together), or with the idmap or ridmap option and neither, which takes the
    container's own mappings (so it needs a new user namespace with both)."""
    container_ns = spec.linux.namespace("user")
    container_maps = container_ns is not None and not container_ns.path
    container_maps = container_maps and bool(spec.linux.uid_mappings) and bool(spec.linux.gid_mappings)
    for index, mount in enumerate(spec.mounts):
        if not (mount.uid_mappings or mount.gid_mappings or any("idmap" in option for option in mount.options)):
            continue
        words = {word.strip() for option in mount.options for word in option.split(",")}
        if not (mount.uid_mappings or mount.gid_mappings or words & {"idmap", "ridmap"}):
            continue
        where = f"mounts[{index}] ({mount.destination})"
        if mount.type != "bind" and not words & {"bind", "rbind"}:
            raise InvalidArgument(
                f"{where}: only a bind mount can be idmapped (uidMappings, gidMappings, idmap, ridmap)"
            )
        if bool(mount.uid_mappings) != bool(mount.gid_mappings):
            raise InvalidArgument(f"{where}: an idmapped mount needs both uidMappings and gidMappings, or neither")
        if not mount.uid_mappings and not container_maps:
            raise InvalidArgument(
                f"{where}: idmap without the mount's own uidMappings/gidMappings takes the container's, which needs "
                "a new user namespace with linux.uidMappings and linux.gidMappings"
            )


CHECKS: list[Callable[[Spec, str | None], None]] = [
    check_root,
    check_process,
    check_unsupported,
    check_namespaces,
    check_mappings,
    check_mounts,
    check_idmapped_mounts,
    check_paths,
    check_devices,
    check_hooks,
    check_spec_resources,
    check_seccomp,
]


def validate_spec(spec: Spec, bundle: str | os.PathLike[str] | None = None) -> None:
    """Run every check in order; raise InvalidArgument at the first problem."""
    where = None if bundle is None else os.fspath(bundle)
    for check in CHECKS:
        check(spec, where)


def resolve_root(spec: Spec, bundle: str | os.PathLike[str] | None) -> str:
    """The rootfs's real path: root.path, under ``bundle`` when relative, every link resolved."""
    root = spec.root_path
    if not root.startswith("/") and bundle is not None:
        root = os.path.join(bundle, root)
    return os.path.realpath(root)
