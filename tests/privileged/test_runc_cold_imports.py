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
from tests.helpers.cgroups import remove_cgroups
from tests.privileged.conftest import make_spec
from tests.privileged.runc_helpers import Runtime, alive, wait_for

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


# What a call after the create needs is the saved record and the engine's view of the container: no
# spawning (the warm pair, the launch and rootfs code, libc's bindings) and, to start the container or
# signal its init, no cgroup either (the managers, the read of the host's cgroup mounts).
SPAWNING = ("agent.container.warm", "agent.container.launch", "agent.container.rootfs", "agent.system.libc", "_ctypes")
CGROUPS = ("agent.container.cgroups.manager", "agent.container.cgroups.layout", "agent.container.cgroups.plan")


def test_start_kill_and_delete_load_only_what_they_use(tmp_path: Path, runc_spec: dict[str, Any]) -> None:
    tag = f"pykata-cold-calls-{os.getpid()}"
    runtime = Runtime(tmp_path / "state", tmp_path, runc_spec, tag)
    bundle = runtime.bundle("sleeper", ["/bin/sleep", "30"])
    container_id = runtime.new_id("sleeper")
    base = ["--root", str(runtime.root)]
    try:
        runtime("create", "--bundle", str(bundle), container_id)
        pid = runtime.saved(container_id)["pid"]

        code, started = _modules_after(tmp_path, [*base, "start", container_id])
        assert code == 0
        assert runtime.state(container_id)["status"] == "running"
        assert "agent.container.engine" in started  # the engine started it
        assert sorted(set(started) & {*SPAWNING, *CGROUPS}) == []

        code, killed = _modules_after(tmp_path, [*base, "kill", container_id, "KILL"])
        assert code == 0
        assert sorted(set(killed) & {*SPAWNING, *CGROUPS}) == []
        wait_for(lambda: not alive(pid), f"container {container_id} to end after SIGKILL")

        code, deleted = _modules_after(tmp_path, [*base, "delete", container_id])
        assert code == 0
        assert "agent.container.cgroups.manager" in deleted  # it removed the container's cgroup
        # ... without the code that writes limits
        limits = ("agent.container.cgroups.plan", "agent.container.cgroups.devices_v2", "agent.hotplug.cpuset")
        assert sorted(set(deleted) & {*SPAWNING, *limits}) == []
        assert not (runtime.root / container_id).exists()
        assert remove_cgroups(tag) == []
    finally:
        runtime("delete", "--force", container_id, check=False)
        remove_cgroups(tag)
