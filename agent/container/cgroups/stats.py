"""A container's resource usage, shaped like Kata's ``CgroupStats`` message, read from v1 or v2 files.

Times are nanoseconds and sizes bytes on both versions. A file the kernel does not offer (a controller
that is not enabled or not mounted) reads as zero: stats are best effort, as in runc and Kata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Mapping

# What Kata reports for "no limit" (runc's math.MaxUint64).
UNLIMITED = 2**64 - 1


@dataclass
class CpuUsage:
    total_usage: int = 0
    percpu_usage: list[int] = field(default_factory=list)
    usage_in_kernelmode: int = 0
    usage_in_usermode: int = 0


@dataclass
class ThrottlingData:
    periods: int = 0
    throttled_periods: int = 0
    throttled_time: int = 0


@dataclass
class CpuStats:
    cpu_usage: CpuUsage = field(default_factory=CpuUsage)
    throttling_data: ThrottlingData = field(default_factory=ThrottlingData)


@dataclass
class MemoryData:
    usage: int = 0
    max_usage: int = 0
    failcnt: int = 0
    limit: int = 0


@dataclass
class MemoryStats:
    cache: int = 0
    usage: MemoryData = field(default_factory=MemoryData)
    swap_usage: MemoryData = field(default_factory=MemoryData)
    kernel_usage: MemoryData = field(default_factory=MemoryData)
    use_hierarchy: bool = False
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class PidsStats:
    current: int = 0
    limit: int = 0


@dataclass
class BlkioStatsEntry:
    major: int
    minor: int
    op: str
    value: int


@dataclass
class BlkioStats:
    io_service_bytes_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_serviced_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_queued_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_service_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_wait_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_merged_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    sectors_recursive: list[BlkioStatsEntry] = field(default_factory=list)


@dataclass
class HugetlbStats:
    usage: int = 0
    max_usage: int = 0
    failcnt: int = 0


@dataclass
class CgroupStats:
    cpu_stats: CpuStats = field(default_factory=CpuStats)
    memory_stats: MemoryStats = field(default_factory=MemoryStats)
    pids_stats: PidsStats = field(default_factory=PidsStats)
    blkio_stats: BlkioStats = field(default_factory=BlkioStats)
    hugetlb_stats: dict[str, HugetlbStats] = field(default_factory=dict)


# --- reading helpers


def _text(path: str) -> str | None:
    try:
        with open(path) as stream:
            return stream.read()
    except OSError:
        return None


def _matching(directory: str, prefix: str, suffix: str) -> list[str]:
    """The files of ``directory`` named ``prefix*suffix``, sorted (none when it cannot be listed)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    least = len(prefix) + len(suffix)
    found = [name for name in names if len(name) >= least and name.startswith(prefix) and name.endswith(suffix)]
    return sorted(f"{directory}/{name}" for name in found)


def _int(path: str, *, maximum: int = UNLIMITED) -> int:
    """An integer file; "max" (v2) and v1's huge "unlimited" numbers read as ``maximum``."""
    text = _text(path)
    if text is None:
        return 0
    value = text.strip()
    if value == "max":
        return maximum
    try:
        return min(max(int(value), 0), UNLIMITED)
    except ValueError:
        return 0


def flat_keyed(path: str | os.PathLike[str]) -> dict[str, int]:
    """A "key value" per line file (cpu.stat, memory.stat, memory.events)."""
    result: dict[str, int] = {}
    for line in (_text(os.fspath(path)) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            result[key] = int(value)
        except ValueError:
            continue
    return result


def _device(text: str) -> tuple[int, int] | None:
    major, colon, minor = text.partition(":")
    if not colon or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


# --- v1


def _ticks_to_ns(ticks: int) -> int:
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def cpu_v1(cpuacct: str | None, cpu: str | None) -> CpuStats:
    stats = CpuStats()
    if cpuacct is not None:
        usage = stats.cpu_usage
        usage.total_usage = _int(f"{cpuacct}/cpuacct.usage")
        usage.percpu_usage = [int(v) for v in (_text(f"{cpuacct}/cpuacct.usage_percpu") or "").split()]
        ticks = flat_keyed(f"{cpuacct}/cpuacct.stat")
        usage.usage_in_usermode = _ticks_to_ns(ticks.get("user", 0))
        usage.usage_in_kernelmode = _ticks_to_ns(ticks.get("system", 0))
    if cpu is not None:
        throttle = flat_keyed(f"{cpu}/cpu.stat")
        stats.throttling_data = ThrottlingData(
            throttle.get("nr_periods", 0), throttle.get("nr_throttled", 0), throttle.get("throttled_time", 0)
        )
    return stats


def _memory_data_v1(directory: str, prefix: str) -> MemoryData:
    return MemoryData(
        usage=_int(f"{directory}/{prefix}.usage_in_bytes"),
        max_usage=_int(f"{directory}/{prefix}.max_usage_in_bytes"),
        failcnt=_int(f"{directory}/{prefix}.failcnt"),
        limit=_int(f"{directory}/{prefix}.limit_in_bytes"),
    )


def memory_v1(directory: str | None) -> MemoryStats:
    if directory is None:
        return MemoryStats()
    stats = flat_keyed(f"{directory}/memory.stat")
    return MemoryStats(
        cache=stats.get("cache", 0),
        usage=_memory_data_v1(directory, "memory"),
        swap_usage=_memory_data_v1(directory, "memory.memsw"),
        kernel_usage=_memory_data_v1(directory, "memory.kmem"),
        use_hierarchy=(_text(f"{directory}/memory.use_hierarchy") or "").strip() == "1",
        stats=stats,
    )


def pids_stats(directory: str | None) -> PidsStats:
    """Same files on v1 and v2; a "max" limit reads as 0, as runc reports it."""
    if directory is None:
        return PidsStats()
    return PidsStats(current=_int(f"{directory}/pids.current"), limit=_int(f"{directory}/pids.max", maximum=0))


def _blkio_v1_file(path: str) -> list[BlkioStatsEntry]:
    entries: list[BlkioStatsEntry] = []
    for line in (_text(path) or "").splitlines():
        fields = line.split()
        device = _device(fields[0]) if fields else None
        if device is None:
            continue  # the "Total N" line
        if len(fields) == 3 and fields[2].isdigit():
            entries.append(BlkioStatsEntry(device[0], device[1], fields[1], int(fields[2])))
        elif len(fields) == 2 and fields[1].isdigit():
            entries.append(BlkioStatsEntry(device[0], device[1], "", int(fields[1])))
    return entries


def blkio_v1(directory: str | None) -> BlkioStats:
    stats = BlkioStats()
    if directory is None:
        return stats

    def pick(name: str) -> list[BlkioStatsEntry]:
        # the proportional (CFQ/BFQ) files when the scheduler has them, else the throttle layer's
        for candidate in (f"blkio.{name}", f"blkio.bfq.{name}", f"blkio.throttle.{name}"):
            if os.path.exists(f"{directory}/{candidate}"):
                return _blkio_v1_file(f"{directory}/{candidate}")
        return []

    stats.io_service_bytes_recursive = pick("io_service_bytes_recursive")
    stats.io_serviced_recursive = pick("io_serviced_recursive")
    stats.io_queued_recursive = _blkio_v1_file(f"{directory}/blkio.io_queued_recursive")
    stats.io_service_time_recursive = _blkio_v1_file(f"{directory}/blkio.io_service_time_recursive")
    stats.io_wait_time_recursive = _blkio_v1_file(f"{directory}/blkio.io_wait_time_recursive")
    stats.io_merged_recursive = _blkio_v1_file(f"{directory}/blkio.io_merged_recursive")
    stats.io_time_recursive = _blkio_v1_file(f"{directory}/blkio.time_recursive")
    stats.sectors_recursive = _blkio_v1_file(f"{directory}/blkio.sectors_recursive")
    return stats


def hugetlb_v1(directory: str | None) -> dict[str, HugetlbStats]:
    result: dict[str, HugetlbStats] = {}
    if directory is None or not os.path.isdir(directory):
        return result
    for entry in _matching(directory, "hugetlb.", ".usage_in_bytes"):
        size = os.path.basename(entry).split(".")[1]
        result[size] = HugetlbStats(
            usage=_int(entry),
            max_usage=_int(f"{directory}/hugetlb.{size}.max_usage_in_bytes"),
            failcnt=_int(f"{directory}/hugetlb.{size}.failcnt"),
        )
    return result


# --- v2


def cpu_v2(directory: str) -> CpuStats:
    stat = flat_keyed(f"{directory}/cpu.stat")
    return CpuStats(
        cpu_usage=CpuUsage(
            total_usage=stat.get("usage_usec", 0) * 1000,
            usage_in_kernelmode=stat.get("system_usec", 0) * 1000,
            usage_in_usermode=stat.get("user_usec", 0) * 1000,
        ),
        throttling_data=ThrottlingData(
            stat.get("nr_periods", 0), stat.get("nr_throttled", 0), stat.get("throttled_usec", 0) * 1000
        ),
    )


def memory_v2(directory: str) -> MemoryStats:
    stats = flat_keyed(f"{directory}/memory.stat")
    events = flat_keyed(f"{directory}/memory.events")
    swap_events = flat_keyed(f"{directory}/memory.swap.events")
    return MemoryStats(
        cache=stats.get("file", 0),
        usage=MemoryData(
            usage=_int(f"{directory}/memory.current"),
            max_usage=_int(f"{directory}/memory.peak"),
            failcnt=events.get("max", 0),
            limit=_int(f"{directory}/memory.max"),
        ),
        swap_usage=MemoryData(
            usage=_int(f"{directory}/memory.swap.current"),
            max_usage=_int(f"{directory}/memory.swap.peak"),
            failcnt=swap_events.get("max", 0),
            limit=_int(f"{directory}/memory.swap.max"),
        ),
        use_hierarchy=True,
        stats=stats,
    )


IO_V2_BYTES = {"rbytes": "Read", "wbytes": "Write", "dbytes": "Discard"}
IO_V2_IOS = {"rios": "Read", "wios": "Write", "dios": "Discard"}


def io_v2(directory: str) -> BlkioStats:
    stats = BlkioStats()
    for line in (_text(f"{directory}/io.stat") or "").splitlines():
        fields = line.split()
        device = _device(fields[0]) if fields else None
        if device is None:
            continue
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if not value.isdigit():
                continue
            if key in IO_V2_BYTES:
                stats.io_service_bytes_recursive.append(BlkioStatsEntry(*device, IO_V2_BYTES[key], int(value)))
            elif key in IO_V2_IOS:
                stats.io_serviced_recursive.append(BlkioStatsEntry(*device, IO_V2_IOS[key], int(value)))
    return stats


def hugetlb_v2(directory: str) -> dict[str, HugetlbStats]:
    result: dict[str, HugetlbStats] = {}
    for entry in _matching(directory, "hugetlb.", ".current"):
        size = os.path.basename(entry).split(".")[1]
        result[size] = HugetlbStats(
            usage=_int(entry),
            max_usage=_int(f"{directory}/hugetlb.{size}.max_usage_in_bytes"),
            failcnt=flat_keyed(f"{directory}/hugetlb.{size}.events").get("max", 0),
        )
    return result


def read_v2(cgroup: str | os.PathLike[str]) -> CgroupStats:
    directory = os.fspath(cgroup)
    return CgroupStats(
        cpu_stats=cpu_v2(directory),
        memory_stats=memory_v2(directory),
        pids_stats=pids_stats(directory),
        blkio_stats=io_v2(directory),
        hugetlb_stats=hugetlb_v2(directory),
    )


def read_v1(directories_of: Mapping[str, str | os.PathLike[str]]) -> CgroupStats:
    directories = {name: os.fspath(directory) for name, directory in directories_of.items()}
    return CgroupStats(
        cpu_stats=cpu_v1(directories.get("cpuacct"), directories.get("cpu")),
        memory_stats=memory_v1(directories.get("memory")),
        pids_stats=pids_stats(directories.get("pids")),
        blkio_stats=blkio_v1(directories.get("blkio")),
        hugetlb_stats=hugetlb_v1(directories.get("hugetlb")),
    )
