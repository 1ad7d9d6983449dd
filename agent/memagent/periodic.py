"""One part of the mem-agent: a periodic loop on its own daemon thread.

The thread first probes the kernel features the part needs; one that is missing is logged once, by
name, and the part stays idle (``available`` False) while the agent goes on serving. Then, while the
part is enabled, it runs ``run_period`` each time its timer is due. ``reconfigure`` swaps the settings
under the lock and wakes the thread, so a new period length or an enable/disable counts at once; a
running period sees ``should_abort()`` turn true when it is disabled or stopped. Nothing raises out of
the thread: an error is logged, counted and kept as ``last_error``, and the next period comes as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from agent.errors import Unsupported

log = logging.getLogger(__name__)


class _Switchable(Protocol):
    @property
    def disabled(self) -> bool: ...

    @property
    def period_secs(self) -> int: ...


C = TypeVar("C", bound=_Switchable)


@dataclass(frozen=True)
class PartStatus:
    name: str  # "memcg" or "compact"
    available: bool | None  # None until the thread has probed the kernel
    missing: str  # the missing kernel feature, when not available
    enabled: bool
    busy: bool  # a period is running
    periods: int  # periods started
    errors: int
    last_error: str
    counters: Mapping[str, int]  # the part's own counts (see each part's COUNTERS)
    config: Any  # the part's settings (MemcgConfig or CompactConfig)


class PeriodicPart(Generic[C]):
    name = "part"
    COUNTERS: tuple[str, ...] = ()

    def __init__(self, config: C, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._cond = threading.Condition()
        self._timer_start: float | None = None  # None: due at once
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._available: bool | None = None
        self._missing = ""
        self._busy = False
        self._periods = 0
        self._errors = 0
        self._last_error = ""
        self._counters = dict.fromkeys(self.COUNTERS, 0)

    # --- what a part provides
    def probe(self) -> str:
        """The missing kernel feature, by name and what to do about it; "" when everything is there."""
        return ""

    def run_period(self, config: C) -> None:
        raise NotImplementedError

    def retime(self, old: C, new: C) -> None:
        """Adjust the timer for a new config (under the lock). By default a new period length or an
        enable starts a fresh timer that is due at once."""
        if old.period_secs != new.period_secs or old.disabled != new.disabled:
            self._timer_start = None

    # --- control
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=f"mem-agent-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread (a running period ends at its next check); True when it has ended."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def config(self) -> C:
        with self._cond:
            return self._config

    def reconfigure(self, change: Callable[[C], C]) -> C:
        """Apply ``change`` to the settings at once. Raises Unsupported when the kernel lacks what this
        part needs (nothing changes), and whatever ``change`` raises (it is called before any change)."""
        with self._cond:
            if self._available is False:
                raise Unsupported(f"mem-agent {self.name}: not available in this guest: {self._missing}")
            new = change(self._config)
            old, self._config = self._config, new
            self.retime(old, new)
            self._cond.notify_all()
            return new

    def status(self) -> PartStatus:
        with self._cond:
            return PartStatus(
                name=self.name,
                available=self._available,
                missing=self._missing,
                enabled=not self._config.disabled,
                busy=self._busy,
                periods=self._periods,
                errors=self._errors,
                last_error=self._last_error,
                counters=dict(self._counters),
                config=self._config,
            )

    def wait_for(self, predicate: Callable[[PartStatus], bool], timeout: float) -> bool:
        """Wait until ``predicate(status)`` holds (checked after each change of state); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.status()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # --- for run_period
    def should_abort(self) -> bool:
        """A running period stops early: the part was stopped or disabled."""
        return self._stopping or self._config.disabled

    def pause(self, seconds: float) -> None:
        """Sleep within a period; a stop or a new config ends the sleep early."""
        with self._cond:
            if not self.should_abort():
                self._cond.wait(min(seconds, threading.TIMEOUT_MAX))

    def count(self, name: str, amount: int = 1) -> None:
        with self._cond:
            self._counters[name] += amount

    def error(self, message: str) -> None:
        """An error of one step: logged and counted; the period goes on."""
        log.warning("mem-agent %s: %s", self.name, message)
        with self._cond:
            self._errors += 1
            self._last_error = message

    # --- the thread
    def _due_in(self) -> float:
        if self._timer_start is None:
            return 0.0
        return self._timer_start + self._config.period_secs - self._clock()

    def _run(self) -> None:
        try:
            missing = self.probe()
        except Exception as exc:  # a probe that fails is a missing feature, not a dead agent
            log.exception("mem-agent %s: probing the kernel failed", self.name)
            missing = f"probing the kernel failed: {type(exc).__name__}: {exc}"
        with self._cond:
            self._available = not missing
            self._missing = missing
            self._cond.notify_all()
        if missing:
            log.warning("mem-agent %s is off: %s", self.name, missing)
            return
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    if self._config.disabled:
                        self._cond.wait()
                        continue
                    due_in = self._due_in()
                    if due_in <= 0:
                        break
                    self._cond.wait(min(due_in, threading.TIMEOUT_MAX))  # a period may be up to 2**64-1 s
                config = self._config
                self._periods += 1
                self._busy = True
                self._cond.notify_all()
            try:
                self.run_period(config)
            except Exception as exc:
                log.exception("mem-agent %s: a period failed", self.name)
                with self._cond:
                    self._errors += 1
                    self._last_error = f"period failed: {type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    self._busy = False
                    self._timer_start = self._clock()
                    self._cond.notify_all()
