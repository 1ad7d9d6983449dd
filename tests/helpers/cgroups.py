"""The cgroups a test made under a parent of its own (a cgroupsPath prefix such as "/pykata-test-123"),
in every hierarchy of the host: listed, and removed the deepest first; and scenarios run in a private
mount namespace, for cgroup layouts the host does not have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CGROUP_FS = Path("/sys/fs/cgroup")


def _tops(parent: str) -> list[Path]:
    """``parent`` in each hierarchy where it exists (a co-mounted controller's symlink is skipped)."""
    return [
        h / parent.strip("/")
        for h in sorted(CGROUP_FS.iterdir())
        if not h.is_symlink() and (h / parent.strip("/")).is_dir()
    ]


def cgroups_below(parent: str) -> list[Path]:
    """Every cgroup directory below ``parent``, in every hierarchy, the deepest first."""
    found = [path for top in _tops(parent) for path in top.rglob("*") if path.is_dir()]
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def remove_cgroups(parent: str) -> list[Path]:
    """Remove every cgroup below ``parent``, then ``parent``, in every hierarchy; returns the ones that
    were below it (a test left them behind). A cgroup that still holds a process stays."""
    tops = _tops(parent)
    left = cgroups_below(parent)
    for path in [*left, *tops]:
        try:
            path.rmdir()
        except OSError:
            pass
    return left


def remove_tree(directory: str | Path) -> None:
    """rmdir ``directory`` and the cgroups below it, the deepest first, each retried for a while: a
    cgroup whose last process was just killed is busy until the kernel has reaped it."""
    for current, _dirs, _files in os.walk(directory, topdown=False):
        for _ in range(200):
            try:
                os.rmdir(current)
                break
            except OSError:
                time.sleep(0.01)


def run_scenario(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` (python) in a private mount namespace (``unshare -m``), where it may mount its own
    cgroup file systems on /sys/fs/cgroup without the host seeing them; its JSON output."""
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out
