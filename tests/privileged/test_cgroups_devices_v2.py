"""devices_v2.attach on a real cgroup2 (root): the kernel loads the program, and it decides device access.

As tests/privileged/test_cgroups_v2.py, the scenario runs in a private mount namespace where a fresh
cgroup2 is mounted on /sys/fs/cgroup (on this host, the hierarchy the host sees at
/sys/fs/cgroup/unified).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root

UNIFIED = Path("/sys/fs/cgroup/unified")

SCENARIO = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from agent.container.cgroups import devices_v2
from agent.errors import ResourceError
from agent.system import libc

libc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0)
cgroup = Path("/sys/fs/cgroup") / sys.argv[1]  # a path-like, as callers may pass
cgroup.mkdir()
out = {}
try:
    rules = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]
    devices_v2.attach(cgroup, devices_v2.device_program(rules))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            (cgroup / "cgroup.procs").write_text("0")
            seen = []
            for device, mode in (("/dev/null", "wb"), ("/dev/null", "rb"), ("/dev/zero", "rb")):
                try:
                    open(device, mode).close()
                    seen.append("ok")
                except PermissionError:
                    seen.append("denied")
            code = {("ok", "ok", "denied"): 0}.get(tuple(seen), 2)
        finally:
            os._exit(code)
    out["child"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    try:
        devices_v2.attach(str(cgroup / "missing"), devices_v2.device_program(rules))
    except ResourceError as exc:
        out["missing"] = str(exc)
finally:
    cgroup.rmdir()
print(json.dumps(out))
"""


@pytest.fixture
def name() -> Iterator[str]:
    require_root()
    name = f"pykata-test-{os.getpid()}-{secrets.token_hex(3)}"
    yield name
    own = UNIFIED / name
    if own.exists():  # the scenario failed midway
        for pid in (own / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        own.rmdir()


def test_attached_program_decides_device_access(name: str) -> None:
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCENARIO, name, str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["child"] == 0, "/dev/null should open for reading and writing, /dev/zero not at all"
    assert out["missing"] == f"cannot open cgroup /sys/fs/cgroup/{name}/missing: No such file or directory"
    assert not (UNIFIED / name).exists()
