"""Spec parsing, ordered validation and status rules of the container engine (no root needed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agent.container.cgroups.plan import is_cpu_list, validate_resources
from agent.container.spec import parse_spec
from agent.container.state import Status, require
from agent.container.validate import (
    CHECKS,
    resolve_root,
    validate_container_id,
    validate_spec,
)
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
        (lambda s: s["linux"]["resources"]["memory"].update(limit=-2), "memory.limit must be a byte count"),
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


@pytest.mark.parametrize(
    "bad",
    ["", "/", "a/b", "..", "a..b", ".", "x" * 1025, "has space", "tab\t", "c1\n", "\n", "c\n1", "é", "c1\x00",
     "a*b", "a:b", "a@b", "a\\b", "a,b", "٣", "\uff431"],  # the last: a fullwidth c
)  # fmt: skip
def test_bad_container_ids(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="container id"):
        validate_container_id(bad)


@pytest.mark.parametrize("good", ["c1", "kataprobe-16088", "a.b_c+d", "x" * 1024, "-", "+", "_", ".a", "a.",
                                  "ABCXYZabcxyz0189_+-.", "a.b.c"])  # fmt: skip
def test_good_container_ids(good: str) -> None:
    validate_container_id(good)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "container id is empty"),
        ("x" * 1025, "container id is 1025 characters long; the limit is 1024"),
        ("a/b", "container id 'a/b' contains '/' or '..'"),
        ("a..b", "container id 'a..b' contains '/' or '..'"),
        ("has space", r"container id 'has space' has characters outside \[A-Za-z0-9_\+-\.\]"),
        ("c1\n", r"container id 'c1\\n' has characters outside"),
    ],
)
def test_container_id_messages(bad: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{message}"):
        validate_container_id(bad)


@pytest.mark.parametrize(
    "good",
    ["0", "0-3", "0-3,7", "0,1,2", " 0-3 , 7 ", "\t1\n", "10-20,30", "0-0", "007", "1,2\n", "\u00a01\u2003", "٣"],
)
def test_good_cpu_lists(good: str) -> None:
    # digits and white space are Unicode's (str.isdecimal, str.isspace), as a regular expression's \d and \s
    assert is_cpu_list(good)
    validate_resources({"cpu": {"cpus": good, "mems": good}})


@pytest.mark.parametrize(
    "bad", [" ", "-", "0-", "-3", "0 -3", "0- 3", "0--3", "1-2-3", "1,", ",1", "1,,2", "a", "1a", "0x1", "1.5", "+1",
            "1;2", "½", "²"],
)  # fmt: skip
def test_bad_cpu_lists(bad: str) -> None:
    assert not is_cpu_list(bad)
    with pytest.raises(InvalidArgument, match=r"^linux.resources.cpu.mems .* is not a memory node list like 0-3,7$"):
        validate_resources({"cpu": {"mems": bad}})


def test_cpu_list_must_be_text() -> None:
    with pytest.raises(InvalidArgument, match=r"^linux\.resources\.cpu\.cpus must be a string like '0-3,7', not 3$"):
        validate_resources({"cpu": {"cpus": 3}})
    validate_resources({"cpu": {"cpus": "", "mems": None}})  # empty or unset: no cpuset asked for


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"memory": 1}, r"^linux\.resources\.memory must be an object, not int$"),
        ({"cpu": ["shares"]}, r"^linux\.resources\.cpu must be an object, not list$"),
        ({"pids": True}, r"^linux\.resources\.pids must be an object, not bool$"),
        ({"cpu": {"period": 500}}, r"^linux\.resources\.cpu\.period 500 is outside 1000\.\.1000000 microseconds$"),
        ({"memory": {"limit": 100, "swap": 50}}, r"swap \(50\) is memory\+swap and must be >= .*limit \(100\)"),
    ],
)
def test_resources_of_the_wrong_shape_are_named(resources: dict[str, Any], message: str) -> None:
    """A section that is not an object (this raised AttributeError from the first check once) and the
    values the kernel would refuse."""
    with pytest.raises(InvalidArgument, match=message):
        validate_resources(resources)
    spec = parse_spec({"ociVersion": "1.0.2", "root": {"path": "/"}, "process": {"args": ["/bin/true"], "cwd": "/"},
                       "linux": {"resources": resources}})  # fmt: skip
    with pytest.raises(InvalidArgument, match=message):
        validate_spec(spec)


@pytest.mark.parametrize(
    "destination",
    ["/..", "/a/..", "/../a", "/a/../b", "//a/..//b", "/a/./../b", "/a/../"],
)
def test_mount_destination_with_dotdot(bundle: Path, destination: str) -> None:
    spec = edited(lambda s: s["mounts"].append({"destination": destination, "type": "tmpfs"}))
    with pytest.raises(InvalidArgument, match=r"^mounts\[1\].destination .* contains '\.\.'$"):
        validate_spec(parse_spec(spec), bundle)


@pytest.mark.parametrize("destination", ["/a..b", "/...", "/a/..b", "/.../x", "/a/.", "/a//b/"])
def test_mount_destination_with_dots_in_names(bundle: Path, destination: str) -> None:
    validate_spec(parse_spec(edited(lambda s: s["mounts"].append({"destination": destination, "type": "tmpfs"}))),
                  bundle)  # fmt: skip


def test_root_not_a_directory_message(bundle: Path) -> None:
    """The message shows the root as one plain path, however the spec and the bundle spell it."""
    for root in ("nothing-here", "./nothing-here/", ".//nothing-here"):
        spec = parse_spec(edited(lambda s, root=root: s["root"].update(path=root)))
        expected = f"^root.path '{bundle}/nothing-here' is not a directory$"
        with pytest.raises(InvalidArgument, match=expected):
            validate_spec(spec, bundle)
        with pytest.raises(InvalidArgument, match=expected):
            validate_spec(spec, f"{bundle}/")
    spec = parse_spec(edited(lambda s: s["root"].update(path=f"{bundle}//nothing-here/")))
    with pytest.raises(InvalidArgument, match=f"^root.path '{bundle}/nothing-here' is not a directory$"):
        validate_spec(spec, None)
    (bundle / "file").write_text("")
    spec = parse_spec(edited(lambda s: s["root"].update(path="file")))
    with pytest.raises(InvalidArgument, match="is not a directory"):
        validate_spec(spec, str(bundle))
    spec = parse_spec(edited(lambda s: s["root"].update(path="rootfs")))
    with pytest.raises(
        InvalidArgument, match=r"^root\.path 'rootfs' is relative and there is no bundle to resolve it$"
    ):
        validate_spec(spec, None)


def test_root_is_resolved_under_the_bundle(bundle: Path) -> None:
    (bundle / "link").symlink_to("rootfs")
    for root in ("rootfs", "./rootfs/", "link", str(bundle / "link")):
        spec = parse_spec(edited(lambda s, root=root: s["root"].update(path=root)))
        validate_spec(spec, bundle)
        validate_spec(spec, str(bundle))
        assert resolve_root(spec, bundle) == resolve_root(spec, str(bundle)) == str(bundle / "rootfs")


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
