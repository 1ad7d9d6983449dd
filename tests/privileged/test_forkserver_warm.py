"""What the fork server's warm container process does ahead of its request: it faults in the pages a
container's setup wrote (agent.system.prefault), learned from the first creates, and makes the
namespaces the last creates asked for, going back to the runtime's when a request wants those."""

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
from tests.privileged.engine_helpers import ns_inode, processes, run, spec_for, started

PAGE = prefault.PAGE_SIZE


def _warm_process(server: int) -> int | None:
    """The parked container process: a parked child of the server's parked shim."""
    now = processes()
    shims = {pid for pid, parent, name in now if parent == server and name == PARKED_NAME}
    found = [pid for pid, parent, name in now if parent in shims and name == PARKED_NAME]
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


def _parked_with_own_uts(engine: Engine, runtime_uts: str) -> int:
    """The warm process, once it is parked in a UTS namespace it made ahead."""
    server = engine.forkserver.server_pid
    assert server is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        warm = _warm_process(server)
        if warm is not None:
            try:
                if ns_inode(warm, "uts") != runtime_uts:
                    return warm
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError("no warm process with a UTS namespace of its own")


def test_namespaces_made_ahead_are_the_ones_a_request_gets(
    runc_spec: dict[str, Any], busybox_rootfs: Path, cgroup_parent: str
) -> None:
    """Creates with their own network, IPC and UTS namespaces make the warm process make those
    ahead; a later create that shares the runtime's (no such namespace in its spec) or joins another
    container's gets exactly that one, not the one made ahead."""
    engine = Engine(HostPaths())

    def spec(name: str, drop: tuple[str, ...] = (), join: dict[str, str] | None = None) -> dict[str, Any]:
        made = spec_for(runc_spec, busybox_rootfs, ["/bin/sleep", "60"], cgroup_parent, name)
        namespaces = [ns for ns in made["linux"]["namespaces"] if ns["type"] not in drop]
        for kind, path in (join or {}).items():
            namespaces = [ns for ns in namespaces if ns["type"] != kind] + [{"type": kind, "path": path}]
        made["linux"]["namespaces"] = namespaces
        if "uts" in drop:
            made.pop("hostname", None)  # a hostname needs a UTS namespace of the container's own
        return made

    try:
        first = started(engine, "own-1", spec("own-1"))
        second = started(engine, "own-2", spec("own-2"))
        assert engine.forkserver.preunshare == ("network", "ipc", "uts")
        assert first.init is not None and second.init is not None
        kinds = ("net", "ipc", "uts")
        mine = {kind: ns_inode("self", kind) for kind in kinds}
        for kind in kinds:
            assert ns_inode(second.init.pid, kind) not in (mine[kind], ns_inode(first.init.pid, kind))
        # joined: served by a process that made all three ahead (as own-1 and own-2 asked); shared: by
        # one that made IPC and UTS ahead (as joined asked: its network namespace is another's)
        for name, made in (("joined", spec("joined", join={"network": f"/proc/{first.init.pid}/ns/net"})),
                           ("shared", spec("shared", drop=("network", "ipc", "uts")))):  # fmt: skip
            warm = _parked_with_own_uts(engine, mine["uts"])
            container = started(engine, name, made)
            assert container.init is not None and container.init.pid == warm, "not served by the warm process"
            got = {kind: ns_inode(warm, kind) for kind in kinds}
            if name == "shared":
                assert got == mine
            else:
                assert got["net"] == ns_inode(first.init.pid, "net")
                assert got["uts"] not in (mine["uts"], ns_inode(first.init.pid, "uts"))
    finally:
        for container in engine.list():
            engine.remove(container.id, timeout=10)
        engine.close()
