"""Container cgroups on cgroup v1 and v2.

API (used by the container engine, the runtime CLI and CPU hotplug):

- ``detect(paths) -> Layout``: v2 when a cgroup2 is mounted at ``paths.cgroup_root``; v1 when
  controllers are mounted under it (``<root>/<controller>``); hybrid (v1 plus a cgroup2 at
  ``<root>/unified``) is treated as v1. Read from ``paths.mountinfo``.
- ``manager_for(paths, cgroups_path, container_id) -> CgroupManager`` for OCI ``linux.cgroupsPath``:
  ``/a/b`` and ``a/b`` both mean ``a/b`` below each hierarchy root; the systemd form
  ``slice:prefix:name`` means where systemd puts that scope (``a-b.slice:p:n`` is
  ``a.slice/a-b.slice/p-n.scope``; layout.systemd_units), made directly in cgroupfs where systemd is
  not init, and by systemd as a transient scope where it is (``systemd=None``, the agent's choice, as
  Kata's agent), or always (``systemd=True``: ``pykata-runc --systemd-cgroup``; see systemd.py);
  empty means ``pykata/<container_id>``. Methods:

  - ``create()``: mkdir in every hierarchy; v1 copies cpuset cpus/mems down to new levels; v2 enables
    cpuset, cpu, io, memory, pids, hugetlb (where offered) in each level's cgroup.subtree_control, the
    root's included unless ``manage_root=False``.
  - ``apply(resources)`` / ``update(resources)``: OCI ``linux.resources`` dict (cpu, memory, pids,
    blockIO, hugepageLimits, devices, network, rdma, unified). Validated first (``InvalidArgument``
    naming the field; a memory limit below current usage is refused), planned as data (``plan_v1`` /
    ``plan_v2`` -> ``Write`` list), then written; a missing file is ``Unsupported`` naming controller
    and file.
  - ``add_pid(pid)``, ``pids()`` (recursive), ``stats() -> CgroupStats`` (Kata's message shape),
    ``freeze()`` / ``thaw()`` (v2 cgroup.freeze + cgroup.events "frozen"; v1 freezer.state),
    ``destroy()`` (refuses with ``ResourceError`` naming remaining pids; rmdir bottom-up with EBUSY
    retries), ``cpuset_dir()``, ``set_cpuset(cpus, mems)``, ``memory_dir()``.
- ``OomWatcher(paths, callback=None)``: ``add(container_id, manager)``, ``remove(container_id)``,
  ``next_event(timeout) -> str | None``, ``close()``; one thread polls all sources (v2 memory.events
  through inotify, v1 memory.oom_control through cgroup.event_control and an eventfd).
- ``propagate_cpuset(paths, cpus, mems, leaf_dirs)``: widen cpusets after CPU hotplug, ancestors from
  the top down, then the leaves.

Conversions follow runc: v2 cpu.weight = 1 + ((shares - 2) * 9999) // 262142; cpu.max "quota period"
("max" when quota <= 0, period 100000 by default); memory.max/low from limit/reservation; OCI swap is
memory+swap, so memory.swap.max = swap - limit (-1 -> "max"); pids.max "max" when the limit is <= 0.

Device rules: v1 devices.allow/deny where a devices controller is mounted; v2 an eBPF
BPF_PROG_TYPE_CGROUP_DEVICE program (``devices_v2``): the last matching rule decides, unmatched
requests are allowed (OCI specs begin with deny-all).

``network`` is v1 only (net_cls.classid, net_prio.ifpriomap): on v2 it is refused (Unsupported), not
dropped. ``unified`` is v2 only (each key a file of the container's cgroup, written after the typed
fields; a controller it names is enabled above the container first; the files the engine manages,
cgroup.procs and the like, are refused): on v1 it is refused (InvalidArgument), as runc does.
``rdma`` writes rdma.max on both.

Not done: v2 disableOOMKiller (no such knob), kernel memory limits (deprecated; ignored).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from .cpuset import propagate_cpuset
    from .layout import Layout, container_cgroup, detect
    from .manager import CgroupManager, NoCgroup, V1Manager, V2Manager, execute, manager_for
    from .oom import OomWatcher
    from .plan import Write, plan_v1, plan_v2, validate_resources
    from .stats import CgroupStats

# Each name is imported from its module on first use, so a container start loads the manager and
# what it needs, not the OOM watcher (threads, queue), the CPU hotplug helpers or the stats types.
_HOMES = {
    "CgroupManager": "manager",
    "CgroupStats": "stats",
    "Layout": "layout",
    "NoCgroup": "manager",
    "OomWatcher": "oom",
    "V1Manager": "manager",
    "V2Manager": "manager",
    "Write": "plan",
    "container_cgroup": "layout",
    "detect": "layout",
    "execute": "manager",
    "manager_for": "manager",
    "plan_v1": "plan",
    "plan_v2": "plan",
    "propagate_cpuset": "cpuset",
    "validate_resources": "plan",
}
__all__ = [
    "CgroupManager",
    "CgroupStats",
    "Layout",
    "NoCgroup",
    "OomWatcher",
    "V1Manager",
    "V2Manager",
    "Write",
    "container_cgroup",
    "detect",
    "execute",
    "manager_for",
    "plan_v1",
    "plan_v2",
    "propagate_cpuset",
    "validate_resources",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(f"{__name__}.{home}")  # importlib.import_module, without importing importlib
    value = getattr(sys.modules[f"{__name__}.{home}"], name)
    globals()[name] = value
    return value
