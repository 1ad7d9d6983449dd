"""Widening cpusets after CPU hotplug: every ancestor from the top down, then the containers.

A v1 cpuset must stay a subset of its parent's, so the new CPUs have to reach each level above a
container before the container itself. The hierarchy roots are left out: the kernel keeps a v1 root
equal to the online CPUs, and a v2 root has no cpuset.cpus.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import InvalidArgument, Unsupported
from agent.hotplug.cpuset import parse_cpuset
from agent.system.paths import HostPaths

from .layout import Layout, detect
from .manager import execute
from .plan import Write


def _hierarchy_root(layout: Layout) -> Path:
    if layout.version == 2:
        return layout.root
    root = layout.controllers.get("cpuset")
    if root is None:
        raise Unsupported("no cpuset cgroup controller is mounted: cannot propagate cpus")
    return root


def propagation_order(root: Path, leaf_dirs: list[Path]) -> list[Path]:
    """Ancestors strictly below ``root`` from the top down (each once), then the leaves."""
    order: list[Path] = []
    for leaf in leaf_dirs:
        if leaf != root and root not in leaf.parents:
            raise InvalidArgument(f"cgroup {leaf} is not in the cpuset hierarchy at {root}")
        chain = [p for p in reversed(leaf.parents) if root in p.parents]
        for directory in chain:
            if directory not in order:
                order.append(directory)
    for leaf in leaf_dirs:
        if leaf != root and leaf not in order:
            order.append(leaf)
    return order


def propagate_cpuset(
    paths: HostPaths, cpus: str, mems: str | None, leaf_dirs: list[Path], *, layout: Layout | None = None
) -> list[Path]:
    """Write ``cpus`` (and ``mems`` when given) to the ancestors of ``leaf_dirs`` and then to them.
    On v2 only cgroups with a writable cpuset.cpus (the cpuset controller enabled) are written; on v1
    every level is. Cgroups that vanished meanwhile are skipped. Returns the directories written."""
    parse_cpuset(cpus, what="cpuset cpus")
    if mems is not None:
        parse_cpuset(mems, what="cpuset mems")
    found = layout or detect(paths)
    root = _hierarchy_root(found)
    written: list[Path] = []
    for directory in propagation_order(root, leaf_dirs):
        cpus_file = directory / "cpuset.cpus"
        if not directory.is_dir():
            continue
        if found.version == 2 and not (cpus_file.exists() and os.access(cpus_file, os.W_OK)):
            continue
        writes = [Write("cpuset", "cpuset.cpus", cpus)]
        if mems is not None:
            writes.append(Write("cpuset", "cpuset.mems", mems))
        execute(writes, {"cpuset": directory})
        written.append(directory)
    return written
