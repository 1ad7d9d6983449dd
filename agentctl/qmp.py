"""A small QMP client (QEMU Machine Protocol: JSON objects over a unix socket), and the two
hotplug operations agentctl offers: a CPU into a free slot, a memory DIMM, and a virtio-blk disk on a free
PCIe root port.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import InvalidArgument

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class QMPError(RuntimeError):
    """QEMU answered a command with an error."""


def parse_size(text: str) -> int:
    """Bytes in "256M", "2G", "1048576" (binary units, an optional trailing B or iB)."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in SIZE_UNITS:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = int(number, 10)
    except ValueError:
        raise InvalidArgument(f"size {text!r}: expected a number with an optional K, M, G or T") from None
    if value <= 0:
        raise InvalidArgument(f"size {text!r} must be positive")
    return value * SIZE_UNITS[unit]


class QMPClient:
    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.path)
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"{self.path}: not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{self.path}: QEMU closed the QMP socket")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command`` and return its "return" value; raises QMPError on an error reply."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                error = reply["error"]
                raise QMPError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
            return reply.get("return")


def hotplug_cpus(qmp: QMPClient, count: int = 1) -> list[str]:
    """Add ``count`` CPUs into free slots; returns the new device ids. They appear offline in the
    guest until something onlines them (the agent's OnlineCPUMem)."""
    added = []
    for _ in range(count):
        slots = qmp.execute("query-hotpluggable-cpus")
        free = [slot for slot in slots if "qom-path" not in slot]
        if not free:
            raise QMPError(f"no free CPU slot (all {len(slots)} in use; raise --max-cpus)")
        slot = sorted(free, key=lambda s: sorted(s["props"].items()))[0]
        props = slot["props"]
        device_id = "cpu-" + "-".join(str(props[k]) for k in sorted(props))
        qmp.execute("device_add", driver=slot["type"], id=device_id, **props)
        added.append(device_id)
    return added


def hotplug_memory(qmp: QMPClient, size: int) -> str:
    """Add a DIMM of ``size`` bytes; returns its device id.

    The backend is a shared memfd like the boot memory, so the vhost-user vsock back-end can map it
    too (QEMU leaves memory without an fd out of the vhost-user memory table).
    """
    taken = {dev.get("id") for dev in qmp.execute("query-memory-devices") for dev in [dev.get("data", {})]}
    index = 0
    while f"dimm{index}" in taken:
        index += 1
    backend_id, device_id = f"hotmem{index}", f"dimm{index}"
    qmp.execute("object-add", **{"qom-type": "memory-backend-memfd", "id": backend_id, "size": size, "share": True})
    try:
        qmp.execute("device_add", driver="pc-dimm", id=device_id, memdev=backend_id)
    except QMPError:
        qmp.execute("object-del", id=backend_id)
        raise
    return device_id


# The PCIe root ports the VM launcher adds for hot-plugged disks are named ROOT_PORT_PREFIX + index.
ROOT_PORT_PREFIX = "hp"


@dataclass(frozen=True)
class PluggedDisk:
    device_id: str  # the virtio-blk-pci device (device_del takes it)
    node_name: str  # the block node behind it (blockdev-del takes it)
    port: str  # the root port it sits in
    pci_path: str  # Kata's PCI path as the guest sees it: "<root port slot>/00"


def free_root_ports(pci_buses: list[dict[str, Any]], prefix: str = ROOT_PORT_PREFIX) -> list[tuple[str, int]]:
    """From a query-pci answer: (qdev id, slot) of the root ports named ``prefix``N on bus 0 that have
    nothing plugged behind them, in slot order."""
    free = []
    for bus in pci_buses:
        if bus.get("bus") != 0:
            continue
        for device in bus.get("devices", []):
            qdev_id = str(device.get("qdev_id", ""))
            bridge = device.get("pci_bridge")
            if not qdev_id.startswith(prefix) or bridge is None:
                continue
            if not bridge.get("devices"):
                free.append((qdev_id, int(device["slot"])))
    return sorted(free, key=lambda port: port[1])


def hotplug_blk(qmp: QMPClient, image: str | Path, read_only: bool = False) -> PluggedDisk:
    """Plug the raw disk image ``image`` in as a virtio-blk device on a free root port.

    The device is the only one behind its port, so its PCI path is the port's slot, then slot 00:
    what a Kata runtime puts in a blk storage's ``source`` for the agent to find the disk.
    """
    ports = free_root_ports(qmp.execute("query-pci"))
    if not ports:
        raise QMPError(
            f"no free PCIe root port named {ROOT_PORT_PREFIX}N to plug a disk into "
            "(boot with more: agentctl boot --pcie-ports N)"
        )
    port, slot = ports[0]
    node_name, device_id = f"disk-{port}", f"vblk-{port}"
    qmp.execute(
        "blockdev-add",
        **{
            "driver": "raw",
            "node-name": node_name,
            "read-only": read_only,
            "file": {"driver": "file", "filename": str(Path(image).resolve()), "read-only": read_only},
        },
    )
    try:
        qmp.execute("device_add", driver="virtio-blk-pci", id=device_id, drive=node_name, bus=port)
    except QMPError:
        qmp.execute("blockdev-del", **{"node-name": node_name})
        raise
    return PluggedDisk(device_id, node_name, port, f"{slot:02x}/00")
