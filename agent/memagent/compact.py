"""Memory compaction, as Kata's mem-agent does it (src/mem-agent/src/compact.rs).

Each period:

1. PSI gate: no compaction when the guest's memory+io stall since the last period is above
   ``period_psi_percent_limit`` %.
2. Need: the free movable pages of orders below ``compact_order`` (/proc/pagetypeinfo; all free
   pages of /proc/buddyinfo when pagetypeinfo cannot be read) grew by more than ``compact_threshold``
   pages since the last compaction, or MemFree fell by as many pages; or ``compact_force_times``
   periods went by without a compaction (0: every period; 2**64 - 1: never forced).
3. Compaction: a child process writes 1 to /proc/sys/vm/compact_memory. It is killed (the kernel's
   compaction stops at a fatal signal) once it has run ``compact_sec_max`` seconds, or when the stall
   rises above ``compact_psi_percent_limit`` % between two looks, or when the part is disabled or stops.

A child process rather than a thread: a thread blocked in the kernel's compaction cannot be stopped.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Protocol

from agent.memagent.config import DEFAULT_MAX_PAGE_ORDER, NEVER, CompactConfig
from agent.memagent.memcg import meminfo_kb
from agent.memagent.periodic import PeriodicPart
from agent.memagent.psi import PressureWindow, system_stall
from agent.system import run, sysfs
from agent.system.paths import HostPaths

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks at a running compaction (Kata's)
KILL_WAIT = 30.0  # seconds to wait for a killed compaction child to end
# The child: open the file and write "1" (echo 1 > compact_memory, without a shell).
COMPACT_CHILD = "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nos.write(fd, b'1')\n"


def free_pages_below(text: str, order: int, movable_only: bool) -> int:
    """Free pages in blocks of orders below ``order``: from /proc/pagetypeinfo's "Movable" rows
    (``movable_only``) or every row of /proc/buddyinfo. Each count is of 2**order-page blocks."""
    total = 0
    for line in text.splitlines():
        if not line.startswith("Node"):
            continue
        if movable_only:
            _, sep, rest = line.partition(", type")
            if not sep:
                continue
            words = rest.split()
            if not words or words[0] != "Movable":
                continue
            counts = words[1:]
        else:
            words = line.split()
            if "zone" not in words:
                continue
            counts = words[words.index("zone") + 2 :]
        for block_order, count in enumerate(counts[:order]):
            if count.isdigit():
                total += int(count) << block_order
    return total


def max_page_order(paths: HostPaths) -> int:
    """The kernel's highest page order (MAX_ORDER - 1): /proc/buddyinfo has a column per order."""
    try:
        text = sysfs.read_text(paths.buddyinfo)
    except OSError:
        return DEFAULT_MAX_PAGE_ORDER
    for line in text.splitlines():
        words = line.split()
        if "zone" in words:
            columns = len(words) - words.index("zone") - 2
            if columns > 0:
                return columns - 1
    return DEFAULT_MAX_PAGE_ORDER


class CompactionProcess(Protocol):
    """A running compaction (a child process; a stand-in in tests)."""

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if it has not ended within ``timeout`` seconds."""

    def finish(self) -> str:
        """After it ended: release it; the end of what it wrote to stderr."""


class ChildCompaction:
    """``echo 1 > compact_memory`` in a fresh interpreter (-I -S: nothing but the stdlib core)."""

    def __init__(self, compact_memory: str) -> None:
        self._child = run.spawn([sys.executable, "-I", "-S", "-c", COMPACT_CHILD, compact_memory])

    def poll(self) -> int | None:
        return self._child.poll()

    def kill(self) -> None:
        self._child.kill()

    def wait(self, timeout: float) -> int | None:
        try:
            return self._child.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def finish(self) -> str:
        return run.release(self._child)


class Compactor(PeriodicPart[CompactConfig]):
    name = "compact"
    COUNTERS = (
        "compactions",  # compactions started
        "forced",  # of which compact_force_times forced
        "psi_skips",  # periods without: stall above period_psi_percent_limit
        "threshold_skips",  # periods without: not fragmented enough
        "psi_stops",  # compactions killed: stall above compact_psi_percent_limit
        "timeouts",  # compactions killed: longer than compact_sec_max
    )

    def __init__(
        self,
        paths: HostPaths,
        config: CompactConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        launcher: Callable[[str], CompactionProcess] = ChildCompaction,
        poll_interval: float = POLL_INTERVAL,
        page_size: int | None = None,
    ) -> None:
        super().__init__(config, clock)
        self.paths = paths
        self._launcher = launcher
        self._poll_interval = poll_interval
        self._page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self._window: PressureWindow | None = None
        self._periods_without = 0  # Kata's force_counter
        self._prev_memfree_kb = 0
        self._prev_free_movable = 0
        self._stragglers: list[CompactionProcess] = []  # killed children that had not ended yet

    def probe(self) -> str:
        if not os.path.exists(self.paths.compact_memory):
            return f"compaction (CONFIG_COMPACTION): {self.paths.compact_memory} does not exist"
        try:
            self._window = PressureWindow(system_stall(self.paths), self._clock)
        except (OSError, ValueError) as exc:
            return f"PSI (CONFIG_PSI, and no psi=0 on the kernel command line): {exc}"
        return ""

    def retime(self, old: CompactConfig, new: CompactConfig) -> None:
        # Kata: switching compaction on starts a full period; a new period length keeps the timer's start
        if old.disabled and not new.disabled:
            self._timer_start = self._clock()

    def _measure(self, order: int) -> tuple[int, int]:
        """(MemFree in kB, free movable pages below ``order``)."""
        memfree = meminfo_kb(sysfs.read_text(self.paths.meminfo), "MemFree")
        if memfree is None:
            raise ValueError(f"no MemFree in {self.paths.meminfo}")
        try:
            movable = free_pages_below(sysfs.read_text(self.paths.pagetypeinfo), order, movable_only=True)
        except OSError:
            movable = free_pages_below(sysfs.read_text(self.paths.buddyinfo), order, movable_only=False)
        return memfree, movable

    def _fragmented(self, config: CompactConfig) -> bool:
        memfree_kb, movable = self._measure(config.compact_order)
        threshold_kb = config.compact_threshold * self._page_size // 1024
        if self._prev_memfree_kb > memfree_kb + threshold_kb:
            return True
        if movable > self._prev_free_movable + config.compact_threshold:
            return True
        log.info(
            "mem-agent compact: %d free movable pages below order %d (%d after the last compaction, threshold "
            "%d), MemFree %d kB (%d kB then): not compacting",
            movable,
            config.compact_order,
            self._prev_free_movable,
            config.compact_threshold,
            memfree_kb,
            self._prev_memfree_kb,
        )
        return False

    def run_period(self, config: CompactConfig) -> None:
        self._reap_stragglers()
        assert self._window is not None  # made by probe()
        try:
            stalled = self._window.percent()
        except (OSError, ValueError) as exc:
            self.error(f"reading the guest's pressure: {exc}")
            self._periods_without += 1
            return
        if stalled > config.period_psi_percent_limit:
            log.info("mem-agent compact: the guest stalled %d%% over the period: not compacting", stalled)
            self.count("psi_skips")
            self._periods_without += 1
            return
        forced = config.compact_force_times != NEVER and self._periods_without >= config.compact_force_times
        if not forced:
            try:
                fragmented = self._fragmented(config)
            except (OSError, ValueError) as exc:
                self.error(f"measuring free memory: {exc}")
                self._periods_without += 1
                return
            if not fragmented:
                self.count("threshold_skips")
                self._periods_without += 1
                return
        else:
            self.count("forced")
        self._compact(config)
        self._periods_without = 0
        try:
            self._prev_memfree_kb, self._prev_free_movable = self._measure(config.compact_order)
        except (OSError, ValueError) as exc:
            self.error(f"measuring free memory: {exc}")

    def _compact(self, config: CompactConfig) -> None:
        window = PressureWindow(system_stall(self.paths), self._clock)
        started = self._clock()
        log.info("mem-agent compact: compacting")
        try:
            child = self._launcher(self.paths.compact_memory)
        except OSError as exc:
            self.error(f"starting the compaction: {exc}")
            return
        self.count("compactions")
        try:
            killed = self._watch(child, config, window, started)
        except BaseException:  # no compaction runs unwatched, and none is left unreaped
            child.kill()
            if self._reap(child) is not None:
                child.finish()
            raise
        if killed:
            child.kill()
        status = self._reap(child)
        if status is None:
            return
        stderr = child.finish()
        if killed:
            log.info("mem-agent compact: compaction stopped: %s", killed)
        elif status != 0:
            self.error(f"writing {self.paths.compact_memory} failed (exit status {status}): {stderr}")
        else:
            log.info("mem-agent compact: compaction done in %.1f s", self._clock() - started)

    def _watch(self, child: CompactionProcess, config: CompactConfig, window: PressureWindow, started: float) -> str:
        """Look at a running compaction each poll interval until it ends (""), or why it must be killed."""
        while child.poll() is None:
            if self.should_abort():
                return "stopped"
            if self._clock() - started >= config.compact_sec_max:
                self.count("timeouts")
                return f"ran {config.compact_sec_max} s"
            try:
                stalled = window.percent()
            except (OSError, ValueError) as exc:
                stalled = 0
                self.error(f"reading the guest's pressure: {exc}")
            if stalled > config.compact_psi_percent_limit:
                self.count("psi_stops")
                return f"stall {stalled}%"
            self.pause(self._poll_interval)
        return ""

    def _reap(self, child: CompactionProcess) -> int | None:
        """Wait for a child that ended or was killed; one that outlives KILL_WAIT is kept to reap later."""
        status = child.wait(KILL_WAIT)
        if status is None:
            self.error(f"the compaction child did not end {KILL_WAIT} s after SIGKILL")
            self._stragglers.append(child)
        return status

    def _reap_stragglers(self) -> None:
        for child in list(self._stragglers):
            if child.poll() is not None:
                child.finish()
                self._stragglers.remove(child)

    def stop(self, timeout: float = 10.0) -> bool:
        ended = super().stop(timeout)
        self._reap_stragglers()
        return ended
