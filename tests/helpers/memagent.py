"""A fake guest for the mem-agent: the /sys and /proc files it reads, and a simulated MGLRU.

``fake_mm_tree(root)`` writes MGLRU's switch, an (empty) debugfs lru_gen, PSI files (system-wide and
per cgroup), /proc/meminfo, /proc/pagetypeinfo, /proc/buddyinfo and /proc/sys/vm/compact_memory.
``SimulatedLruGen`` stands in for /sys/kernel/debug/lru_gen across several commands: it keeps each
memcg-node's generations, records every command written, and ages and evicts the way the kernel's
commands do, in the small (aging folds the oldest generation into the next when all four exist;
eviction takes up to ``batch`` pages of the oldest generation and drops it once empty).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.memagent.mglru import MAX_NR_GENS, Generation, MemcgGenerations, NodeGenerations
from agent.system.paths import HostPaths

PAGE_SIZE = 4096
PSI_TEXT = "some avg10=0.00 avg60=0.00 avg300=0.00 total={some}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
# 11 orders (MAX_ORDER 11): the highest page order is 10
BUDDYINFO = (
    "Node 0, zone      DMA      1      1      1      0      2      1      1      0      1      1      3\n"
    "Node 0, zone    DMA32    400    300    200    100     50     20     10      5      2      1    100\n"
)
# Movable free blocks by order: 100*1 + 50*2 + 25*4 + 10*8 + ... (orders below 9 count by default)
PAGETYPEINFO = """Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10
Node    0, zone      DMA, type    Unmovable      1      1      1      0      2      1      1      0      1      0      0
Node    0, zone      DMA, type      Movable      0      0      0      0      0      0      0      0      0      1      2
Node    0, zone    DMA32, type    Unmovable     40     30     20     10      5      2      1      0      0      0      0
Node    0, zone    DMA32, type      Movable    100     50     25     10      4      2      1      1      1      1     90
Node    0, zone    DMA32, type  Reclaimable      7      3      1      0      0      0      0      0      0      0      0

Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate
Node 0, zone      DMA            1            7            0            0            0
Node 0, zone    DMA32           21          968           35            0            0
"""
# 100 + 100 + 100 + 80 + 64 + 64 + 64 + 128 + 256 (orders 0 to 8)
PAGETYPEINFO_MOVABLE_BELOW_9 = 956


def meminfo(mem_free_kb: int = 400_000, swap_free_kb: int = 0) -> str:
    return f"MemTotal:        1000000 kB\nMemFree:         {mem_free_kb} kB\nSwapFree:        {swap_free_kb} kB\n"


def write_pressure(directory: str | Path, memory_us: int, io_us: int = 0) -> None:
    """A pressure pair (memory, io) in ``directory``: /proc/pressure's names, or a cgroup's."""
    base = Path(directory)
    if base.name == "pressure":
        (base / "memory").write_text(PSI_TEXT.format(some=memory_us))
        (base / "io").write_text(PSI_TEXT.format(some=io_us))
    else:
        (base / "memory.pressure").write_text(PSI_TEXT.format(some=memory_us))
        (base / "io.pressure").write_text(PSI_TEXT.format(some=io_us))


def make_cgroup(paths: HostPaths, path: str, memory_us: int = 0) -> Path:
    directory = Path(paths.cgroup_root) / path.strip("/")
    directory.mkdir(parents=True, exist_ok=True)
    write_pressure(directory, memory_us)
    return directory


def fake_mm_tree(root: Path, *, lru_gen_enabled: str = "0x0000", swap_free_kb: int = 0) -> HostPaths:
    paths = HostPaths(root)
    Path(paths.lru_gen_enabled).parent.mkdir(parents=True)
    Path(paths.lru_gen_enabled).write_text(lru_gen_enabled + "\n")
    Path(paths.debugfs).mkdir(parents=True)
    Path(paths.lru_gen).write_text("")
    Path(paths.pressure_dir).mkdir(parents=True)
    write_pressure(paths.pressure_dir, 0)
    Path(paths.meminfo).write_text(meminfo(swap_free_kb=swap_free_kb))
    Path(paths.compact_memory).parent.mkdir(parents=True)
    Path(paths.compact_memory).write_text("")
    Path(paths.pagetypeinfo).write_text(PAGETYPEINFO)
    Path(paths.buddyinfo).write_text(BUDDYINFO)
    Path(paths.cgroup_root).mkdir(parents=True)
    Path(paths.cgroup_root, "cgroup.controllers").write_text("cpu io memory pids\n")
    write_pressure(paths.cgroup_root, 0)
    return paths


class FakeClock:
    """A monotonic clock that moves ``step`` seconds each time it is read."""

    def __init__(self, start: float = 1000.0, step: float = 1.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@dataclass
class SimNode:
    gens: list[list[int]]  # [seq, age_ms, anon, file], oldest first


@dataclass
class SimMemcg:
    memcg_id: int
    nodes: dict[int, SimNode]


@dataclass
class SimulatedLruGen:
    memcgs: dict[str, SimMemcg] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    batch: int = 100  # pages one eviction command reclaims
    after_write: Callable[[str], None] | None = None  # called after each accepted command
    reads: int = 0

    def add(self, path: str, memcg_id: int, gens: list[tuple[int, int, int, int]], node: int = 0) -> None:
        memcg = self.memcgs.setdefault(path, SimMemcg(memcg_id, {}))
        memcg.nodes[node] = SimNode([list(gen) for gen in gens])

    def advance(self, ms: int) -> None:
        for memcg in self.memcgs.values():
            for node in memcg.nodes.values():
                for gen in node.gens:
                    gen[1] += ms

    def read(self) -> dict[str, MemcgGenerations]:
        self.reads += 1
        return {
            path: MemcgGenerations(
                memcg.memcg_id,
                path,
                {
                    nid: NodeGenerations(nid, tuple(Generation(*gen) for gen in node.gens))
                    for nid, node in memcg.nodes.items()
                },
            )
            for path, memcg in self.memcgs.items()
        }

    def _node(self, memcg_id: int, nid: int) -> SimNode:
        for memcg in self.memcgs.values():
            if memcg.memcg_id == memcg_id and nid in memcg.nodes:
                return memcg.nodes[nid]
        raise OSError(errno.EINVAL, "no such memcg or node", "lru_gen")

    def write(self, command: str) -> None:
        op, memcg_id, nid, seq, *rest = command.split()
        node = self._node(int(memcg_id), int(nid))
        if op == "+":
            if int(seq) != node.gens[-1][0]:
                raise OSError(errno.EINVAL, "stale max_seq", "lru_gen")
            if len(node.gens) == MAX_NR_GENS:
                oldest = node.gens.pop(0)
                node.gens[0][2] += oldest[2]
                node.gens[0][3] += oldest[3]
            node.gens.append([int(seq) + 1, 0, 0, 0])
        elif op == "-":
            swappiness = int(rest[0])
            oldest = node.gens[0]
            if int(seq) != oldest[0] or int(seq) + 2 > node.gens[-1][0]:
                raise OSError(errno.EINVAL, "bad min_seq", "lru_gen")
            taken = min(self.batch, oldest[3])
            oldest[3] -= taken
            if swappiness and taken < self.batch:
                oldest[2] -= min(self.batch - taken, oldest[2])
            if oldest[2] == 0 and oldest[3] == 0:
                node.gens.pop(0)
        else:
            raise OSError(errno.EINVAL, "bad command", "lru_gen")
        self.commands.append(command)
        if self.after_write is not None:
            self.after_write(command)
