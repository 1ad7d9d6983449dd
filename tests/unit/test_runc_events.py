"""``pykata-runc events``: Go durations for --interval, and the stats laid out as runc's encoder does."""

from __future__ import annotations

import pytest

from agent.container.cgroups.stats import BlkioStatsEntry, CgroupStats, HugetlbStats
from agent.container.cli_args import CliError
from agent.container.cli_events import parse_duration, stats_data


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 250e-6), ("2µs", 2e-6),
     ("10ns", 1e-8), (" 3s ", 3.0)],
)  # fmt: skip
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5x", "s", "1..5s", "ms5", "-1s", "5 s"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(CliError, match="is not a duration"):
        parse_duration(text)


def test_zeros_are_left_out_where_runcs_encoder_leaves_them_out() -> None:
    data = stats_data(CgroupStats(), {})
    assert data["cpu"] == {"usage": {"kernel": 0, "user": 0}, "throttling": {}}
    assert data["memory"] == {
        "usage": {"limit": 0, "failcnt": 0},
        "swap": {"limit": 0, "failcnt": 0},
        "kernel": {"limit": 0, "failcnt": 0},
        "kernelTCP": {"limit": 0, "failcnt": 0},
    }
    assert (data["pids"], data["blkio"], data["hugetlb"], data["intel_rdt"]) == ({}, {}, {}, {})
    assert data["network_interfaces"] is None


def test_figures_go_under_runcs_names() -> None:
    stats = CgroupStats()
    stats.cpu_stats.cpu_usage.total_usage = 30
    stats.cpu_stats.cpu_usage.percpu_usage = [10, 20]
    stats.cpu_stats.throttling_data.throttled_periods = 4
    stats.memory_stats.cache = 7
    stats.memory_stats.usage.usage = 100
    stats.memory_stats.usage.max_usage = 150
    stats.memory_stats.usage.limit = 200
    stats.memory_stats.stats = {"rss": 5}
    stats.pids_stats.current = 3
    stats.blkio_stats.io_queued_recursive = [BlkioStatsEntry(8, 0, "Read", 2), BlkioStatsEntry(8, 0, "Write", 0)]
    stats.hugetlb_stats = {"2MB": HugetlbStats(usage=0, max_usage=4096, failcnt=1)}
    data = stats_data(stats, {"cpus": [0, 1]})
    assert data["cpu"]["usage"] == {"total": 30, "percpu": [10, 20], "kernel": 0, "user": 0}
    assert data["cpu"]["throttling"] == {"throttledPeriods": 4}
    assert data["memory"]["cache"] == 7 and data["memory"]["raw"] == {"rss": 5}
    assert data["memory"]["usage"] == {"limit": 200, "usage": 100, "max": 150, "failcnt": 0}
    assert data["pids"] == {"current": 3}
    # runc's key for the queued entries is ioQueueRecursive; a zero value is left out of an entry
    assert data["blkio"] == {"ioQueueRecursive": [{"major": 8, "op": "Read", "value": 2}, {"major": 8, "op": "Write"}]}
    assert data["hugetlb"] == {"2MB": {"max": 4096, "failcnt": 1}}
    assert data["cpuset"] == {"cpus": [0, 1]}
