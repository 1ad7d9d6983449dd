"""Container cgroups on this host's real cgroup v1 hierarchies (root).

Every cgroup is made under a parent named ``pykata-test-<pid>-<random>`` in each v1 hierarchy, and
the fixture kills the processes it started (by PID) and removes that parent everywhere.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.container.cgroups import CgroupManager, OomWatcher, V1Manager, detect, manager_for
from agent.errors import InvalidArgument, ResourceError
from agent.system.paths import HostPaths
from tests.conftest import REPO, require_root
from tests.helpers.cgroups import remove_tree

PATHS = HostPaths()
# A process that waits for a line on stdin (so it can be moved into the cgroup first), then runs CODE.
GATE = "import sys\nsys.stdin.readline()\n"
BUSY = GATE + "import time\nwhile True:\n    pass\n"
SLEEP = GATE + "import time\ntime.sleep(600)\n"
HOG = GATE + "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n"
FORK_BOMB = GATE + (
    "import os, time\n"
    "ok = failed = 0\n"
    "children = []\n"
    "for _ in range(40):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except BlockingIOError:\n"
    "        failed += 1\n"
    "        continue\n"
    "    if pid == 0:\n"
    "        time.sleep(30)\n"
    "        os._exit(0)\n"
    "    ok += 1\n"
    "    children.append(pid)\n"
    "print(ok, failed, flush=True)\n"
    "for pid in children:\n"
    "    os.kill(pid, 9)\n"
    "    os.waitpid(pid, 0)\n"
)


class Cgroups:
    """The test's own parent cgroup in every v1 hierarchy, and the processes it started."""

    def __init__(self) -> None:
        self.layout = detect(PATHS)
        assert self.layout.version == 1, "these tests are for this host's cgroup v1 layout"
        self.parent = f"pykata-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def manager(self, name: str = "c1") -> CgroupManager:
        manager = manager_for(PATHS, f"/{self.parent}/{name}", name, layout=self.layout)
        assert isinstance(manager, V1Manager)
        return manager

    def start(self, code: str, manager: CgroupManager) -> subprocess.Popen[bytes]:
        """Start ``python3 -c code``, put it in ``manager``'s cgroup, then let it run."""
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.processes.append(process)
        manager.add_pid(process.pid)
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def parent_dirs(self) -> list[Path]:
        return sorted({Path(root) / self.parent for root in self.layout.controllers.values()})

    def cleanup(self) -> None:
        for process in self.processes:
            if (Path(self.layout.controllers["freezer"]) / self.parent).is_dir():
                # a frozen process cannot die: thaw everything of ours first
                for state in (Path(self.layout.controllers["freezer"]) / self.parent).rglob("freezer.state"):
                    state.write_text("THAWED")
            self.stop(process)
        for directory in self.parent_dirs():
            if directory.exists():
                remove_tree(directory)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    require_root()
    own = Cgroups()
    try:
        yield own
    finally:
        own.cleanup()
    left = [str(d) for d in own.parent_dirs() if d.exists()]
    assert not left, f"cgroups left behind: {left}"


def read(path: Path) -> str:
    return path.read_text().strip()


def cpu_ticks(pid: int) -> int:
    fields = read(Path(PATHS.proc_pid(pid)) / "stat").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_create_apply_read_back(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create()
    dirs = {name: Path(directory) for name, directory in manager.directories().items()}
    assert all(d.is_dir() for d in dirs.values())
    assert read(dirs["cpuset"] / "cpuset.cpus") == read(dirs["cpuset"].parent / "cpuset.cpus") != ""
    manager.apply(
        {
            "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "0", "mems": "0"},
            "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20},
            "pids": {"limit": 20},
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            ],
        }
    )
    assert read(dirs["cpu"] / "cpu.shares") == "512"
    assert read(dirs["cpu"] / "cpu.cfs_quota_us") == "20000"
    assert read(dirs["cpu"] / "cpu.cfs_period_us") == "100000"
    assert read(dirs["cpuset"] / "cpuset.cpus") == "0"
    assert read(dirs["memory"] / "memory.limit_in_bytes") == str(64 << 20)
    assert read(dirs["memory"] / "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert read(dirs["memory"] / "memory.soft_limit_in_bytes") == str(32 << 20)
    assert read(dirs["pids"] / "pids.max") == "20"
    assert read(dirs["devices"] / "devices.list") == "c 1:3 rwm"
    # raising the limit later writes memory+swap first (else the kernel refuses the limit)
    manager.update({"memory": {"limit": 256 << 20, "swap": 512 << 20}})
    assert read(dirs["memory"] / "memory.limit_in_bytes") == str(256 << 20)
    manager.update({"pids": {"limit": 0}})
    assert read(dirs["pids"] / "pids.max") == "max"
    manager.destroy()
    assert not any(d.exists() for d in dirs.values())


def test_destroy_removes_cgroups_made_below_the_container_one(cgroups: Cgroups) -> None:
    """A workload may make cgroups of its own below its cgroup: the kernel refuses the first rmdir
    (EBUSY) and destroy removes the tree bottom-up."""
    manager = cgroups.manager()
    manager.create()
    dirs = {name: Path(d) for name, d in manager.directories().items()}
    for directory in dirs.values():
        (directory / "inner" / "deeper").mkdir(parents=True, exist_ok=True)  # cpu and cpuacct may be one
    manager.destroy()
    assert not any(d.exists() for d in dirs.values())


def test_bad_values_are_refused_before_any_write(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create()
    before = read(Path(manager.directories()["cpu"]) / "cpu.shares")
    with pytest.raises(InvalidArgument, match=r"linux\.resources\.cpu\.cpus"):
        manager.apply({"cpu": {"shares": 256, "cpus": "0-"}})
    assert read(Path(manager.directories()["cpu"]) / "cpu.shares") == before
    manager.destroy()


def test_process_stats_pids_freeze_thaw_destroy(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create()
    busy = cgroups.start(BUSY, manager)
    assert manager.pids() == [busy.pid]
    wait_for(lambda: manager.stats().cpu_stats.cpu_usage.total_usage > 0, "cpu usage in cpuacct.usage")
    stats = manager.stats()
    assert sum(stats.cpu_stats.cpu_usage.percpu_usage) > 0
    assert stats.memory_stats.usage.usage > 0
    assert stats.pids_stats.current == 1
    wait_for(lambda: cpu_ticks(busy.pid) > 0, "the busy loop to use cpu time")

    manager.freeze()
    assert read(Path(manager.directories()["freezer"]) / "freezer.state") == "FROZEN"
    frozen_at = cpu_ticks(busy.pid)
    time.sleep(0.3)
    assert cpu_ticks(busy.pid) == frozen_at, "a frozen process kept running"
    manager.thaw()
    wait_for(lambda: cpu_ticks(busy.pid) > frozen_at, "the thawed process to run again")

    with pytest.raises(ResourceError, match=str(busy.pid)):
        manager.destroy()
    assert manager.exists()
    cgroups.stop(busy)
    wait_for(lambda: not manager.pids(), "the killed process to leave the cgroup")
    manager.destroy()
    assert not manager.exists()
    assert not any(os.path.exists(d) for d in manager.directories().values())


def test_memory_limit_below_usage_is_refused(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create()
    holder = cgroups.start(
        GATE + "data = bytearray(24 << 20)\nprint('ok', flush=True)\nimport time\ntime.sleep(600)\n", manager
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"ok\n"
    with pytest.raises(InvalidArgument, match=r"memory\.limit"):
        manager.update({"memory": {"limit": 8 << 20}})
    assert read(Path(manager.directories()["memory"]) / "memory.limit_in_bytes") != str(8 << 20)


def test_memory_hog_is_oom_killed_and_reported(cgroups: Cgroups) -> None:
    manager = cgroups.manager("hog")
    manager.create()
    manager.apply({"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    watcher = OomWatcher(PATHS)
    try:
        watcher.add("hog", manager)
        hog = cgroups.start(HOG, manager)
        assert hog.wait(timeout=60) == -signal.SIGKILL
        assert watcher.next_event(30) == "hog"
        memory = manager.stats().memory_stats
        assert memory.usage.max_usage == memory.usage.limit == 32 << 20
        watcher.remove("hog")
    finally:
        watcher.close()


def test_pids_max_stops_a_fork_bomb(cgroups: Cgroups) -> None:
    manager = cgroups.manager("bomb")
    manager.create()
    manager.apply({"pids": {"limit": 10}})
    bomb = cgroups.start(FORK_BOMB, manager)
    assert bomb.stdout is not None
    ok, failed = (int(v) for v in bomb.stdout.readline().split())
    assert bomb.wait(timeout=60) == 0
    assert ok == 9  # the bomb itself is the tenth
    assert failed == 40 - 9
    assert manager.stats().pids_stats.limit == 10


def test_set_cpuset_and_propagate(cgroups: Cgroups) -> None:
    from agent.container.cgroups import propagate_cpuset

    manager = cgroups.manager()
    manager.create()
    manager.set_cpuset("0", "0")
    assert read(Path(manager.cpuset_dir()) / "cpuset.cpus") == "0"
    online = read(Path(cgroups.layout.controllers["cpuset"]) / "cpuset.cpus")
    written = propagate_cpuset(PATHS, online, None, [manager.cpuset_dir()])
    assert written == [os.path.dirname(manager.cpuset_dir()), manager.cpuset_dir()]
    assert read(Path(manager.cpuset_dir()) / "cpuset.cpus") == online
    manager.destroy()


NETWORK_SCENARIO = r"""
import errno, json, os, signal, sys, time
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from tests.helpers.cgroups import remove_tree
from agent.container.cgroups import detect
from agent.container.engine import Engine, PipeIO
from agent.errors import InvalidArgument
from agent.system import libc
from agent.system.paths import HostPaths

parent, bundle = sys.argv[1], Path(sys.argv[2])
HIERARCHY = "/sys/fs/cgroup/net_cls,net_prio"
# this host binds net_cls and net_prio to no v1 hierarchy: in this mount namespace, a tmpfs over
# /sys/fs/cgroup with a hierarchy of their own on it, which the engine finds in mountinfo
libc.mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "mode=755")
os.mkdir(HIERARCHY)
for attempt in range(200):  # the hierarchy of an earlier run goes away asynchronously
    try:
        libc.mount("cgroup", HIERARCHY, "cgroup", 0, "net_cls,net_prio")
        break
    except OSError as exc:
        if exc.errno != errno.EBUSY or attempt == 199:
            raise
        time.sleep(0.05)
out = {}
engine = None
try:
    paths = HostPaths()
    layout = detect(paths)
    out["layout"] = [layout.version, sorted(layout.controllers)]
    engine = Engine(paths)
    spec = json.loads((bundle / "config.json").read_text())
    spec["linux"]["cgroupsPath"] = f"/{parent}/c1"
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
    spec["linux"]["resources"] = {"network": {"classID": 0x100001, "priorities": [{"name": "lo", "priority": 5}]}}
    container = engine.create("n1", spec, bundle=bundle, io=PipeIO())
    try:
        container.start()
        out["classid"] = open(f"{HIERARCHY}/{parent}/c1/net_cls.classid").read().strip()
        out["ifpriomap"] = open(f"{HIERARCHY}/{parent}/c1/net_prio.ifpriomap").read().split("\n")
        out["init_cgroup"] = open(f"/proc/{container.init.pid}/cgroup").read()
    finally:
        engine.remove("n1", timeout=10)
    spec["linux"]["cgroupsPath"] = f"/{parent}/c2"
    spec["linux"]["resources"] = {"unified": {"memory.high": "64M"}}
    try:
        engine.create("n2", spec, bundle=bundle, io=PipeIO())
        out["unified"] = "created"
    except InvalidArgument as exc:
        out["unified"] = str(exc)
    out["left"] = sorted(entry.name for entry in os.scandir(f"{HIERARCHY}/{parent}") if entry.is_dir())
finally:
    if engine is not None:
        engine.close()
    # a v1 hierarchy outlives its last mount while it has cgroups: remove ours, whatever happened
    for current, _dirs, _files in os.walk(f"{HIERARCHY}/{parent}"):
        for pid in open(f"{current}/cgroup.procs").read().split():
            os.kill(int(pid), signal.SIGKILL)
    remove_tree(f"{HIERARCHY}/{parent}")
    # a v1 hierarchy is destroyed at its last umount only if no cgroup is left below its root, dying
    # ones (whose last tasks are still being freed) included: wait for the kernel's count to be 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = {line.split()[0]: line.split()[2] for line in open("/proc/cgroups") if not line.startswith("#")}
        if counts.get("net_cls") == "1":
            break
        time.sleep(0.02)
    libc.umount2(HIERARCHY)
print(json.dumps(out))
"""


def net_cls_hierarchy() -> str:
    """The hierarchy id /proc/cgroups gives net_cls (0: the cgroup v2 one)."""
    rows = [line.split() for line in Path("/proc/cgroups").read_text().splitlines() if not line.startswith("#")]
    return next(row[1] for row in rows if row[0] == "net_cls")


def test_network_limits_land_in_net_cls_and_net_prio(tmp_path: Path) -> None:
    """linux.resources.network on a real v1 net_cls,net_prio hierarchy (mounted for the test in a private
    mount namespace: this host has none): the container's cgroup gets the class id and the interface
    priority, its init is in it; unified keys are refused on v1 and the create leaves no cgroup."""
    from tests.helpers.bundle import make_bundle
    from tests.helpers.cgroups import run_scenario

    require_root()
    bundle = make_bundle(tmp_path / "bundle", ["/bin/sleep", "300"])
    parent = f"pykata-test-{os.getpid()}-{secrets.token_hex(3)}"
    before = net_cls_hierarchy()
    out = run_scenario(NETWORK_SCENARIO, parent, str(bundle), str(REPO))
    # the hierarchy made for the test goes when its mount does (asynchronously): the host is as it was
    wait_for(lambda: net_cls_hierarchy() == before, "net_cls to be back in its hierarchy", timeout=10)
    assert out["layout"] == [1, ["net_cls", "net_prio"]]
    assert out["classid"] == str(0x100001)
    assert "lo 5" in out["ifpriomap"]
    assert f"net_cls,net_prio:/{parent}/c1" in out["init_cgroup"]
    assert out["unified"].startswith("linux.resources.unified sets cgroup v2 files")
    assert out["left"] == []
