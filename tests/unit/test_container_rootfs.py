"""Mount plans are data: built from a spec and a fake host tree, printed and checked without root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.container.rootfs import (
    BindDevice,
    IdmappedBind,
    Mkdir,
    Mknod,
    Mount,
    Propagate,
    Remount,
    SetAttr,
    Symlink,
    _Resolver,
    plan_rootfs,
    root_is_initramfs,
    secure_join,
)
from agent.container.spec import parse_spec
from agent.system import libc
from agent.system.mountopts import parse_mount_options
from agent.system.paths import HostPaths

SPEC: dict[str, Any] = {
    "process": {"args": ["/bin/sh"], "cwd": "/"},
    "root": {"path": "/r", "readonly": True},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755"]},
        {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "ro", "rslave"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid"]},
    ],
    "linux": {"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"], "rootfsPropagation": "rprivate"},
}


def fake_v1(root: Path) -> HostPaths:
    paths = HostPaths(root)
    cgroup_root = Path(paths.cgroup_root)
    for name in ("cpu,cpuacct", "memory", "pids"):
        (cgroup_root / name).mkdir(parents=True)
        (cgroup_root / name / "cgroup.procs").write_text("")
    (cgroup_root / "cpu").symlink_to("cpu,cpuacct")
    (cgroup_root / "unified").mkdir()
    (cgroup_root / "unified" / "cgroup.procs").write_text("")
    return paths


def test_options_split_into_flags_propagation_and_data() -> None:
    options = parse_mount_options(["nosuid", "ro", "rw", "rslave", "mode=755", "size=64k", "noexec"])
    assert options.flags == libc.MS_NOSUID | libc.MS_NOEXEC  # rw cancels ro
    assert options.propagation == libc.MS_SLAVE | libc.MS_REC
    assert options.data_text == "mode=755,size=64k"
    assert (options.attr_set, options.attr_clr, options.copy_up) == (0, 0, False)


def _spec_with_mounts(*mounts: dict[str, Any]) -> Any:
    return parse_spec({**SPEC, "mounts": list(mounts)})


def test_recursive_options_add_a_mount_setattr_after_the_mount(tmp_path: Path) -> None:
    spec = _spec_with_mounts(
        {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "rro", "rnosuid"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["rnoexec", "rslave"]},
    )
    ops = plan_rootfs(fake_v1(tmp_path), spec, Path("/r"), None, no_pivot=False).operations
    bind = ops.index(Mount("/host/data", "/data", "", libc.MS_BIND | libc.MS_REC, "", host_source=True))
    # rro is not ro: no bind remount (which would leave the mounts below writable), one setattr for all
    assert ops[bind + 1] == SetAttr("/data", libc.MOUNT_ATTR_RDONLY | libc.MOUNT_ATTR_NOSUID, 0)
    tmpfs = ops.index(Mount("tmpfs", "/run", "tmpfs", 0, ""))  # no recursive word reaches the filesystem
    assert ops[tmpfs + 1] == SetAttr("/run", libc.MOUNT_ATTR_NOEXEC, 0)
    assert ops[tmpfs + 2] == Propagate("/run", libc.MS_SLAVE | libc.MS_REC)


@pytest.mark.parametrize(
    ("words", "attr_set", "attr_clr"),
    [
        (["rro", "rrw"], 0, libc.MOUNT_ATTR_RDONLY),  # the later word wins
        (["rrw", "rro"], libc.MOUNT_ATTR_RDONLY, 0),
        (["rnodev", "rdev", "rnoexec"], libc.MOUNT_ATTR_NOEXEC, libc.MOUNT_ATTR_NODEV),
        (["rnosymfollow", "rnodiratime"], libc.MOUNT_ATTR_NOSYMFOLLOW | libc.MOUNT_ATTR_NODIRATIME, 0),
        # atime is one field: the whole field is cleared and the last word's mode set
        (["rnoatime"], libc.MOUNT_ATTR_NOATIME, libc.MOUNT_ATTR__ATIME),
        (["rnoatime", "rstrictatime"], libc.MOUNT_ATTR_STRICTATIME, libc.MOUNT_ATTR__ATIME),
        (["rnoatime", "rrelatime"], libc.MOUNT_ATTR_RELATIME, libc.MOUNT_ATTR__ATIME),
        (["rro", "rnorelatime"], libc.MOUNT_ATTR_RDONLY | libc.MOUNT_ATTR_STRICTATIME, libc.MOUNT_ATTR__ATIME),
    ],
)
def test_recursive_words_set_and_clear_mount_attributes(words: list[str], attr_set: int, attr_clr: int) -> None:
    options = parse_mount_options(words)
    assert (options.attr_set, options.attr_clr) == (attr_set, attr_clr)
    assert options.flags == 0 and options.data == ()


def test_tmpcopyup_is_a_runtime_option_for_a_tmpfs(tmp_path: Path) -> None:
    spec = _spec_with_mounts(
        {"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "mode=755"]},
        {"destination": "/mnt", "type": "bind", "source": "/host/mnt", "options": ["bind", "tmpcopyup"]},
    )
    ops = plan_rootfs(fake_v1(tmp_path), spec, Path("/r"), None, no_pivot=False).operations
    # never passed to the filesystem (tmpfs refuses words it does not know)
    assert Mount("tmpfs", "/etc", "tmpfs", 0, "mode=755", copy_up=True) in ops
    # and dropped where it means nothing, as runc does
    assert Mount("/host/mnt", "/mnt", "", libc.MS_BIND, "", host_source=True) in ops


def test_new_flag_words() -> None:
    assert parse_mount_options(["nosymfollow", "iversion", "acl"]).flags == (
        libc.MS_NOSYMFOLLOW | libc.MS_I_VERSION | libc.MS_POSIXACL
    )
    assert parse_mount_options(["nosymfollow", "symfollow", "acl", "noacl"]).flags == 0


def test_plan_for_v1_host(tmp_path: Path) -> None:
    paths = fake_v1(tmp_path)
    plan = plan_rootfs(paths, parse_spec(SPEC), Path("/r"), None, no_pivot=False)
    assert plan.rootfs == "/r"
    ops = plan.operations
    assert ops[:2] == [Mkdir("/proc"), Mount("proc", "/proc", "proc", 0, "")]
    assert Mount("tmpfs", "/dev", "tmpfs", libc.MS_NOSUID | libc.MS_STRICTATIME, "mode=755") in ops
    bind = ops.index(Mount("/host/data", "/data", "", libc.MS_BIND | libc.MS_REC, "", host_source=True))
    # a read-only bind needs a remount; the propagation comes after
    assert ops[bind + 1] == Remount("/data", libc.MS_RDONLY)
    assert ops[bind + 2] == Propagate("/data", libc.MS_SLAVE | libc.MS_REC)
    # v1: a tmpfs with one mount per hierarchy and the host's symlinks; unified is left out
    assert Mount("cgroup", "/sys/fs/cgroup/memory", "cgroup", libc.MS_RDONLY | libc.MS_NOSUID, "memory") in ops
    assert (
        Mount("cgroup", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", libc.MS_RDONLY | libc.MS_NOSUID, "cpu,cpuacct") in ops
    )
    assert Symlink("/sys/fs/cgroup/cpu", "cpu,cpuacct") in ops
    assert not [op for op in ops if isinstance(op, Mount) and "unified" in op.target]
    # /dev was mounted: default devices and links follow
    assert BindDevice(str(tmp_path / "dev" / "null"), "/dev/null") in ops
    assert Symlink("/dev/ptmx", "pts/ptmx") in ops
    assert Symlink("/dev/fd", "/proc/self/fd") in ops
    assert plan.propagation == libc.MS_PRIVATE | libc.MS_REC
    assert plan.readonly_root and plan.masked_paths == ("/proc/kcore",)
    text = plan.describe()
    assert "mount -t proc proc /proc flags=0x0 data=''" in text
    assert "ln -s cpu,cpuacct /sys/fs/cgroup/cpu" in text


def test_plan_for_v2_host(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    os.makedirs(paths.cgroup_root)
    Path(paths.cgroup_root, "cgroup.controllers").write_text("cpu memory pids\n")
    plan = plan_rootfs(paths, parse_spec(SPEC), "/r", None, no_pivot=True)
    cgroup_mounts = [op for op in plan.operations if isinstance(op, Mount) and op.target.startswith("/sys/fs/cgroup")]
    assert cgroup_mounts == [Mount("cgroup", "/sys/fs/cgroup", "cgroup2", libc.MS_RDONLY | libc.MS_NOSUID)]
    assert plan.no_pivot


def test_no_devices_without_a_dev_mount(tmp_path: Path) -> None:
    spec = dict(SPEC, mounts=[SPEC["mounts"][0]])
    plan = plan_rootfs(HostPaths(tmp_path), parse_spec(spec), Path("/r"), None, no_pivot=False)
    assert not [op for op in plan.operations if isinstance(op, BindDevice)]


def test_relative_bind_source_is_under_the_bundle(tmp_path: Path) -> None:
    spec = dict(SPEC, mounts=[{"destination": "/d", "type": "bind", "source": "data", "options": ["bind"]}])
    plan = plan_rootfs(HostPaths(tmp_path), parse_spec(spec), Path("/r"), Path("/bundle"), no_pivot=False)
    assert plan.operations[0] == Mount("/bundle/data", "/d", "", libc.MS_BIND, "", host_source=True)
    # a str bundle gives the same plan; the source is spelt plainly however the spec spelt it
    for source, bundle in (
        ("data", "/bundle"),
        ("./data/", "/bundle/"),
        ("data//", "/bundle//"),
        (".//data", "/bundle"),
    ):
        spec["mounts"][0]["source"] = source
        plan = plan_rootfs(HostPaths(tmp_path), parse_spec(spec), "/r", bundle, no_pivot=False)
        assert plan.operations[0] == Mount("/bundle/data", "/d", "", libc.MS_BIND, "", host_source=True), source


def test_idmapped_binds_carry_their_maps_or_the_containers(tmp_path: Path) -> None:
    """Mappings of the mount's own, or (idmap/ridmap alone) the container's user namespace's; rbind
    takes the mounts below along, ridmap idmaps them too; other options follow as for any bind."""
    own = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    spec = dict(SPEC, mounts=[
        {"destination": "/a", "type": "bind", "source": "/host/a", "options": ["bind", "ro"], "uidMappings": own,
         "gidMappings": [{"containerID": 5, "hostID": 7, "size": 1}, {"containerID": 6, "hostID": 900, "size": 2}]},
        {"destination": "/b", "type": "bind", "source": "/host/b", "options": ["rbind", "ridmap"]},
        {"destination": "/c", "type": "bind", "source": "/host/c", "options": ["rbind", "idmap"]},
    ])  # fmt: skip
    spec["linux"] = dict(SPEC["linux"], namespaces=[{"type": "user"}, {"type": "mount"}],
                         uidMappings=[{"containerID": 0, "hostID": 2000, "size": 10}],
                         gidMappings=[{"containerID": 0, "hostID": 3000, "size": 10}])  # fmt: skip
    parsed = parse_spec(spec)
    plan = plan_rootfs(HostPaths(tmp_path), parsed, "/r", None, no_pivot=False)
    assert plan.operations == [
        IdmappedBind("/host/a", "/a", False, False, "0 100000 65536\n", "5 7 1\n6 900 2\n"),
        Remount("/a", libc.MS_RDONLY),
        IdmappedBind("/host/b", "/b", True, True, "0 2000 10\n", "0 3000 10\n"),
        IdmappedBind("/host/c", "/c", True, False, "0 2000 10\n", "0 3000 10\n"),
    ]
    assert plan.describe()[0] == "idmapped bind /host/a /a (idmap uids '0 100000 65536' gids '5 7 1; 6 900 2')"
    assert plan.describe()[2].startswith("idmapped rbind /host/b /b (ridmap ")


def test_secure_join_keeps_symlinks_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../outside", root / "escape")
    os.symlink("etc", root / "rel")
    r = str(root)
    assert secure_join(r, "/abs/passwd") == f"{r}/etc/passwd"
    assert secure_join(r, "/escape/x") == f"{r}/outside/x"
    assert secure_join(r, "/rel/x") == f"{r}/etc/x"
    assert secure_join(r, "/../../x") == f"{r}/x"


def test_resolver_agrees_with_secure_join_and_forgets_what_changed(tmp_path: Path) -> None:
    """execute()'s resolver remembers lookups; it must give secure_join's answer for every path, and
    a new link (or a mount) below a path it resolved before must change its later answers."""
    root = tmp_path / "root"
    (root / "etc" / "ssl").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../outside", root / "escape")
    os.symlink("usr/lib", root / "lib")
    os.symlink("../etc/ssl", root / "usr" / "ssl")
    r = str(root)
    resolve = _Resolver(r)
    paths = ["/abs/passwd", "/escape/x", "/lib/x", "/usr/ssl/certs", "/usr/lib/a/b", "/../../x", "/", "",
             "/etc/./ssl//certs", "/lib/../etc", "/usr/ssl/../lib", "/missing/a/b"]  # fmt: skip
    for _ in range(2):  # the second round comes from what the resolver remembered
        assert [resolve(p) for p in paths] == [secure_join(r, p) for p in paths]
    assert resolve("/data/x") == f"{r}/data/x"
    os.symlink("/etc", root / "data")  # what execute() does for a Symlink step, then tells the resolver
    resolve.changed("/data")
    assert resolve("/data/x") == secure_join(r, "/data/x") == f"{r}/etc/x"
    assert resolve("/usr/lib/a/b") == f"{r}/usr/lib/a/b"
    os.rmdir(root / "usr" / "lib")
    os.symlink("/etc", root / "usr" / "lib")  # stands in for a mount on /usr/lib hiding what was below
    resolve.changed("usr/lib/")
    assert resolve("/usr/lib/a/b") == secure_join(r, "/usr/lib/a/b") == f"{r}/etc/a/b"
    assert resolve("/lib/x") == f"{r}/etc/x"  # through the link /lib -> usr/lib: forgotten too


def test_initramfs_root_is_detected(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    mountinfo = tmp_path / "proc" / "self" / "mountinfo"
    assert paths.mountinfo == str(mountinfo)
    assert not root_is_initramfs(paths)  # no mountinfo to read
    mountinfo.parent.mkdir(parents=True)
    mountinfo.write_text("1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n22 1 0:20 / /proc rw - proc proc rw\n")
    assert root_is_initramfs(paths)
    mountinfo.write_text("25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    assert not root_is_initramfs(paths)


def test_spec_devices_become_mknod_steps(tmp_path: Path) -> None:
    spec = dict(SPEC, linux={"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                         "fileMode": 0o20640, "uid": 5, "gid": 6}]})  # fmt: skip
    plan = plan_rootfs(HostPaths(tmp_path), parse_spec(spec), Path("/r"), None, no_pivot=False)
    assert plan.operations[-1] == Mknod("/dev/fuse", "c", 10, 229, 0o640, 5, 6)
    assert plan.describe()[-1] == "mknod -m 640 /dev/fuse c 10 229 (5:6)"


def test_cgroup_mount_in_a_user_namespace_is_read_only_binds(tmp_path: Path) -> None:
    """A user namespace may not mount a cgroup v1 hierarchy: the spec's cgroup mount becomes a tmpfs
    with a read-only bind per hierarchy (the spec's mount is "ro"), of the container's cgroup or, where
    it has none (rootless, or a hierarchy its manager does not name), of the one it inherits."""
    paths = fake_v1(tmp_path)
    proc_self = Path(paths.proc) / "self"
    proc_self.mkdir(parents=True)
    (proc_self / "cgroup").write_text("5:pids:/user.slice\n3:cpu,cpuacct:/user.slice/s\n2:memory:/m\n0::/u\n")
    root = f"{tmp_path}/sys/fs/cgroup"
    from agent.container.rootfs import cgroup_binds

    starters = cgroup_binds(paths, None)
    assert starters == {"cpu,cpuacct": f"{root}/cpu,cpuacct/user.slice/s", "memory": f"{root}/memory/m",
                        "pids": f"{root}/pids/user.slice"}  # fmt: skip
    own = cgroup_binds(paths, {"cpu": f"{root}/cpu,cpuacct/c1", "cpuacct": f"{root}/cpu,cpuacct/c1",
                               "memory": f"{root}/memory/c1"})  # fmt: skip
    # no pids cgroup of its own there: the one its process inherits (this process's), as runc shows it
    assert own == {"cpu,cpuacct": f"{root}/cpu,cpuacct/c1", "memory": f"{root}/memory/c1",
                   "pids": f"{root}/pids/user.slice"}  # fmt: skip
    spec = _spec_with_mounts({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]})
    ops = plan_rootfs(paths, spec, Path("/r"), None, no_pivot=False, cgroup_binds=own).operations
    ro = libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    bind = libc.MS_BIND | libc.MS_REC
    assert ops[: ops.index(Remount("/sys/fs/cgroup", ro)) + 1] == [
        Mkdir("/sys/fs/cgroup"),
        Mount("tmpfs", "/sys/fs/cgroup", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "mode=755"),
        Symlink("/sys/fs/cgroup/cpu", "cpu,cpuacct"),
        Mkdir("/sys/fs/cgroup/cpu,cpuacct"),
        Mount(f"{root}/cpu,cpuacct/c1", "/sys/fs/cgroup/cpu,cpuacct", "", bind, "", host_source=True),
        Remount("/sys/fs/cgroup/cpu,cpuacct", ro),
        Mkdir("/sys/fs/cgroup/memory"),
        Mount(f"{root}/memory/c1", "/sys/fs/cgroup/memory", "", bind, "", host_source=True),
        Remount("/sys/fs/cgroup/memory", ro),
        Mkdir("/sys/fs/cgroup/pids"),
        Mount(f"{root}/pids/user.slice", "/sys/fs/cgroup/pids", "", bind, "", host_source=True),
        Remount("/sys/fs/cgroup/pids", ro),
        Remount("/sys/fs/cgroup", ro),
    ]


def test_binds_or_fresh_cgroup_mounts_as_runc_chooses(tmp_path: Path) -> None:
    from agent.container.rootfs import needs_cgroup_binds

    v1 = fake_v1(tmp_path / "v1")
    assert needs_cgroup_binds(v1, in_user_ns=False, cgroup_ns=False)  # a fresh mount would show the whole tree
    assert not needs_cgroup_binds(v1, in_user_ns=False, cgroup_ns=True)  # mounted in its namespace: its own
    assert needs_cgroup_binds(v1, in_user_ns=True, cgroup_ns=True)
    v2 = HostPaths(tmp_path / "v2")
    Path(v2.cgroup_root).mkdir(parents=True)
    (Path(v2.cgroup_root) / "cgroup.controllers").write_text("pids\n")
    assert not needs_cgroup_binds(v2, in_user_ns=False, cgroup_ns=False)
    assert needs_cgroup_binds(v2, in_user_ns=True, cgroup_ns=False)
    # a writable cgroup mount in the spec gives writable binds
    spec = _spec_with_mounts({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": []})
    ops = plan_rootfs(v1, spec, Path("/r"), None, no_pivot=False, cgroup_binds={"memory": "/m"}).operations
    hardened = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    assert Remount("/sys/fs/cgroup/memory", hardened) in ops
    assert not [op for op in ops if isinstance(op, Remount) and op.flags & libc.MS_RDONLY]
