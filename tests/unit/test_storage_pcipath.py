"""PCI paths to sysfs directories on a fake tree, and the bounded wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InvalidArgument, NotFound
from agent.system.paths import HostPaths
from agent.system.pcipath import device_children, parse_pci_path, pci_device_dir, wait_for


def test_parse_pci_path() -> None:
    assert parse_pci_path("02") == (2,)
    assert parse_pci_path("02/1f") == (2, 0x1F)
    for bad in ("", "02/", "20", "0x2", "002", "g1"):
        with pytest.raises(InvalidArgument):
            parse_pci_path(bad)


def test_root_bus_device(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    (Path(paths.pci_devices) / "0000:00:05.0/net/eth1").mkdir(parents=True)
    device = pci_device_dir(paths, "05")
    assert device == str(tmp_path / "sys/bus/pci/devices/0000:00:05.0")
    assert device_children(device, "net") == [f"{device}/net/eth1"]


def test_device_behind_two_bridges(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    (Path(paths.pci_devices) / "0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    (Path(paths.pci_devices) / "0000:01:03.0/pci_bus/0000:07").mkdir(parents=True)
    (Path(paths.pci_devices) / "0000:07:01.0/virtio4/block/vdc").mkdir(parents=True)
    device = pci_device_dir(paths, "02/03/01")
    assert device == str(tmp_path / "sys/bus/pci/devices/0000:07:01.0")
    assert device_children(device, "block") == [f"{device}/virtio4/block/vdc"]
    assert pci_device_dir(paths, "02/04/01") is None
    assert pci_device_dir(paths, "03/01") is None


def test_wait_for_uses_the_waker_and_gives_up_at_the_deadline() -> None:
    now = [0.0]
    found: list[str] = []

    class Waker:
        def wait(self, timeout: float) -> None:
            now[0] += 1.0
            if now[0] >= 3.0:
                found.append("vdb")

    assert wait_for(lambda: found[0] if found else None, 10.0, "disk", Waker(), clock=lambda: now[0]) == "vdb"
    with pytest.raises(NotFound, match="disk at 09 did not appear within 2 s"):
        wait_for(lambda: None, 2.0, "disk at 09", Waker(), clock=lambda: now[0])
