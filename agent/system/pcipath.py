"""Kata PCI paths ("02/01") resolved to sysfs device directories, and a bounded wait for devices.

A PCI path lists device slots from the root bus down: "02" is slot 2 on bus 0000:00; "02/01" is
slot 1 on the bus behind the bridge in slot 2. Each hop after the first finds the bridge's secondary
bus through its ``pci_bus/`` directory in sysfs. Function numbers are always 0, as Kata's runtime
hot-plugs single-function devices.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from agent.errors import InvalidArgument, NotFound
from agent.system.paths import HostPaths

ROOT_BUS = "0000:00"
MAX_SLOT = 0x1F
MAX_DEPTH = 8

T = TypeVar("T")


def parse_pci_path(text: str) -> tuple[int, ...]:
    """The slots of a PCI path, root first. Raises InvalidArgument for anything but "hh/hh/..."."""
    parts = text.strip().split("/")
    if not text.strip() or len(parts) > MAX_DEPTH:
        raise InvalidArgument(f"PCI path {text!r}: expected 1 to {MAX_DEPTH} slots like '02/01'")
    slots = []
    for part in parts:
        try:
            slot = int(part, 16)
        except ValueError:
            raise InvalidArgument(f"PCI path {text!r}: slot {part!r} is not hexadecimal") from None
        if not 0 <= slot <= MAX_SLOT or len(part) > 2:
            raise InvalidArgument(f"PCI path {text!r}: slot {part!r} is out of range 00-1f")
        slots.append(slot)
    return tuple(slots)


def _names(directory: str) -> list[str]:
    """The entries of ``directory`` (hidden ones too), sorted; none when it cannot be listed."""
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def _secondary_bus(bridge_dir: str) -> str | None:
    buses = [name for name in _names(f"{bridge_dir}/pci_bus") if ":" in name]
    return buses[0] if buses else None


def pci_device_dir(paths: HostPaths, pci_path: str) -> str | None:
    """The sysfs directory of the device at ``pci_path``, or None while it (or a bridge) is missing."""
    slots = parse_pci_path(pci_path)
    bus = ROOT_BUS
    device = paths.pci_devices
    for depth, slot in enumerate(slots):
        device = f"{paths.pci_devices}/{bus}:{slot:02x}.0"
        if not os.path.exists(device):
            return None
        if depth < len(slots) - 1:
            next_bus = _secondary_bus(device)
            if next_bus is None:
                return None
            bus = next_bus
    return device


def device_children(device_dir: str | os.PathLike[str], subsystem: str) -> list[str]:
    """Entries of ``subsystem`` (``block``, ``net``) below a device: directly, or one level down
    (virtio devices put them under ``virtioN/``). Hidden entries are left out."""
    base = os.fspath(device_dir)
    found = [f"{base}/{subsystem}/{name}" for name in _names(f"{base}/{subsystem}")]
    for child in _names(base):
        if os.path.isdir(f"{base}/{child}/{subsystem}"):
            found += [f"{base}/{child}/{subsystem}/{name}" for name in _names(f"{base}/{child}/{subsystem}")]
    return [path for path in found if not os.path.basename(path).startswith(".")]


class Waker(Protocol):
    """Something that blocks until the device tree may have changed (a uevent) or ``timeout`` passes."""

    def wait(self, timeout: float) -> None: ...


class SleepWaker:
    """Polling fallback when no uevent listener is running."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval

    def wait(self, timeout: float) -> None:
        time.sleep(min(self.interval, max(timeout, 0.0)))


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    waker: Waker | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``probe`` until it returns a value, re-checking whenever ``waker`` wakes, for at most
    ``timeout`` seconds. Raises NotFound naming ``what`` when the deadline passes."""
    waker = waker or SleepWaker()
    deadline = clock() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        remaining = deadline - clock()
        if remaining <= 0:
            raise NotFound(f"{what} did not appear within {timeout:g} s (agent.hotplug_timeout)")
        waker.wait(remaining)
