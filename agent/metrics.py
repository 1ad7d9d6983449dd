"""Prometheus text exposition for GetMetrics: the agent process and the guest.

Everything is read from procfs through HostPaths (so tests use a fake tree): the agent's RSS, threads,
CPU time and open fds from /proc/self, the guest's load averages and /proc/meminfo fields.
Metric names follow Kata's agent (kata_agent_*, kata_guest_*).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.memagent import MemAgentStatus


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "gauge" or "counter"
    help: str
    samples: tuple[Sample, ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    """Prometheus text format 0.0.4: # HELP, # TYPE, then one line per sample."""
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for sample in metric.samples:
            labels = ",".join(f'{key}="{_escape_label(value)}"' for key, value in sample.labels)
            suffix = f"{{{labels}}}" if labels else ""
            lines.append(f"{metric.name}{suffix} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _kib(value: str) -> int:
    number, _, unit = value.partition(" ")
    return int(number) * 1024 if unit.strip().lower() == "kb" else int(number)


def _read(path: str) -> str:
    with open(path) as stream:
        return stream.read()


def agent_metrics(paths: HostPaths) -> list[Metric]:
    me = f"{paths.proc}/self"
    status = _status_fields(_read(f"{me}/status"))
    stat = _read(f"{me}/stat")
    # fields after "(comm)": state is field 3; utime and stime are fields 14 and 15 (man 5 proc)
    after_comm = stat[stat.rfind(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime = int(after_comm[11]) / ticks, int(after_comm[12]) / ticks
    open_fds = len(os.listdir(f"{me}/fd"))
    return [
        Metric(
            "kata_agent_process_resident_memory_bytes",
            "gauge",
            "Resident set size of the agent process in bytes.",
            (Sample((), _kib(status.get("VmRSS", "0 kB"))),),
        ),
        Metric(
            "kata_agent_threads",
            "gauge",
            "Number of threads of the agent process.",
            (Sample((), int(status.get("Threads", "0"))),),
        ),
        Metric(
            "kata_agent_process_cpu_seconds_total",
            "counter",
            "CPU time the agent process has used, in seconds, by mode.",
            (Sample((("item", "user"),), utime), Sample((("item", "system"),), stime)),
        ),
        Metric(
            "kata_agent_open_fds",
            "gauge",
            "Number of open file descriptors of the agent process.",
            (Sample((), open_fds),),
        ),
    ]


def guest_metrics(paths: HostPaths) -> list[Metric]:
    load = _read(paths.loadavg).split()
    meminfo = _status_fields(_read(paths.meminfo))
    return [
        Metric(
            "kata_guest_load",
            "gauge",
            "Guest load averages over 1, 5 and 15 minutes.",
            tuple(
                Sample((("item", name),), float(value))
                for name, value in zip(("load1", "load5", "load15"), load[:3], strict=True)
            ),
        ),
        Metric(
            "kata_guest_meminfo_bytes",
            "gauge",
            "Guest /proc/meminfo fields in bytes (page counts as they are).",
            tuple(Sample((("item", key),), _kib(value)) for key, value in meminfo.items()),
        ),
    ]


def mem_agent_metrics(status: MemAgentStatus) -> list[Metric]:
    """The mem-agent's parts: whether each is available and on, its periods, errors and own counts."""
    parts = (status.memcg, status.compact)
    metrics = [
        Metric(
            "kata_agent_mem_agent_available",
            "gauge",
            "1 when the guest kernel has what the mem-agent part needs (MGLRU, PSI, compaction).",
            tuple(Sample((("part", part.name),), 1 if part.available else 0) for part in parts),
        ),
        Metric(
            "kata_agent_mem_agent_enabled",
            "gauge",
            "1 when the mem-agent part is switched on.",
            tuple(Sample((("part", part.name),), 1 if part.enabled else 0) for part in parts),
        ),
    ]
    for part in parts:
        counts = {"periods": part.periods, "errors": part.errors, **part.counters}
        metrics.append(
            Metric(
                f"kata_agent_mem_agent_{part.name}_total",
                "counter",
                f"mem-agent {part.name} counts since the agent started, by item.",
                tuple(Sample((("item", name),), value) for name, value in counts.items()),
            )
        )
    return metrics


def collect(paths: HostPaths, extra: Iterable[Metric] = ()) -> str:
    return render([*agent_metrics(paths), *guest_metrics(paths), *extra])
