"""agent.system.prefault: the pages a forked process wrote, and faulting given pages in ahead of use."""

from __future__ import annotations

import array
import ast
import ctypes
import mmap
import os
from collections.abc import Callable
from typing import Any

from agent.system import prefault

PAGE = prefault.PAGE_SIZE


def _exclusive(pagemap_fd: int, address: int, pages: int) -> list[bool]:
    """Per page: present and mapped by this process only (pagemap bits 63 and 56)."""
    entries = array.array("Q")
    entries.frombytes(os.pread(pagemap_fd, pages * 8, address // PAGE * 8))
    return [bool(e >> 63 & 1 and e >> 56 & 1) for e in entries]


def _in_child(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child (the copy-on-write case); its result comes back as a repr."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.write(write_end, repr(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return ast.literal_eval(data.decode())


def _address(area: mmap.mmap) -> int:
    view = ctypes.c_char.from_buffer(area)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # no exported pointer left: the mapping can be closed


def _written_area(pages: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping the parent wrote (so, after a fork, shared copy-on-write)."""
    area = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for page in range(pages):
        area[page * PAGE] = 1
    return area, _address(area)


def _covered(runs: list[tuple[int, int]], address: int) -> bool:
    return any(start <= address < start + length for start, length in runs)


def test_written_pages_are_the_ones_the_child_wrote() -> None:
    area, base = _written_area(16)
    maps = os.open("/proc/self/maps", os.O_RDONLY)
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:

        def child() -> list[bool]:
            for page in (2, 3, 9):
                area[page * PAGE + 1] = 7  # copy-on-write: these three become the child's own
            runs = prefault.written_pages(maps, pagemap)
            return [_covered(runs, base + page * PAGE) for page in range(16)]

        covered = _in_child(child)
    finally:
        os.close(maps)
        os.close(pagemap)
        area.close()
    assert covered == [page in (2, 3, 9) for page in range(16)]


def test_populate_makes_exactly_the_given_pages_the_childs_own() -> None:
    area, base = _written_area(16)
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:

        def child() -> tuple[list[bool], list[bool], int, bytes]:
            before = _exclusive(pagemap, base, 16)
            done = prefault.populate([(base + 4 * PAGE, 3 * PAGE), (base + 12 * PAGE, PAGE)])
            return before, _exclusive(pagemap, base, 16), done, area[4 * PAGE : 4 * PAGE + 2]

        before, after, done, content = _in_child(child)
    finally:
        os.close(pagemap)
        area.close()
    assert not any(before), "a fresh fork shares the parent's pages"
    assert after == [page in (4, 5, 6, 12) for page in range(16)]
    assert done == 4 * PAGE
    assert content == b"\x01\x00"  # the parent's contents, copied


def test_populate_skips_what_is_not_there() -> None:
    area = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    gone = _address(area)
    area.close()  # its address range is mapped no more
    assert prefault.populate([(gone, 4 * PAGE), (PAGE + 1, PAGE), (PAGE, 0), (PAGE, PAGE + 3)]) == 0
