"""Spec parsing, ordered validation and status rules of the container engine (no root needed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agent.container.spec import parse_spec
from agent.container.state import Status, require
from agent.container.validate import CHECKS, validate_container_id, validate_spec
from agent.errors import IncorrectState, InvalidArgument

BASE: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {
        "args": ["/bin/sh"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "c",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}],
        "resources": {"memory": {"limit": 1 << 20}, "cpu": {"cpus": "0-1", "shares": 1024}},
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
    },
}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def edited(edit: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    edit(spec)
    return spec


def test_parse_keeps_every_field(bundle: Path) -> None:
    spec = parse_spec(BASE)
    assert spec.process is not None
    assert spec.process.args == ("/bin/sh",)
    assert spec.process.capabilities is not None and spec.process.capabilities.bounding == ("CAP_KILL",)
    assert spec.process.rlimits[0].soft == 1024
    assert spec.root_readonly is True
    assert spec.linux.namespace("pid") is not None and spec.linux.namespace("user") is None
    assert spec.linux.resources["cpu"]["cpus"] == "0-1"
    assert spec.process.as_dict()["capabilities"]["bounding"] == ["CAP_KILL"]
    validate_spec(spec, bundle)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s["process"].update(args="sh"), "process.args"),
        (lambda s: s["process"]["user"].update(uid="0"), "process.user.uid"),
        (lambda s: s.update(mounts={"a": 1}), "mounts"),
        (lambda s: s["linux"].update(namespaces=[3]), "linux.namespaces[0]"),
    ],
)
def test_wrong_types_name_the_field(edit: Any, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(edited(edit))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("root"), "root.path is missing"),
        (lambda s: s["root"].update(path="nothing-here"), "is not a directory"),
        (lambda s: s.pop("process"), "process is missing"),
        (lambda s: s["process"].update(args=[]), "process.args is empty"),
        (lambda s: s["process"].update(cwd="tmp"), "process.cwd 'tmp' must be an absolute path"),
        (lambda s: s["process"].update(env=["NOEQUALS"]), r"process.env\[0\]"),
        (lambda s: s["linux"]["namespaces"].append({"type": "sound"}), "'sound' is not a namespace type"),
        (lambda s: s["linux"]["namespaces"].append({"type": "pid"}), "namespace pid is listed twice"),
        (lambda s: s["linux"]["namespaces"].append({"type": "user", "path": "x"}), "must be an absolute path"),
        (lambda s: s["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1, "size": 1}]), "no user namespace"),
        (lambda s: s["mounts"].append({"destination": "tmp", "type": "tmpfs"}), r"mounts\[1\].destination"),
        (lambda s: s["mounts"].append({"destination": "/a/../b", "type": "tmpfs"}), "contains '..'"),
        (lambda s: s["mounts"].append({"destination": "/b", "type": "bind"}), "a bind mount needs a source"),
        (lambda s: s["linux"].update(maskedPaths=["proc"]), r"linux.maskedPaths\[0\]"),
        (lambda s: s["linux"].update(rootfsPropagation="sideways"), "linux.rootfsPropagation"),
        (lambda s: s["linux"].update(cgroupsPath="relative:x"), "linux.cgroupsPath"),
        (lambda s: s.update(hooks={"prestart": [{"path": "hook"}]}), r"hooks.prestart\[0\].path"),
        (lambda s: s["linux"]["resources"]["memory"].update(limit=-2), "linux.resources.memory.limit is -2"),
        (lambda s: s["linux"]["resources"]["memory"].update(swap=1), "memory.swap"),
        (lambda s: s["linux"]["resources"]["cpu"].update(cpus="0-"), "linux.resources.cpu.cpus"),
        (lambda s: s["linux"]["resources"]["cpu"].update(period=10), "linux.resources.cpu.period 10"),
        (lambda s: s["linux"]["resources"].update(pids={"limit": "10"}), "linux.resources.pids.limit"),
    ],
)
def test_each_check_names_the_problem(bundle: Path, edit: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_spec(parse_spec(edited(edit)), bundle)


def test_checks_run_in_order(bundle: Path) -> None:
    # both the root and the namespaces are wrong: the root check comes first and wins
    spec = edited(lambda s: (s.pop("root"), s["linux"]["namespaces"].append({"type": "sound"})))
    with pytest.raises(InvalidArgument, match=r"root\.path"):
        validate_spec(parse_spec(spec), bundle)
    assert [c.__name__ for c in CHECKS][:2] == ["check_root", "check_process"]


@pytest.mark.parametrize("bad", ["", "/", "a/b", "..", "a..b", ".", "x" * 1025, "has space", "tab\t"])
def test_bad_container_ids(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="container id"):
        validate_container_id(bad)


@pytest.mark.parametrize("good", ["c1", "kataprobe-16088", "a.b_c+d", "x" * 1024])
def test_good_container_ids(good: str) -> None:
    validate_container_id(good)


def test_status_rules() -> None:
    assert Status.CREATED.can_start() and not Status.RUNNING.can_start()
    assert Status.RUNNING.can_exec() and not Status.PAUSED.can_exec() and not Status.CREATED.can_exec()
    assert Status.RUNNING.can_pause() and Status.PAUSED.can_resume() and not Status.RUNNING.can_resume()
    assert Status.STOPPED.can_delete() and not Status.RUNNING.can_delete()
    assert not Status.STOPPED.can_signal()
    with pytest.raises(IncorrectState, match="container c1 is running; start needs created"):
        require("c1", Status.RUNNING, Status.RUNNING.can_start(), "start", "created")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ({"path": "fuse", "type": "c"}, "must be an absolute path under /dev"),
        ({"path": "/dev/fuse", "type": "x"}, "is not c, b, u or p"),
        ({"path": "/dev/fuse", "type": "c", "major": -1}, r"linux.devices\[0\].major"),
    ],
)
def test_bad_devices(bundle: Path, device: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_spec(parse_spec(edited(lambda s: s["linux"].update(devices=[device]))), bundle)
