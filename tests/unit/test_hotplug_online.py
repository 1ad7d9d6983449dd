"""The online loop on a fake sysfs tree with simulated time: late CPUs and memory, EBUSY, budgets."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import build_config
from agent.container.cgroups import propagate_cpuset
from agent.errors import InvalidArgument, ResourceError, Unsupported
from agent.hotplug.testing import FakeSysfs, SimulatedClock
from agent.hotplug.uevent import UeventListener
from agent.services.resources import ResourceService

HOW_TO_RAISE_CPU = (
    "raise the budget with agent.cpu_online_timeout=SECONDS (now {timeout}, 0 = no deadline) or "
    "agent.cpu_online_retries=N (now {retries}, 0 = bounded by the timeout only) on the kernel command line "
    "or in the agent's config file"
)


@dataclass
class Guest:
    fake: FakeSysfs
    clock: SimulatedClock
    listener: UeventListener
    service: ResourceService
    onlined_at: dict[str, float] = field(default_factory=dict)
    writes: list[tuple[str, str, float]] = field(default_factory=list)

    def hot_add_cpu(self, at: float, number: int, *, announce: bool = True) -> None:
        def appear() -> None:
            self.fake.add_cpu(number)
            if announce:
                self.listener.inject(self.fake.cpu_added(number))

        self.clock.at(at, appear)

    def hot_add_block(self, at: float, number: int, zones: str = "Normal Movable") -> None:
        def appear() -> None:
            self.fake.add_memory_block(number, zones=zones)
            self.listener.inject(self.fake.memory_added(number))

        self.clock.at(at, appear)


def make_guest(
    tmp_path: Path,
    *,
    cpus_online: int = 2,
    uevents: bool = True,
    cpuset_targets: Callable[[], Sequence[Path]] | None = None,
    **options: Any,
) -> Guest:
    fake = FakeSysfs(tmp_path)
    fake.add_cpu(0, online=None)  # cpu0 has no online file
    for number in range(1, cpus_online):
        fake.add_cpu(number, online=True)
    clock = SimulatedClock()
    listener = UeventListener(None)
    service = ResourceService(
        fake.paths,
        build_config(overrides=options),
        listener=listener if uevents else None,
        clock=clock,
        writer=fake.write,
        cpuset_targets=cpuset_targets,
        propagate=propagate_cpuset,  # the engine's, on the fake tree (its cgroup mounts: its mountinfo)
        spawn=lambda loop: loop(),  # the loop runs in the calling thread: deterministic
    )
    guest = Guest(fake, clock, listener, service)

    def record(path: str, value: str) -> None:
        name = os.path.basename(os.path.dirname(path))
        guest.writes.append((name, value, clock.now()))
        guest.onlined_at.setdefault(name, clock.now())

    fake.on_write = record
    return guest


def online_state(guest: Guest, number: int) -> str:
    return (Path(guest.fake.paths.cpu_dir) / f"cpu{number}" / "online").read_text().strip()


def test_cpus_appearing_over_18_s_are_onlined_as_each_appears(tmp_path: Path) -> None:
    """The field report: 5 hot-added vCPUs that the guest kernel brings up over about 18 s."""
    guest = make_guest(tmp_path)
    arrivals = {2: 2.5, 3: 6.0, 4: 10.0, 5: 14.0, 6: 18.0}
    for number, at in arrivals.items():
        guest.hot_add_cpu(at, number)
    guest.service.online_cpu_mem(7, wait=True, cpu_only=True)
    assert [online_state(guest, n) for n in range(1, 7)] == ["1"] * 6
    # event-driven: each write happens at the simulated instant the CPU appeared, not at a later poll
    assert guest.onlined_at == {f"cpu{n}": at for n, at in arrivals.items()}
    assert guest.clock.now() == 18.0
    assert guest.clock.pending == 0


def test_without_uevents_a_rescan_finds_late_cpus_within_one_interval(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, uevents=False, cpu_online_interval_ms=250)
    arrivals = {2: 1.1, 3: 7.3, 4: 17.9}
    for number, at in arrivals.items():
        guest.hot_add_cpu(at, number)
    guest.service.online_cpu_mem(5, wait=True, cpu_only=True)
    for number, at in arrivals.items():
        assert at < guest.onlined_at[f"cpu{number}"] <= at + 0.25 + 1e-9


def test_ebusy_is_retried_until_the_kernel_accepts(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpu_online_interval_ms=100)
    guest.fake.add_cpu(2)
    guest.fake.add_cpu(3)
    guest.fake.fail(Path(guest.fake.paths.cpu_dir) / "cpu2" / "online", errno.EBUSY, times=3)
    guest.fake.fail(Path(guest.fake.paths.cpu_dir) / "cpu3" / "online", errno.EAGAIN, times=1)
    guest.service.online_cpu_mem(4, wait=True, cpu_only=True)
    assert [online_state(guest, n) for n in (2, 3)] == ["1", "1"]
    cpu2_attempts = [at for name, _, at in guest.writes if name == "cpu2"]
    assert len(cpu2_attempts) == 4
    assert cpu2_attempts[-1] == pytest.approx(0.3)
    assert [name for name, _, _ in guest.writes].count("cpu3") == 2


def test_cpus_already_online_need_no_writes(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpus_online=4)
    guest.fake.add_cpu(4)  # offline, but not needed
    guest.service.online_cpu_mem(4, wait=True, cpu_only=True)
    guest.service.online_cpu_mem(1, wait=True, cpu_only=True)
    assert guest.writes == []
    assert online_state(guest, 4) == "0"


def test_only_as_many_cpus_as_asked_lowest_first(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpus_online=1)
    for number in (1, 2, 3):
        guest.fake.add_cpu(number)
    guest.service.online_cpu_mem(3, wait=True, cpu_only=True)
    assert [online_state(guest, n) for n in (1, 2, 3)] == ["1", "1", "0"]


def test_timeout_budget_runs_out_with_a_message_that_says_what_to_do(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpu_online_timeout=5, cpu_online_interval_ms=500)
    guest.hot_add_cpu(2.0, 2)
    guest.hot_add_cpu(9.0, 3)  # too late for a 5 s budget
    with pytest.raises(ResourceError) as caught:
        guest.service.online_cpu_mem(5, wait=True, cpu_only=True)
    assert str(caught.value) == (
        "wanted 5 CPUs online but only 3 are online after waiting 5.0 s "
        "(10 re-scans; 2 not present in sysfs yet); " + HOW_TO_RAISE_CPU.format(timeout=5, retries=0)
    )
    assert guest.clock.now() == 5.0


def test_a_cpu_that_stays_busy_is_named(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpu_online_timeout=2, cpu_online_interval_ms=1000)
    guest.fake.add_cpu(2)
    guest.fake.fail(Path(guest.fake.paths.cpu_dir) / "cpu2" / "online", errno.EBUSY, times=100)
    with pytest.raises(ResourceError) as caught:
        guest.service.online_cpu_mem(4, wait=True, cpu_only=True)
    assert str(caught.value) == (
        "wanted 4 CPUs online but only 2 are online after waiting 2.0 s (2 re-scans; "
        "1 present but offline (cpu2: EBUSY); 1 not present in sysfs yet); "
        + HOW_TO_RAISE_CPU.format(timeout=2, retries=0)
    )


def test_the_old_fixed_retry_loop_fails_the_field_report(tmp_path: Path) -> None:
    """100 x 50 ms, no deadline: uevent-woken scans are free, but the 18 s CPU comes too late."""
    guest = make_guest(tmp_path, cpu_online_timeout=0, cpu_online_retries=100, cpu_online_interval_ms=50)
    for number, at in {2: 1.0, 3: 3.0, 4: 18.0}.items():
        guest.hot_add_cpu(at, number)
    with pytest.raises(ResourceError) as caught:
        guest.service.online_cpu_mem(5, wait=True, cpu_only=True)
    message = str(caught.value)
    assert message.startswith("wanted 5 CPUs online but only 4 are online after waiting 5.0 s (100 re-scans; ")
    assert message.endswith(HOW_TO_RAISE_CPU.format(timeout=0, retries=100))
    # the same request with the default budget succeeds
    guest2 = make_guest(tmp_path / "again")
    for number, at in {2: 1.0, 3: 3.0, 4: 18.0}.items():
        guest2.hot_add_cpu(at, number)
    guest2.service.online_cpu_mem(5, wait=True, cpu_only=True)
    assert guest2.clock.now() == 18.0


def test_zero_timeout_and_zero_retries_still_end(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpu_online_timeout=0, cpu_online_retries=0, cpu_online_interval_ms=1000)
    with pytest.raises(ResourceError, match=r"after waiting 60\.0 s \(60 re-scans; 1 not present"):
        guest.service.online_cpu_mem(3, wait=True, cpu_only=True)


def test_a_request_above_the_possible_cpus_fails_at_once(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    guest.fake.set_possible("0-3")
    with pytest.raises(InvalidArgument) as caught:
        guest.service.online_cpu_mem(5, wait=True, cpu_only=True)
    assert str(caught.value) == (
        "OnlineCPUMem asked for 5 online CPUs but this guest can have at most 4 (cpu/possible is '0-3')"
    )
    assert guest.clock.now() == 0.0


def test_permission_errors_fail_at_once(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    guest.fake.add_cpu(2)
    path = Path(guest.fake.paths.cpu_dir) / "cpu2" / "online"
    guest.fake.fail(path, errno.EACCES, times=1)
    with pytest.raises(ResourceError) as caught:
        guest.service.online_cpu_mem(3, wait=True, cpu_only=True)
    assert str(caught.value) == f"cannot bring cpu2 online: writing 1 to {path} failed with EACCES (Permission denied)"
    assert guest.clock.now() == 0.0


def test_the_kernels_online_list_decides_over_a_missing_online_file(tmp_path: Path) -> None:
    """The kernel makes a new CPU's directory a moment before its online file: such a CPU is not
    one that cannot go offline, and must not count towards nb_cpus."""
    guest = make_guest(tmp_path, cpu_online_timeout=1, cpu_online_interval_ms=500)
    (Path(guest.fake.paths.cpu_dir) / "cpu2").mkdir()  # no online file yet, not in cpu/online
    assert (Path(guest.fake.paths.cpu_dir) / "online").read_text() == "0-1\n"

    def online_file_appears() -> None:
        (Path(guest.fake.paths.cpu_dir) / "cpu2" / "online").write_text("0\n")

    guest.clock.at(0.5, online_file_appears)
    guest.service.online_cpu_mem(3, wait=True, cpu_only=True)
    assert guest.onlined_at == {"cpu2": 0.5}
    assert (Path(guest.fake.paths.cpu_dir) / "online").read_text() == "0-2\n"


def test_without_the_kernels_list_a_cpu_without_online_file_is_online(tmp_path: Path) -> None:
    fake = FakeSysfs(tmp_path, cpu_mask=False)
    fake.add_cpu(0, online=None)
    fake.add_cpu(1)
    service = ResourceService(fake.paths, build_config(), writer=fake.write, spawn=lambda loop: loop())
    service.online_cpu_mem(1, wait=True, cpu_only=True)
    assert fake.writes == []
    service.online_cpu_mem(2, wait=True, cpu_only=True)
    assert fake.writes == [(f"{fake.paths.cpu_dir}/cpu1/online", "1")]


# --- memory


def block_state(guest: Guest, number: int) -> str:
    return (Path(guest.fake.paths.memory_dir) / f"memory{number}" / "state").read_text().strip()


def test_memory_blocks_online_movable_where_allowed(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    for number in range(4):
        guest.fake.add_memory_block(number, state="online", zones="Normal")
    guest.fake.add_memory_block(4, zones="Normal Movable")
    guest.fake.add_memory_block(5, zones="Normal")
    guest.service.online_cpu_mem(0, wait=True, cpu_only=False)
    assert [block_state(guest, n) for n in range(6)] == ["online"] * 6
    assert [(name, value) for name, value, _ in guest.writes] == [
        ("memory4", "online_movable"),
        ("memory5", "online"),
    ]


def test_cpu_only_leaves_memory_alone(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    guest.fake.add_memory_block(4)
    guest.service.online_cpu_mem(2, wait=True, cpu_only=True)
    assert block_state(guest, 4) == "offline"


def test_memory_ebusy_and_movable_refused(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, mem_online_interval_ms=200)
    guest.fake.add_memory_block(8)
    guest.fake.add_memory_block(9)
    guest.fake.fail(Path(guest.fake.paths.memory_dir) / "memory8" / "state", errno.EBUSY, times=2)
    guest.fake.fail(Path(guest.fake.paths.memory_dir) / "memory9" / "state", errno.EINVAL, times=1)
    guest.service.online_cpu_mem(0, wait=True, cpu_only=False)
    assert [block_state(guest, n) for n in (8, 9)] == ["online", "online"]
    memory9 = [value for name, value, _ in guest.writes if name == "memory9"]
    assert memory9 == ["online_movable", "online"]
    assert guest.clock.now() == pytest.approx(0.4)


def test_late_memory_and_cpus_together(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    guest.fake.add_memory_block(0, state="online")
    guest.hot_add_block(4.0, 1)  # appears while the CPU loop still waits
    guest.hot_add_cpu(3.0, 2)
    guest.hot_add_cpu(12.0, 3)
    guest.service.online_cpu_mem(4, wait=True, cpu_only=False)
    assert block_state(guest, 1) == "online"
    assert guest.onlined_at["memory1"] == 4.0
    assert guest.onlined_at["cpu3"] == 12.0


def test_memory_budget_message(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, mem_online_timeout=1, mem_online_interval_ms=500)
    guest.fake.add_memory_block(3)
    guest.fake.fail(Path(guest.fake.paths.memory_dir) / "memory3" / "state", errno.EBUSY, times=100)
    with pytest.raises(ResourceError) as caught:
        guest.service.online_cpu_mem(0, wait=True, cpu_only=False)
    assert str(caught.value) == (
        "memory not online after waiting 1.0 s (2 re-scans): 1 memory blocks still offline (memory3: EBUSY); "
        "raise the budget with agent.mem_online_timeout=SECONDS (now 1, 0 = no deadline) or "
        "agent.mem_online_retries=N (now 0, 0 = bounded by the timeout only) on the kernel command line or in "
        "the agent's config file"
    )


def test_probe_adds_and_onlines_blocks(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    guest.fake.set_block_size(0x8000000)
    guest.fake.enable_probe()
    guest.service.mem_hotplug_by_probe([0x100000000, 0x108000000])
    assert [block_state(guest, n) for n in (32, 33)] == ["online", "online"]
    assert [(name, value) for name, value, _ in guest.writes] == [
        ("memory", "0x100000000"),
        ("memory", "0x108000000"),
        ("memory32", "online_movable"),
        ("memory33", "online_movable"),
    ]
    assert guest.service.memory_block_size() == 0x8000000
    assert guest.service.memory_probe_supported()


def test_probe_errors(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    guest.fake.set_block_size(0x8000000)
    with pytest.raises(Unsupported, match="no memory probe interface"):
        guest.service.mem_hotplug_by_probe([0x100000000])
    guest.fake.enable_probe()
    with pytest.raises(InvalidArgument) as caught:
        guest.service.mem_hotplug_by_probe([0x100001000])
    assert str(caught.value) == "memory probe address 0x100001000 is not aligned to the memory block size 0x8000000"
    guest.fake.fail(guest.fake.paths.memory_probe, errno.EEXIST)
    guest.fake.add_memory_block(32)  # the kernel knew it already: EEXIST is fine, the block is onlined
    guest.service.mem_hotplug_by_probe([0x100000000])
    assert block_state(guest, 32) == "online"


# --- wait=false and what the next call hears


def test_wait_false_failure_is_raised_by_the_next_call_then_cleared(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpu_online_timeout=3, cpu_online_interval_ms=1000)
    guest.service.online_cpu_mem(5, wait=False, cpu_only=True)  # returns; the loop fails later
    with pytest.raises(ResourceError) as caught:
        guest.service.online_cpu_mem(2, wait=True, cpu_only=True)
    assert str(caught.value) == (
        "an earlier OnlineCPUMem(nb_cpus=5, cpu_only=True) that returned before it finished failed: "
        "wanted 5 CPUs online but only 2 are online after waiting 3.0 s (3 re-scans; 3 not present in sysfs yet); "
        + HOW_TO_RAISE_CPU.format(timeout=3, retries=0)
    )
    guest.service.online_cpu_mem(2, wait=True, cpu_only=True)  # reported once, then forgotten


def test_a_kept_failure_comes_before_any_new_work(tmp_path: Path) -> None:
    guest = make_guest(tmp_path, cpu_online_timeout=1, cpu_online_interval_ms=1000)
    guest.fake.set_block_size(0x8000000)
    guest.fake.enable_probe()
    guest.service.online_cpu_mem(3, wait=False, cpu_only=True)
    with pytest.raises(ResourceError, match=r"^an earlier OnlineCPUMem\(nb_cpus=3, cpu_only=True\)"):
        guest.service.mem_hotplug_by_probe([0x100000000])
    assert guest.writes == []  # nothing probed
    guest.service.online_cpu_mem(3, wait=False, cpu_only=True)
    with pytest.raises(ResourceError, match=r"^an earlier"):
        guest.service.online_cpu_mem(0, wait=True, cpu_only=True)  # even a call with nothing to do


def test_wait_false_success_is_not_reported(tmp_path: Path) -> None:
    guest = make_guest(tmp_path)
    guest.hot_add_cpu(4.0, 2)
    guest.service.online_cpu_mem(3, wait=False, cpu_only=True)
    assert online_state(guest, 2) == "1"
    guest.service.online_cpu_mem(3, wait=True, cpu_only=True)
    assert guest.service.coordinator.runs == 2


# --- cpusets


def test_new_cpus_reach_container_cpusets_ancestors_first(tmp_path: Path) -> None:
    base = tmp_path / "sys" / "fs" / "cgroup" / "cpuset"
    leaves = [base / "kata" / "c1", base / "kata" / "c2"]
    for directory in (base, base / "kata", *leaves):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpuset.cpus").write_text("0-1\n")
    mountinfo = tmp_path / "proc" / "self" / "mountinfo"  # where the engine finds the cpuset hierarchy
    mountinfo.parent.mkdir(parents=True, exist_ok=True)
    mountinfo.write_text("34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n")
    guest = make_guest(tmp_path, cpuset_targets=lambda: leaves)
    guest.hot_add_cpu(1.5, 2)
    guest.hot_add_cpu(2.5, 3)
    guest.service.online_cpu_mem(4, wait=True, cpu_only=True)
    cgroup_writes = [(name, value) for name, value, _ in guest.writes if not name.startswith("cpu")]
    assert cgroup_writes == []  # cpuset files are written by the cgroup writer, not the sysfs one
    assert [(d / "cpuset.cpus").read_text().strip() for d in (base / "kata", *leaves)] == ["0-3"] * 3
    assert (base / "cpuset.cpus").read_text() == "0-1\n"  # the root belongs to the kernel


def test_no_cpuset_update_for_memory_only_or_no_containers(tmp_path: Path) -> None:
    calls: list[int] = []

    def targets() -> list[Path]:
        calls.append(1)
        return []

    guest = make_guest(tmp_path, cpuset_targets=targets)
    guest.fake.add_memory_block(1)
    guest.service.online_cpu_mem(0, wait=True, cpu_only=False)
    assert calls == []
    guest.service.online_cpu_mem(2, wait=True, cpu_only=True)
    assert calls == [1]
