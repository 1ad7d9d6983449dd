"""pykata-runc's adapters to the engine, without root: a container found again from saved state
(Engine.restore with FoundProcess on a fake /proc), and the spec the engine gets."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from agent.container.cli_backend import FoundProcess, _engine_spec
from agent.container.engine import Engine
from agent.container.state import Status
from agent.errors import AlreadyExists, IncorrectState
from agent.system.paths import HostPaths


def _write_stat(paths: HostPaths, pid: int, start: int, state: str = "S") -> None:
    directory = paths.proc_pid(pid)
    os.makedirs(directory, exist_ok=True)
    fields = [state, *["0"] * 18, str(start), "0", "0"]  # field 22 of /proc/<pid>/stat: the start time
    with open(os.path.join(directory, "stat"), "w", encoding="utf-8") as stream:
        stream.write(f"{pid} (sleep 300) {' '.join(fields)}\n")


class FakeCgroup:
    def __init__(self) -> None:
        self.frozen = False
        self.destroyed = False

    def pids(self) -> list[int]:
        return []

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    def destroy(self) -> None:
        self.destroyed = True


SPEC: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {"args": ["/bin/sleep", "300"], "cwd": "/"},
    "root": {"path": "rootfs"},
    "linux": {"cgroupsPath": "/pykata-unit/c1"},
}


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    return HostPaths(tmp_path)


@pytest.fixture
def engine(paths: HostPaths) -> Engine:
    return Engine(paths, cgroups=lambda _paths, _path, _id: FakeCgroup())


def test_found_process_is_alive_while_its_start_time_matches(paths: HostPaths) -> None:
    _write_stat(paths, 4242, start=777)
    process = FoundProcess(paths, 4242, 777)
    assert process.exit_code is None
    assert process.wait_for("created") and process.created


def test_found_process_has_ended_when_its_pid_was_reused(paths: HostPaths) -> None:
    _write_stat(paths, 4242, start=778)  # another process got the pid
    assert FoundProcess(paths, 4242, 777).exit_code == 255


def test_found_process_has_ended_when_it_is_a_zombie_or_gone(paths: HostPaths) -> None:
    _write_stat(paths, 4242, start=777, state="Z")
    assert FoundProcess(paths, 4242, 777).exit_code == 255
    assert FoundProcess(paths, 4343, 777).exit_code == 255  # no /proc entry at all
    assert FoundProcess(paths, 4343, 777).wait(0) == 255


def test_restored_container_keeps_the_saved_status_and_state(engine: Engine, paths: HostPaths) -> None:
    _write_stat(paths, 4242, start=777)
    bundle = "/bundles/c1"
    container = engine.restore("c1", SPEC, bundle=bundle, init=FoundProcess(paths, 4242, 777), status=Status.CREATED,
                               start_fifo="/state/c1/exec.fifo")  # fmt: skip
    assert container.status is Status.CREATED
    assert container.state() == {"ociVersion": "1.0.2", "id": "c1", "status": "created", "pid": 4242,
                                 "bundle": "/bundles/c1", "annotations": {}}  # fmt: skip
    assert engine.get("c1") is container
    with pytest.raises(IncorrectState, match="created; pause needs running"):
        container.pause()


def test_restored_container_is_stopped_once_its_init_is_gone(engine: Engine, paths: HostPaths) -> None:
    _write_stat(paths, 4242, start=777)
    container = engine.restore("c1", SPEC, bundle="/b", init=FoundProcess(paths, 4242, 777),
                               status=Status.RUNNING)  # fmt: skip
    container.pause()
    assert container.status is Status.PAUSED and container.cgroup.frozen
    container.resume()
    _write_stat(paths, 4242, start=777, state="Z")
    assert container.status is Status.STOPPED
    assert container.state()["pid"] == 0
    container.signal(signal.SIGKILL)  # a stopped container's init is not signalled: no error
    with pytest.raises(IncorrectState, match="stopped; start needs created"):
        container.start()


def test_restore_refuses_an_id_the_engine_has(engine: Engine, paths: HostPaths) -> None:
    engine.restore("c1", SPEC, bundle="/b", init=FoundProcess(paths, 1, 1), status=Status.CREATED)
    with pytest.raises(AlreadyExists, match="c1"):
        engine.restore("c1", SPEC, bundle="/b", init=FoundProcess(paths, 1, 1), status=Status.CREATED)


def test_engine_spec_leaves_start_container_hooks_to_the_cli() -> None:
    hook = {"path": "/bin/true"}
    spec = {**SPEC, "hooks": {"prestart": [hook], "startContainer": [hook], "poststop": [hook]}}
    engine_spec = _engine_spec(spec)
    assert engine_spec["hooks"] == {"prestart": [hook], "poststop": [hook]}
    assert spec["hooks"]["startContainer"] == [hook]  # the saved spec keeps them
    assert _engine_spec(SPEC) is SPEC


@pytest.mark.parametrize("rootless", [True, False])
def test_a_rootless_engines_cgroups_set_no_device_rules_whoever_makes_them(paths: HostPaths, rootless: bool) -> None:
    """The CLI's engine makes cgroups through a factory when it was handed the layout (pykata-runc serve)
    and through manager_for otherwise; either way a rootless container's cgroup skips device rules."""
    from agent.container.cgroups.layout import Layout
    from agent.container.cgroups.manager import V2Manager

    layout = Layout(version=2, root=f"{paths.cgroup_root}")
    factory = Engine(paths, cgroups=lambda p, path, cid: V2Manager(p, layout, "c1"), rootless=rootless)
    assert factory.make_cgroup("/c1", "c1").skip_devices is rootless
