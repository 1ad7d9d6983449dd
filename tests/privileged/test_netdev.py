"""The ioctl that brings lo up (PID 1 at boot, CreateSandbox), in a fresh network namespace."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
from agent.system import netdev
before = netdev.link_is_up("lo")
netdev.set_link_up("lo")
print(before, netdev.link_is_up("lo"))
try:
    netdev.set_link_up("pykata-nosuch0")
except OSError as exc:
    print(exc.filename, exc.errno)
"""


def test_lo_comes_up_in_a_new_namespace_and_errors_name_the_link() -> None:
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", SCRIPT], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[:2] == ["False", "True"]
    assert out[2] == "pykata-nosuch0"
    assert out[3] == "19"  # ENODEV
