"""Widening cpusets after CPU hotplug: every ancestor from the top down, then the containers.

A v1 cpuset must stay a subset of its parent's, so the new CPUs have to reach each level above a
container before the container itself. The hierarchy roots are left out: the kernel keeps a v1 root
equal to the online CPUs, and a v2 root has no cpuset.cpus.
"""

from __future__ import annotations

import os

from agent.errors import InvalidArgument, Unsupported
from agent.hotplug.cpuset import ancestors_then_leaves, is_below, parse_cpuset
from agent.system.paths import HostPaths, normal_path

from .layout import Layout, detect
from .manager import execute
from .plan import Write

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterable


def _hierarchy_root(layout: Layout) -> str:
    if layout.version == 2:
        return layout.root
    root = layout.controllers.get("cpuset")
    if root is None:
        raise Unsupported("no cpuset cgroup controller is mounted: cannot propagate cpus")
    return root


def propagation_order(root: str, leaf_dirs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Ancestors strictly below ``root`` from the top down (each once), then the leaves."""
    leaves = [normal_path(leaf) for leaf in leaf_dirs]
    for leaf in leaves:
        if leaf != root and not is_below(leaf, root):
            raise InvalidArgument(f"cgroup {leaf} is not in the cpuset hierarchy at {root}")
    return ancestors_then_leaves([(root, leaf) for leaf in leaves])


def propagate_cpuset(
    paths: HostPaths,
    cpus: str,
    mems: str | None,
    leaf_dirs: Iterable[str | os.PathLike[str]],
    *,
    layout: Layout | None = None,
) -> list[str]:
    """Write ``cpus`` (and ``mems`` when given) to the ancestors of ``leaf_dirs`` and then to them.
    On v2 only cgroups with a writable cpuset.cpus (the cpuset controller enabled) are written; on v1
    every level is. Cgroups that vanished meanwhile are skipped. Returns the directories written."""
    parse_cpuset(cpus, what="cpuset cpus")
    if mems is not None:
        parse_cpuset(mems, what="cpuset mems")
    found = layout or detect(paths)
    root = _hierarchy_root(found)
    written: list[str] = []
    for directory in propagation_order(root, leaf_dirs):
        cpus_file = f"{directory}/cpuset.cpus"
        if not os.path.isdir(directory):
            continue
        if found.version == 2 and not (os.path.exists(cpus_file) and os.access(cpus_file, os.W_OK)):
            continue
        writes = [Write("cpuset", "cpuset.cpus", cpus)]
        if mems is not None:
            writes.append(Write("cpuset", "cpuset.mems", mems))
        execute(writes, {"cpuset": directory})
        written.append(directory)
    return written
