"""``MemAgent``: the memcg reclaimer and the compactor, started, reconfigured and stopped together."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.memagent.compact import Compactor, max_page_order
from agent.memagent.config import (
    PAGE_REPORTING_MIN_ORDER,
    CompactConfig,
    CompactUpdate,
    MemcgConfig,
    MemcgUpdate,
)
from agent.memagent.memcg import MemcgReclaimer
from agent.memagent.periodic import PartStatus
from agent.system.paths import HostPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemAgentStatus:
    memcg: PartStatus
    compact: PartStatus


class MemAgent:
    def __init__(
        self,
        paths: HostPaths,
        memcg: MemcgConfig,
        compact: CompactConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        reclaimer: MemcgReclaimer | None = None,
        compactor: Compactor | None = None,
    ) -> None:
        self.paths = paths
        self.max_order = max_page_order(paths)
        if compact.compact_order > self.max_order:
            fallback = min(PAGE_REPORTING_MIN_ORDER, self.max_order)
            log.error(
                "mem-agent: agent.mem_agent_compact_order=%d is above this kernel's highest page order %d; using %d",
                compact.compact_order,
                self.max_order,
                fallback,
            )
            compact = dataclasses.replace(compact, compact_order=fallback)
        self.memcg = reclaimer if reclaimer is not None else MemcgReclaimer(paths, memcg, clock=clock)
        self.compact = compactor if compactor is not None else Compactor(paths, compact, clock=clock)

    def start(self) -> None:
        log.info("mem-agent starting: memcg %s, compact %s", self.memcg.config, self.compact.config)
        self.memcg.start()
        self.compact.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop both parts; True when both threads have ended."""
        memcg_ended = self.memcg.stop(timeout)
        compact_ended = self.compact.stop(timeout)
        return memcg_ended and compact_ended

    def memcg_set(self, update: MemcgUpdate) -> MemcgConfig:
        """Change the fields ``update`` sets, at once. InvalidArgument (nothing changed) for a bad value,
        Unsupported when the kernel lacks what memcg reclaim needs."""
        update.validate()
        new = self.memcg.reconfigure(update.apply)
        log.info("mem-agent memcg config: %s", new)
        return new

    def compact_set(self, update: CompactUpdate) -> CompactConfig:
        update.validate(self.max_order)
        new = self.compact.reconfigure(lambda config: update.apply(config, self.max_order))
        log.info("mem-agent compact config: %s", new)
        return new

    def status(self) -> MemAgentStatus:
        return MemAgentStatus(self.memcg.status(), self.compact.status())
