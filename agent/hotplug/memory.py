"""Bring hot-added memory online through sysfs (``memory_dir/memoryN/state``).

Every offline block is onlined: as ``online_movable`` when its ``valid_zones`` lists Movable (so
the memory can be unplugged again later), else as ``online``. ``probe`` tells the kernel about memory
the firmware did not announce (``MemHotplugByProbe``): each address written to the probe file adds
the block that starts there.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.errors import InvalidArgument, ResourceError, Unsupported
from agent.hotplug.budget import Budget
from agent.hotplug.cpu import FATAL, TRANSIENT
from agent.system import sysfs
from agent.system.paths import HostPaths

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from agent.hotplug.cpuset import AttributeWriter

log = logging.getLogger(__name__)

_BLOCK_DIR = re.compile(r"memory(\d+)")


@dataclass(frozen=True)
class BlockState:
    number: int
    state: str  # online, offline, going-offline
    zones: tuple[str, ...]  # from valid_zones; empty when the file is missing


def scan_blocks(paths: HostPaths) -> dict[int, BlockState]:
    found: dict[int, BlockState] = {}
    try:
        names = os.listdir(paths.memory_dir)
    except FileNotFoundError:
        return found
    for name in names:
        matched = _BLOCK_DIR.fullmatch(name)
        if matched is None:
            continue
        entry = f"{paths.memory_dir}/{name}"
        try:
            state = sysfs.read_text(f"{entry}/state")
        except OSError:
            continue
        try:
            zones = tuple(sysfs.read_text(f"{entry}/valid_zones").split())
        except OSError:
            zones = ()
        number = int(matched.group(1))
        found[number] = BlockState(number, state, zones)
    return found


def block_size(paths: HostPaths) -> int:
    """Bytes per memory block (``block_size_bytes`` is hexadecimal without a 0x); 0 when unknown."""
    try:
        return int(sysfs.read_text(paths.memory_block_size), 16)
    except (OSError, ValueError):
        return 0


def probe_supported(paths: HostPaths) -> bool:
    return os.path.exists(paths.memory_probe)


def online_value(block: BlockState) -> str:
    return "online_movable" if "Movable" in block.zones else "online"


def _default_writer(path: str, value: str) -> None:
    sysfs.write(path, value)


def probe(paths: HostPaths, addresses: Iterable[int], writer: AttributeWriter = _default_writer) -> list[int]:
    """Write each address to the probe file; returns the block numbers they add. An address the kernel
    already knows (EEXIST) is fine; a misaligned one is the caller's mistake."""
    if not probe_supported(paths):
        raise Unsupported(
            f"this guest's kernel has no memory probe interface ({paths.memory_probe} is missing: "
            "CONFIG_ARCH_MEMORY_PROBE is off); hot-add memory as ACPI pc-dimm instead"
        )
    size = block_size(paths)
    blocks: list[int] = []
    for address in addresses:
        if address < 0:
            raise InvalidArgument(f"memory probe address {address} is negative")
        if size and address % size:
            raise InvalidArgument(
                f"memory probe address {address:#x} is not aligned to the memory block size {size:#x}"
            )
        try:
            writer(paths.memory_probe, f"{address:#x}")
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise ResourceError(
                    f"writing {address:#x} to {paths.memory_probe} failed: "
                    f"{errno.errorcode.get(exc.errno or 0, exc.errno)} ({exc.strerror})"
                ) from exc
        if size:
            blocks.append(address // size)
    return blocks


@dataclass
class MemoryOnlining:
    """Online every offline block, and wait for the blocks ``expected()`` names to appear."""

    paths: HostPaths
    budget: Budget
    expected: Callable[[], frozenset[int]] = frozenset
    writer: AttributeWriter = _default_writer
    last_errors: dict[int, int] = field(default_factory=dict)
    brought_online: list[int] = field(default_factory=list)
    offline: set[int] = field(default_factory=set)
    missing: set[int] = field(default_factory=set)

    name = "memory"
    lingers = True  # while the loop waits for CPUs, new blocks are onlined too

    def step(self) -> bool:
        blocks = scan_blocks(self.paths)
        self.missing = set(self.expected()) - set(blocks)
        self.offline = set()
        for number in sorted(blocks):
            block = blocks[number]
            if block.state == "online":
                continue
            if not self._bring_online(block):
                self.offline.add(number)
        return not self.offline and not self.missing

    def _bring_online(self, block: BlockState) -> bool:
        path = f"{self.paths.memory_dir}/memory{block.number}/state"
        value = online_value(block)
        try:
            try:
                self.writer(path, value)
            except OSError as exc:
                if value != "online_movable" or exc.errno != errno.EINVAL:
                    raise
                # valid_zones said Movable but the kernel refused (movable_node rules): plain online
                value = "online"
                self.writer(path, value)
        except OSError as exc:
            code = exc.errno or errno.EIO
            self.last_errors[block.number] = code
            if code in FATAL:
                raise ResourceError(
                    f"cannot bring memory{block.number} online: writing {value} to {path} failed with "
                    f"{errno.errorcode.get(code, code)} ({exc.strerror})"
                ) from exc
            if code not in TRANSIENT:
                log.warning("memory%d: writing %s to %s failed: %s; will retry", block.number, value, path, exc)
            return False
        try:
            online = sysfs.read_text(path) == "online"
        except OSError:
            online = False
        if online:
            self.last_errors.pop(block.number, None)
            self.brought_online.append(block.number)
            log.info("memory%d is online (%s)", block.number, value)
        return online

    def failure(self, waited: float, rescans: int) -> ResourceError:
        parts = []
        if self.offline:
            errors = ", ".join(
                f"memory{n}: {errno.errorcode.get(code, str(code))}"
                for n, code in sorted(self.last_errors.items())
                if n in self.offline
            )
            parts.append(f"{len(self.offline)} memory blocks still offline" + (f" ({errors})" if errors else ""))
        if self.missing:
            names = ", ".join(f"memory{n}" for n in sorted(self.missing))
            parts.append(f"{len(self.missing)} probed blocks never appeared ({names})")
        return ResourceError(
            f"memory not online after waiting {waited:.1f} s ({rescans} re-scans): {'; '.join(parts)}; "
            f"{self.budget.how_to_raise()}"
        )
