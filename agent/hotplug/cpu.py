"""Bring hot-added CPUs online through sysfs (``cpu_dir/cpuN/online``).

A CPU directory without an ``online`` file (cpu0 on x86) cannot be taken offline: it counts as
online. ``CpuOnlining`` is one step of the online loop: each ``step()`` looks at sysfs again and
writes "1" to as many offline CPUs as are still needed, lowest numbers first. The kernel answers
EBUSY or EAGAIN while a CPU is still being set up; those CPUs are tried again on the next step.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import InvalidArgument, ResourceError
from agent.hotplug.budget import Budget
from agent.hotplug.cpuset import format_cpuset, parse_cpuset
from agent.system import sysfs
from agent.system.paths import HostPaths

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from agent.hotplug.cpuset import AttributeWriter

log = logging.getLogger(__name__)

_CPU_DIR = re.compile(r"cpu(\d+)")

# Errors a write of "1" may give while the kernel is not ready yet, or the node is going away.
TRANSIENT = frozenset({errno.EBUSY, errno.EAGAIN, errno.EINTR, errno.ENOENT, errno.ENODEV, errno.ETIMEDOUT})
# Errors that no amount of waiting fixes.
FATAL = frozenset({errno.EPERM, errno.EACCES, errno.EROFS})


@dataclass(frozen=True)
class CpuState:
    number: int
    online: bool
    # has an online file that can be written; None when not looked at (an online CPU on the kernel's list)
    hotpluggable: bool | None


def online_mask(paths: HostPaths) -> frozenset[int] | None:
    """The kernel's own list of online CPUs (``cpu/online``), or None when it is missing."""
    try:
        return parse_cpuset(sysfs.read_text(f"{paths.cpu_dir}/online"), what="cpu/online")
    except (OSError, InvalidArgument):
        return None


def _read_online_file(path: str) -> str | None:
    """The content of a CPU's online file; None when it has none (raises OSError for other failures)."""
    try:
        with open(path, "rb") as file:
            return file.read().decode().strip()
    except FileNotFoundError:
        return None


def scan_cpus(paths: HostPaths) -> dict[int, CpuState]:
    """Every CPU present in sysfs, by number.

    Whether a CPU is online comes from the kernel's ``cpu/online`` list when there is one (only the
    CPUs missing from it are looked at one by one, which keeps a scan cheap on a many-CPU guest). The
    kernel creates a new CPU's directory a moment before its ``online`` file, so such a CPU must not
    count as one that cannot go offline. Without the list, a CPU without an ``online`` file counts as
    online.
    """
    found: dict[int, CpuState] = {}
    try:
        with os.scandir(paths.cpu_dir) as entries:
            names = [(entry.name, entry.path) for entry in entries]
    except FileNotFoundError:
        return found
    mask = online_mask(paths)
    for name, path in names:
        matched = _CPU_DIR.fullmatch(name)
        if matched is None:
            continue
        number = int(matched.group(1))
        if mask is not None and number in mask:
            found[number] = CpuState(number, online=True, hotpluggable=None)
            continue
        try:
            text = _read_online_file(os.path.join(path, "online"))
        except OSError:
            continue  # appearing or vanishing right now: the next scan sees it
        if text is None and not os.path.isdir(path):
            continue
        online = False if mask is not None else (text is None or text == "1")
        found[number] = CpuState(number, online=online, hotpluggable=text is not None)
    return found


def online_cpus(paths: HostPaths) -> frozenset[int]:
    return frozenset(n for n, state in scan_cpus(paths).items() if state.online)


def possible_cpus(paths: HostPaths) -> frozenset[int] | None:
    """The CPUs this guest can ever have (``cpu/possible``), or None when the kernel does not say."""
    try:
        return parse_cpuset(sysfs.read_text(f"{paths.cpu_dir}/possible"), what="cpu/possible")
    except (OSError, InvalidArgument):
        return None


def check_request(paths: HostPaths, nb_cpus: int) -> None:
    """Refuse at once a request that no wait can satisfy."""
    possible = possible_cpus(paths)
    if possible is not None and nb_cpus > len(possible):
        raise InvalidArgument(
            f"OnlineCPUMem asked for {nb_cpus} online CPUs but this guest can have at most {len(possible)} "
            f"(cpu/possible is {format_cpuset(possible)!r})"
        )


def _default_writer(path: str, value: str) -> None:
    sysfs.write(path, value)


@dataclass
class CpuOnlining:
    """Make at least ``wanted()`` CPUs online. ``wanted`` is read at each step, so a later request that
    asks for more raises the target of a loop already running."""

    paths: HostPaths
    budget: Budget
    wanted: Callable[[], int]
    writer: AttributeWriter = _default_writer
    # cpu number -> the last errno its write gave, for the error message
    last_errors: dict[int, int] = field(default_factory=dict)
    brought_online: list[int] = field(default_factory=list)
    online_count: int = 0
    present_count: int = 0

    name = "cpu"
    lingers = False

    def step(self) -> bool:
        """One scan and one round of writes; True when enough CPUs are online."""
        wanted = self.wanted()
        cpus = scan_cpus(self.paths)
        self.present_count = len(cpus)
        self.online_count = sum(1 for state in cpus.values() if state.online)
        if self.online_count >= wanted:
            return True
        missing = wanted - self.online_count
        for number in sorted(n for n, state in cpus.items() if not state.online and state.hotpluggable):
            if missing == 0:
                break
            if self._bring_online(number):
                missing -= 1
        self.online_count = wanted - missing
        return missing == 0

    def _bring_online(self, number: int) -> bool:
        path = f"{self.paths.cpu_dir}/cpu{number}/online"
        try:
            self.writer(path, "1")
        except OSError as exc:
            code = exc.errno or errno.EIO
            self.last_errors[number] = code
            if code in FATAL:
                raise ResourceError(
                    f"cannot bring cpu{number} online: writing 1 to {path} failed with "
                    f"{errno.errorcode.get(code, code)} ({exc.strerror})"
                ) from exc
            if code not in TRANSIENT:
                log.warning("cpu%d: writing 1 to %s failed: %s; will retry", number, path, exc)
            return False
        try:
            now_online = sysfs.read_text(path) == "1"
        except OSError:
            now_online = False
        if now_online:
            self.last_errors.pop(number, None)
            self.brought_online.append(number)
            log.info("cpu%d is online", number)
        return now_online

    def failure(self, waited: float, rescans: int) -> ResourceError:
        wanted = self.wanted()
        present = self.present_count
        details = []
        offline_present = present - self.online_count
        if offline_present > 0:
            errors = ", ".join(
                f"cpu{n}: {errno.errorcode.get(code, str(code))}" for n, code in sorted(self.last_errors.items())
            )
            details.append(f"{offline_present} present but offline" + (f" ({errors})" if errors else ""))
        if wanted > present:
            details.append(f"{wanted - present} not present in sysfs yet")
        return ResourceError(
            f"wanted {wanted} CPUs online but only {self.online_count} are online after waiting {waited:.1f} s "
            f"({rescans} re-scans; {'; '.join(details) or 'no CPU left to online'}); "
            f"{self.budget.how_to_raise()}"
        )
