"""Storage drivers against the real kernel: tmpfs, bind, local, overlayfs and ext4 on a loop device.

Every mount lives under the test's tmp_path; the fixture releases the storages and lazily unmounts
anything left below tmp_path, and loop devices are detached by the test that attached them.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import AgentError, ResourceError, Unsupported
from agent.rpc.methods.storage import get_volume_stats, storage_to_pb
from agent.rpc.pb import agent_pb2, csi_pb2
from agent.rpc.registry import CallContext
from agent.services import Services
from agent.services.storage import StorageService
from agent.storage.mountinfo import read_mountinfo
from agent.storage.types import FSGroup, Storage
from agent.system import libc
from agent.system.paths import HostPaths
from tests.conftest import require_root

PATHS = HostPaths()


CAP_SYS_RESOURCE = 24


def has_cap_sys_resource() -> bool:
    status = (Path(PATHS.proc) / "self/status").read_text()
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> CAP_SYS_RESOURCE & 1)


def mounts_under(path: Path) -> list[str]:
    return [m.mount_point for m in read_mountinfo(PATHS.mountinfo) if m.mount_point.startswith(str(path))]


def fstype_of(path: Path) -> str:
    found = [m.fstype for m in read_mountinfo(PATHS.mountinfo) if m.mount_point == str(path)]
    return found[-1] if found else ""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[StorageService]:
    require_root()
    svc = StorageService(AgentConfig(hotplug_timeout=1.0), PATHS)
    yield svc
    for owner in {o for m in svc.table.snapshot().values() for o in m.owners}:
        try:
            svc.release(owner)
        except AgentError:
            pass
    for leftover in reversed(mounts_under(tmp_path)):
        libc.umount2(leftover, libc.MNT_DETACH)


def detach_loop(device: str, image: Path, attempts: int = 50) -> None:
    """Detach the loop device. One still open (a lazy unmount finishing) is marked to go with its last
    user (the kernel's autoclear), which is enough; a device that stays attached without it, after
    trying for a while, fails the test rather than leak."""
    for _ in range(attempts):
        done = subprocess.run(["losetup", "-d", device], capture_output=True, text=True)
        listed = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE,AUTOCLEAR", device],
                                capture_output=True, text=True).stdout  # fmt: skip
        if str(image) not in listed or listed.split()[-1:] == ["1"]:
            return
        time.sleep(0.1)
    raise AssertionError(f"loop device {device} stays attached to {image}: {done.stderr.strip() or listed.strip()}")


@pytest.fixture
def loop_ext4(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield device, image
    finally:
        for leftover in reversed(mounts_under(tmp_path)):
            libc.umount2(leftover, libc.MNT_DETACH)
        detach_loop(device, image)


def test_ephemeral_tmpfs_with_size_and_refcount(service: StorageService, tmp_path: Path) -> None:
    target = tmp_path / "eph"
    storage = Storage("ephemeral", "tmpfs", str(target), options=("size=2m", "nodev"))
    assert service.mount_all([storage], "sandbox") == [str(target)]
    service.mount_all([storage], "c1")
    assert fstype_of(target) == "tmpfs"
    assert os.statvfs(target).f_blocks * os.statvfs(target).f_frsize == 2 * 1024 * 1024

    service.update_ephemeral_mounts([Storage("ephemeral", "tmpfs", str(target), options=("size=4m",))])
    assert os.statvfs(target).f_blocks * os.statvfs(target).f_frsize == 4 * 1024 * 1024

    service.release("sandbox")
    assert fstype_of(target) == "tmpfs"
    service.release("c1")
    assert mounts_under(tmp_path) == []
    assert not target.exists()


def test_read_only_bind(service: StorageService, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_text("data")
    target = tmp_path / "dst"
    service.mount_all([Storage("bind", str(source), str(target), options=("bind", "ro"))], "c1")
    assert (target / "file").read_text() == "data"
    with pytest.raises(OSError, match="Read-only"):
        (target / "new").write_text("x")
    service.release("c1")
    assert mounts_under(tmp_path) == []
    assert (source / "file").exists()


def test_bind_of_a_file(service: StorageService, tmp_path: Path) -> None:
    source = tmp_path / "resolv.conf"
    source.write_text("nameserver 10.0.0.1\n")
    target = tmp_path / "ctr" / "etc" / "resolv.conf"
    service.mount_all([Storage("bind", str(source), str(target))], "c1")
    assert target.read_text() == "nameserver 10.0.0.1\n"
    service.release("c1")
    assert mounts_under(tmp_path) == []


def test_local_directory_mode_and_group(service: StorageService, tmp_path: Path) -> None:
    target = tmp_path / "local" / "vol"
    service.mount_all([Storage("local", "local", str(target), options=("mode=0770", "fsgid=4242"))], "sandbox")
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o2770
    assert info.st_gid == 4242


def test_overlayfs(service: StorageService, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "base").write_text("lower")
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    options = (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}")
    service.mount_all([Storage("overlayfs", "overlay", str(merged), options=options)], "c1")
    assert fstype_of(merged) == "overlay"
    (merged / "new").write_text("upper")
    assert (upper / "new").read_text() == "upper"
    assert not (lower / "new").exists()
    service.release("c1")
    assert mounts_under(tmp_path) == []


def test_blk_ext4_on_a_loop_device_with_fs_group_stats_and_resize(
    service: StorageService, tmp_path: Path, loop_ext4: tuple[str, Path]
) -> None:
    device, image = loop_ext4
    target = tmp_path / "vol"
    storage = Storage("blk", device, str(target), fstype="ext4", fs_group=FSGroup(3131, "OnRootMismatch"))
    service.mount_all([storage], "c1")
    assert fstype_of(target) == "ext4"
    assert target.stat().st_gid == 3131
    assert target.stat().st_mode & stat.S_ISGID

    # GetVolumeStats through its handler, as a client sees it.
    services = Services(AgentConfig(), PATHS)
    services._built["storage"] = service
    response = get_volume_stats(
        services, agent_pb2.VolumeStatsRequest(volume_guest_path=str(target)), CallContext("ttrpc")
    )
    by_unit = {u.unit: u for u in response.usage}
    total_before = by_unit[csi_pb2.VolumeUsage.BYTES].total
    assert 20 * 1024 * 1024 < total_before <= 32 * 1024 * 1024
    assert by_unit[csi_pb2.VolumeUsage.INODES].total == os.statvfs(target).f_files

    with image.open("r+b") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["losetup", "-c", device], check=True)
    if has_cap_sys_resource():
        service.resize_volume(str(target), 0)
        assert os.statvfs(target).f_blocks * os.statvfs(target).f_frsize > total_before + 16 * 1024 * 1024
    else:
        # The ext4 resize ioctl needs CAP_SYS_RESOURCE; where it is missing the error must say so.
        with pytest.raises(ResourceError, match="CAP_SYS_RESOURCE"):
            service.resize_volume(str(target), 0)

    service.release("c1")
    assert mounts_under(tmp_path) == []


def test_all_or_nothing_with_a_real_failure(service: StorageService, tmp_path: Path) -> None:
    good = Storage("ephemeral", "tmpfs", str(tmp_path / "good"))
    bad = Storage("ephemeral", "tmpfs", str(tmp_path / "bad"), fstype="nosuchfs")
    with pytest.raises(Unsupported, match="nosuchfs"):
        service.mount_all([good, bad], "c1")
    assert mounts_under(tmp_path) == []
    assert not (tmp_path / "good").exists()


def test_storage_round_trips_through_protobuf(tmp_path: Path) -> None:
    from agent.rpc.methods.storage import storage_from_pb

    storage = Storage("9p", "kataShared", "/m", options=("nodev",), fs_group=FSGroup(9, "OnRootMismatch"))
    assert storage_from_pb(storage_to_pb(storage)) == storage


def _swaps() -> list[str]:
    """The swap areas in use (/proc/swaps' first column)."""
    return [line.split()[0] for line in Path("/proc/swaps").read_text().splitlines()[1:]]


def test_add_swap_swaps_to_the_device_at_the_pci_path(tmp_path: Path) -> None:
    require_root()
    area, not_swap = tmp_path / "swap-area", tmp_path / "plain-file"
    for path in (area, not_swap):
        path.write_bytes(bytes(8 << 20))
        path.chmod(0o600)
    subprocess.run(["mkswap", str(area)], check=True, capture_output=True)
    # a guest's sysfs: the disk at PCI path 02/01 (bridge in slot 2, the disk in its slot 1) is vdz,
    # and its device node is the swap area
    guest = tmp_path / "guest"
    devices = guest / "sys/bus/pci/devices"
    (devices / "0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    (devices / "0000:01:01.0/virtio3/block/vdz").mkdir(parents=True)
    (devices / "0000:01:02.0/virtio4/block/vdy").mkdir(parents=True)
    (guest / "dev").mkdir()
    (guest / "dev/vdz").symlink_to(area)
    (guest / "dev/vdy").symlink_to(not_swap)
    service = StorageService(AgentConfig(hotplug_timeout=1.0), HostPaths(guest))
    try:
        assert service.add_swap("02/01") == str(guest / "dev/vdz")
        assert str(area) in _swaps()
        with pytest.raises(ResourceError, match=r"vdy \(PCI path 02/02\): .*no swap area"):
            service.add_swap("02/02")
        assert str(not_swap) not in _swaps()
    finally:
        if str(area) in _swaps():
            libc.swapoff(str(area))
    assert str(area) not in _swaps()
