"""OomWatcher on fake trees: v2 memory.events through inotify (regular files raise IN_MODIFY too), v1
through the eventfd it registers in cgroup.event_control (the test plays the kernel and signals it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.container.cgroups import OomWatcher, manager_for
from agent.errors import AlreadyExists
from agent.system.paths import HostPaths

from .test_cgroups_manager import v1_tree, v2_tree


@pytest.fixture
def watcher() -> Iterator[OomWatcher]:
    seen: list[str] = []
    found = OomWatcher(None, callback=seen.append)
    found.seen = seen  # type: ignore[attr-defined]
    yield found
    found.close()


def v2_with_events(tmp_path: Path, name: str) -> HostPaths:
    paths = v2_tree(tmp_path, f"pykata/{name}")
    (Path(paths.cgroup_root) / f"pykata/{name}/memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    return paths


def test_v2_oom_kill_increase_is_reported(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v2_with_events(tmp_path, "c1")
    events = Path(paths.cgroup_root) / "pykata/c1/memory.events"
    watcher.add("c1", manager_for(paths, "", "c1"))
    assert watcher.watched() == ["c1"]
    events.write_text("low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n")  # a change, but no kill
    assert watcher.next_event(0.3) is None
    events.write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert watcher.next_event(10) == "c1"
    assert watcher.seen == ["c1"]  # type: ignore[attr-defined]


def test_v2_counts_before_add_are_not_events(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v2_with_events(tmp_path, "c1")
    events = Path(paths.cgroup_root) / "pykata/c1/memory.events"
    events.write_text("oom 2\noom_kill 2\n")
    watcher.add("c1", manager_for(paths, "", "c1"))
    events.write_text("oom 2\noom_kill 2\n")
    assert watcher.next_event(0.3) is None
    events.write_text("oom 3\noom_kill 3\n")
    assert watcher.next_event(10) == "c1"


def test_two_containers_and_remove(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v2_with_events(tmp_path, "a")
    leaf_b = Path(paths.cgroup_root) / "pykata/b"
    shutil.copytree(Path(paths.cgroup_root) / "pykata/a", leaf_b)
    watcher.add("a", manager_for(paths, "", "a"))
    watcher.add("b", manager_for(paths, "", "b"))
    with pytest.raises(AlreadyExists):
        watcher.add("a", manager_for(paths, "", "a"))
    (leaf_b / "memory.events").write_text("oom_kill 1\n")
    assert watcher.next_event(10) == "b"
    watcher.remove("b")
    assert watcher.watched() == ["a"]
    (leaf_b / "memory.events").write_text("oom_kill 2\n")
    assert watcher.next_event(0.3) is None
    (Path(paths.cgroup_root) / "pykata/a/memory.events").write_text("oom_kill 1\n")
    assert watcher.next_event(10) == "a"


def test_v1_eventfd_registration_and_event(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v1_tree(tmp_path)
    memory = Path(paths.cgroup_root) / "memory/pykata/c1"
    (memory / "cgroup.event_control").write_text("")
    watcher.add("c1", manager_for(paths, "", "c1"))
    efd, cfd = (int(v) for v in (memory / "cgroup.event_control").read_text().split())
    assert os.readlink(f"/proc/self/fd/{cfd}") == str(memory / "memory.oom_control")
    # the kernel: an OOM kill bumps the count and signals the eventfd
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    os.eventfd_write(efd, 1)
    assert watcher.next_event(10) == "c1"


def test_v1_signal_after_removal_is_not_an_oom(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v1_tree(tmp_path)
    memory = Path(paths.cgroup_root) / "memory/pykata/c1"
    (memory / "cgroup.event_control").write_text("")
    watcher.add("c1", manager_for(paths, "", "c1"))
    efd = int((memory / "cgroup.event_control").read_text().split()[0])
    shutil.rmtree(memory)
    os.eventfd_write(efd, 1)  # the kernel signals registered eventfds when a cgroup goes away
    assert watcher.next_event(0.5) is None
    for _ in range(100):
        if not watcher.watched():
            break
        watcher.next_event(0.02)
    assert watcher.watched() == []


def test_v1_kill_counted_after_the_signal_is_reported_once(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v1_tree(tmp_path)
    memory = Path(paths.cgroup_root) / "memory/pykata/c1"
    (memory / "cgroup.event_control").write_text("")
    watcher.add("c1", manager_for(paths, "", "c1"))
    efd = int((memory / "cgroup.event_control").read_text().split()[0])
    os.eventfd_write(efd, 1)  # the OOM starts: the kernel has not counted the kill yet
    assert watcher.next_event(0.1) is None
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert watcher.next_event(10) == "c1"
    assert watcher.next_event(1.5) is None


def test_v1_oom_without_a_kill_is_still_reported(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v1_tree(tmp_path)
    memory = Path(paths.cgroup_root) / "memory/pykata/c1"
    (memory / "cgroup.event_control").write_text("")
    watcher.add("c1", manager_for(paths, "", "c1"))
    efd = int((memory / "cgroup.event_control").read_text().split()[0])
    (memory / "memory.oom_control").write_text("oom_kill_disable 1\nunder_oom 1\noom_kill 0\n")
    os.eventfd_write(efd, 1)
    assert watcher.next_event(10) == "c1"


def test_v1_remove_closes_the_descriptors_before_it_returns(tmp_path: Path, watcher: OomWatcher) -> None:
    paths = v1_tree(tmp_path)
    memory = Path(paths.cgroup_root) / "memory/pykata/c1"
    (memory / "cgroup.event_control").write_text("")
    watcher.add("c1", manager_for(paths, "", "c1"))
    efd, cfd = (int(v) for v in (memory / "cgroup.event_control").read_text().split())
    assert watcher.next_event(0.1) is None  # the thread is polling the eventfd now
    watcher.remove("c1")
    for fd in (efd, cfd):  # closed already: a leak check right after RemoveContainer sees nothing
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else None
        assert target not in ("anon_inode:[eventfd]", str(memory / "memory.oom_control"))
