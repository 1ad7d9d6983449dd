"""Memcg reclaim through MGLRU, as Kata's mem-agent does it (src/mem-agent/src/memcg.rs).

Each period, for every memory cgroup and node that lru_gen lists (memcg id 0, a dying memcg, and
memcgs whose directory is gone are passed over):

1. PSI gate: a memcg whose own memory+io stall since the last period is above
   ``period_psi_percent_limit`` % is left alone this period.
2. Aging: unless its newest generation is less than a minute old (it was aged, or made, recently),
   ``+ ID NODE MAX_SEQ CAN_SWAP 1`` makes a new generation; the pages not used since move towards
   the oldest one.
3. Eviction, once the memcg-node has been aged ``eviction_run_aging_count_min`` times and has all
   MAX_NR_GENS generations: ``- ID NODE MIN_SEQ SWAPPINESS 1`` reclaims one batch of the oldest
   generation, again and again, re-reading lru_gen between steps, until that generation is empty or
   stops shrinking, or the memcg's stall between two steps rises above
   ``eviction_psi_percent_limit`` %. File pages go first; anon pages only with ``swap`` and free swap,
   at a swappiness proportional to the anon share, at most ``swappiness_max``.

The pages that left the oldest generation during eviction are counted as reclaimed (Kata's measure).
A period does a bounded amount of work: at most MAX_EVICTION_STEPS eviction commands per memcg-node.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from agent.memagent.config import MemcgConfig
from agent.memagent.mglru import (
    LRU_GEN_ALL,
    MAX_NR_GENS,
    LruGen,
    LruGenFile,
    MemcgGenerations,
    NodeGenerations,
    aging_command,
    eviction_command,
    parse_enabled,
)
from agent.memagent.periodic import PeriodicPart
from agent.memagent.psi import PressureWindow, cgroup_stall, system_stall
from agent.system import debugfs, sysfs
from agent.system.paths import HostPaths

log = logging.getLogger(__name__)

# A memcg-node whose newest generation is younger than this is not aged (Kata's IDLE_FRESH_IGNORE_SECS).
IDLE_FRESH_IGNORE_SECS = 60
# Pages asked of each eviction command: the kernel reclaims one batch, then PSI is looked at again.
EVICTION_NR_TO_RECLAIM = 1
MAX_EVICTION_STEPS = 4096
# Anon pages are evicted only while more than this many pages of swap are free.
SWAP_FREE_MIN_PAGES = 256
MAX_SWAPPINESS = 200


def swappiness_for(anon: int, file: int, swappiness_max: int) -> int:
    """200 * anon / (anon + file), rounded, capped at ``swappiness_max``: the anon share of the oldest
    generation decides how much of the reclaim is swap."""
    total = anon + file
    quotient, remainder = divmod(MAX_SWAPPINESS * anon, total)
    rounded = quotient + 1 if remainder >= total - remainder else quotient
    return min(rounded, swappiness_max)


def meminfo_kb(text: str, field: str) -> int | None:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == field:
            return int(value.split()[0])
    return None


class _NodeState:
    """What the reclaimer remembers of one memcg-node between periods."""

    __slots__ = ("agings", "ino", "memcg_id", "window")

    def __init__(self, memcg_id: int, ino: int, window: PressureWindow) -> None:
        self.memcg_id = memcg_id
        self.ino = ino
        self.agings = 0
        self.window = window  # the period PSI gate's window


class MemcgReclaimer(PeriodicPart[MemcgConfig]):
    name = "memcg"
    COUNTERS = (
        "agings",  # aging commands the kernel took
        "fresh_skips",  # memcg-nodes not aged: their newest generation was under a minute old
        "psi_skips",  # memcg-nodes left alone for a period: stall above period_psi_percent_limit
        "evictions",  # eviction commands the kernel took
        "eviction_runs",  # memcg-nodes whose oldest generation was evicted
        "eviction_psi_stops",  # evictions stopped: stall above eviction_psi_percent_limit
        "pages_reclaimed",
        "bytes_reclaimed",
    )

    def __init__(
        self,
        paths: HostPaths,
        config: MemcgConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        lru_gen: LruGen | None = None,
        mount_debugfs: Callable[[HostPaths], None] = debugfs.ensure_mounted,
        page_size: int | None = None,
    ) -> None:
        super().__init__(config, clock)
        self.paths = paths
        self._lru_gen: LruGen = lru_gen if lru_gen is not None else LruGenFile(paths)
        self._mount_debugfs = mount_debugfs
        self._page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self._cgroup_v2 = True
        self._memcg_root = paths.cgroup_root
        self._nodes: dict[tuple[str, int], _NodeState] = {}

    # --- the kernel's features
    def probe(self) -> str:
        switch = self.paths.lru_gen_enabled
        if not os.path.exists(switch):
            return f"MGLRU (CONFIG_LRU_GEN): {switch} does not exist"
        try:
            value = parse_enabled(sysfs.read_text(switch))
            if value != LRU_GEN_ALL:
                log.info("mem-agent memcg: switching MGLRU on (%s was %#06x)", switch, value)
                sysfs.write(switch, str(LRU_GEN_ALL))
                value = parse_enabled(sysfs.read_text(switch))
        except (OSError, ValueError) as exc:
            return f"MGLRU: cannot switch it on through {switch}: {exc}"
        if not value & 1:
            return f"MGLRU: {switch} reads {value:#06x} after writing {LRU_GEN_ALL} (its main switch is off)"
        if isinstance(self._lru_gen, LruGenFile) and not self._lru_gen.exists():
            try:
                self._mount_debugfs(self.paths)
            except OSError as exc:
                return f"MGLRU's debugfs file {self._lru_gen.path}: mounting debugfs failed: {exc}"
            if not self._lru_gen.exists():
                return f"MGLRU's debugfs file {self._lru_gen.path} does not exist (CONFIG_DEBUG_FS)"
        try:
            system_stall(self.paths)()
        except (OSError, ValueError) as exc:
            return f"PSI (CONFIG_PSI, and no psi=0 on the kernel command line): {exc}"
        self._cgroup_v2 = os.path.exists(f"{self.paths.cgroup_root}/cgroup.controllers")
        self._memcg_root = self.paths.cgroup_root if self._cgroup_v2 else f"{self.paths.cgroup_root}/memory"
        return ""

    def _memcg_dir(self, path: str) -> str:
        return self._memcg_root if path == "/" else self._memcg_root + path

    def _stall(self, path: str) -> Callable[[], int]:
        # cgroup v1 has no per-cgroup pressure files: the guest's stall stands in for each memcg's
        if self._cgroup_v2:
            return cgroup_stall(self._memcg_dir(path))
        return system_stall(self.paths)

    def _swap_available(self) -> bool:
        try:
            free_kb = meminfo_kb(sysfs.read_text(self.paths.meminfo), "SwapFree")
        except (OSError, ValueError) as exc:
            self.error(f"reading {self.paths.meminfo}: {exc}")
            return False
        return free_kb is not None and free_kb * 1024 > SWAP_FREE_MIN_PAGES * self._page_size

    # --- one period
    def _snapshot(self) -> dict[str, tuple[MemcgGenerations, int]]:
        """The memcgs to work on, with their directory's inode (a memcg made again under the same path
        is a new one)."""
        found = {}
        for path, memcg in self._lru_gen.read().items():
            if memcg.memcg_id == 0 or not path.startswith("/"):
                continue
            try:
                ino = os.stat(self._memcg_dir(path)).st_ino
            except OSError:
                continue
            found[path] = (memcg, ino)
        return found

    def _forget_gone(self, memcgs: dict[str, tuple[MemcgGenerations, int]]) -> None:
        for key, state in list(self._nodes.items()):
            current = memcgs.get(key[0])
            if current is None or current[0].memcg_id != state.memcg_id or current[1] != state.ino:
                del self._nodes[key]

    def run_period(self, config: MemcgConfig) -> None:
        try:
            memcgs = self._snapshot()
        except (OSError, ValueError) as exc:
            self.error(f"reading {self.paths.lru_gen}: {exc}")
            return
        self._forget_gone(memcgs)
        to_evict: list[tuple[str, int, _NodeState]] = []
        for path in sorted(memcgs):
            memcg, ino = memcgs[path]
            for node_id in sorted(memcg.nodes):
                if self.should_abort():
                    return
                state = self._age(path, memcg, ino, memcg.nodes[node_id], config)
                if state is not None and state.agings >= config.eviction_run_aging_count_min:
                    to_evict.append((path, node_id, state))
        for path, node_id, state in to_evict:
            if self.should_abort():
                return
            self._evict(path, node_id, state, config)

    def _age(
        self, path: str, memcg: MemcgGenerations, ino: int, node: NodeGenerations, config: MemcgConfig
    ) -> _NodeState | None:
        """Gate and age one memcg-node; its state when it was aged, else None."""
        key = (path, node.node)
        state = self._nodes.get(key)
        try:
            if state is None:
                state = self._nodes[key] = _NodeState(
                    memcg.memcg_id, ino, PressureWindow(self._stall(path), self._clock)
                )
            stalled = state.window.percent()
        except (OSError, ValueError) as exc:
            self.error(f"{path}: reading its pressure: {exc}")
            return None
        if stalled > config.period_psi_percent_limit:
            log.info("mem-agent memcg: %s stalled %d%% over the period: not reclaimed", path, stalled)
            self.count("psi_skips")
            return None
        if node.youngest_age_ms < IDLE_FRESH_IGNORE_SECS * 1000:
            self.count("fresh_skips")
            return None
        try:
            self._lru_gen.write(aging_command(memcg.memcg_id, node.node, node.max_seq, config.swap))
        except OSError as exc:
            self.error(f"{path} node {node.node}: aging refused: {exc}")
            return None
        os.sched_yield()
        state.agings += 1
        self.count("agings")
        return state

    def _current(self, path: str, node_id: int, memcg_id: int) -> NodeGenerations | None:
        memcg = self._lru_gen.read().get(path)
        if memcg is None or memcg.memcg_id != memcg_id:
            return None
        return memcg.nodes.get(node_id)

    def _released(self, pages: int) -> int:
        """Count ``pages`` reclaimed at once (a run can take a while: the counts follow it step by step)."""
        self.count("pages_reclaimed", pages)
        self.count("bytes_reclaimed", pages * self._page_size)
        return pages

    def _evict(self, path: str, node_id: int, state: _NodeState, config: MemcgConfig) -> None:
        swap = config.swap and self._swap_available()
        try:
            window = PressureWindow(self._stall(path), self._clock)
        except (OSError, ValueError) as exc:
            self.error(f"{path}: reading its pressure: {exc}")
            return
        self.count("eviction_runs")
        last = None
        only_swap = False  # no file pages in the oldest generation: anon ones only, through swap
        released = 0
        reason = f"{MAX_EVICTION_STEPS} steps"
        for _ in range(MAX_EVICTION_STEPS):
            if self.should_abort():
                reason = "stopped"
                break
            try:
                node = self._current(path, node_id, state.memcg_id)
            except (OSError, ValueError) as exc:
                self.error(f"reading {self.paths.lru_gen}: {exc}")
                reason = "error"
                break
            if node is None:
                reason = "the memcg is gone"
                break
            if last is not None and node.min_seq > last.seq:
                released += self._released(last.file + last.anon)  # the generation was emptied and is gone
                reason = "the oldest generation is empty"
                break
            if node.max_seq - node.min_seq + 1 != MAX_NR_GENS:
                reason = f"{node.max_seq - node.min_seq + 1} generations"
                break
            oldest = node.oldest
            if last is None:
                if oldest.file == 0:
                    if not swap or oldest.anon == 0:
                        reason = "nothing to evict"
                        break
                    only_swap = True
            else:
                if oldest.file >= last.file and oldest.anon >= last.anon:
                    reason = "the oldest generation stopped shrinking"
                    break
                released += self._released(max(0, last.file - oldest.file) + max(0, last.anon - oldest.anon))
                if not only_swap and oldest.file == 0:
                    reason = "no file pages left"
                    break
                try:
                    stalled = window.percent()
                except (OSError, ValueError) as exc:
                    self.error(f"{path}: reading its pressure: {exc}")
                    reason = "error"
                    break
                if stalled > config.eviction_psi_percent_limit:
                    self.count("eviction_psi_stops")
                    reason = f"stall {stalled}%"
                    break
            last = oldest
            swap_now = swap and self._swap_available()
            if only_swap:
                if not swap_now:
                    reason = "no free swap"
                    break
                swappiness = MAX_SWAPPINESS
            elif not swap_now or oldest.anon == 0:
                swappiness = 0
            else:
                swappiness = swappiness_for(oldest.anon, oldest.file, config.swappiness_max)
            try:
                self._lru_gen.write(
                    eviction_command(state.memcg_id, node_id, oldest.seq, swappiness, EVICTION_NR_TO_RECLAIM)
                )
            except OSError as exc:
                self.error(f"{path} node {node_id}: eviction refused: {exc}")
                reason = "error"
                break
            self.count("evictions")
            os.sched_yield()
        log.info("mem-agent memcg: %s node %d: %d pages evicted, stopped: %s", path, node_id, released, reason)
