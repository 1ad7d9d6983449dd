"""Bad specs are refused before any side effect; a create that fails halfway undoes every step."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.engine import Engine
from agent.container.forkserver import PARKED_NAME
from agent.errors import AlreadyExists, InvalidArgument, ResourceError
from agent.system.paths import HostPaths
from tests.helpers.cgroups import cgroups_below
from tests.privileged.engine_helpers import processes, read_to_end, run, spec_for, started


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(HostPaths())
    yield e
    e.close()


@pytest.fixture
def spec(runc_spec: dict[str, Any], busybox_rootfs: Path, cgroup_parent: str) -> Any:
    def make(name: str, args: list[str] | None = None, **process: Any) -> dict[str, Any]:
        return spec_for(runc_spec, busybox_rootfs, args or ["/bin/true"], cgroup_parent, name, **process)

    return make


def mount_table() -> list[str]:
    return sorted(line.split(" ", 4)[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())


def children_of(pid: int) -> list[int]:
    """The fork server's children, but for the shim it keeps parked for the next request."""
    return [child for child, parent, name in processes() if parent == pid and name != PARKED_NAME]


def _bad(spec: Any, name: str, edit: Any) -> dict[str, Any]:
    s: dict[str, Any] = spec(name)
    edit(s)
    return s


BAD_SPECS = {
    "missing root": lambda s: s.pop("root"),
    "root not a directory": lambda s: s["root"].update(path="/nonexistent/rootfs"),
    "relative mount destination": lambda s: s["mounts"].append({"destination": "tmp", "type": "tmpfs"}),
    "relative cwd": lambda s: s["process"].update(cwd="work"),
    "unknown namespace": lambda s: s["linux"]["namespaces"].append({"type": "sound"}),
    "relative namespace path": lambda s: s["linux"]["namespaces"].append({"type": "user", "path": "ns/user"}),
    "negative memory limit": lambda s: s["linux"].setdefault("resources", {}).update(memory={"limit": -5}),
    "bad cpuset": lambda s: s["linux"].setdefault("resources", {}).update(cpu={"cpus": "0-a"}),
    "swap below limit": lambda s: (
        s["linux"].setdefault("resources", {}).update(memory={"limit": 100 << 20, "swap": 50 << 20})
    ),
    "empty args": lambda s: s["process"].update(args=[]),
    "relative masked path": lambda s: s["linux"].update(maskedPaths=["proc/kcore"]),
}


@pytest.mark.parametrize("problem", sorted(BAD_SPECS))
def test_bad_spec_is_refused_before_any_side_effect(
    engine: Engine, spec: Any, cgroup_parent: str, problem: str
) -> None:
    bad = _bad(spec, "bad", BAD_SPECS[problem])
    mounts = mount_table()
    with pytest.raises(InvalidArgument):
        engine.create("bad", bad)
    assert engine.forkserver.server_pid is None, "the fork server was started for a spec that failed validation"
    assert not [p for p in cgroups_below(cgroup_parent) if p.name == "bad"]
    assert mount_table() == mounts
    assert engine.list() == []


@pytest.mark.parametrize("container_id", ["", "a/b", "..", "../x", "x" * 1025, "white space"])
def test_bad_container_ids(engine: Engine, spec: Any, container_id: str) -> None:
    with pytest.raises(InvalidArgument, match="container id"):
        engine.create(container_id, spec("bad-id"))
    assert engine.forkserver.server_pid is None


def test_duplicate_id_is_refused(engine: Engine, spec: Any) -> None:
    engine.create("dup", spec("dup", ["/bin/sleep", "300"]))
    try:
        with pytest.raises(AlreadyExists, match="container dup already exists"):
            engine.create("dup", spec("dup2"))
    finally:
        engine.remove("dup", timeout=10)


def test_create_failing_halfway_leaves_nothing(engine: Engine, spec: Any, cgroup_parent: str) -> None:
    engine.forkserver.start()
    server = engine.forkserver.server_pid
    assert server is not None
    mounts = mount_table()
    fds = sorted(os.listdir("/proc/self/fd"))
    broken = spec("halfway")
    # the bind source is missing: setup fails inside the container process, after the cgroup
    # was made and the process was forked
    broken["mounts"].append(
        {"destination": "/data", "type": "bind", "source": "/nonexistent/pykata", "options": ["rbind"]}
    )
    with pytest.raises(ResourceError, match="/nonexistent/pykata"):
        engine.create("halfway", broken)
    assert not [p for p in cgroups_below(cgroup_parent) if p.name == "halfway"], "cgroup left behind"
    assert mount_table() == mounts, "mounts left behind"
    # the shim reports the exit before it ends itself: give it a moment to go
    deadline = time.monotonic() + 5
    while children_of(server) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert children_of(server) == [], "processes left behind"
    assert sorted(os.listdir("/proc/self/fd")) == fds, "descriptors left open"
    # the id is free again
    code, out, _ = run(engine, "halfway", spec("halfway", ["/bin/echo", "again"]))
    assert (code, out) == (0, b"again\n")


def test_exec_of_missing_program_exits_127(engine: Engine, spec: Any) -> None:
    container = started(engine, "noexec", spec("noexec", ["/bin/sleep", "300"]))
    try:
        proc = container.exec("e", {"args": ["nothing-here"], "cwd": "/", "env": ["PATH=/bin"]})
        assert proc.wait(20) == 127
        assert b"nothing-here" in read_to_end(proc.io.stderr)
    finally:
        engine.remove("noexec", timeout=10)


def test_the_parked_shim_goes_with_the_fork_server() -> None:
    """The fork server keeps one shim forked ahead of the next request; closing the server ends it."""
    engine = Engine(HostPaths())
    engine.forkserver.start()
    server = engine.forkserver.server_pid
    assert server is not None
    deadline = time.monotonic() + 5
    parked: list[int] = []
    while not parked and time.monotonic() < deadline:
        parked = [pid for pid, parent, name in processes() if (parent, name) == (server, PARKED_NAME)]
        time.sleep(0.01)
    assert len(parked) == 1, "no parked shim"
    engine.close()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{parked[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not Path(f"/proc/{parked[0]}").exists(), "the parked shim outlived its fork server"


@pytest.mark.parametrize("program", ["/no/such/program", "no-such-program"])
def test_a_missing_program_fails_the_create(engine: Engine, spec: Any, cgroup_parent: str, program: str) -> None:
    """As runc's init: the process is made ready for its program before start, so a program that is
    not there fails the create (naming it) and leaves nothing behind."""
    with pytest.raises(ResourceError, match=f"executable '{program}' not found"):
        engine.create("noprog", spec("noprog", [program]))
    assert "noprog" not in [c.id for c in engine.list()]
    assert not [p for p in cgroups_below(cgroup_parent) if p.name == "noprog"]
