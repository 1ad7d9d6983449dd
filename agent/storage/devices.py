"""The block device behind a blk (virtio-blk PCI path) or scsi ("target:lun") storage.

Devices may still be arriving when the request comes (hot-plugged just before), so each lookup waits
up to the hotplug timeout, re-checking whenever the waker says the device tree changed.
"""

from __future__ import annotations

import logging
import os

from agent.errors import InvalidArgument, NotFound
from agent.system import sysfs
from agent.system.paths import HostPaths
from agent.system.pcipath import Waker, device_children, parse_pci_path, pci_device_dir, wait_for

log = logging.getLogger(__name__)


def _dev_node(paths: HostPaths, block_dir: str) -> str | None:
    node = f"{paths.dev}/{os.path.basename(block_dir)}"
    return node if os.path.exists(node) else None


def _entries(directory: str, suffix: str = "") -> list[str]:
    """The sorted paths of the entries of ``directory`` whose names end with ``suffix`` (hidden ones
    too); none when it cannot be listed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(f"{directory}/{name}" for name in names if name.endswith(suffix))


def find_virtio_blk(paths: HostPaths, pci_path: str) -> str | None:
    """/dev/vdX for the virtio-blk device at ``pci_path``, or None while it is not there yet."""
    device = pci_device_dir(paths, pci_path)
    if device is None:
        return None
    for block in device_children(device, "block"):
        node = _dev_node(paths, block)
        if node is not None:
            return node
    return None


def parse_scsi_address(address: str) -> tuple[int, int]:
    """Kata's SCSI address "target:lun" (both decimal)."""
    target, sep, lun = address.partition(":")
    if not sep or not target.isdigit() or not lun.isdigit():
        raise InvalidArgument(f"SCSI address {address!r}: expected 'target:lun', e.g. '0:0'")
    return int(target), int(lun)


def scan_scsi(paths: HostPaths, target: int, lun: int) -> None:
    """Ask every SCSI host to look for the device (a hot-added LUN is not always announced)."""
    hosts = paths.scsi_host_class
    if not os.path.isdir(hosts):
        return
    for host in _entries(hosts):
        try:
            sysfs.write(f"{host}/scan", f"0 {target} {lun}")
        except OSError as exc:
            log.debug("scsi scan on %s: %s", os.path.basename(host), exc)


def find_scsi(paths: HostPaths, target: int, lun: int) -> str | None:
    """/dev/sdX for channel 0, ``target``, ``lun`` on any SCSI host, or None while it is missing."""
    root = paths.scsi_devices
    if not os.path.isdir(root):
        return None
    for device in _entries(root, f":0:{target}:{lun}"):
        for block in _entries(f"{device}/block"):
            node = _dev_node(paths, block)
            if node is not None:
                return node
    return None


def resolve_blk(paths: HostPaths, source: str, timeout: float, waker: Waker | None = None) -> str:
    """The device node for a blk storage: a /dev path as given, or the device at a PCI path."""
    if source.startswith("/dev/"):
        node = paths.inside(source)
        if not os.path.exists(node):
            raise NotFound(f"blk storage: device {source} does not exist")
        return node
    parse_pci_path(source)
    return wait_for(lambda: find_virtio_blk(paths, source), timeout, f"virtio-blk device at PCI path {source}", waker)


def resolve_scsi(paths: HostPaths, source: str, timeout: float, waker: Waker | None = None) -> str:
    target, lun = parse_scsi_address(source)
    scan_scsi(paths, target, lun)
    return wait_for(lambda: find_scsi(paths, target, lun), timeout, f"SCSI device {source}", waker)
