"""The memory agent as a service: started at boot with ``agent.mem_agent_enable``, changed by
MemAgentMemcgSet and MemAgentCompactSet (only the fields a request sets), stopped with the agent.

Without ``agent.mem_agent_enable`` Kata's agent answers both calls with an error ("mem-agent is
disabled"); so do we, as FAILED_PRECONDITION naming the option.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent import metrics
from agent.config import AgentConfig
from agent.errors import IncorrectState
from agent.memagent import CompactConfig, CompactUpdate, MemAgent, MemAgentStatus, MemcgConfig, MemcgUpdate
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

NOT_ENABLED = "mem-agent is disabled: the guest was booted without agent.mem_agent_enable"


def boot_configs(config: AgentConfig) -> tuple[MemcgConfig, CompactConfig]:
    """The two parts' settings from the ``agent.mem_agent_*`` options."""
    memcg = MemcgConfig(
        disabled=config.mem_agent_memcg_disable,
        swap=config.mem_agent_memcg_swap,
        swappiness_max=config.mem_agent_memcg_swappiness_max,
        period_secs=config.mem_agent_memcg_period_secs,
        period_psi_percent_limit=config.mem_agent_memcg_period_psi_percent_limit,
        eviction_psi_percent_limit=config.mem_agent_memcg_eviction_psi_percent_limit,
        eviction_run_aging_count_min=config.mem_agent_memcg_eviction_run_aging_count_min,
    )
    compact = CompactConfig(
        disabled=config.mem_agent_compact_disable,
        period_secs=config.mem_agent_compact_period_secs,
        period_psi_percent_limit=config.mem_agent_compact_period_psi_percent_limit,
        compact_psi_percent_limit=config.mem_agent_compact_psi_percent_limit,
        compact_sec_max=config.mem_agent_compact_sec_max,
        compact_order=config.mem_agent_compact_order,
        compact_threshold=config.mem_agent_compact_threshold,
        compact_force_times=config.mem_agent_compact_force_times,
    )
    return memcg, compact


class MemAgentService:
    def __init__(
        self,
        config: AgentConfig,
        paths: HostPaths,
        make_agent: Callable[[HostPaths, MemcgConfig, CompactConfig], MemAgent] = MemAgent,
    ) -> None:
        self.enabled = config.mem_agent_enable
        self._config = config
        self._paths = paths
        self._make_agent = make_agent
        self._lock = threading.Lock()
        self._agent: MemAgent | None = None
        self._closed = False

    @classmethod
    def from_services(cls, services: Services) -> MemAgentService:
        return cls(services.config, services.paths)

    def start(self) -> None:
        """Start the mem-agent if the guest was booted with it (idempotent)."""
        self._running()

    def _running(self) -> MemAgent | None:
        if not self.enabled:
            return None
        with self._lock:
            if self._closed:
                return None
            if self._agent is None:
                memcg, compact = boot_configs(self._config)
                agent = self._make_agent(self._paths, memcg, compact)
                agent.start()
                self._agent = agent
            return self._agent

    def _required(self) -> MemAgent:
        agent = self._running()
        if agent is None:
            raise IncorrectState(NOT_ENABLED if not self._closed else "mem-agent has stopped: the agent is stopping")
        return agent

    def memcg_set(self, update: MemcgUpdate) -> MemcgConfig:
        return self._required().memcg_set(update)

    def compact_set(self, update: CompactUpdate) -> CompactConfig:
        return self._required().compact_set(update)

    def status(self) -> MemAgentStatus | None:
        agent = self._running()
        return agent.status() if agent is not None else None

    def metrics(self) -> list[metrics.Metric]:
        status = self.status()
        return metrics.mem_agent_metrics(status) if status is not None else []

    def close(self) -> None:
        with self._lock:
            agent, self._agent = self._agent, None
            self._closed = True  # no restart by a late call
        if agent is not None and not agent.stop():
            log.warning("mem-agent threads did not stop in time")
