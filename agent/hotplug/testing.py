"""Doubles for the hotplug code: a fake sysfs tree, a simulated clock and a kernel-like writer.

Used by the unit tests and by bench/hotplug_online.py; nothing in the agent imports this module.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Callable

from agent.hotplug.cpuset import format_cpuset
from agent.hotplug.uevent import Uevent
from agent.system import sysfs
from agent.system.paths import HostPaths


class SimulatedClock:
    """Time that moves only when the loop waits. Actions scheduled with ``at`` run (in the waiting
    thread) when simulated time reaches them; an action that sets the wake event ends the wait early,
    just as a uevent does."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        self._actions: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self.waits: list[float] = []  # the timeouts the loop asked for

    def now(self) -> float:
        return self.time

    def at(self, when: float, action: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._actions, (when, next(self._order), action))

    def wait(self, wake: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        if wake.is_set():
            return True
        target = self.time + timeout
        while True:
            with self._lock:
                if not self._actions or self._actions[0][0] > target:
                    break
                when, _, action = heapq.heappop(self._actions)
            self.time = max(self.time, when)
            action()
            if wake.is_set():
                return True
        self.time = target
        return wake.is_set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._actions)


class FakeSysfs:
    """CPUs and memory blocks under ``HostPaths(root)``, with the kernel's write semantics.

    Nodes appear atomically (built under a temporary name, then renamed), as sysfs nodes do.
    ``fail(path, errno, times)`` makes the next writes to ``path`` fail like the kernel's EBUSY.
    """

    def __init__(self, root: str | os.PathLike[str], *, cpu_mask: bool = True) -> None:
        self.paths = HostPaths(root)
        # cpu/online, the kernel's list of online CPUs; without it (cpu_mask=False) the per-CPU online
        # files alone say which CPUs are online, so plain file writes (sysfs.write) are enough.
        self.cpu_mask = cpu_mask
        os.makedirs(self.paths.cpu_dir, exist_ok=True)
        os.makedirs(self.paths.memory_dir, exist_ok=True)
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self.writes: list[tuple[str, str]] = []
        self.on_write: Callable[[str, str], None] | None = None
        self.cpus_online: set[int] = set()  # mirrored in cpu/online, as the kernel keeps it
        self._write_mask()

    def _write_mask(self) -> None:
        if not self.cpu_mask:
            return
        _create(f"{self.paths.cpu_dir}/online", format_cpuset(self.cpus_online) + "\n")

    # --- building the tree

    def _publish(self, final: str, files: dict[str, str]) -> str:
        parent, name = os.path.split(final)
        staging = f"{parent}/.new-{name}"
        os.mkdir(staging)
        for file, content in files.items():
            _create(f"{staging}/{file}", content + "\n")
        os.rename(staging, final)
        return final

    def add_cpu(self, number: int, online: bool | None = False) -> str:
        """A CPU directory; ``online=None`` gives one without an online file (like cpu0)."""
        files = {} if online is None else {"online": "1" if online else "0"}
        directory = self._publish(f"{self.paths.cpu_dir}/cpu{number}", files)
        if online is not False:
            with self._lock:
                self.cpus_online.add(number)
                self._write_mask()
        return directory

    def set_possible(self, spec: str) -> None:
        _create(f"{self.paths.cpu_dir}/possible", spec + "\n")

    def add_memory_block(self, number: int, state: str = "offline", zones: str = "Normal Movable") -> str:
        files = {"state": state, "valid_zones": zones, "online": "1" if state == "online" else "0"}
        return self._publish(f"{self.paths.memory_dir}/memory{number}", files)

    def set_block_size(self, size: int) -> None:
        _create(self.paths.memory_block_size, f"{size:x}\n")

    def enable_probe(self) -> None:
        _create(self.paths.memory_probe, "")

    def fail(self, path: str | os.PathLike[str], error: int, times: int = 1) -> None:
        with self._lock:
            self._failures.setdefault(os.fspath(path), []).extend([error] * times)

    # --- uevents as the kernel would send them

    @staticmethod
    def cpu_added(number: int) -> Uevent:
        devpath = f"/devices/system/cpu/cpu{number}"
        return Uevent("add", devpath, {"SUBSYSTEM": "cpu", "DRIVER": "processor"})

    @staticmethod
    def memory_added(number: int) -> Uevent:
        return Uevent("add", f"/devices/system/memory/memory{number}", {"SUBSYSTEM": "memory"})

    # --- the writer the onlining code is given

    def write(self, target: str | os.PathLike[str], value: str) -> None:
        path = os.fspath(target)
        with self._lock:
            pending = self._failures.get(path)
            error = pending.pop(0) if pending else None
            self.writes.append((path, value))
        if self.on_write is not None:
            self.on_write(path, value)
        if error is not None:
            raise OSError(error, os.strerror(error), str(path))
        if path == self.paths.memory_probe:
            size = int(sysfs.read_text(self.paths.memory_block_size), 16)
            self.add_memory_block(int(value, 16) // size)
            return
        directory, name = os.path.split(path)
        if name == "online" and os.path.dirname(directory) == self.paths.cpu_dir and value in ("0", "1"):
            _replace(path, value)
            with self._lock:
                number = int(os.path.basename(directory)[len("cpu") :])
                (self.cpus_online.add if value == "1" else self.cpus_online.discard)(number)
                self._write_mask()
            return
        if name == "state" and value in ("online", "online_movable", "online_kernel"):
            _replace(path, "online")
            _replace(f"{directory}/online", "1")
            return
        _replace(path, value)


def _create(path: str, text: str) -> None:
    with open(path, "w") as stream:
        stream.write(text)


def _replace(path: str, value: str) -> None:
    """An attribute shows the new value alone (a plain file would keep the tail of a longer old one);
    like sysfs, never create the file."""
    sysfs.write(path, b"")  # raises ENOENT for a missing attribute
    _create(path, value + "\n")
