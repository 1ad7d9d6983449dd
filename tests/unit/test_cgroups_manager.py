"""Layout detection, cgroup paths and the managers on fake trees in tmp_path (no root).

The fake trees stand in for the kernel: directories and files a real cgroupfs would show are made by
the test before the manager looks (mkdir in a fake tree makes no control files).
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath

import pytest

from agent.container.cgroups import (
    V1Manager,
    V2Manager,
    container_cgroup,
    detect,
    execute,
    manager_for,
    propagate_cpuset,
)
from agent.container.cgroups.plan import Write
from agent.errors import InvalidArgument, NotFound, ResourceError, Unsupported
from agent.system.paths import HostPaths

V1_MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""

V2_MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""

V1_FILES = {
    "cpu": {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.stat": ""},
    "cpuacct": {"cpuacct.usage": "0", "cpuacct.usage_percpu": "0 0", "cpuacct.stat": "user 0\nsystem 0"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712",
        "memory.usage_in_bytes": "0",
        "memory.soft_limit_in_bytes": "9223372036854771712",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0",
        "memory.stat": "cache 0\nrss 0",
    },
    "freezer": {"freezer.state": "THAWED"},
    "pids": {"pids.max": "max", "pids.current": "0"},
}


def write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.procs").touch()
    for name, text in files.items():
        (directory / name).write_text(text)


def v1_tree(root: Path, relative: str = "pykata/c1") -> HostPaths:
    paths = HostPaths(root)
    Path(paths.mountinfo).parent.mkdir(parents=True)
    Path(paths.mountinfo).write_text(V1_MOUNTINFO)
    for controller, files in V1_FILES.items():
        base = Path(paths.cgroup_root) / controller
        write_files(base, files)
        if controller == "cpuset":
            (base / "cpuset.cpus").write_text("0-3\n")
            (base / "cpuset.mems").write_text("0\n")
        node = base
        for part in PurePosixPath(relative).parts:
            node = node / part
            write_files(node, files)
    (Path(paths.cgroup_root) / "systemd").mkdir()
    (Path(paths.cgroup_root) / "unified").mkdir()
    return paths


V2_FILES = {
    "cgroup.controllers": "cpuset cpu io memory pids",
    "cgroup.subtree_control": "",
    "cgroup.freeze": "0",
    "cgroup.events": "populated 0\nfrozen 0",
    "cpu.weight": "100",
    "cpu.max": "max 100000",
    "cpuset.cpus": "",
    "cpuset.mems": "",
    "memory.max": "max",
    "memory.low": "0",
    "memory.current": "4096",
    "pids.max": "max",
}


def v2_tree(root: Path, relative: str = "pykata/c1") -> HostPaths:
    paths = HostPaths(root)
    Path(paths.mountinfo).parent.mkdir(parents=True)
    Path(paths.mountinfo).write_text(V2_MOUNTINFO)
    node = Path(paths.cgroup_root)
    write_files(node, {"cgroup.controllers": "cpuset cpu io memory pids hugetlb", "cgroup.subtree_control": ""})
    for part in PurePosixPath(relative).parts:
        node = node / part
        write_files(node, V2_FILES)
    return paths


# --- detection and paths


def test_detect_hybrid_host_is_v1(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    layout = detect(paths)
    assert layout.version == 1
    assert layout.hybrid
    assert layout.unified == str(tmp_path / "sys/fs/cgroup/unified")
    assert layout.controllers["memory"] == str(tmp_path / "sys/fs/cgroup/memory")
    assert set(layout.controllers) == {"cpu", "cpuacct", "cpuset", "memory", "freezer", "pids"}


def test_detect_v2(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    layout = detect(paths)
    assert layout.version == 2
    assert layout.root == paths.cgroup_root == str(tmp_path / "sys/fs/cgroup")


def test_detect_combined_v1_mount(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    Path(paths.mountinfo).parent.mkdir(parents=True)
    Path(paths.mountinfo).write_text(
        "31 25 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:1 - cgroup cgroup rw,cpu,cpuacct\n"
    )
    layout = detect(paths)
    assert layout.controllers == {
        "cpu": str(tmp_path / "sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": str(tmp_path / "sys/fs/cgroup/cpu,cpuacct"),
    }
    assert not layout.hybrid


def test_detect_sees_only_the_mounts_not_hidden_by_later_ones(tmp_path: Path) -> None:
    """A tmpfs mounted over /sys/fs/cgroup after the v1 hierarchies hides them (they stay in
    mountinfo): the layout is what was mounted on that tmpfs since. A cgroup2 over the root hides all."""
    paths = v1_tree(tmp_path)
    Path(paths.mountinfo).write_text(
        V1_MOUNTINFO
        + "50 31 0:40 / /sys/fs/cgroup rw,relatime - tmpfs none rw\n"
        + "51 50 0:41 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio\n"
    )
    layout = detect(paths)
    assert layout.version == 1
    assert not layout.hybrid  # the cgroup2 at unified is hidden too
    mounted = str(tmp_path / "sys/fs/cgroup/net_cls,net_prio")
    assert layout.controllers == {"net_cls": mounted, "net_prio": mounted}
    Path(paths.mountinfo).write_text(V1_MOUNTINFO + "50 31 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert detect(paths).version == 2
    Path(paths.mountinfo).write_text(V1_MOUNTINFO + "50 25 0:40 / /sys/fs rw - tmpfs none rw\n")
    with pytest.raises(Unsupported, match="no cgroup filesystem"):
        detect(paths)  # a tmpfs over /sys/fs hides every cgroup mount below it


def test_detect_nothing_mounted(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    Path(paths.mountinfo).parent.mkdir(parents=True)
    Path(paths.mountinfo).write_text("25 30 0:23 / /sys rw - sysfs sysfs rw\n")
    with pytest.raises(Unsupported, match="no cgroup filesystem"):
        detect(paths)


def test_detect_unescapes_mount_points(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path / "a b")
    Path(paths.mountinfo).parent.mkdir(parents=True)
    Path(paths.mountinfo).write_text("31 25 0:28 / /sys/fs/cgroup/my\\040pids rw - cgroup cgroup rw,pids\n")
    assert detect(paths).controllers["pids"] == str(tmp_path / "a b/sys/fs/cgroup/my pids")


@pytest.mark.parametrize(
    ("cgroups_path", "expected"),
    [
        ("", "pykata/c1"),
        ("/pykata/c1", "pykata/c1"),
        ("kube/pod1/c1", "kube/pod1/c1"),
        ("//a//b/", "a/b"),
        ("system.slice:docker:abc", "system.slice/docker-abc.scope"),
        (":crio:abc", "system.slice/crio-abc.scope"),
        ("machine.slice::abc", "machine.slice/abc.scope"),
        (".:crio:abc", "crio-abc.scope"),
        ("-:crio:abc", "crio-abc.scope"),
        # where systemd puts a sub-slice, whether systemd makes the scope or the engine does
        ("kubepods-burstable.slice:cri:abc", "kubepods.slice/kubepods-burstable.slice/cri-abc.scope"),
        ("/a/./b", "a/b"),
    ],
)
def test_container_cgroup_paths(cgroups_path: str, expected: str) -> None:
    assert container_cgroup(cgroups_path, "c1") == expected


@pytest.mark.parametrize(
    ("cgroups_path", "cid"),
    [("/a/../b", "c1"), ("", "../x"), ("", "a/b"), ("/", "c1"), ("nodot:p:c1", "c1"), ("a--b.slice:p:c1", "c1"),
     ("system.slice:p:", "c1"), ("system.slice:p:a b", "c1")],
)  # fmt: skip
def test_container_cgroup_rejects(cgroups_path: str, cid: str) -> None:
    with pytest.raises(InvalidArgument):
        container_cgroup(cgroups_path, cid)


def test_a_slice_as_the_containers_unit_is_refused_by_name() -> None:
    with pytest.raises(Unsupported, match="slice unit"):
        container_cgroup("system.slice::k8s.slice", "c1")


# --- v1 manager


def test_v1_create_copies_cpuset_down(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    assert isinstance(manager, V1Manager)
    manager.create()
    for level in ("pykata", "pykata/c1"):
        assert (Path(paths.cgroup_root) / "cpuset" / level / "cpuset.cpus").read_text() == "0-3"
        assert (Path(paths.cgroup_root) / "cpuset" / level / "cpuset.mems").read_text() == "0"
    assert manager.cpuset_dir() == str(tmp_path / "sys/fs/cgroup/cpuset/pykata/c1")
    assert manager.directories()["memory"] == str(tmp_path / "sys/fs/cgroup/memory/pykata/c1")
    assert manager.relative == "pykata/c1"
    # cpu and cpuacct are separate hierarchies in this tree: each gets its own tasks file
    attach = manager.self_attach_files()
    assert (str(tmp_path / "sys/fs/cgroup/cpu"), "pykata/c1/tasks") in attach
    assert len(attach) == len(V1_FILES)


def test_v1_apply_writes_each_controller_dir(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    manager.apply(
        {"cpu": {"shares": 512, "quota": 20000}, "memory": {"limit": 32 << 20, "swap": 64 << 20}, "pids": {"limit": 5}}
    )
    base = Path(paths.cgroup_root)
    assert (base / "cpu/pykata/c1/cpu.shares").read_text() == "512"
    assert (base / "cpu/pykata/c1/cpu.cfs_quota_us").read_text() == "20000"
    assert (base / "memory/pykata/c1/memory.limit_in_bytes").read_text() == str(32 << 20)
    # no memory.memsw.limit_in_bytes in this tree: the optional write is skipped, not created
    assert not (base / "memory/pykata/c1/memory.memsw.limit_in_bytes").exists()
    assert (base / "pids/pykata/c1/pids.max").read_text() == "5"


def test_v1_devices_skipped_without_devices_controller(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    assert all(w.controller != "devices" for w in manager.plan({"devices": [{"allow": False, "access": "rwm"}]}))


def test_a_rootless_containers_cgroup_sets_no_device_rules(tmp_path: Path) -> None:
    from agent.container.cgroups.layout import Layout

    layout = Layout(version=1, root=str(tmp_path), controllers={"devices": str(tmp_path / "devices")})
    manager = V1Manager(HostPaths(tmp_path), layout, "pykata/c1")
    rules = {"devices": [{"allow": False, "access": "rwm"}]}
    assert [w.file for w in manager.plan(rules)] == ["devices.deny"]
    manager.skip_devices = True  # (the engine's, for a rootless container: an unprivileged user may not)
    assert manager.plan(rules) == []


def test_missing_file_names_controller_and_file(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    with pytest.raises(Unsupported, match=r"cpu .*cpu\.rt_runtime_us"):
        manager.apply({"cpu": {"realtimeRuntime": 1000}})
    assert not (Path(paths.cgroup_root) / "cpu/pykata/c1/cpu.rt_runtime_us").exists()


def test_missing_controller_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="no blkio cgroup controller"):
        execute([Write("blkio", "blkio.weight", "100")], {"cpu": tmp_path})


def test_memory_limit_below_usage_is_refused(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    (Path(paths.cgroup_root) / "memory/pykata/c1/memory.usage_in_bytes").write_text(str(40 << 20))
    manager = manager_for(paths, "/pykata/c1", "c1")
    with pytest.raises(InvalidArgument, match=r"memory\.limit .* below"):
        manager.update({"memory": {"limit": 32 << 20}})
    assert (Path(paths.cgroup_root) / "memory/pykata/c1/memory.limit_in_bytes").read_text() == "9223372036854771712"


def test_v1_freeze_and_thaw_write_freezer_state(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    manager.freeze()
    assert (Path(paths.cgroup_root) / "freezer/pykata/c1/freezer.state").read_text() == "FROZEN"
    manager.thaw()
    assert (Path(paths.cgroup_root) / "freezer/pykata/c1/freezer.state").read_text() == "THAWED"


def test_update_of_missing_cgroup_is_not_found(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    with pytest.raises(NotFound, match="pykata/other"):
        manager_for(paths, "/pykata/other", "other").update({"pids": {"limit": 3}})


def test_destroy_refuses_with_processes_and_names_them(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    (Path(paths.cgroup_root) / "freezer/pykata/c1/cgroup.procs").write_text("4242\n4343\n")
    with pytest.raises(ResourceError, match=r"\[4242, 4343\]"):
        manager.destroy()
    assert (Path(paths.cgroup_root) / "cpu/pykata/c1").is_dir()


def test_pids_are_recursive(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    write_files(Path(paths.cgroup_root) / "freezer/pykata/c1/sub", {})
    (Path(paths.cgroup_root) / "freezer/pykata/c1/cgroup.procs").write_text("10\n")
    (Path(paths.cgroup_root) / "freezer/pykata/c1/sub/cgroup.procs").write_text("7\n")
    assert manager.pids() == [7, 10]


def test_v1_stats_from_files(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    base = Path(paths.cgroup_root)
    (base / "cpuacct/pykata/c1/cpuacct.usage").write_text("5000")
    (base / "cpuacct/pykata/c1/cpuacct.usage_percpu").write_text("2000 3000 \n")
    (base / "cpu/pykata/c1/cpu.stat").write_text("nr_periods 4\nnr_throttled 2\nthrottled_time 900\n")
    (base / "memory/pykata/c1/memory.usage_in_bytes").write_text("8192")
    (base / "memory/pykata/c1/memory.stat").write_text("cache 4096\nrss 4096\n")
    (base / "pids/pykata/c1/pids.current").write_text("3")
    stats = manager_for(paths, "/pykata/c1", "c1").stats()
    assert stats.cpu_stats.cpu_usage.total_usage == 5000
    assert stats.cpu_stats.cpu_usage.percpu_usage == [2000, 3000]
    assert (stats.cpu_stats.throttling_data.periods, stats.cpu_stats.throttling_data.throttled_time) == (4, 900)
    assert stats.memory_stats.usage.usage == 8192
    assert stats.memory_stats.cache == 4096
    assert stats.memory_stats.stats == {"cache": 4096, "rss": 4096}
    assert (stats.pids_stats.current, stats.pids_stats.limit) == (3, 0)


# --- v2 manager


def test_v2_create_enables_controllers_from_the_root(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    assert isinstance(manager, V2Manager)
    manager.create()
    # a regular file takes the last write; the kernel would accumulate "+x" writes
    assert (Path(paths.cgroup_root) / "cgroup.subtree_control").read_text() == "+hugetlb"
    assert (Path(paths.cgroup_root) / "pykata/cgroup.subtree_control").read_text() == "+pids"
    assert (Path(paths.cgroup_root) / "pykata/c1/cgroup.subtree_control").read_text() == ""
    assert manager.path == str(tmp_path / "sys/fs/cgroup/pykata/c1")
    assert manager.self_attach_files() == [(str(tmp_path / "sys/fs/cgroup"), "pykata/c1/cgroup.procs")]


def test_v2_enable_controllers_writes_only_missing_offered_ones(tmp_path: Path) -> None:
    directory = tmp_path / "cg"
    write_files(directory, {"cgroup.controllers": "cpu memory pids", "cgroup.subtree_control": "cpu"})
    written = V2Manager.enable_controllers(directory, ("cpuset", "cpu", "memory", "pids"))
    assert written == ["memory", "pids"]


def test_v2_manage_root_off_leaves_root_alone(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    manager_for(paths, "/pykata/c1", "c1", manage_root=False).create()
    assert (Path(paths.cgroup_root) / "cgroup.subtree_control").read_text() == ""


def test_v2_apply_conversions_land_in_files(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    manager.apply(
        {
            "cpu": {"shares": 2048, "quota": 150000, "period": 100000, "cpus": "1"},
            "memory": {"limit": 64 << 20, "reservation": 16 << 20, "swap": -1},
            "pids": {"limit": -1},
        }
    )
    leaf = Path(paths.cgroup_root) / "pykata/c1"
    assert (leaf / "cpu.weight").read_text() == "79"
    assert (leaf / "cpu.max").read_text() == "150000 100000"
    assert (leaf / "cpuset.cpus").read_text() == "1"
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "memory.low").read_text() == str(16 << 20)
    assert not (leaf / "memory.swap.max").exists()  # "max" without swap accounting: skipped
    assert (leaf / "pids.max").read_text() == "max"


def test_v2_unified_enables_the_controller_it_names_then_writes_the_file(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    root = Path(paths.cgroup_root)
    for level in (root, root / "pykata"):
        (level / "cgroup.controllers").write_text("cpuset cpu io memory pids misc")
        (level / "cgroup.subtree_control").write_text("cpuset cpu io memory pids")
    (root / "pykata/c1/misc.max").write_text("")
    (root / "pykata/c1/cgroup.max.depth").write_text("max")
    manager = manager_for(paths, "/pykata/c1", "c1")
    manager.apply({"unified": {"misc.max": "res_a 3", "cgroup.max.depth": "2"}})
    # a regular file keeps the last write; the kernel would add misc to what is enabled
    assert (root / "cgroup.subtree_control").read_text() == "+misc"
    assert (root / "pykata/cgroup.subtree_control").read_text() == "+misc"
    assert (root / "pykata/c1/misc.max").read_text() == "res_a 3"
    assert (root / "pykata/c1/cgroup.max.depth").read_text() == "2"


def test_v2_unified_file_the_kernel_lacks_is_unsupported_by_name(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    with pytest.raises(Unsupported, match=r"cgroup controller rdma has no file rdma\.max"):
        manager_for(paths, "/pykata/c1", "c1").apply({"unified": {"rdma.max": "mlx5_0 hca_handle=1"}})


def test_v1_without_a_net_cls_hierarchy_refuses_network_limits(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    with pytest.raises(Unsupported, match=r"no net_cls cgroup controller is available here, needed for net_cls\."):
        manager_for(paths, "/pykata/c1", "c1").apply({"network": {"classID": 0x10001}})


def test_v2_real_swap_limit_without_swap_file_fails(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    with pytest.raises(Unsupported, match=r"memory\.swap\.max"):
        manager_for(paths, "", "c1").apply({"memory": {"limit": 64 << 20, "swap": 128 << 20}})


def test_v2_freeze_waits_for_frozen_event(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    leaf = Path(paths.cgroup_root) / "pykata/c1"
    manager = manager_for(paths, "", "c1")

    def kernel() -> None:  # the kernel reports "frozen 1" a little after the write
        while (leaf / "cgroup.freeze").read_text() != "1":
            threading.Event().wait(0.005)
        (leaf / "cgroup.events").write_text("populated 1\nfrozen 1\n")

    worker = threading.Thread(target=kernel)
    worker.start()
    manager.freeze(timeout=10)
    worker.join()
    assert (leaf / "cgroup.events").read_text().endswith("frozen 1\n")


def test_v2_thaw_times_out_with_a_clear_error(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    leaf = Path(paths.cgroup_root) / "pykata/c1"
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    with pytest.raises(ResourceError, match="did not thaw"):
        manager_for(paths, "", "c1").thaw(timeout=0.05)


def test_v2_stats(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    leaf = Path(paths.cgroup_root) / "pykata/c1"
    (leaf / "cpu.stat").write_text("usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 2\nthrottled_usec 3\n")
    (leaf / "memory.stat").write_text("anon 4096\nfile 8192\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    (leaf / "pids.current").write_text("2")
    (leaf / "pids.max").write_text("50")
    (leaf / "io.stat").write_text("8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n")
    stats = manager_for(paths, "", "c1").stats()
    assert stats.cpu_stats.cpu_usage.total_usage == 10_000
    assert stats.cpu_stats.cpu_usage.usage_in_usermode == 6_000
    assert stats.cpu_stats.throttling_data.throttled_time == 3_000
    assert stats.memory_stats.usage.usage == 4096
    assert stats.memory_stats.usage.limit == 2**64 - 1
    assert stats.memory_stats.usage.failcnt == 5
    assert stats.memory_stats.cache == 8192
    assert (stats.pids_stats.current, stats.pids_stats.limit) == (2, 50)
    read = [(e.op, e.value) for e in stats.blkio_stats.io_service_bytes_recursive]
    assert read == [("Read", 100), ("Write", 200), ("Discard", 0)]


def test_v2_destroy_removes_tree_bottom_up(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    leaf = Path(paths.cgroup_root) / "pykata/c1"
    # a fake cgroup directory holds regular files, which rmdir refuses: use empty dirs here
    for child in leaf.iterdir():
        child.unlink()
    (leaf / "nested").mkdir()
    manager_for(paths, "", "c1").destroy()
    assert not leaf.exists()
    assert (Path(paths.cgroup_root) / "pykata").is_dir()  # the shared parent stays


# --- cpuset propagation


def test_propagate_cpuset_v1_top_down_then_leaves(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path, "pykata/c1")
    write_files(Path(paths.cgroup_root) / "cpuset/pykata/c2", V1_FILES["cpuset"])
    base = Path(paths.cgroup_root) / "cpuset"
    written = propagate_cpuset(paths, "0-5", "0", [base / "pykata/c1", base / "pykata/c2"])
    assert written == [str(base / "pykata"), str(base / "pykata/c1"), str(base / "pykata/c2")]
    assert (base / "pykata/c2/cpuset.cpus").read_text() == "0-5"
    assert (base / "cpuset.cpus").read_text() == "0-3\n"  # the root is the kernel's


def test_propagate_cpuset_v2_skips_levels_without_cpuset(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    (Path(paths.cgroup_root) / "pykata/cpuset.cpus").unlink()
    leaf = Path(paths.cgroup_root) / "pykata/c1"
    assert propagate_cpuset(paths, "0-7", None, [leaf]) == [str(leaf)]
    assert propagate_cpuset(paths, "0-7", None, [str(leaf)]) == [str(leaf)]
    assert (leaf / "cpuset.cpus").read_text() == "0-7"


def test_propagate_cpuset_validates_first(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    leaf = Path(paths.cgroup_root) / "pykata/c1"
    with pytest.raises(InvalidArgument):
        propagate_cpuset(paths, "0-", None, [leaf])
    with pytest.raises(InvalidArgument, match="not in the cpuset hierarchy"):
        propagate_cpuset(paths, "0", None, [tmp_path / "elsewhere"])
    assert (leaf / "cpuset.cpus").read_text() == ""


def test_propagate_cpuset_failure_names_the_file_and_the_value(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path, "pykata/c1")
    leaf = Path(paths.cgroup_root) / "cpuset/pykata/c1"
    (leaf / "cpuset.cpus").unlink()
    (leaf / "cpuset.cpus").mkdir()  # what the kernel would refuse, refused here: EISDIR
    with pytest.raises(ResourceError, match=rf"cannot write '0-7' to {leaf}/cpuset.cpus \(cpuset controller\): EISDIR"):
        propagate_cpuset(paths, "0-7", None, [leaf])
    assert (Path(paths.cgroup_root) / "cpuset/pykata/cpuset.cpus").read_text() == "0-7"  # the parent came first


def test_set_cpuset_validates(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    manager = manager_for(paths, "", "c1")
    with pytest.raises(InvalidArgument):
        manager.set_cpuset("a-b")
    manager.set_cpuset("2-3", "0")
    assert (Path(paths.cgroup_root) / "pykata/c1/cpuset.cpus").read_text() == "2-3"
    assert (Path(paths.cgroup_root) / "pykata/c1/cpuset.mems").read_text() == "0"


# --- sub-cgroups (pykata-runc exec --cgroup)


def test_v1_sub_cgroups_for_every_or_one_controller(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    root = Path(paths.cgroup_root)
    manager = manager_for(paths, "/pykata/c1", "c1")
    for controller in V1_FILES:
        (root / controller / "pykata/c1/work").mkdir()
    (root / "memory/pykata/c1/hog").mkdir()
    everywhere = manager.self_attach_files({"": "work"})
    assert (str(root / "cpu"), "pykata/c1/work/tasks") in everywhere and len(everywhere) == len(V1_FILES)
    # memory to its own sub-cgroup, the rest to another
    mixed = dict(manager.self_attach_files({"memory": "hog", "": "work"}))
    assert mixed[str(root / "memory")] == "pykata/c1/hog/tasks"
    assert mixed[str(root / "pids")] == "pykata/c1/work/tasks"
    # only memory moves; the other controllers keep the container's cgroup
    only = dict(manager.self_attach_files({"memory": "hog"}))
    assert only[str(root / "memory")] == "pykata/c1/hog/tasks" and only[str(root / "pids")] == "pykata/c1/tasks"
    assert manager.self_attach_files({}) == manager.self_attach_files()


def test_v1_add_pid_to_a_sub_cgroup(tmp_path: Path) -> None:
    paths = v1_tree(tmp_path)
    root = Path(paths.cgroup_root)
    manager = manager_for(paths, "/pykata/c1", "c1")
    (root / "memory/pykata/c1/hog").mkdir()
    (root / "memory/pykata/c1/hog/cgroup.procs").write_text("")
    manager.add_pid(4242, {"memory": "hog"})
    assert (root / "memory/pykata/c1/hog/cgroup.procs").read_text() == "4242"
    assert (root / "pids/pykata/c1/cgroup.procs").read_text() == "4242"


@pytest.mark.parametrize(
    ("sub", "error", "message"),
    [
        ({"": "missing"}, NotFound, r"sub-cgroup .*/pykata/c1/missing does not exist: make it"),
        ({"": "../c2"}, InvalidArgument, "relative path below the container's cgroup"),
        ({"": "work/../../c2"}, InvalidArgument, "relative path below the container's cgroup"),
        ({"memory": "a/.."}, InvalidArgument, "relative path below the container's cgroup"),
        ({"": "/abs"}, InvalidArgument, "relative path"),
        ({"": "a/./b"}, InvalidArgument, "relative path"),
        ({"nosuch": "work"}, InvalidArgument, "no nosuch controller here"),
    ],
)
def test_v1_bad_sub_cgroups_are_refused_by_name(tmp_path: Path, sub: dict[str, str], error: type, message: str) -> None:
    manager = manager_for(v1_tree(tmp_path), "/pykata/c1", "c1")
    with pytest.raises(error, match=message):
        manager.self_attach_files(sub)


def test_v2_sub_cgroup_has_no_controller_form(tmp_path: Path) -> None:
    paths = v2_tree(tmp_path)
    manager = manager_for(paths, "/pykata/c1", "c1")
    (Path(paths.cgroup_root) / "pykata/c1/work").mkdir()
    assert manager.self_attach_files({"": "work"}) == [(str(tmp_path / "sys/fs/cgroup"), "pykata/c1/work/cgroup.procs")]
    with pytest.raises(InvalidArgument, match="cgroup v2 has one hierarchy"):
        manager.self_attach_files({"memory": "work"})
