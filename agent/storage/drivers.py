"""One storage -> a plan of operations (see ``plan``), driver by driver, with Kata's semantics."""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from agent.errors import InvalidArgument, Unsupported
from agent.storage import plan as p
from agent.storage.types import (
    DRIVER_9P,
    DRIVER_BIND,
    DRIVER_BLK,
    DRIVER_EPHEMERAL,
    DRIVER_LOCAL,
    DRIVER_OVERLAYFS,
    DRIVER_SCSI,
    DRIVER_VIRTIOFS,
    DRIVERS,
    POLICY_ON_ROOT_MISMATCH,
    Storage,
)
from agent.system import libc
from agent.system.mountopts import MountOptions, option_values, parse_plain_mount_options

# Kata's options: a group for the directory, and its mode in octal.
OPTION_FSGID = "fsgid"
OPTION_MODE = "mode"
# Kata's driver option asking the overlay driver to create a directory first.
OVERLAY_CREATE_DIRECTORY = "io.katacontainers.volume.overlayfs.create_directory"

NINEP_DEFAULTS = ("trans=virtio", "version=9p2000.L")


def check_mount_point(storage: Storage) -> str:
    mount_point = storage.mount_point
    if not mount_point.startswith("/"):
        raise InvalidArgument(f"{storage.driver} storage: mount point {mount_point!r} is not absolute")
    if ".." in mount_point.split("/"):
        raise InvalidArgument(f"{storage.driver} storage: mount point {mount_point!r} contains '..'")
    return posixpath.normpath(mount_point)


def _fs_group_ops(storage: Storage, target: str) -> list[p.Op]:
    if storage.fs_group is None or storage.read_only:
        return []
    only_if_differs = storage.fs_group.change_policy == POLICY_ON_ROOT_MISMATCH
    return [p.SetFsGroup(target, storage.fs_group.gid, only_if_differs)]


def _propagation_ops(options: MountOptions, target: str) -> list[p.Op]:
    return [p.SetPropagation(target, options.propagation)] if options.propagation else []


def _mount_device(storage: Storage, source: str, fstype: str, options: MountOptions) -> list[p.Op]:
    target = check_mount_point(storage)
    return [
        p.MakeDir(target),
        p.Mount(source, target, fstype, options.flags, options.data_text),
        *_propagation_ops(options, target),
        *_fs_group_ops(storage, target),
    ]


def _what(storage: Storage) -> str:
    return f"{storage.driver} storage {storage.mount_point}"


def plan_9p(storage: Storage, source: str) -> list[p.Op]:
    if not source:
        raise InvalidArgument("9p storage: the source (the mount tag) is empty")
    options = parse_plain_mount_options(storage.options, _what(storage))
    for default in NINEP_DEFAULTS:
        if not options.has_data(default.split("=")[0]):
            options = options.with_data(default)
    return _mount_device(storage, source, "9p", options)


def plan_virtiofs(storage: Storage, source: str) -> list[p.Op]:
    if not source:
        raise InvalidArgument("virtio-fs storage: the source (the mount tag) is empty")
    return _mount_device(storage, source, "virtiofs", parse_plain_mount_options(storage.options, _what(storage)))


def plan_block(storage: Storage, source: str) -> list[p.Op]:
    if not storage.fstype:
        raise InvalidArgument(f"{storage.driver} storage {storage.source}: fstype is empty (e.g. ext4, xfs)")
    return _mount_device(storage, source, storage.fstype, parse_plain_mount_options(storage.options, _what(storage)))


def _without(options: tuple[str, ...], keys: tuple[str, ...]) -> list[str]:
    kept = []
    for option in options:
        words = [w for w in option.split(",") if w.strip().partition("=")[0] not in keys]
        if words:
            kept.append(",".join(words))
    return kept


def _octal_mode(storage: Storage, text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise InvalidArgument(f"{storage.driver} storage: mode {text!r} is not octal (e.g. mode=0777)") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"{storage.driver} storage: mode {text!r} is out of range")
    return mode


def _gid(storage: Storage, text: str) -> int:
    if not text.isdigit():
        raise InvalidArgument(f"{storage.driver} storage: fsgid {text!r} is not a group id")
    return int(text)


def plan_ephemeral(storage: Storage, source: str) -> list[p.Op]:
    """A tmpfs. ``fsgid=`` is ours, not tmpfs's: the directory gets that group and setgid."""
    values = option_values(storage.options)
    options = parse_plain_mount_options(_without(storage.options, (OPTION_FSGID,)), _what(storage))
    ops = _mount_device(storage, source or "tmpfs", storage.fstype or "tmpfs", options)
    if OPTION_FSGID in values:
        target = check_mount_point(storage)
        ops += [p.SetGroup(target, _gid(storage, values[OPTION_FSGID])), p.SetMode(target, 0o2777)]
    return ops


def plan_local(storage: Storage, source: str) -> list[p.Op]:
    """A plain directory shared by the sandbox's containers; ``mode=`` and ``fsgid=`` set on it."""
    target = check_mount_point(storage)
    values = option_values(storage.options)
    ops: list[p.Op] = [p.MakeDir(target)]
    if OPTION_FSGID in values:
        ops.append(p.SetGroup(target, _gid(storage, values[OPTION_FSGID])))
    if OPTION_MODE in values:
        mode = _octal_mode(storage, values[OPTION_MODE])
        if OPTION_FSGID in values:
            mode |= 0o2000
        ops.append(p.SetMode(target, mode))
    return ops


def plan_overlayfs(storage: Storage, source: str) -> list[p.Op]:
    target = check_mount_point(storage)
    values = option_values(storage.options)
    if not values.get("lowerdir"):
        raise InvalidArgument("overlayfs storage: options need lowerdir=...")
    ops: list[p.Op] = []
    for driver_option in storage.driver_options:
        key, _, path = driver_option.partition("=")
        if key == OVERLAY_CREATE_DIRECTORY and path:
            ops.append(p.MakeDir(path))
    for key in ("upperdir", "workdir"):
        if values.get(key):
            ops.append(p.MakeDir(values[key]))
    options = parse_plain_mount_options(storage.options, _what(storage))
    ops += [p.MakeDir(target), p.Mount(source or "overlay", target, "overlay", options.flags, options.data_text)]
    return ops + _propagation_ops(options, target)


def plan_bind(storage: Storage, source: str, source_is_dir: bool = True) -> list[p.Op]:
    target = check_mount_point(storage)
    if not source.startswith("/"):
        raise InvalidArgument(f"bind storage: source {source!r} is not an absolute path")
    options = parse_plain_mount_options(storage.options, _what(storage))
    bind_flags = libc.MS_BIND | (options.flags & libc.MS_REC)
    rest = options.flags & ~(libc.MS_BIND | libc.MS_REC | libc.MS_REMOUNT)
    make_target: p.Op = p.MakeDir(target) if source_is_dir else p.MakeFile(target)
    ops: list[p.Op] = [make_target, p.Mount(source, target, "", bind_flags)]
    if rest:
        # A bind mount ignores most flags; a second, remounting call applies them (read-only etc.).
        ops.append(p.Remount(target, libc.MS_REMOUNT | libc.MS_BIND | rest))
    return ops + _propagation_ops(options, target) + _fs_group_ops(storage, target)


PLANNERS: dict[str, Callable[[Storage, str], list[p.Op]]] = {
    DRIVER_9P: plan_9p,
    DRIVER_VIRTIOFS: plan_virtiofs,
    DRIVER_BLK: plan_block,
    DRIVER_SCSI: plan_block,
    DRIVER_EPHEMERAL: plan_ephemeral,
    DRIVER_LOCAL: plan_local,
    DRIVER_OVERLAYFS: plan_overlayfs,
    DRIVER_BIND: plan_bind,
}


def plan_storage(storage: Storage, source: str | None = None, source_is_dir: bool = True) -> list[p.Op]:
    """The operations that make ``storage`` available at its mount point. ``source`` is the resolved
    source (the device node for blk and scsi); by default the storage's own."""
    resolved = storage.source if source is None else source
    if storage.driver == DRIVER_BIND:
        return plan_bind(storage, resolved, source_is_dir)
    planner = PLANNERS.get(storage.driver)
    if planner is None:
        raise Unsupported(
            f"storage driver {storage.driver!r} for {storage.mount_point} is not supported "
            f"(supported: {', '.join(DRIVERS)})"
        )
    return planner(storage, resolved)
