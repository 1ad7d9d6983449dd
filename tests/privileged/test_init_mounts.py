"""PID-1 mounts executed for real against a temporary root, in a private mount namespace.

The namespace dies with the child process, so nothing leaks to the host; the test asserts that too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, require_root

SCRIPT = """
import json, sys
from pathlib import Path
from agent.init import boot_mounts, execute
from agent.system.paths import HostPaths
root = Path(sys.argv[1]); v1 = sys.argv[2] == "v1"
paths = HostPaths(root)
execute(boot_mounts(paths, cgroup_v1=v1, v1_controllers=("cpuset", "memory", "pids")))
mounts = {}
for line in open("/proc/self/mountinfo"):
    left, right = line.split(" - ")
    target = left.split()[4]
    if target.startswith(str(root)):
        mounts[target[len(str(root)):]] = right.split()[0]
print(json.dumps({"mounts": mounts, "ptmx": (root / "dev/ptmx").readlink().as_posix(),
                  "pid1_cmdline": (root / "proc/1/cmdline").exists()}))
"""


def _run(root: Path, layout: str) -> dict[str, object]:
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT, str(root), layout],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _host_mounts_under(root: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(root) in line]


def test_unified_boot_mounts(tmp_path: Path) -> None:
    require_root()
    result = _run(tmp_path, "v2")
    assert result["mounts"] == {
        "/proc": "proc",
        "/sys": "sysfs",
        "/dev": "devtmpfs",
        "/dev/pts": "devpts",
        "/dev/shm": "tmpfs",
        "/run": "tmpfs",
        "/sys/fs/cgroup": "cgroup2",
    }
    assert result["ptmx"] == "pts/ptmx"
    assert result["pid1_cmdline"]
    assert _host_mounts_under(tmp_path) == []


def test_v1_boot_mounts_controllers(tmp_path: Path) -> None:
    require_root()
    mounts = _run(tmp_path, "v1")["mounts"]
    assert isinstance(mounts, dict)
    assert mounts["/sys/fs/cgroup"] == "tmpfs"
    assert {k: v for k, v in mounts.items() if k.startswith("/sys/fs/cgroup/")} == {
        "/sys/fs/cgroup/cpuset": "cgroup",
        "/sys/fs/cgroup/memory": "cgroup",
        "/sys/fs/cgroup/pids": "cgroup",
    }
    assert _host_mounts_under(tmp_path) == []
