"""``pykata-runc events``: a container's resource usage and OOM kills, as JSON lines in runc's format.

``events ID`` prints a ``stats`` event every ``--interval`` (5 s by default) and an ``oom`` event as
soon as the kernel OOM-kills one of the container's processes, until the container's init has ended;
``events --stats ID`` prints one ``stats`` event and exits. Each event is one line:
``{"type": "stats", "id": ID, "data": {...}}`` or ``{"type": "oom", "id": ID}``, the data laid out
as runc's (its ``types.Stats``: ``cpu``, ``cpuset``, ``memory``, ``pids``, ``blkio``, ``hugetlb``,
with runc's key names and its rule of leaving out a zero where runc's encoder does), so a tool that
reads ``runc events`` reads these. The figures come from the engine's cgroup stats (the ones
StatsContainer reports), and OOM kills from the agent's OOM watcher (memory.events on cgroup v2, an
eventfd on memory.oom_control on v1).
"""

from __future__ import annotations

import time

from agent.container.cli_args import CliError
from agent.system import jsonlite

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from agent.container.cgroups.oom import OomWatcher
    from agent.container.cli import Context
    from agent.container.engine import Container

DEFAULT_INTERVAL = "5s"
EXIT_CHECK = 0.25  # seconds: how soon the stream notices that the container ended
OOM_GRACE = 0.05  # seconds to wait, once the init has ended, for an OOM kill the watcher has not passed on
OOM_GRACE_KILLED = 1.0  # the same when the init was killed by SIGKILL, as by the OOM killer
# Go's time.ParseDuration units, as runc's --interval takes them
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("5s", "500ms", "1m30s", "1.5h"); CliError naming ``text`` otherwise."""
    rest = text.strip()
    total = 0.0
    if not rest:
        raise CliError(f"--interval: {text!r} is not a duration (e.g. 5s, 500ms, 1m30s)")
    while rest:
        digits = 0
        while digits < len(rest) and (rest[digits].isdigit() or rest[digits] == "."):
            digits += 1
        unit = digits
        while unit < len(rest) and not (rest[unit].isdigit() or rest[unit] == "."):
            unit += 1
        number, name = rest[:digits], rest[digits:unit]
        if not number or number == "." or number.count(".") > 1 or name not in _UNITS:
            raise CliError(f"--interval: {text!r} is not a duration (e.g. 5s, 500ms, 1m30s)")
        total += float(number) * _UNITS[name]
        rest = rest[unit:]
    return total


def _omit_zero(**fields: Any) -> dict[str, Any]:
    """The fields whose value is not zero or empty (runc's encoder, ``omitempty``)."""
    return {key: value for key, value in fields.items() if value}


def _memory_entry(data: Any) -> dict[str, Any]:
    return {"limit": data.limit, **_omit_zero(usage=data.usage, max=data.max_usage), "failcnt": data.failcnt}


def _blkio_entries(entries: list[Any]) -> list[dict[str, Any]]:
    return [_omit_zero(major=e.major, minor=e.minor, op=e.op, value=e.value) for e in entries]


def _cpuset(container: Container) -> dict[str, Any]:
    """The container's cpus and memory nodes (cgroup v1's cpuset, or v2's effective ones); {} without a
    cpuset controller."""
    from agent.errors import Unsupported
    from agent.hotplug.cpuset import parse_cpuset
    from agent.system import sysfs

    try:
        directory = container.cgroup.cpuset_dir()
    except Unsupported:  # no cpuset controller here: nothing to report
        return {}
    out: dict[str, Any] = {}
    # v2's effective sets, v1's (named the other way round), then what was asked for
    wanted = (("cpus", ("cpuset.cpus.effective", "cpuset.effective_cpus", "cpuset.cpus")),
              ("mems", ("cpuset.mems.effective", "cpuset.effective_mems", "cpuset.mems")))  # fmt: skip
    for key, names in wanted:
        for name in names:
            try:
                text = sysfs.read_text(f"{directory}/{name}")
            except OSError:
                continue
            if text:
                out[key] = sorted(parse_cpuset(text, what=name))
            break
    return out


def stats_data(stats: Any, cpuset: dict[str, Any]) -> dict[str, Any]:
    """runc's ``types.Stats`` for the engine's cgroup stats (agent.container.cgroups.CgroupStats)."""
    cpu, memory, blkio = stats.cpu_stats, stats.memory_stats, stats.blkio_stats
    usage, throttling = cpu.cpu_usage, cpu.throttling_data
    cpu_usage = _omit_zero(total=usage.total_usage, percpu=list(usage.percpu_usage))
    cpu_usage.update(kernel=usage.usage_in_kernelmode, user=usage.usage_in_usermode)
    hugetlb = {size: {**_omit_zero(usage=h.usage, max=h.max_usage), "failcnt": h.failcnt}
               for size, h in stats.hugetlb_stats.items()}  # fmt: skip
    return {
        "cpu": {
            "usage": cpu_usage,
            "throttling": _omit_zero(
                periods=throttling.periods,
                throttledPeriods=throttling.throttled_periods,
                throttledTime=throttling.throttled_time,
            ),
        },
        "cpuset": cpuset,
        "memory": {
            **_omit_zero(cache=memory.cache),
            "usage": _memory_entry(memory.usage),
            "swap": _memory_entry(memory.swap_usage),
            "kernel": _memory_entry(memory.kernel_usage),
            "kernelTCP": {"limit": 0, "failcnt": 0},  # not read: cgroup v1's kmem.tcp is deprecated
            **_omit_zero(raw=dict(memory.stats)),
        },
        "pids": _omit_zero(current=stats.pids_stats.current, limit=stats.pids_stats.limit),
        "blkio": _omit_zero(
            ioServiceBytesRecursive=_blkio_entries(blkio.io_service_bytes_recursive),
            ioServicedRecursive=_blkio_entries(blkio.io_serviced_recursive),
            ioQueueRecursive=_blkio_entries(blkio.io_queued_recursive),
            ioServiceTimeRecursive=_blkio_entries(blkio.io_service_time_recursive),
            ioWaitTimeRecursive=_blkio_entries(blkio.io_wait_time_recursive),
            ioMergedRecursive=_blkio_entries(blkio.io_merged_recursive),
            ioTimeRecursive=_blkio_entries(blkio.io_time_recursive),
            sectorsRecursive=_blkio_entries(blkio.sectors_recursive),
        ),
        "hugetlb": hugetlb,
        "intel_rdt": {},
        "network_interfaces": None,
    }


def _emit(event: dict[str, Any]) -> None:
    print(jsonlite.dumps(event, separators=(",", ":")), flush=True)


def _stats_event(container_id: str, container: Container) -> dict[str, Any]:
    return {"type": "stats", "id": container_id, "data": stats_data(container.stats(), _cpuset(container))}


def cmd_events(ctx: Context) -> int:
    from agent.container.state import Status

    container_id = ctx.args[0]
    interval = parse_duration(ctx.flags["interval"] or DEFAULT_INTERVAL)
    if interval <= 0:
        raise CliError(f"--interval {ctx.flags['interval']}: the interval must be more than 0")
    _record, container = ctx.open(container_id)
    if container.status is Status.STOPPED:
        raise CliError(f"container {container_id} is not running")
    try:
        if ctx.flags["stats"]:
            _emit(_stats_event(container_id, container))
            return 0
        _stream(ctx, container_id, container, interval)
    except BrokenPipeError:  # the reader went away (`| head -1`): nothing more to say
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


def _stream(ctx: Context, container_id: str, container: Container, interval: float) -> None:
    """Stats every ``interval`` seconds and OOM kills as they come, until the container's init ends."""
    watcher = _oom_watcher(ctx, container_id, container)
    try:
        next_stats = time.monotonic()
        while container.init is not None and container.init.exit_code is None:
            now = time.monotonic()
            if now >= next_stats:
                _emit(_stats_event(container_id, container))
                next_stats = max(next_stats + interval, now)  # a slow read skips ticks, it does not pile them
            wait = max(min(next_stats - time.monotonic(), EXIT_CHECK), 0.0)
            if watcher is None:
                time.sleep(wait)
            elif watcher.next_event(timeout=wait) is not None:
                _emit({"type": "oom", "id": container_id})
        if watcher is not None:
            # the watcher's thread may not have passed on an OOM kill that ended the init yet: wait for
            # it a little (longer when the init was killed, as the OOM killer does, by SIGKILL)
            killed = container.init is not None and container.init.exit_code == 128 + 9
            while watcher.next_event(timeout=OOM_GRACE_KILLED if killed else OOM_GRACE) is not None:
                _emit({"type": "oom", "id": container_id})
    finally:
        if watcher is not None:
            watcher.close()


def _oom_watcher(ctx: Context, container_id: str, container: Container) -> OomWatcher | None:
    """The agent's OOM watcher on the container's cgroup; None (and a warning) where it cannot watch."""
    from agent.container.cgroups.oom import OomWatcher
    from agent.errors import AgentError

    watcher = OomWatcher()
    try:
        watcher.add(container_id, container.cgroup)
    except (AgentError, OSError) as exc:
        watcher.close()
        ctx.log.warning(f"container {container_id}: no OOM events: {exc}")
        return None
    return watcher
