"""OnlineCPUMem and MemHotplugByProbe in domain terms: CPU and memory onlining, then cpusets.

One ``OnlineCoordinator`` runs the online loop (agent/hotplug/online.py); a uevent subscription wakes
it when the kernel adds a CPU or a memory block. After CPUs come online the online set is written to
the cpuset of every container that asked for CPUs, ancestors first (agent/hotplug/cpuset.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.hotplug import cpu, cpuset, memory
from agent.hotplug.budget import Budget, Clock
from agent.hotplug.online import OnlineCoordinator, OnlineRequest, OnlineRun
from agent.hotplug.uevent import Subscription, Uevent, UeventListener, shared_listener
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.hotplug.cpuset import AttributeWriter
    from agent.services import Services

log = logging.getLogger(__name__)

# (paths, cpus, mems, leaf cgroup directories) -> the directories written
Propagate = Callable[[HostPaths, str, str | None, list[str]], Any]


def is_hotplug_add(event: Uevent) -> bool:
    return event.action == "add" and event.subsystem in ("cpu", "memory")


class ResourceService:
    def __init__(
        self,
        paths: HostPaths,
        config: AgentConfig,
        *,
        listener: UeventListener | None = None,
        clock: Clock | None = None,
        writer: AttributeWriter | None = None,
        cpuset_targets: Callable[[], Sequence[str | os.PathLike[str]]] | None = None,
        propagate: Propagate | None = None,
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.paths = paths
        self.config = config
        self._cpuset_targets = cpuset_targets or (lambda: [])
        self._propagate = propagate or _find_propagate()
        self.wake = threading.Event()
        extra: dict[str, Any] = {"spawn": spawn} if spawn is not None else {}
        self.coordinator = OnlineCoordinator(
            paths,
            Budget.for_cpus(config),
            Budget.for_memory(config),
            clock=clock,
            writer=writer,
            wake=self.wake,
            after_cpus=self._update_cpusets,
            **extra,
        )
        self.writer = writer
        self._subscription: Subscription | None = None
        if listener is not None:
            self._subscription = listener.subscribe(is_hotplug_add, callback=self._on_event)

    @classmethod
    def from_services(cls, services: Services) -> ResourceService:
        # Kernel uevents describe the real /sys; a service on a test tree gets none, and
        # agent.hotplug_uevents=false leaves the loop to its sysfs re-scans.
        wanted = services.config.hotplug_uevents and services.paths.root == "/"
        listener = shared_listener() if wanted else None

        def targets() -> list[str | os.PathLike[str]]:
            containers = services.built().get("containers")
            find = getattr(containers, "cpuset_targets", None)
            return list(find()) if find is not None else []

        return cls(services.paths, services.config, listener=listener, cpuset_targets=targets)

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def _on_event(self, event: Uevent) -> None:
        log.debug("uevent %s %s: waking the online loop", event.action, event.devpath)
        self.wake.set()

    # --- RPCs

    def online_cpu_mem(self, nb_cpus: int, *, wait: bool, cpu_only: bool, deadline: float | None = None) -> None:
        """Make at least ``nb_cpus`` CPUs online (in total) and, unless ``cpu_only``, every memory block."""
        self.coordinator.raise_kept()
        if nb_cpus:
            cpu.check_request(self.paths, nb_cpus)
        request = OnlineRequest(nb_cpus=nb_cpus, memory=not cpu_only)
        if request.nb_cpus == 0 and not request.memory:
            return
        self._submit(request, wait=wait, deadline=deadline)

    def mem_hotplug_by_probe(self, addresses: Sequence[int], *, deadline: float | None = None) -> None:
        """Tell the kernel about memory at ``addresses``, then online the blocks that brings."""
        self.coordinator.raise_kept()
        kwargs = {"writer": self.writer} if self.writer is not None else {}
        blocks = memory.probe(self.paths, addresses, **kwargs)
        self._submit(OnlineRequest(memory=True, memory_blocks=frozenset(blocks)), wait=True, deadline=deadline)

    def _submit(self, request: OnlineRequest, *, wait: bool, deadline: float | None) -> OnlineRun:
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return self.coordinator.submit(request, wait=wait, timeout=timeout)

    # --- guest details

    def memory_block_size(self) -> int:
        return memory.block_size(self.paths)

    def memory_probe_supported(self) -> bool:
        return memory.probe_supported(self.paths)

    # --- cpusets

    def _update_cpusets(self, online: frozenset[int]) -> None:
        leaves = [os.fspath(leaf) for leaf in self._cpuset_targets()]
        if not leaves:
            return
        cpus = cpuset.format_cpuset(online)
        log.info("cpus %s online: updating the cpusets of %d containers", cpus, len(leaves))
        self._propagate(self.paths, cpus, None, leaves)


def _find_propagate() -> Propagate:
    """The container engine's cpuset writer (agent.container.cgroups.propagate_cpuset), the agent's one."""
    from agent.container.cgroups import propagate_cpuset

    return propagate_cpuset
