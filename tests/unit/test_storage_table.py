"""Refcounting, all-or-nothing and device lookup of the mount table, with a recording syscall double."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import AlreadyExists, InvalidArgument, NotFound, ResourceError, Unsupported
from agent.services.storage import StorageService
from agent.storage.table import MountTable
from agent.storage.types import Storage
from agent.storage.volume import resize_volume
from agent.system.paths import HostPaths


class RecordingSyscalls:
    """Keeps a fake mount list; ``fail_on`` makes mounting that target fail with EACCES."""

    def __init__(self, fail_on: str = "") -> None:
        self.mounted: list[str] = []
        self.calls: list[str] = []
        self.dirs: set[str] = set()
        self.fail_on = fail_on

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        self.calls.append(f"mount {source} {target}")
        if target == self.fail_on:
            raise OSError(errno.EACCES, "Permission denied", target)
        if source is not None:
            self.mounted.append(target)

    def umount(self, target: str) -> None:
        self.calls.append(f"umount {target}")
        if target not in self.mounted:
            raise OSError(errno.EINVAL, "Invalid argument", target)
        self.mounted.remove(target)

    def makedirs(self, path: str, mode: int) -> bool:
        if path in self.dirs:
            return False
        self.dirs.add(path)
        return True

    def touch(self, path: str) -> bool:
        return self.makedirs(path, 0)

    def remove_if_empty(self, path: str) -> None:
        self.dirs.discard(path)

    def chown_tree(self, path: str, gid: int, only_if_root_differs: bool) -> None:
        self.calls.append(f"chown_tree {path} {gid}")

    def chmod(self, path: str, mode: int) -> None:
        self.calls.append(f"chmod {path} {mode:o}")

    def chgrp(self, path: str, gid: int) -> None:
        self.calls.append(f"chgrp {path} {gid}")

    def swapon(self, device: str) -> None:
        self.calls.append(f"swapon {device}")
        if device == self.fail_on:
            raise OSError(errno.EINVAL, "Invalid argument", device)


def tmpfs(mount_point: str, size: str = "1m") -> Storage:
    return Storage("ephemeral", "tmpfs", mount_point, options=(f"size={size}",))


def make_table(tmp_path: Path, sys: RecordingSyscalls, timeout: float = 0.0) -> MountTable:
    return MountTable(HostPaths(tmp_path), timeout, sys)


def test_shared_storage_stays_until_its_last_user_goes(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    table = make_table(tmp_path, sys)
    assert table.mount_all([tmpfs("/shared"), tmpfs("/a")], "c1") == ["/shared", "/a"]
    assert table.mount_all([tmpfs("/shared")], "c2") == ["/shared"]
    assert sys.mounted == ["/shared", "/a"]
    view = table.get("/shared")
    assert view is not None and view.owners == {"c1", "c2"}

    assert table.release("c1") == ["/a"]
    assert sys.mounted == ["/shared"]
    assert table.release("c2") == ["/shared"]
    assert sys.mounted == [] and sys.dirs == set()
    assert table.release("c2") == []


def test_same_owner_twice_counts_once(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    table = make_table(tmp_path, sys)
    table.mount_all([tmpfs("/m")], "c1")
    table.mount_all([tmpfs("/m")], "c1")
    assert table.release("c1") == ["/m"]


def test_failure_unmounts_what_this_call_mounted_only(tmp_path: Path) -> None:
    sys = RecordingSyscalls(fail_on="/bad")
    table = make_table(tmp_path, sys)
    table.mount_all([tmpfs("/shared")], "sandbox")
    with pytest.raises(ResourceError, match=r"/bad.*Permission denied"):
        table.mount_all([tmpfs("/shared"), tmpfs("/new"), tmpfs("/bad")], "c1")
    assert sys.mounted == ["/shared"]
    assert sys.dirs == {"/shared"}
    view = table.get("/shared")
    assert view is not None and view.owners == {"sandbox"}
    assert table.get("/new") is None


def test_a_different_storage_on_a_used_mount_point_is_refused(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    table = make_table(tmp_path, sys)
    table.mount_all([tmpfs("/m", "1m")], "c1")
    with pytest.raises(AlreadyExists, match="/m"):
        table.mount_all([tmpfs("/m", "2m")], "c2")
    assert table.release("c1") == ["/m"]


def test_release_goes_innermost_first_and_reports_failures(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    table = make_table(tmp_path, sys)
    table.mount_all([tmpfs("/outer"), tmpfs("/outer/inner")], "c1")
    sys.mounted.remove("/outer")  # someone unmounted it behind our back: umount will fail
    with pytest.raises(ResourceError, match="c1"):
        table.release("c1")
    assert [c for c in sys.calls if c.startswith("umount")] == ["umount /outer/inner", "umount /outer"]
    assert table.snapshot() == {}


def pci_tree(root: Path, bridge_slot: int, slot: int, disk: str) -> None:
    devices = root / "sys/bus/pci/devices"
    bridge = devices / f"0000:00:{bridge_slot:02x}.0"
    (bridge / "pci_bus/0000:01").mkdir(parents=True)
    (devices / f"0000:01:{slot:02x}.0/virtio3/block" / disk).mkdir(parents=True)
    (root / "dev").mkdir(exist_ok=True)
    (root / "dev" / disk).touch()


def test_blk_storage_waits_for_its_device(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    table = make_table(tmp_path, sys, timeout=5.0)
    timer = threading.Timer(0.2, pci_tree, (tmp_path, 2, 1, "vdb"))
    timer.start()
    try:
        table.mount_all([Storage("blk", "02/01", "/vol", fstype="ext4")], "c1")
    finally:
        timer.join()
    view = table.get("/vol")
    assert view is not None and view.source == str(tmp_path / "dev/vdb")
    assert sys.calls[0] == f"mount {tmp_path / 'dev/vdb'} /vol"


def test_blk_storage_times_out_with_the_pci_path_in_the_message(tmp_path: Path) -> None:
    table = make_table(tmp_path, RecordingSyscalls(), timeout=0.0)
    with pytest.raises(NotFound, match=r"PCI path 02/01.*hotplug_timeout"):
        table.mount_all([Storage("blk", "02/01", "/vol", fstype="ext4")], "c1")
    with pytest.raises(InvalidArgument, match="not hexadecimal"):
        table.mount_all([Storage("blk", "zz/01", "/vol", fstype="ext4")], "c1")


def test_scsi_storage_finds_its_disk_by_target_and_lun(tmp_path: Path) -> None:
    (tmp_path / "sys/bus/scsi/devices/0:0:3:1/block/sdc").mkdir(parents=True)
    (tmp_path / "sys/class/scsi_host/host0").mkdir(parents=True)
    (tmp_path / "sys/class/scsi_host/host0/scan").write_text("")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/sdc").touch()
    sys = RecordingSyscalls()
    table = make_table(tmp_path, sys, timeout=1.0)
    table.mount_all([Storage("scsi", "3:1", "/vol", fstype="xfs")], "c1")
    view = table.get("/vol")
    assert view is not None and view.source == str(tmp_path / "dev/sdc")
    assert (tmp_path / "sys/class/scsi_host/host0/scan").read_text() == "0 3 1"


def test_resize_is_unsupported_with_a_reason(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    table = make_table(tmp_path, sys)
    table.mount_all([tmpfs("/t")], "c1")
    with pytest.raises(Unsupported, match="ephemeral"):
        resize_volume("/t", table.get("/t"), 0)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/vdb").touch()
    table.mount_all([Storage("blk", "/dev/vdb", "/x", fstype="xfs")], "c1")
    with pytest.raises(Unsupported, match="xfs"):
        resize_volume("/x", table.get("/x"), 0)
    table.mount_all([Storage("blk", "/dev/vdb", "/e", fstype="ext4")], "c1")
    with pytest.raises(Unsupported, match="resize2fs"):
        resize_volume("/e", table.get("/e"), 0, which=lambda name: None)
    with pytest.raises(NotFound):
        resize_volume("/nothing", table.get("/nothing"), 0)


def test_service_update_ephemeral_remounts_known_tmpfs_only(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    service = StorageService(AgentConfig(), HostPaths(tmp_path), sys)
    service.mount_all([tmpfs("/eph")], "sandbox")
    service.update_ephemeral_mounts([tmpfs("/eph", "8m")])
    assert sys.calls[-1] == "mount None /eph"
    with pytest.raises(NotFound, match="/other"):
        service.update_ephemeral_mounts([tmpfs("/other")])
    service.release("sandbox")
    assert sys.mounted == []


def test_stale_virtiofs_mounts_are_counted(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    mountinfo = tmp_path / "proc/self/mountinfo"
    mountinfo.parent.mkdir(parents=True)
    mountinfo.write_text(
        f"30 1 0:40 / {live} rw,relatime - virtiofs kataShared rw\n"
        f"31 1 0:41 / {tmp_path}/gone\\040dir rw - virtiofs kataShared rw\n"
        "32 1 0:5 / /dev rw - devtmpfs udev rw\n"
    )
    service = StorageService(AgentConfig(), HostPaths(tmp_path), RecordingSyscalls())
    assert service.remove_stale_virtiofs_share_mounts() == 1


def test_blk_wait_on_uevents_subscribes_first_and_unsubscribes_after(tmp_path: Path) -> None:
    from agent.hotplug.uevent import Uevent, UeventListener
    from agent.services.devicewait import UeventWaker

    listener = UeventListener(None)
    made: list[UeventWaker] = []

    def factory() -> UeventWaker:
        made.append(UeventWaker(listener, "block"))
        return made[-1]

    def plug() -> None:
        listener.inject(Uevent("add", "/devices/virtual/net/x", {"SUBSYSTEM": "net"}))
        pci_tree(tmp_path, 2, 1, "vdd")
        listener.inject(Uevent("add", "/devices/pci0000:00/0000:00:02.0/0000:01:01.0/virtio3/block/vdd",
                               {"SUBSYSTEM": "block", "DEVNAME": "vdd"}))  # fmt: skip

    sys = RecordingSyscalls()
    service = StorageService(AgentConfig(hotplug_timeout=5.0), HostPaths(tmp_path), sys, waker_factory=factory)
    timer = threading.Timer(0.1, plug)
    timer.start()
    try:
        service.mount_all([Storage("blk", "02/01", "/vol", fstype="ext4")], "c1")
    finally:
        timer.join()
    assert len(made) == 1
    assert listener._subscriptions == []
    assert sys.mounted == ["/vol"]


def test_uevent_waker_takes_only_its_subsystem() -> None:
    from agent.hotplug.uevent import Uevent, UeventListener
    from agent.services.devicewait import UeventWaker

    listener = UeventListener(None)
    waker = UeventWaker(listener, "block")
    listener.inject(Uevent("add", "/devices/virtual/net/x", {"SUBSYSTEM": "net"}))
    listener.inject(Uevent("remove", "/devices/x/block/vda", {"SUBSYSTEM": "block"}))
    listener.inject(Uevent("add", "/devices/x/block/vdb", {"SUBSYSTEM": "block"}))
    got = waker._subscription.get(timeout=0)
    assert got is not None and got.name == "vdb"
    assert waker._subscription.get(timeout=0) is None
    waker.close()


def test_add_swap_waits_for_the_device_then_swaps_to_it(tmp_path: Path) -> None:
    sys = RecordingSyscalls()
    service = StorageService(AgentConfig(hotplug_timeout=5.0), HostPaths(tmp_path), sys)
    timer = threading.Timer(0.2, pci_tree, (tmp_path, 2, 1, "vdc"))
    timer.start()
    try:
        assert service.add_swap("02/01") == str(tmp_path / "dev/vdc")
    finally:
        timer.join()
    assert sys.calls == [f"swapon {tmp_path / 'dev/vdc'}"]


def test_add_swap_errors_name_the_device_and_what_to_do(tmp_path: Path) -> None:
    pci_tree(tmp_path, 2, 1, "vdc")
    device = str(tmp_path / "dev/vdc")
    service = StorageService(AgentConfig(hotplug_timeout=0.0), HostPaths(tmp_path), RecordingSyscalls(fail_on=device))
    with pytest.raises(ResourceError, match=r"swapon .*/dev/vdc \(PCI path 02/01\): .*no swap area.*mkswap"):
        service.add_swap("02/01")
    with pytest.raises(NotFound, match=r"PCI path 03/01 did not appear"):
        service.add_swap("03/01")
    with pytest.raises(InvalidArgument, match="PCI path is empty"):
        service.add_swap("")


def test_add_swap_rpc_spells_kata_pci_paths() -> None:
    from agent.rpc.methods.storage import add_swap
    from agent.rpc.pb import agent_pb2
    from agent.rpc.registry import CallContext

    asked: list[str] = []

    class Storage_:
        def add_swap(self, pci_path: str) -> str:
            asked.append(pci_path)
            return "/dev/vdb"

    class Services_:
        storage = Storage_()

    add_swap(Services_(), agent_pb2.AddSwapRequest(PCIPath=[2, 0x1F]), CallContext("ttrpc"))  # type: ignore[arg-type]
    add_swap(Services_(), agent_pb2.AddSwapRequest(), CallContext("ttrpc"))  # type: ignore[arg-type]
    assert asked == ["02/1f", ""]
