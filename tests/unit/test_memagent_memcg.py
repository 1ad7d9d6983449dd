"""The mem-agent's memcg reclaim on a fake tree: lru_gen parsing, the exact commands it writes, the PSI
gates, the swap choices, missing kernel features, and its thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import Unsupported
from agent.memagent.config import MemcgConfig, MemcgUpdate
from agent.memagent.memcg import MAX_EVICTION_STEPS, MemcgReclaimer, swappiness_for
from agent.memagent.mglru import LruGenFile, aging_command, eviction_command, parse_enabled, parse_lru_gen
from agent.system.paths import HostPaths
from tests.helpers.memagent import (
    PAGE_SIZE,
    FakeClock,
    SimulatedLruGen,
    fake_mm_tree,
    make_cgroup,
    write_pressure,
)

LRU_GEN_TEXT = """memcg     1 /
 node     0
          0      50123          0        300
          1      50123          7          0
          2      50123          0          0
          3       1200        120         45
memcg     5 /kubepods/pod a
 node     0
          4     900000         12       2048
          5     800000          0         10
          6     700000          -3          0
          7      60500        100        200
 node     1
          2     900000          0          1
          3     800000          0          2
memcg     0 /dying
 node     0
          0          5          0          0
"""

OLD = 120_000  # ms: generations older than the minute below which a memcg is not aged


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    return fake_mm_tree(tmp_path / "root")


def reclaimer(paths: HostPaths, sim: SimulatedLruGen, **config: object) -> MemcgReclaimer:
    part = MemcgReclaimer(paths, MemcgConfig(**config), clock=FakeClock(), lru_gen=sim, page_size=PAGE_SIZE)  # type: ignore[arg-type]
    assert part.probe() == ""
    return part


def four_old_generations(file_pages: int, anon_pages: int = 0) -> list[tuple[int, int, int, int]]:
    # the kernel puts clean page cache read once into the oldest generation
    return [(0, OLD, anon_pages, file_pages), (1, OLD, 0, 0), (2, OLD, 0, 0), (3, OLD, 0, 0)]


# --- the interface
def test_parse_lru_gen_reads_every_memcg_and_node() -> None:
    memcgs = parse_lru_gen(LRU_GEN_TEXT)
    assert sorted(memcgs) == ["/", "/dying", "/kubepods/pod a"]
    root = memcgs["/"]
    assert root.memcg_id == 1
    node = root.nodes[0]
    assert (node.min_seq, node.max_seq, node.youngest_age_ms) == (0, 3, 1200)
    assert (node.oldest.anon, node.oldest.file) == (0, 300)
    pod = memcgs["/kubepods/pod a"]
    assert pod.memcg_id == 5
    assert sorted(pod.nodes) == [0, 1]
    assert [gen.anon for gen in pod.nodes[0].generations] == [12, 0, 0, 100]  # a negative count reads as 0
    assert (pod.nodes[1].min_seq, pod.nodes[1].max_seq) == (2, 3)
    assert memcgs["/dying"].memcg_id == 0


def test_commands_have_the_kernels_syntax() -> None:
    assert aging_command(5, 0, 7, can_swap=False) == "+ 5 0 7 0 1"
    assert aging_command(5, 1, 7, can_swap=True, force_scan=False) == "+ 5 1 7 1 0"
    assert eviction_command(5, 0, 4, 30, 1) == "- 5 0 4 30 1"


def test_parse_enabled_reads_the_kernels_spellings() -> None:
    assert parse_enabled("0x0007\n") == 7
    assert parse_enabled("0x0000") == 0
    assert parse_enabled("7") == 7
    assert parse_enabled("y") == 7


def test_the_lru_gen_file_is_read_and_written_as_is(paths: HostPaths) -> None:
    Path(paths.lru_gen).write_text(LRU_GEN_TEXT)
    lru_gen = LruGenFile(paths)
    assert lru_gen.read()["/kubepods/pod a"].memcg_id == 5
    lru_gen.write("+ 5 0 7 0 1")
    assert Path(paths.lru_gen).read_text() == "+ 5 0 7 0 1"


def test_swappiness_follows_the_anon_share_up_to_the_maximum() -> None:
    assert swappiness_for(100, 50, 200) == 133  # Kata's own example
    assert swappiness_for(100, 300, 200) == 50
    assert swappiness_for(100, 300, 30) == 30
    assert swappiness_for(1, 2, 200) == 67  # 66.67 rounds up


# --- one period
def test_a_period_ages_then_evicts_the_oldest_generation(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen(batch=100)
    sim.add("/", 1, [(0, 5000, 0, 50), (1, 5000, 0, 0), (2, 5000, 0, 0), (3, 1000, 0, 0)])  # aged a second ago
    sim.add("/ma", 7, four_old_generations(file_pages=300))
    sim.add("/dying", 0, four_old_generations(file_pages=300))  # memcg id 0: a dying memcg
    sim.add("/gone", 9, four_old_generations(file_pages=300))  # no directory: passed over

    part = reclaimer(paths, sim, eviction_run_aging_count_min=1)
    part.run_period(part.config)

    assert sim.commands == ["+ 7 0 3 0 1", "- 7 0 1 0 1", "- 7 0 1 0 1", "- 7 0 1 0 1"]
    counters = part.status().counters
    assert counters["agings"] == 1
    assert counters["fresh_skips"] == 1  # the root memcg: its newest generation is a second old
    assert counters["evictions"] == 3
    assert counters["pages_reclaimed"] == 300
    assert counters["bytes_reclaimed"] == 300 * PAGE_SIZE
    assert part.status().errors == 0


def test_eviction_waits_for_enough_agings(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen(batch=1000)
    sim.add("/ma", 7, four_old_generations(file_pages=300))
    part = reclaimer(paths, sim)  # eviction_run_aging_count_min: 3
    for _ in range(2):
        part.run_period(part.config)
        sim.advance(61_000)
    assert sim.commands == ["+ 7 0 3 0 1", "+ 7 0 4 0 1"]
    part.run_period(part.config)
    assert sim.commands[2:] == ["+ 7 0 5 0 1", "- 7 0 3 0 1"]


def test_a_memcg_aged_within_the_minute_is_not_aged_again(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen()
    sim.add("/ma", 7, four_old_generations(file_pages=300))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=10)
    part.run_period(part.config)
    sim.advance(30_000)
    part.run_period(part.config)
    assert sim.commands == ["+ 7 0 3 0 1"]
    assert part.status().counters["fresh_skips"] == 1


def test_a_memcg_stalling_over_the_period_limit_is_left_alone(paths: HostPaths) -> None:
    cgroup = make_cgroup(paths, "/ma")
    sim = SimulatedLruGen()
    sim.add("/ma", 7, four_old_generations(file_pages=300))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=1, period_psi_percent_limit=10)
    part.run_period(part.config)  # first sight: aged and evicted
    done = list(sim.commands)
    sim.advance(OLD)
    write_pressure(cgroup, memory_us=50_000_000)  # 50 s of stall over a few seconds of the fake clock
    part.run_period(part.config)
    assert sim.commands == done  # nothing this period
    assert part.status().counters["psi_skips"] == 1
    sim.advance(OLD)
    part.run_period(part.config)  # no new stall since: reclaimed again
    assert len(sim.commands) > len(done)


def test_the_stall_of_children_does_not_count_against_a_parent(paths: HostPaths) -> None:
    parent = make_cgroup(paths, "/pod")
    child = make_cgroup(paths, "/pod/c1")
    sim = SimulatedLruGen()
    sim.add("/pod", 7, four_old_generations(file_pages=300))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=100, period_psi_percent_limit=10)
    part.run_period(part.config)
    sim.advance(OLD)
    # the child stalled, and the parent's total (which includes it) rose by as much
    write_pressure(child, memory_us=50_000_000)
    write_pressure(parent, memory_us=50_000_000)
    part.run_period(part.config)
    assert sim.commands == ["+ 7 0 3 0 1", "+ 7 0 4 0 1"]
    assert part.status().counters["psi_skips"] == 0


def test_eviction_stops_when_the_memcg_starts_stalling(paths: HostPaths) -> None:
    cgroup = make_cgroup(paths, "/ma")
    sim = SimulatedLruGen(batch=100)
    sim.add("/ma", 7, four_old_generations(file_pages=1000))

    def stall_after_first_eviction(command: str) -> None:
        if command.startswith("-"):
            write_pressure(cgroup, memory_us=50_000_000)

    sim.after_write = stall_after_first_eviction
    part = reclaimer(paths, sim, eviction_run_aging_count_min=1, eviction_psi_percent_limit=5)
    part.run_period(part.config)
    assert sim.commands == ["+ 7 0 3 0 1", "- 7 0 1 0 1"]
    counters = part.status().counters
    assert counters["eviction_psi_stops"] == 1
    assert counters["pages_reclaimed"] == 100


def test_swap_lets_eviction_take_anon_pages_at_a_capped_swappiness(tmp_path: Path) -> None:
    paths = fake_mm_tree(tmp_path / "root", swap_free_kb=1_000_000)
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen(batch=1000)
    sim.add("/ma", 7, four_old_generations(file_pages=300, anon_pages=100))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=1, swap=True, swappiness_max=30)
    part.run_period(part.config)
    # can_swap in the aging; the anon share (100 of 400 pages: 50) capped at 30 in the eviction
    assert sim.commands == ["+ 7 0 3 1 1", "- 7 0 1 30 1"]


def test_without_free_swap_only_file_pages_are_evicted(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen(batch=1000)
    sim.add("/ma", 7, four_old_generations(file_pages=300, anon_pages=100))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=1, swap=True)
    part.run_period(part.config)
    assert sim.commands == ["+ 7 0 3 1 1", "- 7 0 1 0 1"]  # SwapFree is 0 kB


def test_only_anon_pages_left_are_evicted_through_swap_alone(tmp_path: Path) -> None:
    paths = fake_mm_tree(tmp_path / "root", swap_free_kb=1_000_000)
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen(batch=1000)
    sim.add("/ma", 7, four_old_generations(file_pages=0, anon_pages=100))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=1, swap=True)
    part.run_period(part.config)
    assert sim.commands == ["+ 7 0 3 1 1", "- 7 0 1 200 1"]
    no_swap = SimulatedLruGen(batch=1000)
    no_swap.add("/ma", 7, four_old_generations(file_pages=0, anon_pages=100))
    part = reclaimer(paths, no_swap, eviction_run_aging_count_min=1)  # swap off: nothing to evict
    part.run_period(part.config)
    assert no_swap.commands == ["+ 7 0 3 0 1"]


def test_eviction_needs_all_generations(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen()
    sim.add("/ma", 7, [(0, OLD, 0, 300), (1, OLD, 0, 0)])  # two generations: aging makes the third
    part = reclaimer(paths, sim, eviction_run_aging_count_min=1)
    part.run_period(part.config)
    assert sim.commands == ["+ 7 0 1 0 1"]


def test_eviction_is_bounded_per_period(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen(batch=1)
    sim.add("/ma", 7, four_old_generations(file_pages=10 * MAX_EVICTION_STEPS))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=1)
    part.run_period(part.config)
    assert part.status().counters["evictions"] == MAX_EVICTION_STEPS


def test_a_memcg_made_again_under_the_same_path_starts_afresh(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen()
    sim.add("/ma", 7, four_old_generations(file_pages=300))
    part = reclaimer(paths, sim, eviction_run_aging_count_min=2)
    part.run_period(part.config)
    sim.advance(OLD)
    sim.memcgs.clear()
    sim.add("/ma", 8, four_old_generations(file_pages=300))  # a new memcg id: its agings count from 0
    part.run_period(part.config)
    assert sim.commands == ["+ 7 0 3 0 1", "+ 8 0 3 0 1"]


def test_a_refused_command_is_counted_and_the_period_goes_on(paths: HostPaths) -> None:
    make_cgroup(paths, "/a")
    make_cgroup(paths, "/b")
    sim = SimulatedLruGen()
    sim.add("/a", 7, four_old_generations(file_pages=300))
    sim.add("/b", 8, four_old_generations(file_pages=300))
    original = sim.write

    def refuse_a(command: str) -> None:
        if command.startswith("+ 7"):
            raise OSError(22, "Invalid argument", "lru_gen")
        original(command)

    sim.write = refuse_a  # type: ignore[method-assign]
    part = reclaimer(paths, sim, eviction_run_aging_count_min=5)
    part.run_period(part.config)
    assert sim.commands == ["+ 8 0 3 0 1"]
    status = part.status()
    assert status.errors == 1
    assert "/a node 0: aging refused" in status.last_error


# --- the kernel's features
def test_probing_switches_mglru_on(paths: HostPaths) -> None:
    part = MemcgReclaimer(paths, MemcgConfig(), lru_gen=SimulatedLruGen())
    assert part.probe() == ""
    assert Path(paths.lru_gen_enabled).read_text() == "7"


def test_without_mglru_memcg_reclaim_is_off_and_says_why(paths: HostPaths) -> None:
    Path(paths.lru_gen_enabled).unlink()
    part = MemcgReclaimer(paths, MemcgConfig(period_secs=3600))
    part.start()
    assert part.wait_for(lambda status: status.available is not None, timeout=30)
    assert part.stop()
    status = part.status()
    assert status.available is False
    assert "MGLRU (CONFIG_LRU_GEN)" in status.missing
    assert status.periods == 0
    with pytest.raises(Unsupported, match="MGLRU"):
        part.reconfigure(MemcgUpdate(period_secs=5).apply)
    assert part.config.period_secs == 3600


def test_debugfs_is_mounted_when_lru_gen_is_missing(paths: HostPaths) -> None:
    Path(paths.lru_gen).unlink()
    mounted: list[HostPaths] = []

    def mount(where: HostPaths) -> None:
        mounted.append(where)
        Path(where.lru_gen).write_text("")  # as the kernel's debugfs would show it

    part = MemcgReclaimer(paths, MemcgConfig(), mount_debugfs=mount)
    assert part.probe() == ""
    assert mounted == [paths]


def test_without_debugfs_memcg_reclaim_is_off(paths: HostPaths) -> None:
    Path(paths.lru_gen).unlink()

    def mount_fails(where: HostPaths) -> None:
        raise OSError(19, "No such device", where.debugfs)

    assert "mounting debugfs failed" in MemcgReclaimer(paths, MemcgConfig(), mount_debugfs=mount_fails).probe()
    missing = MemcgReclaimer(paths, MemcgConfig(), mount_debugfs=lambda where: None).probe()
    assert "CONFIG_DEBUG_FS" in missing


def test_without_psi_memcg_reclaim_is_off(paths: HostPaths) -> None:
    (Path(paths.pressure_dir) / "memory").unlink()
    assert "PSI (CONFIG_PSI" in MemcgReclaimer(paths, MemcgConfig(), lru_gen=SimulatedLruGen()).probe()


def test_an_mglru_that_stays_off_is_reported(paths: HostPaths) -> None:
    switch = Path(paths.lru_gen_enabled)
    switch.unlink()
    switch.mkdir()  # a write fails
    assert "cannot switch it on" in MemcgReclaimer(paths, MemcgConfig(), lru_gen=SimulatedLruGen()).probe()


# --- the thread
def test_the_thread_runs_at_once_takes_new_settings_and_stops(paths: HostPaths) -> None:
    make_cgroup(paths, "/ma")
    sim = SimulatedLruGen()
    sim.add("/ma", 7, four_old_generations(file_pages=300))
    part = MemcgReclaimer(paths, MemcgConfig(period_secs=3600, eviction_run_aging_count_min=10), lru_gen=sim)
    part.start()
    try:
        assert part.wait_for(lambda s: s.periods == 1 and not s.busy, timeout=30)  # the first one is due at once
        assert sim.commands == ["+ 7 0 3 0 1"]
        part.reconfigure(MemcgUpdate(disabled=True).apply)
        assert part.status().enabled is False
        # a new period length (or switching it on) starts a fresh timer that is due at once
        part.reconfigure(MemcgUpdate(disabled=False, period_secs=1800).apply)
        assert part.wait_for(lambda s: s.periods == 2 and not s.busy, timeout=30)
        assert part.config.period_secs == 1800
        assert part.config.eviction_run_aging_count_min == 10  # untouched
    finally:
        assert part.stop(timeout=30)
    assert not part.status().busy


def test_a_failing_period_does_not_end_the_thread(paths: HostPaths) -> None:
    class Broken(SimulatedLruGen):
        def read(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("simulated bug")

    part = MemcgReclaimer(paths, MemcgConfig(period_secs=3600), lru_gen=Broken())
    part.start()
    try:
        assert part.wait_for(lambda s: s.errors == 1 and not s.busy, timeout=30)
        assert "RuntimeError: simulated bug" in part.status().last_error
        part.reconfigure(MemcgUpdate(period_secs=1000).apply)  # wakes it: due at once
        assert part.wait_for(lambda s: s.errors == 2 and not s.busy, timeout=30)
    finally:
        assert part.stop(timeout=30)
