"""Storage drivers as plans: options, each driver's operations, and their validation."""

from __future__ import annotations

import pytest

from agent.errors import InvalidArgument, Unsupported
from agent.storage import plan as p
from agent.storage.drivers import plan_storage
from agent.storage.types import FSGroup, Storage
from agent.system import libc
from agent.system.mountopts import option_values, parse_mount_options


def test_options_split_into_flags_propagation_and_data() -> None:
    options = parse_mount_options(["ro,nosuid", "size=64m", "rprivate", "mode=1777"])
    assert options.flags == libc.MS_RDONLY | libc.MS_NOSUID
    assert options.propagation == libc.MS_PRIVATE | libc.MS_REC
    assert options.data == ("size=64m", "mode=1777")
    assert options.data_text == "size=64m,mode=1777"


def test_later_option_wins() -> None:
    assert parse_mount_options(["ro", "rw"]).flags & libc.MS_RDONLY == 0
    assert parse_mount_options(["exec,noexec"]).flags == libc.MS_NOEXEC


def test_option_values() -> None:
    assert option_values(["mode=0777,fsgid=10", "bare"]) == {"mode": "0777", "fsgid": "10", "bare": ""}


@pytest.mark.parametrize("driver", ["9p", "virtio-fs", "blk", "ephemeral", "bind", "overlayfs"])
def test_a_container_mount_option_is_refused_for_a_storage(driver: str) -> None:
    # rro and tmpcopyup are carried out by a runtime, not by mount(2): a storage that asks for one
    # fails, naming it, rather than being mounted without it
    source = {"blk": "/dev/vda", "bind": "/src"}.get(driver, "src")
    first = "lowerdir=/l,upperdir=/u,workdir=/w" if driver == "overlayfs" else "nodev"
    storage = Storage(driver, source, "/m", fstype="ext4", options=(first, "rro,tmpcopyup"))
    with pytest.raises(InvalidArgument, match=r"/m: options rro, tmpcopyup are a container mount's"):
        plan_storage(storage)


def test_9p_adds_virtio_transport_and_version() -> None:
    storage = Storage("9p", "kataShared", "/run/kata-containers/shared/containers", options=("nodev", "msize=8192"))
    plan = plan_storage(storage)
    assert plan[0] == p.MakeDir("/run/kata-containers/shared/containers")
    mount = plan[1]
    assert isinstance(mount, p.Mount)
    assert (mount.source, mount.fstype, mount.flags) == ("kataShared", "9p", libc.MS_NODEV)
    assert mount.data == "msize=8192,trans=virtio,version=9p2000.L"


def test_9p_keeps_the_clients_transport_and_version() -> None:
    storage = Storage("9p", "tag", "/m", options=("trans=fd,version=9p2000.u",))
    mount = plan_storage(storage)[1]
    assert isinstance(mount, p.Mount)
    assert mount.data == "trans=fd,version=9p2000.u"


def test_virtiofs_plan_needs_no_device() -> None:
    plan = plan_storage(Storage("virtio-fs", "kataShared", "/run/kata-containers/shared/containers/", options=("ro",)))
    assert p.describe(plan).splitlines() == [
        "mkdir -p -m 755 /run/kata-containers/shared/containers",
        "mount kataShared /run/kata-containers/shared/containers -t virtiofs flags=MS_RDONLY",
    ]


def test_blk_mounts_the_resolved_device_and_needs_fstype() -> None:
    storage = Storage("blk", "02/01", "/vol", fstype="ext4", options=("noatime", "errors=remount-ro"))
    plan = plan_storage(storage, "/dev/vdb")
    assert plan[1] == p.Mount("/dev/vdb", "/vol", "ext4", libc.MS_NOATIME, "errors=remount-ro")
    with pytest.raises(InvalidArgument, match="fstype"):
        plan_storage(Storage("blk", "02/01", "/vol"), "/dev/vdb")


def test_fs_group_applies_unless_read_only() -> None:
    group = FSGroup(1234, "OnRootMismatch")
    plan = plan_storage(Storage("blk", "02/01", "/vol", fstype="ext4", fs_group=group), "/dev/vdb")
    assert plan[-1] == p.SetFsGroup("/vol", 1234, only_if_root_differs=True)
    read_only = Storage("blk", "02/01", "/vol", fstype="ext4", options=("ro",), fs_group=group)
    assert not any(isinstance(op, p.SetFsGroup) for op in plan_storage(read_only, "/dev/vdb"))


def test_ephemeral_is_tmpfs_and_fsgid_is_not_passed_to_the_kernel() -> None:
    storage = Storage(
        "ephemeral", "tmpfs", "/run/kata-containers/sandbox/ephemeral/cache", options=("size=1m", "fsgid=7")
    )
    plan = plan_storage(storage)
    mount = plan[1]
    assert isinstance(mount, p.Mount)
    assert (mount.fstype, mount.data) == ("tmpfs", "size=1m")
    assert p.SetGroup("/run/kata-containers/sandbox/ephemeral/cache", 7) in plan


def test_local_is_a_directory_with_mode_and_group() -> None:
    plan = plan_storage(Storage("local", "local", "/run/x/local/vol", options=("mode=0777",)))
    assert plan == [p.MakeDir("/run/x/local/vol"), p.SetMode("/run/x/local/vol", 0o777)]
    with_group = plan_storage(Storage("local", "local", "/l", options=("mode=0770", "fsgid=5")))
    assert with_group == [p.MakeDir("/l"), p.SetGroup("/l", 5), p.SetMode("/l", 0o2770)]
    with pytest.raises(InvalidArgument, match="octal"):
        plan_storage(Storage("local", "local", "/l", options=("mode=rwx",)))


def test_overlayfs_creates_upper_and_work_dirs() -> None:
    storage = Storage(
        "overlayfs",
        "overlay",
        "/merged",
        options=("lowerdir=/a:/b", "upperdir=/u", "workdir=/w"),
        driver_options=("io.katacontainers.volume.overlayfs.create_directory=/extra",),
    )
    assert p.describe(plan_storage(storage)).splitlines() == [
        "mkdir -p -m 755 /extra",
        "mkdir -p -m 755 /u",
        "mkdir -p -m 755 /w",
        "mkdir -p -m 755 /merged",
        "mount overlay /merged -t overlay flags=0 data=lowerdir=/a:/b,upperdir=/u,workdir=/w",
    ]
    with pytest.raises(InvalidArgument, match="lowerdir"):
        plan_storage(Storage("overlayfs", "overlay", "/merged", options=("upperdir=/u",)))


def test_read_only_bind_is_bind_then_remount() -> None:
    plan = plan_storage(Storage("bind", "/src", "/dst", options=("rbind", "ro", "nosuid")))
    assert plan[1] == p.Mount("/src", "/dst", "", libc.MS_BIND | libc.MS_REC)
    assert plan[2] == p.Remount("/dst", libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | libc.MS_NOSUID)


def test_bind_of_a_file_creates_a_file_target() -> None:
    plan = plan_storage(Storage("bind", "/etc/hosts", "/dst/hosts"), source_is_dir=False)
    assert plan[0] == p.MakeFile("/dst/hosts")


@pytest.mark.parametrize("mount_point", ["relative/path", "/a/../etc"])
def test_mount_point_must_be_absolute_and_plain(mount_point: str) -> None:
    with pytest.raises(InvalidArgument, match="mount point"):
        plan_storage(Storage("ephemeral", "tmpfs", mount_point))


def test_unknown_driver_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="nvdimm"):
        plan_storage(Storage("nvdimm", "/dev/pmem0", "/m"))
