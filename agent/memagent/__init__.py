"""The memory agent (Kata's mem-agent): gives cold guest memory back, in two periodic parts.

- memcg reclaim (``memcg.py``): each period, for every memory cgroup and NUMA node in MGLRU's
  /sys/kernel/debug/lru_gen, age it (a new generation) and, once it has been aged often enough, evict
  its oldest generation step by step, stopping as soon as PSI shows the memcg stalling.
- compaction (``compact.py``): each period, when PSI is quiet and free memory has fragmented past a
  threshold (or a forced run is due), write /proc/sys/vm/compact_memory in a child process that is
  killed when it runs too long or stalls the guest.

Both run on their own daemon thread (``periodic.py``), take a new configuration at once, and never raise
out of their thread. A missing kernel feature (MGLRU, debugfs, PSI, compaction) is reported once by name
and leaves that part idle. No grpc here: the service (agent/services/memagent.py) drives ``MemAgent``.
"""

from __future__ import annotations

from agent.memagent.config import CompactConfig, CompactUpdate, MemcgConfig, MemcgUpdate
from agent.memagent.periodic import PartStatus
from agent.memagent.runner import MemAgent, MemAgentStatus

__all__ = [
    "CompactConfig",
    "CompactUpdate",
    "MemAgent",
    "MemAgentStatus",
    "MemcgConfig",
    "MemcgUpdate",
    "PartStatus",
]
