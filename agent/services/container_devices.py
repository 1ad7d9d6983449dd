"""CreateContainer's ``devices``: block devices the runtime hot-plugged for the container, as Kata's
agent handles them (its device handlers, which GetGuestDetails lists).

The runtime's spec names each device by its host path and the host's major:minor; the guest sees it
elsewhere, under other numbers. For each device the agent waits (up to agent.hotplug_timeout) for the
guest's node: ``blk`` by the PCI path in ``id`` (or ``vm_path``), ``scsi`` by its "target:lun" in
``id``, ``mmioblk`` and ``nvdimm`` at ``vm_path``. Then the spec's ``linux.devices`` entry whose path
is ``container_path`` takes the guest node's type and major:minor, and so does every
``linux.resources.devices`` rule that named the host's numbers, so the container's device cgroup
allows the device it gets. A device with no ``container_path`` is only waited for (a rootfs on a
block device, mounted by its storage).
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import InvalidArgument, NotFound, ResourceError, Unsupported
from agent.system.paths import HostPaths
from agent.system.pcipath import wait_for

DRIVERS = ("blk", "scsi", "mmioblk", "nvdimm")


@dataclass(frozen=True)
class Device:
    id: str
    type: str
    vm_path: str = ""
    container_path: str = ""
    options: list[str] = field(default_factory=list)


def guest_node(paths: HostPaths, device: Device, block_device: Callable[[str, str], str], timeout: float) -> str:
    """The device's node in the guest, waited for. ``block_device(driver, source)`` resolves blk and
    scsi sources as storages do (StorageService's table)."""
    if device.type == "blk":
        source = device.vm_path if device.vm_path.startswith("/dev/") else device.id
        if not source:
            raise InvalidArgument("blk device: neither id (a PCI path) nor vm_path is set")
        return block_device("blk", source)
    if device.type == "scsi":
        return block_device("scsi", device.id)
    if device.type in ("mmioblk", "nvdimm"):
        if not device.vm_path.startswith("/dev/"):
            raise InvalidArgument(f"{device.type} device {device.id!r}: vm_path {device.vm_path!r} is not a /dev path")
        node = paths.inside(device.vm_path)
        return wait_for(
            lambda: node if os.path.exists(node) else None, timeout, f"{device.type} device {device.vm_path}"
        )
    raise Unsupported(f"device type {device.type!r} ({device.id}) is not handled; handled: {', '.join(DRIVERS)}")


def _numbers(node: str) -> tuple[str, int, int]:
    try:
        info = os.stat(node)
    except OSError as exc:
        raise NotFound(f"device node {node}: {exc.strerror}") from exc
    if stat.S_ISBLK(info.st_mode):
        kind = "b"
    elif stat.S_ISCHR(info.st_mode):
        kind = "c"
    else:
        raise ResourceError(f"{node} is not a device node")
    return kind, os.major(info.st_rdev), os.minor(info.st_rdev)


def update_spec(spec: dict[str, Any], container_path: str, node: str) -> dict[str, Any]:
    """``spec`` with the device at ``container_path`` renumbered to ``node``'s type and major:minor,
    and the cgroup rules that named its old numbers with it. InvalidArgument when the spec has no
    device at ``container_path``."""
    kind, major, minor = _numbers(node)
    spec = copy.deepcopy(spec)
    linux = spec.setdefault("linux", {})
    entries = [d for d in linux.get("devices") or [] if d.get("path") == container_path]
    if not entries:
        raise InvalidArgument(f"device {container_path}: the spec's linux.devices has no device at that path")
    old = {(d.get("type"), d.get("major"), d.get("minor")) for d in entries}
    for entry in entries:
        entry.update(type=kind, major=major, minor=minor)
    for rule in (linux.get("resources") or {}).get("devices") or []:
        if (rule.get("type"), rule.get("major"), rule.get("minor")) in old:
            rule.update(type=kind, major=major, minor=minor)
    return spec


def apply(
    paths: HostPaths,
    spec: dict[str, Any],
    devices: list[Device],
    block_device: Callable[[str, str], str],
    timeout: float,
) -> tuple[dict[str, Any], list[str]]:
    """The spec with every device in place, and what was done (for the log)."""
    done = []
    for device in devices:
        node = guest_node(paths, device, block_device, timeout)
        if device.container_path:
            spec = update_spec(spec, device.container_path, node)
            done.append(f"{device.container_path} is {node}")
        else:
            done.append(f"{node} is there")
    return spec, done
