"""The mem-agent in a booted guest (osbuilder's kernel and initrd, the agent as PID 1), against the
kernel's real MGLRU, PSI and compaction.

One guest, booted with ``agent.mem_agent_enable`` and short periods, runs the tests in order:
1. the mem-agent switched MGLRU on, mounted debugfs and found every feature it needs;
2. a memory cgroup that read a 64 MiB file (page cache of a 9p share mounted with cache=loose) and then
   sat idle for a minute is aged and evicted: its lru_gen generations move, its memory.stat ``file``
   and ``pgsteal`` show the kernel reclaimed the pages;
3. MemAgentMemcgSet over ttrpc: disabled=true stops the periods, disabled=false starts them again,
   and the fields not set keep their values;
4. MemAgentCompactSet over ttrpc switches compaction on (forced each period): /proc/vmstat's
   compaction counters rise; disabled=true stops it; a page order beyond the kernel's is refused.
Each phase prints its figures.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.rpc.pb import agent_pb2
from agent.rpc.status import Code
from agentctl import vm
from agentctl.client import AgentCallError, AgentClient, connect
from tests.vm.conftest import agent_guest_config, booted, console_answers

SHARED = "/run/kata-containers/shared/containers"
COLD_FILE = "cold.bin"
COLD_MIB = 64
MEMCG = "/sys/fs/cgroup/ma"
MEMCG_PERIOD = 2  # seconds
CMDLINE = (
    "agent.debug_console agent.log=debug agent.mem_agent_enable "
    f"agent.mem_agent_memcg_period_secs={MEMCG_PERIOD} agent.mem_agent_memcg_eviction_run_aging_count_min=1 "
    "agent.mem_agent_compact_disable"
)
RECLAIM_DEADLINE = 300.0  # seconds: the memcg must sit idle a minute before its first aging (Kata's rule)


def phase(message: str) -> None:
    print(f"[mem-agent {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("share")
    (root / COLD_FILE).write_bytes(bytes(range(256)) * (COLD_MIB * 4096))
    return root


@pytest.fixture(scope="module")
def guest(guest_files: Path, share: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.Guest]:
    config = agent_guest_config(
        guest_files,
        name="memagent",
        share=share,
        cmdline=CMDLINE,
        run_dir=tmp_path_factory.mktemp("vm"),
        memory="512M",
    )
    with booted(config, phase) as started:
        yield started


def client(guest: vm.Guest) -> AgentClient:
    return connect(guest.address, "ttrpc", timeout=120)


def metrics(guest: vm.Guest) -> dict[str, float]:
    """GetMetrics' samples by their full name (labels included)."""
    text = client(guest).call("grpc.AgentService/GetMetrics", agent_pb2.GetMetricsRequest()).metrics  # type: ignore[attr-defined]
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def memcg_count(guest: vm.Guest, item: str) -> int:
    return int(metrics(guest)[f'kata_agent_mem_agent_memcg_total{{item="{item}"}}'])


def compact_count(guest: vm.Guest, item: str) -> int:
    return int(metrics(guest)[f'kata_agent_mem_agent_compact_total{{item="{item}"}}'])


def wait_until(what: str, done: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(1.0)


def memcg_lru_gen(guest: vm.Guest) -> list[tuple[int, int, int]]:
    """(seq, anon pages, file pages) of the test memcg's node 0 generations in lru_gen."""
    text = guest.run_in_console("awk '/^memcg/ {on = ($3 == \"/ma\")} on' /sys/kernel/debug/lru_gen")
    rows = re.findall(r"^\s+(\d+)\s+\d+\s+(\d+)\s+(\d+)\s*$", text, re.MULTILINE)
    return [(int(seq), int(anon), int(file)) for seq, anon, file in rows]


def memory_stat(guest: vm.Guest, *keys: str) -> dict[str, int]:
    found = dict(console_answers(guest, f"awk -v t=\"$t\" '{{print t $1, $2}}' {MEMCG}/memory.stat"))
    return {key: int(found[key]) for key in keys}


def vmstat(guest: vm.Guest, prefix: str) -> dict[str, int]:
    found = console_answers(guest, f"awk -v t=\"$t\" '/^{prefix}/ {{print t $1, $2}}' /proc/vmstat")
    return {key: int(value) for key, value in found}


def test_the_mem_agent_found_every_kernel_feature(guest: vm.Guest) -> None:
    wait_until(
        "both parts probed the kernel",
        lambda: (
            metrics(guest).get('kata_agent_mem_agent_available{part="compact"}') == 1
            and metrics(guest).get('kata_agent_mem_agent_available{part="memcg"}') == 1
        ),
        60,
    )
    seen = guest.run_in_console(
        "cat /sys/kernel/mm/lru_gen/enabled; grep -c ' /sys/kernel/debug debugfs ' /proc/mounts"
    )
    assert "0x0007" in seen  # Debian's kernel boots with MGLRU off: the mem-agent switched it on
    assert re.search(r"^1\s*$", seen, re.MULTILINE), seen
    samples = metrics(guest)
    assert samples['kata_agent_mem_agent_enabled{part="memcg"}'] == 1
    assert samples['kata_agent_mem_agent_enabled{part="compact"}'] == 0  # agent.mem_agent_compact_disable


def test_a_cold_memcg_is_aged_and_evicted(guest: vm.Guest) -> None:
    # the share with cache=loose, so reads go through the page cache (Kata's own storage request)
    client(guest).call(
        "grpc.AgentService/CreateSandbox",
        agent_pb2.CreateSandboxRequest(
            hostname="memagent",
            sandbox_id="memagent",
            storages=[
                agent_pb2.Storage(
                    driver="9p",
                    source="kataShared",
                    fstype="9p",
                    options=["trans=virtio,version=9p2000.L,cache=loose", "nodev"],
                    mount_point=SHARED,
                )
            ],
        ),
    )
    guest.run_in_console(
        f"echo +memory > /sys/fs/cgroup/cgroup.subtree_control; mkdir -p {MEMCG}; "
        f"sh -c 'echo $$ > {MEMCG}/cgroup.procs && exec cat {SHARED}/{COLD_FILE} > /dev/null'",
        timeout=300,
    )
    before = memory_stat(guest, "file", "pgsteal")
    gens_before = memcg_lru_gen(guest)
    phase(f"{MEMCG} read {COLD_MIB} MiB: memory.stat {before}, lru_gen (seq, anon, file) {gens_before}")
    assert before["file"] >= (COLD_MIB - 8) << 20
    assert gens_before and max(seq for seq, _, _ in gens_before) == 3  # a new memcg: generations 0 to 3

    start = time.monotonic()
    wait_until(
        "the memcg's page cache evicted",
        lambda: memory_stat(guest, "file")["file"] < before["file"] // 4,
        RECLAIM_DEADLINE,
    )
    after = memory_stat(guest, "file", "pgsteal")
    gens_after = memcg_lru_gen(guest)
    samples = metrics(guest)
    counts = {
        item: int(samples[f'kata_agent_mem_agent_memcg_total{{item="{item}"}}'])
        for item in ("periods", "agings", "evictions", "pages_reclaimed", "bytes_reclaimed", "errors")
    }
    phase(
        f"evicted after {time.monotonic() - start:.0f} s: memory.stat {after}, lru_gen {gens_after}, mem-agent {counts}"
    )
    assert max(seq for seq, _, _ in gens_after) >= 4  # aged: a new generation
    assert after["pgsteal"] - before["pgsteal"] >= (before["file"] - after["file"]) // 4096 // 2
    assert counts["agings"] >= 1 and counts["evictions"] >= 1
    assert counts["bytes_reclaimed"] >= (before["file"] - after["file"]) // 2


def test_memcg_set_switches_reclaim_off_and_on(guest: vm.Guest) -> None:
    agent = client(guest)
    agent.call("grpc.AgentService/MemAgentMemcgSet", agent_pb2.MemAgentMemcgConfig(disabled=True))
    periods = memcg_count(guest, "periods")  # no period starts once the call has returned
    time.sleep(4 * MEMCG_PERIOD)
    assert memcg_count(guest, "periods") == periods
    assert metrics(guest)['kata_agent_mem_agent_enabled{part="memcg"}'] == 0
    agent.call("grpc.AgentService/MemAgentMemcgSet", agent_pb2.MemAgentMemcgConfig(disabled=False))
    wait_until("memcg periods again", lambda: memcg_count(guest, "periods") >= periods + 2, 60)
    phase(f"memcg periods: {periods} while disabled, {memcg_count(guest, 'periods')} once enabled again")
    with pytest.raises(AgentCallError) as raised:
        agent.call("grpc.AgentService/MemAgentMemcgSet", agent_pb2.MemAgentMemcgConfig(period_psi_percent_limit=101))
    assert raised.value.code == Code.INVALID_ARGUMENT
    assert "period_psi_percent_limit" in raised.value.message


def test_compact_set_switches_compaction_on_and_off(guest: vm.Guest) -> None:
    agent = client(guest)
    assert compact_count(guest, "periods") == 0  # off since boot
    with pytest.raises(AgentCallError) as raised:
        agent.call("grpc.AgentService/MemAgentCompactSet", agent_pb2.MemAgentCompactConfig(compact_order=11))
    assert raised.value.code == Code.INVALID_ARGUMENT  # this kernel's highest order is 10
    assert "compact_order" in raised.value.message
    before = vmstat(guest, "compact_")
    agent.call(
        "grpc.AgentService/MemAgentCompactSet",
        agent_pb2.MemAgentCompactConfig(disabled=False, period_secs=2, compact_force_times=0),
    )
    wait_until("two compactions", lambda: compact_count(guest, "compactions") >= 2, 120)
    after = vmstat(guest, "compact_")
    phase(f"/proc/vmstat before {before}, after {after}")
    assert after["compact_migrate_scanned"] > before["compact_migrate_scanned"]
    agent.call("grpc.AgentService/MemAgentCompactSet", agent_pb2.MemAgentCompactConfig(disabled=True))
    compactions = compact_count(guest, "compactions")
    periods = compact_count(guest, "periods")
    time.sleep(3 * 2)
    assert (compact_count(guest, "periods"), compact_count(guest, "compactions")) == (periods, compactions)
    assert compact_count(guest, "errors") == 0
    phase(f"compactions: {compactions} in {periods} periods, none once disabled")
