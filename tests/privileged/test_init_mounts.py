"""PID-1 mounts executed for real against a temporary root, in a private mount namespace.

The namespace dies with the child process, so nothing leaks to the host; the test asserts that too.
cgroup2 is mounted from a new cgroup namespace as well: mounted from the initial one, its options
(nsdelegate, favordynmods) would be applied to the host's one cgroup2 hierarchy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root

SCRIPT = """
import json, logging, sys
from pathlib import Path
from agent.init import boot_mounts, execute
from agent.system.paths import HostPaths
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
root = Path(sys.argv[1]); layout = sys.argv[2]
paths = HostPaths(root)
steps = boot_mounts(paths, cgroup_v1=layout == "v1", v1_controllers=("cpuset", "memory", "pids"))
if layout == "v2-refused":  # an option this kernel refuses (EINVAL) in place of favordynmods
    steps[-1] = steps[-1].replace(data="nsdelegate,pykata_no_such_option")
execute(steps)
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
    # v1 hierarchies can only be mounted from the initial cgroup namespace (or be ones the host has).
    cgroupns = [] if layout == "v1" else ["--cgroup"]
    out = subprocess.run(
        ["unshare", "-m", *cgroupns, "--propagation", "private", sys.executable, "-c", SCRIPT, str(root), layout],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    result["log"] = out.stderr
    return result  # type: ignore[no-any-return]


def _kernel_at_least(major: int, minor: int) -> bool:
    version = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    return version >= (major, minor)


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
    if _kernel_at_least(6, 0):  # favordynmods accepted: no fallback
        assert "refused options" not in str(result["log"])


def test_cgroup2_mount_falls_back_when_an_option_is_refused(tmp_path: Path) -> None:
    require_root()
    result = _run(tmp_path, "v2-refused")
    mounts = result["mounts"]
    assert isinstance(mounts, dict)
    assert mounts["/sys/fs/cgroup"] == "cgroup2"
    assert "cgroup2 refused options 'nsdelegate,pykata_no_such_option'" in str(result["log"])
    assert "mounting with 'nsdelegate'" in str(result["log"])
    assert _host_mounts_under(tmp_path) == []


@pytest.mark.skipif(not _kernel_at_least(6, 0), reason="favordynmods needs kernel 6.0")
def test_kernel_refuses_an_unknown_cgroup2_option_with_einval(tmp_path: Path) -> None:
    """What the fallback relies on: the kernel's answer to an option it does not know is EINVAL."""
    require_root()
    script = (
        "import errno, sys\n"
        "from agent.system import libc\n"
        "try:\n"
        "    libc.mount('cgroup2', sys.argv[1], 'cgroup2', 0, 'pykata_no_such_option')\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])\n"
    )
    out = subprocess.run(
        ["unshare", "-m", "--cgroup", "--propagation", "private", sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "EINVAL"
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
