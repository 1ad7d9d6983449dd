"""What a cold ``pykata-runc run`` loads: the engine's path keeps clear of the costly stdlib modules.

A cold ``pykata-runc run`` is an interpreter start, the imports, and the kernel's work. Measured on
the CI machines with ``python3.11 -S``: ``import pathlib`` alone costs about 11 ms (it brings re,
enum, functools, collections, fnmatch and urllib.parse with it), ``re`` 6 ms, ``ctypes`` 3.5 ms,
``signal`` 3.5 ms (its enums); runc's whole ``run`` of ``/bin/true`` takes about 23 ms. These tests
run the command the way the installed launcher does (``python -S``, the repository and
site-packages on sys.path) on a busybox bundle, and then list the modules that process holds.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.privileged.conftest import make_spec

# Each of these costs milliseconds at import (or brings ones that do); none is needed to run a container.
AVOIDED = (
    "pathlib",
    "re",
    "fnmatch",
    "enum",
    "signal",
    "struct",
    "ctypes",
    "collections",
    "functools",
    "typing",
    "contextlib",
    "dataclasses",
    "json",
    "importlib",
    "urllib",
    "ipaddress",
    "warnings",
    "traceback",
    "selectors",
    "socket",
    "subprocess",
    "threading",
)

PROBE = """
import os, sys
sys.path[0:0] = [{repo!r}, {site!r}]
from agent.container.cli import run_cli
code = run_cli(sys.argv[1:])
with open({report!r}, "w") as stream:
    stream.write(repr((code, sorted(sys.modules))))
os._exit(0)
"""


def _modules_after(tmp_path: Path, argv: list[str]) -> tuple[int, list[str]]:
    report = tmp_path / "modules.txt"
    probe = PROBE.format(repo=str(REPO), site=sysconfig.get_path("purelib"), report=str(report))
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe, *argv],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    code, modules = ast.literal_eval(report.read_text())
    return code, modules


def _bundle(tmp_path: Path, rootfs: Path, base: dict[str, Any], cgroups_path: str) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = make_spec(base, rootfs, ["/bin/true"], cgroups_path)
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def test_a_cold_run_imports_none_of_the_costly_modules(
    tmp_path: Path, busybox_rootfs: Path, runc_spec: dict[str, Any], cgroup_parent: str
) -> None:
    bundle = _bundle(tmp_path, busybox_rootfs, runc_spec, f"{cgroup_parent}/cold-imports")
    state = tmp_path / "state"
    container_id = f"cold-imports-{os.getpid()}"
    code, modules = _modules_after(tmp_path, ["--root", str(state), "run", "--bundle", str(bundle), container_id])
    assert code == 0
    # The run really went the engine's whole way: the create path, the container's cgroup. Its container
    # process came from a warm pair forked ahead (agent/container/warm.py), which imports the process's
    # code itself, after its fork: this process does not.
    assert "agent.container.launch" in modules
    assert "agent.container.cgroups.manager" in modules
    # Neither the container process's code nor what this spec does not ask for (no terminal, no
    # seccomp profile: runc's default spec) is loaded here.
    for module in ("init", "capabilities", "seccomp", "stdio"):
        assert f"agent.container.{module}" not in modules
    assert "termios" not in modules
    loaded = sorted({name for name in modules if name.split(".")[0] in AVOIDED})
    assert loaded == [], f"a cold run imported {loaded}"
    assert not (state / container_id).exists(), "run leaves no state behind"
