"""MGLRU's interface (Documentation/admin-guide/mm/multigen_lru.rst): the switch and the debugfs file.

/sys/kernel/mm/lru_gen/enabled reads like ``0x0007`` (bit 0: the main switch). /sys/kernel/debug/lru_gen
lists the generations of each memcg and node::

    memcg  MEMCG_ID  PATH
     node  NODE_ID
        MIN_GEN_NR  AGE_MS  NR_ANON_PAGES  NR_FILE_PAGES
        ...
        MAX_GEN_NR  AGE_MS  NR_ANON_PAGES  NR_FILE_PAGES

and takes commands: ``+ MEMCG_ID NODE_ID MAX_GEN_NR [CAN_SWAP [FORCE_SCAN]]`` ages (makes generation
MAX_GEN_NR + 1), ``- MEMCG_ID NODE_ID MIN_GEN_NR [SWAPPINESS [NR_TO_RECLAIM]]`` evicts generations up to
MIN_GEN_NR until NR_TO_RECLAIM pages are reclaimed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.system import sysfs
from agent.system.paths import HostPaths

MAX_NR_GENS = 4  # the kernel's MAX_NR_GENS: a node has 2 to 4 generations
LRU_GEN_ALL = 0x0007  # every MGLRU component on


@dataclass(frozen=True)
class Generation:
    seq: int
    age_ms: int
    anon: int  # pages
    file: int  # pages


@dataclass(frozen=True)
class NodeGenerations:
    node: int
    generations: tuple[Generation, ...]

    @property
    def min_seq(self) -> int:
        return min(gen.seq for gen in self.generations)

    @property
    def max_seq(self) -> int:
        return max(gen.seq for gen in self.generations)

    @property
    def oldest(self) -> Generation:
        return min(self.generations, key=lambda gen: gen.seq)

    @property
    def youngest_age_ms(self) -> int:
        """Milliseconds since the newest generation was made (the last aging)."""
        return min(gen.age_ms for gen in self.generations)


@dataclass(frozen=True)
class MemcgGenerations:
    memcg_id: int
    path: str  # the cgroup's path below the memory hierarchy's root, "/" for the root
    nodes: Mapping[int, NodeGenerations]


def _pages(word: str) -> int:
    # the kernel clamps the counts at 0; a transiently negative one reads as 0 (as Kata does)
    return 0 if word.startswith("-") else int(word)


def parse_lru_gen(text: str) -> dict[str, MemcgGenerations]:
    """The memcgs of an lru_gen listing, by path. Lines of another shape (the full listing's details)
    are passed over."""
    found: dict[str, MemcgGenerations] = {}
    memcg: tuple[int, str] | None = None
    nodes: dict[int, list[Generation]] = {}
    node: int | None = None

    def close() -> None:
        if memcg is not None:
            found[memcg[1]] = MemcgGenerations(
                memcg[0],
                memcg[1],
                {nid: NodeGenerations(nid, tuple(gens)) for nid, gens in nodes.items() if gens},
            )

    for line in text.splitlines():
        words = line.split(None, 2)
        if not words:
            continue
        if words[0] == "memcg" and len(words) >= 2:
            close()
            memcg = (int(words[1]), words[2].strip() if len(words) == 3 else "")
            nodes, node = {}, None
        elif words[0] == "node" and len(words) == 2 and memcg is not None:
            node = int(words[1])
            nodes[node] = []
        elif node is not None:
            parts = line.split()
            if len(parts) == 4 and parts[0].isdigit():
                nodes[node].append(Generation(int(parts[0]), int(parts[1]), _pages(parts[2]), _pages(parts[3])))
    close()
    return found


def aging_command(memcg_id: int, node: int, max_seq: int, can_swap: bool, force_scan: bool = True) -> str:
    return f"+ {memcg_id} {node} {max_seq} {int(can_swap)} {int(force_scan)}"


def eviction_command(memcg_id: int, node: int, min_seq: int, swappiness: int, nr_to_reclaim: int) -> str:
    return f"- {memcg_id} {node} {min_seq} {swappiness} {nr_to_reclaim}"


def parse_enabled(text: str) -> int:
    """``enabled``'s value: the kernel prints 0x0007; y/n are accepted as written values too."""
    value = text.strip().lower()
    if value in ("y", "n"):
        return LRU_GEN_ALL if value == "y" else 0
    return int(value, 0)


class LruGen(Protocol):
    """What the memcg reclaimer needs of the debugfs file (a simulator stands in for it in tests)."""

    def read(self) -> dict[str, MemcgGenerations]: ...

    def write(self, command: str) -> None: ...


class LruGenFile:
    """The kernel's /sys/kernel/debug/lru_gen. A write the kernel refuses raises OSError naming it."""

    def __init__(self, paths: HostPaths) -> None:
        self.path = paths.lru_gen

    def read(self) -> dict[str, MemcgGenerations]:
        return parse_lru_gen(sysfs.read_text(self.path))

    def write(self, command: str) -> None:
        sysfs.write(self.path, command)

    def exists(self) -> bool:
        return os.path.exists(self.path)
