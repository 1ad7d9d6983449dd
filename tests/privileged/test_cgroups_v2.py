"""Container cgroups on a real cgroup2 mount, as the guest has it (root).

The scenario runs in a private mount namespace (``unshare -m``) where a fresh cgroup2 is mounted on
/sys/fs/cgroup, so ``detect`` sees the guest's layout through the real mountinfo. On this host that
cgroup2 is the same hierarchy as /sys/fs/cgroup/unified, which offers only hugetlb at its root (the other
controllers are bound to v1), and its root's cgroup.subtree_control belongs to the host. So this covers
what the core of cgroup2 gives without controllers: create, cgroup.procs, pids, freeze/thaw through
cgroup.freeze and cgroup.events, cpu.stat usage, device rules as an attached eBPF program, destroy; and
it checks that asking for a controller the
hierarchy does not offer fails clearly. Limits (cpu.max, memory.max, pids.max) and memory.events OOM
kills on v2 are covered on fake trees in tests/unit only.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root
from tests.helpers.cgroups import run_scenario

UNIFIED = Path("/sys/fs/cgroup/unified")  # the host's view of the same hierarchy

SCENARIO = r"""
import json, os, signal, subprocess, sys, time
sys.path.insert(0, sys.argv[2])
from agent.container.cgroups import detect, manager_for
from agent.container.cgroups.stats import flat_keyed
from agent.errors import ResourceError, Unsupported
from agent.system import libc
from agent.system.paths import HostPaths

parent = sys.argv[1]
libc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0)
paths = HostPaths()
out = {"version": detect(paths).version}
manager = manager_for(paths, f"/{parent}/c1", "c1", manage_root=False)
manager.create()
out["created"] = manager.exists()

def ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

def wait_for(condition):
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)

# device rules as the kernel's eBPF program: /dev/null rw, /dev/zero read-only, nothing else
manager.apply({"devices": [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"},
]})
PROBE = (
    "import os, sys\n"
    "sys.stdin.readline()\n"
    "for path, mode in (('/dev/null', os.O_RDWR), ('/dev/zero', os.O_RDONLY), ('/dev/zero', os.O_WRONLY),"
    " ('/dev/full', os.O_RDONLY)):\n"
    "    try:\n"
    "        os.close(os.open(path, mode))\n"
    "        print('ok', flush=True)\n"
    "    except PermissionError:\n"
    "        print('denied', flush=True)\n"
)
probe = subprocess.Popen([sys.executable, "-c", PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
try:
    manager.add_pid(probe.pid)
    out["devices"] = probe.communicate(b"go\n", timeout=30)[0].decode().split()
finally:
    probe.kill()
    probe.wait()

busy = subprocess.Popen(
    [sys.executable, "-c", "import sys\nsys.stdin.readline()\nwhile True:\n    pass\n"], stdin=subprocess.PIPE
)
try:
    manager.add_pid(busy.pid)
    busy.stdin.write(b"go\n")
    busy.stdin.flush()
    out["busy"] = busy.pid
    out["pids"] = manager.pids()
    out["own_cgroup"] = open(f"/proc/{busy.pid}/cgroup").read()
    wait_for(lambda: manager.stats().cpu_stats.cpu_usage.total_usage > 0 and ticks(busy.pid) > 0)
    out["cpu_usage"] = manager.stats().cpu_stats.cpu_usage.total_usage
    manager.freeze()
    out["frozen_event"] = flat_keyed(f"{manager.path}/cgroup.events").get("frozen")
    before = ticks(busy.pid)
    time.sleep(0.3)
    out["ran_while_frozen"] = ticks(busy.pid) != before
    manager.thaw()
    out["thawed_event"] = flat_keyed(f"{manager.path}/cgroup.events").get("frozen")
    wait_for(lambda: ticks(busy.pid) > before)
    try:
        manager.apply({"pids": {"limit": 5}})
        out["pids_limit_error"] = None
    except Unsupported as exc:
        out["pids_limit_error"] = str(exc)
    try:
        manager.destroy()
        out["destroy_busy_error"] = None
    except ResourceError as exc:
        out["destroy_busy_error"] = str(exc)
finally:
    busy.kill()
    busy.wait()
wait_for(lambda: not manager.pids())
manager.destroy()
out["exists_after_destroy"] = manager.exists()
os.rmdir(f"/sys/fs/cgroup/{parent}")
print(json.dumps(out))
"""


@pytest.fixture
def parent() -> Iterator[str]:
    require_root()
    if "cgroup2" not in Path("/proc/filesystems").read_text():
        pytest.fail("the kernel has no cgroup2 filesystem")
    name = f"pykata-test-{os.getpid()}-{secrets.token_hex(3)}"
    yield name
    own = UNIFIED / name
    if own.exists():  # the scenario failed midway: kill what it started there, then remove the tree
        for procs in own.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        for current, _dirs, _files in os.walk(own, topdown=False):
            os.rmdir(current)
    assert not own.exists()


def test_v2_core_on_a_fresh_cgroup2_mount(parent: str) -> None:
    out = run_scenario(SCENARIO, parent, str(REPO))
    assert out["version"] == 2
    assert out["created"]
    assert out["pids"] == [out["busy"]]
    assert f"0::/{parent}/c1" in out["own_cgroup"]
    assert out["cpu_usage"] > 0
    assert out["devices"] == ["ok", "ok", "denied", "denied"]
    assert out["frozen_event"] == 1
    assert out["ran_while_frozen"] is False
    assert out["thawed_event"] == 0
    assert "pids" in out["pids_limit_error"] and "pids.max" in out["pids_limit_error"]
    assert str(out["busy"]) in out["destroy_busy_error"]
    assert out["exists_after_destroy"] is False
    assert not (UNIFIED / parent).exists()


ENGINE_SCENARIO = r"""
import json, os, sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from agent.container.cgroups import detect, manager_for
from agent.container.engine import Engine, PipeIO
from agent.system import libc
from agent.system.paths import HostPaths

parent, bundle = sys.argv[1], Path(sys.argv[2])
libc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0)
paths = HostPaths()
engine = Engine(paths, cgroups=lambda p, path, cid: manager_for(p, path, cid, manage_root=False))
spec = json.loads((bundle / "config.json").read_text())
spec["linux"]["cgroupsPath"] = f"/{parent}/c2"
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
spec["process"]["args"] = ["/bin/sleep", "300"]
out = {"version": detect(paths).version}
container = engine.create("v2c", spec, bundle=bundle, io=PipeIO())
try:
    container.start()
    out["init_cgroup"] = open(f"/proc/{container.init.pid}/cgroup").read()
    proc = container.exec("e", {"args": ["/bin/sleep", "300"], "cwd": "/"}, io=PipeIO())
    out["exec_cgroup"] = open(f"/proc/{proc.pid}/cgroup").read()
    out["pids"] = sorted(container.pids())
    out["expected_pids"] = sorted([container.init.pid, proc.pid])
finally:
    engine.remove("v2c", timeout=10)
    engine.close()
os.rmdir(f"/sys/fs/cgroup/{parent}")
print(json.dumps(out))
"""


def test_engine_processes_join_their_v2_cgroup_themselves(parent: str, tmp_path: Path) -> None:
    """On cgroup2 a container's init and an exec'd process move themselves into the container's cgroup
    (writing "0" to cgroup.procs) before their setup goes on: both are there, and nothing else."""
    from tests.helpers.bundle import make_bundle

    bundle = make_bundle(tmp_path / "bundle", ["/bin/true"])
    out = run_scenario(ENGINE_SCENARIO, parent, str(bundle), str(REPO))
    assert out["version"] == 2
    assert f"0::/{parent}/c2" in out["init_cgroup"]
    assert f"0::/{parent}/c2" in out["exec_cgroup"]
    assert out["pids"] == out["expected_pids"]
    assert not (UNIFIED / parent).exists()


UNIFIED_SCENARIO = r"""
import errno, json, os, sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from agent.container.cgroups import manager_for
from agent.container.engine import Engine, PipeIO
from agent.errors import InvalidArgument, Unsupported
from agent.system import libc
from agent.system.paths import HostPaths

parent, bundle = sys.argv[1], Path(sys.argv[2])
libc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0)
paths = HostPaths()
out = {}

def outcome(call):
    try:
        call()
        return "ok"
    except (InvalidArgument, Unsupported) as exc:
        return f"{type(exc).__name__}: {exc}"

def mkdir(path):
    try:
        os.mkdir(path)
        return "made"
    except OSError as exc:
        return errno.errorcode[exc.errno]

# the manager: unified keys are written to the kernel's files, and the kernel enforces them
manager = manager_for(paths, f"/{parent}/c1", "c1", manage_root=False)
manager.create()
manager.apply({"unified": {"cgroup.max.depth": "1", "cgroup.max.descendants": "1"}})
out["depth"] = open(f"{manager.path}/cgroup.max.depth").read().strip()
out["descendants"] = open(f"{manager.path}/cgroup.max.descendants").read().strip()
out["child"] = mkdir(f"{manager.path}/a")
out["grandchild"] = mkdir(f"{manager.path}/a/b")
out["second_child"] = mkdir(f"{manager.path}/x")
os.rmdir(f"{manager.path}/a")
# a controller this hierarchy does not offer, and the v1-only network limits: refused by name
out["cpu_weight"] = outcome(lambda: manager.apply({"unified": {"cpu.weight": "50"}}))
out["network"] = outcome(lambda: manager.apply({"network": {"classID": 0x100001}}))
manager.destroy()

# the engine: a spec's unified keys reach the container's cgroup; a bad key is refused before any cgroup
engine = Engine(paths, cgroups=lambda p, path, cid: manager_for(p, path, cid, manage_root=False))
spec = json.loads((bundle / "config.json").read_text())
spec["linux"]["cgroupsPath"] = f"/{parent}/c2"
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
spec["linux"]["resources"] = {"unified": {"cgroup.max.descendants": "7"}}
container = engine.create("u1", spec, bundle=bundle, io=PipeIO())
try:
    out["engine_descendants"] = open(f"/sys/fs/cgroup/{parent}/c2/cgroup.max.descendants").read().strip()
    out["init_cgroup"] = open(f"/proc/{container.init.pid}/cgroup").read()
finally:
    engine.remove("u1", timeout=10)
spec["linux"]["cgroupsPath"] = f"/{parent}/c3"
spec["linux"]["resources"] = {"unified": {"cgroup.procs": "1"}}
out["bad_key"] = outcome(lambda: engine.create("u2", spec, bundle=bundle, io=PipeIO()))
out["bad_key_cgroup_made"] = os.path.exists(f"/sys/fs/cgroup/{parent}/c3")
engine.close()
os.rmdir(f"/sys/fs/cgroup/{parent}")
print(json.dumps(out))
"""


def test_unified_keys_reach_the_kernel_and_bad_ones_are_refused(parent: str, tmp_path: Path) -> None:
    """linux.resources.unified on a real cgroup2: written after the typed fields and enforced by the
    kernel (cgroup.max.depth and cgroup.max.descendants: the core files need no controller, which is
    all this host's cgroup2 has); a controller the hierarchy does not offer, network limits (v1 only)
    and a file the engine manages are refused by name, the last before any cgroup is made."""
    from tests.helpers.bundle import make_bundle

    bundle = make_bundle(tmp_path / "bundle", ["/bin/sleep", "300"])
    out = run_scenario(UNIFIED_SCENARIO, parent, str(bundle), str(REPO))
    assert (out["depth"], out["descendants"]) == ("1", "1")
    assert out["child"] == "made"
    assert out["grandchild"] == "EAGAIN"  # deeper than cgroup.max.depth
    assert out["second_child"] == "EAGAIN"  # more than cgroup.max.descendants
    assert out["cpu_weight"].startswith("Unsupported: cgroup controller cpu has no file cpu.weight")
    assert out["network"].startswith("Unsupported: linux.resources.network: cgroup v2 has no net_cls")
    assert out["engine_descendants"] == "7"
    assert f"0::/{parent}/c2" in out["init_cgroup"]
    assert out["bad_key"] == (
        "InvalidArgument: linux.resources.unified['cgroup.procs']: "
        "cgroup.procs is the runtime's to write, not the spec's"
    )
    assert out["bad_key_cgroup_made"] is False
    assert not (UNIFIED / parent).exists()
