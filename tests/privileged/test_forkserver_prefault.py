"""The fork server's warm container process faults in, while it waits, the pages a container's setup
wrote (agent.system.prefault): learned from the first creates, given to every warm process after."""

from __future__ import annotations

import array
import os
import time
from pathlib import Path
from typing import Any

from agent.container.engine import Engine
from agent.container.forkserver import PARKED_NAME
from agent.system import prefault
from agent.system.paths import HostPaths
from tests.privileged.engine_helpers import run, spec_for

PAGE = prefault.PAGE_SIZE


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, name) of every process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            found.append((int(entry.name), int(stat[stat.rindex(")") + 2 :].split()[1]), name))
    return found


def _warm_process(server: int) -> int | None:
    """The parked container process: a parked child of the server's parked shim."""
    processes = _processes()
    shims = {pid for pid, parent, name in processes if parent == server and name == PARKED_NAME}
    found = [pid for pid, parent, name in processes if parent in shims and name == PARKED_NAME]
    return found[0] if found else None


def _own_pages(pid: int, runs: list[tuple[int, int]]) -> tuple[int, int]:
    """(pages the process holds as its own, pages) of ``runs`` clipped to its private writable mappings."""
    mappings = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if fields[1].startswith("rw") and fields[1][3] == "p":
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mappings.append((start, end))
    own = total = 0
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for address, length in runs:
            for start, end in mappings:
                low, high = max(address, start), min(address + length, end)
                if low >= high:
                    continue
                entries = array.array("Q")
                entries.frombytes(os.pread(fd, (high - low) // PAGE * 8, low // PAGE * 8))
                own += sum(1 for e in entries if e >> 63 & 1 and e >> 56 & 1)
                total += len(entries)
    finally:
        os.close(fd)
    return own, total


def test_the_warm_process_holds_the_pages_a_setup_wrote(
    runc_spec: dict[str, Any], busybox_rootfs: Path, cgroup_parent: str
) -> None:
    engine = Engine(HostPaths())
    try:
        # the first create reports its pages; the warm pair forked meanwhile may predate them, so
        # the pair after the second create is the first one sure to have them
        for name in ("learn-1", "learn-2"):
            assert run(engine, name, spec_for(runc_spec, busybox_rootfs, ["/bin/true"], cgroup_parent, name))[0] == 0
        runs = engine.forkserver.prefault_runs
        assert runs, "no create reported the pages it wrote"
        server = engine.forkserver.server_pid
        assert server is not None
        deadline = time.monotonic() + 10
        own, total = 0, -1
        while time.monotonic() < deadline:
            warm = _warm_process(server)
            if warm is not None:
                own, total = _own_pages(warm, runs)
                if total > 0 and own == total:
                    break
            time.sleep(0.05)
        assert total > 0, "no warm process, or none of the learned pages in its mappings"
        assert own == total, f"the warm process holds {own} of the {total} learned pages as its own"
    finally:
        engine.close()
