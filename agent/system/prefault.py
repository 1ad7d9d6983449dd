"""Pre-faulting a forked process's memory: which pages a piece of work wrote, and faulting exactly
those in ahead of the next run of that work.

A process forked from a big parent (a Python interpreter) shares its parent's pages copy-on-write.
The first write to each one is a page fault that copies it, and on a virtual machine a fault is
expensive (the guest's fault plus, for memory the host has not backed yet, the host's). A warm
process that waits for work can take those faults while it waits: ``written_pages`` finds, at the
end of one run, the private writable pages the process has made its own (``/proc/self/pagemap``'s
"exclusively mapped" bit), and ``populate`` makes the next warm process fault exactly those in
(``madvise(MADV_POPULATE_WRITE)``, Linux 5.14) before its work arrives. Its work then runs without
the faults, for the price of those pages' copies while it waits.
"""

from __future__ import annotations

import os

from agent.system import libc

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Sequence

MADV_POPULATE_WRITE = 23
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56
MAX_RANGES = 4096  # a bound on what one process may ask another to fault in


def _private_writable(maps: bytes) -> list[tuple[int, int]]:
    """(start, end) of every private writable mapping in /proc/<pid>/maps' text."""
    found = []
    for line in maps.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 2 or fields[1][:2] != b"rw" or fields[1][3:4] != b"p":
            continue
        start, _, end = fields[0].partition(b"-")
        found.append((int(start, 16), int(end, 16)))
    return found


def open_page_maps(proc: str = "/proc") -> tuple[int, int] | None:
    """This process's ``maps`` and ``pagemap`` under ``proc`` (a process about to change its root
    opens them while /proc is in reach), for written_pages; None when they cannot be opened."""
    try:
        maps = os.open(f"{proc}/self/maps", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return maps, os.open(f"{proc}/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(maps)
        return None


def written_pages(maps_fd: int, pagemap_fd: int) -> list[tuple[int, int]]:
    """The private writable pages this process holds as its own (written since the fork, or new),
    as (address, length) runs. ``maps_fd`` and ``pagemap_fd`` are /proc/self/maps and
    /proc/self/pagemap, opened while /proc was in reach."""
    maps = b""
    while chunk := os.pread(maps_fd, 65536, len(maps)):
        maps += chunk
    runs: list[tuple[int, int]] = []
    for start, end in _private_writable(maps):
        first = start // PAGE_SIZE
        # one native 64-bit entry per page (memoryview's cast: the array module would load collections)
        entries = memoryview(os.pread(pagemap_fd, (end - start) // PAGE_SIZE * 8, first * 8)).cast("Q")
        run_start = -1
        for index, entry in enumerate(entries):
            own = entry & _PRESENT and entry & _EXCLUSIVE
            if own and run_start < 0:
                run_start = index
            elif not own and run_start >= 0:
                runs.append(((first + run_start) * PAGE_SIZE, (index - run_start) * PAGE_SIZE))
                run_start = -1
        if run_start >= 0:
            runs.append(((first + run_start) * PAGE_SIZE, (len(entries) - run_start) * PAGE_SIZE))
    return runs[:MAX_RANGES]


def checked_runs(value: object) -> list[tuple[int, int]]:
    """``value``'s [address, length] pairs, checked (they come from another process): positive
    integers only, at most MAX_RANGES of them."""
    runs = []
    for item in value if isinstance(value, list | tuple) else []:
        if isinstance(item, list | tuple) and len(item) == 2 and all(type(x) is int and x > 0 for x in item):
            runs.append((item[0], item[1]))
    return runs[:MAX_RANGES]


def populate(runs: Sequence[tuple[int, int]]) -> int:
    """Fault in, writable, each (address, length) run of this process's memory; runs that are not
    mapped here, or a kernel without MADV_POPULATE_WRITE, are skipped. Returns the bytes populated."""
    done = 0
    for address, length in runs[:MAX_RANGES]:
        if address % PAGE_SIZE or length <= 0 or length % PAGE_SIZE:
            continue
        try:
            libc.madvise(address, length, MADV_POPULATE_WRITE)
        except OSError:
            continue
        done += length
    return done
