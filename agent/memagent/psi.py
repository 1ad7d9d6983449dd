"""Pressure stall information (Documentation/accounting/psi.rst) as a share of time, window by window.

Each pressure file's first line is ``some avg10=.. avg60=.. avg300=.. total=US``: the microseconds during
which at least one task stalled on the resource. Like Kata's mem-agent, a window adds the memory and io
"some" totals and reports the stalled share of the time since the previous reading, in whole percent.
A cgroup's window can leave out its children's stalls (Kata's ``include_child = false``), so a parent
is judged by its own tasks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from agent.system import sysfs
from agent.system.paths import HostPaths

RESOURCES = ("memory", "io")


def some_total(text: str) -> int:
    """The ``some`` line's total (microseconds) of a pressure file's text."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "some":
            for word in words[1:]:
                key, _, value = word.partition("=")
                if key == "total":
                    return int(value)
    raise ValueError(f"no 'some ... total=' line in {text[:80]!r}")


def read_total(path: str) -> int:
    return some_total(sysfs.read_text(path))


def system_stall(paths: HostPaths) -> Callable[[], int]:
    """The guest's memory+io stall total (/proc/pressure)."""
    files = [f"{paths.pressure_dir}/{name}" for name in RESOURCES]
    return lambda: sum(read_total(path) for path in files)


def cgroup_stall(directory: str, include_children: bool = False) -> Callable[[], int]:
    """A cgroup v2 directory's memory+io stall total; without ``include_children``, less its children's
    (a child that goes away between listing and reading counts as 0)."""

    def own(path: str) -> int:
        return sum(read_total(f"{path}/{name}.pressure") for name in RESOURCES)

    def total() -> int:
        value = own(directory)
        if include_children:
            return value
        children = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    try:
                        children += own(entry.path)
                    except FileNotFoundError:
                        continue
        return max(0, value - children)

    return total


class PressureWindow:
    """The stalled share of time between two readings. The first reading is taken when the window is
    made, so the first ``percent()`` covers the time since then."""

    def __init__(self, read: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._last_total = read()
        self._last_time = clock()

    def percent(self) -> int:
        total = self._read()
        now = self._clock()
        elapsed_us = (now - self._last_time) * 1_000_000
        stalled = max(0, total - self._last_total)
        self._last_total, self._last_time = total, now
        if elapsed_us <= 0:
            return 0
        return int(stalled * 100 // elapsed_us)
