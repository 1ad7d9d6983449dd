"""How long onlining may take: the budget options, and the clock the loops wait on.

A budget has three knobs, set per resource on the kernel command line or in the TOML file
(``agent.cpu_online_timeout=``, ``agent.cpu_online_retries=``, ``agent.cpu_online_interval_ms=``
and the ``mem_online_*`` three):

- timeout: seconds from the start of the request until the loop gives up (0: no deadline);
- retries: sysfs re-scans driven by the interval before it gives up (0: the timeout alone bounds it);
  scans woken by a uevent are free, so a burst of events cannot use up the retries;
- interval: milliseconds between re-scans when no uevent arrives.

When both the timeout and the retries are 0 the default timeout applies, so a request always ends.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from agent.config import AgentConfig, setting

MIN_INTERVAL = 0.005  # seconds: an interval of 0 would spin


class Clock(Protocol):
    """Monotonic time and a wait that a wake-up event ends early. Tests use a simulated clock."""

    def now(self) -> float: ...

    def wait(self, wake: threading.Event, timeout: float) -> bool:
        """Block until ``wake`` is set or ``timeout`` seconds pass; True when woken."""
        ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, wake: threading.Event, timeout: float) -> bool:
        return wake.wait(max(timeout, 0.0))


@dataclass(frozen=True)
class Budget:
    option_prefix: str  # "cpu_online" or "mem_online": names the options in error messages
    timeout: float  # seconds, 0: none
    retries: int  # interval-driven re-scans, 0: none
    interval: float  # seconds

    @classmethod
    def from_config(cls, config: AgentConfig, option_prefix: str) -> Budget:
        timeout = float(getattr(config, f"{option_prefix}_timeout"))
        retries = int(getattr(config, f"{option_prefix}_retries"))
        interval_ms = int(getattr(config, f"{option_prefix}_interval_ms"))
        if timeout == 0 and retries == 0:
            timeout = float(setting(f"{option_prefix}_timeout").default)
        return cls(option_prefix, timeout, retries, max(interval_ms / 1000.0, MIN_INTERVAL))

    @classmethod
    def for_cpus(cls, config: AgentConfig) -> Budget:
        return cls.from_config(config, "cpu_online")

    @classmethod
    def for_memory(cls, config: AgentConfig) -> Budget:
        return cls.from_config(config, "mem_online")

    def describe(self) -> str:
        """The budget as the options that set it."""
        p = self.option_prefix
        return (
            f"agent.{p}_timeout={self.timeout:g} agent.{p}_retries={self.retries} "
            f"agent.{p}_interval_ms={round(self.interval * 1000)}"
        )

    def how_to_raise(self) -> str:
        p = self.option_prefix
        return (
            f"raise the budget with agent.{p}_timeout=SECONDS (now {self.timeout:g}, 0 = no deadline) or "
            f"agent.{p}_retries=N (now {self.retries}, 0 = bounded by the timeout only) on the kernel "
            "command line or in the agent's config file"
        )


class BudgetTracker:
    """The spending of one budget: when the request started, how many re-scans it made."""

    def __init__(self, budget: Budget, start: float) -> None:
        self.budget = budget
        self.restart(start)

    def restart(self, start: float) -> None:
        self.start = start
        self.rescans = 0
        self.next_due = start + self.budget.interval

    def elapsed(self, now: float) -> float:
        return now - self.start

    def scanned(self, now: float) -> None:
        """Count a scan: a re-scan (a retry) when it happened because the interval elapsed."""
        if now >= self.next_due:
            self.rescans += 1
            self.next_due = now + self.budget.interval

    def exhausted(self, now: float) -> bool:
        b = self.budget
        return (b.timeout > 0 and now - self.start >= b.timeout) or (b.retries > 0 and self.rescans >= b.retries)

    def wait_until(self) -> float:
        """When the next scan is due: the next interval, but no later than the deadline."""
        due = self.next_due
        if self.budget.timeout > 0:
            due = min(due, self.start + self.budget.timeout)
        return due
