"""The mem-agent's compaction on a fake tree: fragmentation from pagetypeinfo/buddyinfo, the threshold,
forced runs, the PSI gates, the child that writes compact_memory and is killed when it must be."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.memagent.compact import ChildCompaction, Compactor, free_pages_below, max_page_order
from agent.memagent.config import NEVER, CompactConfig, CompactUpdate
from agent.system import children
from agent.system.paths import HostPaths
from tests.helpers.memagent import (
    BUDDYINFO,
    PAGE_SIZE,
    PAGETYPEINFO,
    PAGETYPEINFO_MOVABLE_BELOW_9,
    FakeClock,
    fake_mm_tree,
    meminfo,
    write_pressure,
)


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    return fake_mm_tree(tmp_path / "root")


class FakeChild:
    """A compaction that ends after ``runs_for`` looks (never, with None); ``on_poll`` runs at each look."""

    def __init__(self, runs_for: int | None = 0, status: int = 0, on_poll: object = None) -> None:
        self.runs_for = runs_for
        self.status = status
        self.polls = 0
        self.killed = False
        self.finished = False
        self.on_poll = on_poll

    def poll(self) -> int | None:
        self.polls += 1
        if callable(self.on_poll):
            self.on_poll(self)
        if self.killed:
            return -9
        if self.runs_for is not None and self.polls > self.runs_for:
            return self.status
        return None

    def kill(self) -> None:
        self.killed = True

    def wait(self, timeout: float) -> int | None:
        return -9 if self.killed else self.status

    def finish(self) -> str:
        self.finished = True
        return "" if self.status == 0 else "PermissionError: denied"


class Launcher:
    def __init__(self, *children: FakeChild) -> None:
        self.children = list(children)
        self.launched: list[str] = []

    def __call__(self, compact_memory: str) -> FakeChild:
        self.launched.append(compact_memory)
        return self.children.pop(0) if self.children else FakeChild()


def compactor(paths: HostPaths, launcher: Launcher, **config: object) -> Compactor:
    part = Compactor(
        paths,
        CompactConfig(**config),  # type: ignore[arg-type]
        clock=FakeClock(),
        launcher=launcher,
        poll_interval=0.0,
        page_size=PAGE_SIZE,
    )
    assert part.probe() == ""
    return part


# --- fragmentation
def test_free_movable_pages_below_an_order_come_from_pagetypeinfo() -> None:
    assert free_pages_below(PAGETYPEINFO, 9, movable_only=True) == PAGETYPEINFO_MOVABLE_BELOW_9
    assert free_pages_below(PAGETYPEINFO, 1, movable_only=True) == 100
    assert free_pages_below(PAGETYPEINFO, 0, movable_only=True) == 0


def test_buddyinfo_counts_every_free_page_below_an_order() -> None:
    assert free_pages_below(BUDDYINFO, 2, movable_only=False) == (1 + 2) + (400 + 600)


def test_the_highest_page_order_is_read_from_buddyinfo(paths: HostPaths) -> None:
    assert max_page_order(paths) == 10
    Path(paths.buddyinfo).write_text("Node 0, zone   Normal  1 2 3 4 5 6 7 8 9 10 11 12 13\n")
    assert max_page_order(paths) == 12
    Path(paths.buddyinfo).unlink()
    assert max_page_order(paths) == 10  # the x86-64 default when the kernel does not say


# --- one period
def test_compacts_when_free_movable_pages_grew_past_the_threshold(paths: HostPaths) -> None:
    launcher = Launcher()
    part = compactor(paths, launcher, compact_threshold=500)
    part.run_period(part.config)  # 956 free movable pages below order 9, none before
    assert launcher.launched == [paths.compact_memory]
    part.run_period(part.config)  # no growth since that compaction
    assert len(launcher.launched) == 1
    counters = part.status().counters
    assert (counters["compactions"], counters["threshold_skips"]) == (1, 1)


def test_a_drop_of_free_memory_past_the_threshold_compacts(paths: HostPaths) -> None:
    launcher = Launcher()
    part = compactor(paths, launcher, compact_threshold=500)
    part.run_period(part.config)
    # 500 pages of 4 KiB: MemFree fell by more than 2000 kB
    Path(paths.meminfo).write_text(meminfo(mem_free_kb=400_000 - 2001))
    part.run_period(part.config)
    assert len(launcher.launched) == 2


def test_below_the_threshold_nothing_is_compacted(paths: HostPaths) -> None:
    launcher = Launcher()
    part = compactor(paths, launcher)  # threshold 1024 pages: 956 is below
    part.run_period(part.config)
    assert launcher.launched == []
    assert part.status().counters["threshold_skips"] == 1


def test_compact_order_decides_which_free_pages_count(paths: HostPaths) -> None:
    launcher = Launcher()
    part = compactor(paths, launcher, compact_order=10)  # 956 + 512 order-9 pages
    part.run_period(part.config)
    assert len(launcher.launched) == 1


def test_buddyinfo_stands_in_when_pagetypeinfo_cannot_be_read(paths: HostPaths) -> None:
    Path(paths.pagetypeinfo).unlink()
    launcher = Launcher()
    part = compactor(paths, launcher)  # every free page of buddyinfo below order 9: over 1024
    part.run_period(part.config)
    assert len(launcher.launched) == 1


def test_compaction_is_forced_after_compact_force_times_periods(paths: HostPaths) -> None:
    launcher = Launcher()
    part = compactor(paths, launcher, compact_force_times=2)
    for _ in range(3):
        part.run_period(part.config)
    assert len(launcher.launched) == 1  # skipped twice, then forced
    assert part.status().counters["forced"] == 1
    every = Launcher()
    part = compactor(paths, every, compact_force_times=0)
    for _ in range(2):
        part.run_period(part.config)
    assert len(every.launched) == 2
    never = Launcher()
    part = compactor(paths, never, compact_force_times=NEVER)
    for _ in range(3):
        part.run_period(part.config)
    assert never.launched == []


def test_no_compaction_after_a_period_of_stall(paths: HostPaths) -> None:
    launcher = Launcher()
    part = compactor(paths, launcher, compact_force_times=0, period_psi_percent_limit=10)
    write_pressure(paths.pressure_dir, memory_us=0, io_us=80_000_000)  # io stall counts too
    part.run_period(part.config)
    assert launcher.launched == []
    assert part.status().counters["psi_skips"] == 1
    part.run_period(part.config)  # quiet since
    assert len(launcher.launched) == 1


def test_a_compaction_that_stalls_the_guest_is_killed(paths: HostPaths) -> None:
    def stall(child: FakeChild) -> None:
        write_pressure(paths.pressure_dir, memory_us=50_000_000 * child.polls)

    child = FakeChild(runs_for=None, on_poll=stall)
    part = compactor(paths, Launcher(child), compact_force_times=0, compact_psi_percent_limit=5)
    part.run_period(part.config)
    assert child.killed and child.finished
    assert part.status().counters["psi_stops"] == 1


def test_a_compaction_that_runs_too_long_is_killed(paths: HostPaths) -> None:
    child = FakeChild(runs_for=None)
    part = compactor(paths, Launcher(child), compact_force_times=0, compact_sec_max=3)
    part.run_period(part.config)  # the fake clock moves a second at each look
    assert child.killed and child.finished
    assert part.status().counters["timeouts"] == 1
    assert child.polls >= 2  # it was looked at, and let run, before the limit


def test_a_compaction_that_ends_is_not_killed(paths: HostPaths) -> None:
    child = FakeChild(runs_for=2)
    part = compactor(paths, Launcher(child), compact_force_times=0)
    part.run_period(part.config)
    assert not child.killed and child.finished
    assert part.status().errors == 0


def test_a_failed_compaction_is_an_error(paths: HostPaths) -> None:
    child = FakeChild(runs_for=0, status=1)
    part = compactor(paths, Launcher(child), compact_force_times=0)
    part.run_period(part.config)
    status = part.status()
    assert status.errors == 1
    assert "exit status 1" in status.last_error and "PermissionError" in status.last_error


def test_disabling_stops_a_running_compaction(paths: HostPaths) -> None:
    part: Compactor

    def disable(child: FakeChild) -> None:
        if child.polls == 2:
            part.reconfigure(CompactUpdate(disabled=True).apply)

    child = FakeChild(runs_for=None, on_poll=disable)
    part = compactor(paths, Launcher(child), compact_force_times=0)
    part._available = True  # as its thread sets it after probing
    part.run_period(part.config)
    assert child.killed
    assert part.status().counters["timeouts"] == part.status().counters["psi_stops"] == 0


def test_the_child_writes_1_to_compact_memory(paths: HostPaths) -> None:
    child = ChildCompaction(paths.compact_memory)
    assert child.wait(60) == 0
    assert child.finish() == ""
    assert Path(paths.compact_memory).read_text() == "1"
    assert child._child.pid not in children.owned()  # released: the reaper may forget it


def test_a_real_child_that_fails_reports_why(paths: HostPaths) -> None:
    Path(paths.compact_memory).unlink()
    Path(paths.compact_memory).mkdir()
    part = Compactor(paths, CompactConfig(compact_force_times=0), poll_interval=0.05)
    assert part.probe() == ""
    part.run_period(part.config)
    status = part.status()
    assert status.counters["compactions"] == 1
    assert "IsADirectoryError" in status.last_error


# --- the kernel's features
def test_without_compaction_in_the_kernel_the_part_is_off(paths: HostPaths) -> None:
    Path(paths.compact_memory).unlink()
    part = Compactor(paths, CompactConfig())
    part.start()
    assert part.wait_for(lambda s: s.available is not None, timeout=30)
    assert part.stop()
    status = part.status()
    assert status.available is False
    assert "compaction (CONFIG_COMPACTION)" in status.missing


def test_without_psi_the_part_is_off(paths: HostPaths) -> None:
    (Path(paths.pressure_dir) / "io").unlink()
    assert "PSI" in Compactor(paths, CompactConfig()).probe()


def test_switching_compaction_on_waits_a_full_period(paths: HostPaths) -> None:
    part = compactor(paths, Launcher(), disabled=True, period_secs=100)
    part._available = True
    part.reconfigure(CompactUpdate(disabled=False).apply)
    assert 0 < part._due_in() <= 100
    # a new period length keeps the timer's start (Kata's set_sleep_duration)
    part.reconfigure(CompactUpdate(period_secs=100_000).apply)
    assert 100 < part._due_in() <= 100_000


def test_a_compaction_whose_watch_fails_is_killed_and_reaped(paths: HostPaths) -> None:
    def break_psi(child: FakeChild) -> None:
        (Path(paths.pressure_dir) / "memory").write_text("garbage\n")

    child = FakeChild(runs_for=None, on_poll=break_psi)

    class Boom(Exception):
        pass

    part = compactor(paths, Launcher(child), compact_force_times=0)

    def explode(seconds: float) -> None:
        raise Boom

    part.pause = explode  # type: ignore[method-assign]
    with pytest.raises(Boom):
        part.run_period(part.config)
    assert child.killed and child.finished
    assert "reading the guest's pressure" in part.status().last_error
