"""The systemd cgroup driver without systemd: unit names from linux.cgroupsPath, limits as unit properties,
the driver's choice, and its conversation with a systemd played by the test over D-Bus (a unix socket
at the fake root's /run/systemd/private), which records the calls and makes the scope's directory.
The driver in a real systemd: tests/vm/test_systemd_cgroup.py."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.cgroups import manager_for, plan_v2
from agent.container.cgroups.layout import Layout
from agent.container.cgroups.manager import V2Manager
from agent.container.cgroups.systemd import (
    INFINITY,
    SystemdManager,
    SystemdV1Manager,
    cpu_mask,
    parse_systemd_path,
    slice_path,
    unit_properties,
)
from agent.errors import AlreadyExists, InvalidArgument, ResourceError, Unsupported
from agent.system.paths import HostPaths


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("system.slice", "system.slice"),
        ("user-1000.slice", "user.slice/user-1000.slice"),
        ("a-b-c.slice", "a.slice/a-b.slice/a-b-c.slice"),
        ("-", ""),
        ("-.slice", ""),
    ],
)
def test_slice_path(name: str, path: str) -> None:
    assert slice_path(name) == path


@pytest.mark.parametrize("name", ["system", "a--b.slice", "-a.slice", "a-.slice", ".slice", "a/b.slice", "a b.slice"])
def test_slice_names_systemd_refuses_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="slice"):
        slice_path(name)


def test_unit_names() -> None:
    assert parse_systemd_path("system.slice:pykata:c1", "c1") == ("system.slice", "pykata-c1.scope")
    assert parse_systemd_path("machine.slice::c1", "x") == ("machine.slice", "c1.scope")
    assert parse_systemd_path(":cri:abc", "x") == ("system.slice", "cri-abc.scope")
    assert parse_systemd_path("", "c9") == ("system.slice", "pykata-c9.scope")  # runc's default, with our prefix
    with pytest.raises(InvalidArgument, match="needs a name"):
        parse_systemd_path("system.slice:p:", "c1")
    with pytest.raises(InvalidArgument, match="not a path"):
        parse_systemd_path("/a/b", "c1")
    with pytest.raises(Unsupported, match="slice unit"):
        parse_systemd_path("system.slice::k8s.slice", "c1")
    with pytest.raises(InvalidArgument, match="not a unit name"):
        parse_systemd_path("system.slice:p:a b", "c1")


def test_cpu_mask_is_systemds_bitmap() -> None:
    assert cpu_mask("0") == b"\x01"
    assert cpu_mask("0-3,8") == b"\x0f\x01"
    assert cpu_mask("9") == b"\x00\x02"


def test_limits_become_unit_properties() -> None:
    resources = {
        "cpu": {"shares": 1024, "quota": 12345, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 256 << 20, "reservation": 64 << 20, "swap": 512 << 20},
        "pids": {"limit": -1},
        "blockIO": {"weight": 500},
        "unified": {"memory.high": "max"},
    }
    props = dict(unit_properties(plan_v2(resources)))
    assert props == {
        "CPUWeight": ("t", 39),
        # 12345 us per 100 ms is 123450 us per second: up to systemd's 10 ms step, never below the spec
        "CPUQuotaPerSecUSec": ("t", 130000),
        "CPUQuotaPeriodUSec": ("t", 100000),
        "AllowedCPUs": ("ay", b"\x03"),
        "AllowedMemoryNodes": ("ay", b"\x01"),
        "MemoryMax": ("t", 256 << 20),
        "MemoryLow": ("t", 64 << 20),
        "MemorySwapMax": ("t", 256 << 20),
        "MemoryHigh": ("t", INFINITY),
        "TasksMax": ("t", INFINITY),
        "IOWeight": ("t", 1 + (490 * 9999) // 990),
    }
    assert dict(unit_properties(plan_v2({"cpu": {"quota": -1, "period": 50000}}))) == {
        "CPUQuotaPerSecUSec": ("t", INFINITY),
        "CPUQuotaPeriodUSec": ("t", 50000),
    }
    # a unified key for a file a typed field also writes wins, as it does in the files
    props = dict(unit_properties(plan_v2({"memory": {"limit": 100 << 20}, "unified": {"memory.max": "200000000"}})))
    assert props["MemoryMax"] == ("t", 200000000)


def _fake_root(tmp_path: Path, *, systemd: bool) -> HostPaths:
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    if systemd:
        (tmp_path / "run/systemd/system").mkdir(parents=True)
    return HostPaths(tmp_path)


def test_the_driver_is_chosen_by_the_path_and_by_systemd_as_init(tmp_path: Path) -> None:
    paths = _fake_root(tmp_path, systemd=False)
    layout = Layout(version=2, root=f"{tmp_path}/sys/fs/cgroup")
    # no systemd: the agent's choice (None) keeps cgroupfs, with systemd's layout of the path
    chosen = manager_for(paths, "system.slice:p:c1", "c1", layout=layout, systemd=None)
    assert type(chosen) is V2Manager
    assert chosen.relative == "system.slice/p-c1.scope"
    # asked for outright (pykata-runc --systemd-cgroup): refused by name
    with pytest.raises(Unsupported, match="systemd is not this system's init"):
        manager_for(paths, "system.slice:p:c1", "c1", layout=layout, systemd=True)
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    chosen = manager_for(paths, "user-1000.slice:p:c1", "c1", layout=layout, systemd=None)
    assert isinstance(chosen, SystemdManager)
    assert chosen.path == f"{tmp_path}/sys/fs/cgroup/user.slice/user-1000.slice/p-c1.scope"
    assert type(manager_for(paths, "/a/b", "c1", layout=layout, systemd=None)) is V2Manager  # a path: cgroupfs
    with pytest.raises(InvalidArgument, match="not a path"):
        manager_for(paths, "/a/b", "c1", layout=layout, systemd=True)
    v1 = Layout(version=1, root=f"{tmp_path}/sys/fs/cgroup", controllers={"memory": f"{tmp_path}/m"})
    chosen = manager_for(paths, "system.slice:p:c1", "c1", layout=v1, systemd=True)
    assert isinstance(chosen, SystemdV1Manager)
    assert chosen.directories() == {"memory": f"{tmp_path}/m/system.slice/p-c1.scope"}


class FakeSystemd:
    """systemd's manager as the driver sees it over /run/systemd/private: each call is recorded
    (member, body); StartTransientUnit makes the scope's directory (with the files the driver writes)
    and puts the pid there and in the fake /proc; StopUnit removes it; each job ends with a JobRemoved
    signal whose result is ``job_result``. ``refuse`` maps a member to the D-Bus error it answers.
    ``hold_first``: answer the first message of a connection only when the next one arrives, as
    systemd's server does when that message came in one read with the end of the authentication.
    A user's manager (``socket`` at its runtime directory) has its own cgroup, ``manager_cgroup``: its
    ControlGroup property, and where its scopes are made."""

    FILES = ("cgroup.procs", "memory.max", "memory.low", "memory.swap.max", "pids.max", "cpu.weight", "cpu.max")

    def __init__(self, root: Path, socket_path: Path | None = None, manager_cgroup: str = "") -> None:
        self.root = root
        self.manager_cgroup = manager_cgroup
        self.calls: list[tuple[str, list[Any]]] = []
        self.job_result = "done"
        self.hold_first = False
        self.subscribes = 0
        self.refuse: dict[str, str] = {}
        self.refuse_once: dict[str, str] = {}
        self.slices: dict[str, str] = {}  # unit -> its slice's path, from StartTransientUnit
        self._jobs = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(socket_path or root / "run/systemd/private"))
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def members(self) -> list[str]:
        return [member for member, _ in self.calls]

    def body(self, member: str) -> list[Any]:
        return next(body for called, body in self.calls if called == member)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    self._conversation(conn)
                except (OSError, ValueError):
                    pass

    def _conversation(self, conn: socket.socket) -> None:
        from agent.system import dbus

        stream = conn.makefile("rb")
        assert stream.read(1) == b"\0"
        assert stream.readline() == f"AUTH EXTERNAL {str(os.geteuid()).encode().hex()}\r\n".encode()
        conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
        assert stream.readline() == b"BEGIN\r\n"
        serial = 1000
        held = self.hold_first
        while True:
            head = stream.read(16)
            if len(head) < 16:
                return
            message = dbus.Message.decode(head + stream.read(dbus.message_length(head) - 16))
            self.calls.append((message.member or "", message.body))
            self.subscribes += message.member == "Subscribe"
            if held:
                held = False
                continue  # dropped: the driver must not depend on it (it sends its first call again)
            serial += 1
            error = self.refuse.get(message.member or "") or self.refuse_once.pop(message.member or "", "")
            if error:
                reply = dbus.Message(dbus.ERROR, serial=serial, reply_serial=message.serial, error_name=error,
                                     signature="s", body=[f"{message.member} refused"])  # fmt: skip
                conn.sendall(reply.encode())
                continue
            job = self._act(message)
            signature, body = ("o", [job]) if job else ("", [])
            if message.member == "Get" and message.body == ["org.freedesktop.systemd1.Manager", "ControlGroup"]:
                signature, body = "v", [dbus.Variant("s", self.manager_cgroup or "/")]
            reply = dbus.Message(dbus.METHOD_RETURN, serial=serial, reply_serial=message.serial, signature=signature,
                                 body=body)  # fmt: skip
            conn.sendall(reply.encode())
            if job:
                serial += 1
                body = [self._jobs, job, message.body[0], self.job_result]
                removed = dbus.Message(dbus.SIGNAL, serial=serial, path="/org/freedesktop/systemd1",
                                       interface="org.freedesktop.systemd1.Manager", member="JobRemoved",
                                       signature="uoss", body=body)  # fmt: skip
                conn.sendall(removed.encode())

    def _act(self, message: Any) -> str | None:
        """Do what ``message`` asks; the job's path for the members that make a job."""
        if message.member not in ("StartTransientUnit", "StopUnit"):
            return None
        if message.member == "StartTransientUnit":
            props = dict(message.body[2])
            self.slices[str(message.body[0])] = slice_path(props["Slice"].value)
        relative = "/".join(
            part for part in (self.manager_cgroup.strip("/"), self.slices.get(str(message.body[0]), ""),
                              str(message.body[0])) if part
        )  # fmt: skip
        scope = self.root / "sys/fs/cgroup" / relative
        if message.member == "StartTransientUnit":
            pid = props["PIDs"].value[0]
            scope.mkdir(parents=True)
            for name in self.FILES:
                (scope / name).write_text("")
            (scope / "cgroup.procs").write_text(f"{pid}\n")
            (self.root / f"proc/{pid}").mkdir(parents=True, exist_ok=True)
            (self.root / f"proc/{pid}/cgroup").write_text(f"0::/{relative}\n")
        elif scope.is_dir():
            for child in scope.iterdir():
                child.unlink()
            scope.rmdir()
        self._jobs += 1
        return f"/org/freedesktop/systemd1/job/{self._jobs}"


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    _fake_root(tmp_path, systemd=True)
    fake = FakeSystemd(tmp_path)
    yield fake
    fake.close()


def _manager(root: Path) -> SystemdManager:
    layout = Layout(version=2, root=f"{root}/sys/fs/cgroup")
    made = manager_for(HostPaths(root), "system.slice:pykata:c1", "c1", layout=layout, systemd=True)
    assert isinstance(made, SystemdManager)
    return made


def test_a_scope_is_started_with_the_first_process_and_the_limits(systemd: FakeSystemd) -> None:
    from agent.system.dbus import Variant

    manager = _manager(systemd.root)
    manager.create()
    assert manager.self_attach_files() == []  # no scope yet: the engine moves the process by pid
    with pytest.raises(InvalidArgument, match=r"pids\.limit"):
        manager.apply({"pids": {"limit": "many"}})  # checked at once, before systemd hears of it
    manager.apply({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}})
    assert systemd.calls == []
    manager.add_pid(4242)
    assert systemd.members() == ["Subscribe", "StartTransientUnit"]
    unit, mode, props, aux = systemd.body("StartTransientUnit")
    assert (unit, mode, aux) == ("pykata-c1.scope", "fail", [])
    props = dict(props)
    assert props["PIDs"] == Variant("au", [4242])
    assert props["Delegate"] == Variant("b", True)
    assert props["Slice"] == Variant("s", "system.slice")
    assert props["MemoryMax"] == Variant("t", 64 << 20)
    assert props["TasksMax"] == Variant("t", 50)
    scope = systemd.root / "sys/fs/cgroup/system.slice/pykata-c1.scope"
    assert (scope / "memory.max").read_text() == str(64 << 20)  # and the files, as the cgroupfs driver
    assert (scope / "pids.max").read_text() == "50"
    assert manager.self_attach_files() == [(manager.layout.root, "system.slice/pykata-c1.scope/cgroup.procs")]

    manager.update({"memory": {"limit": 128 << 20}})
    assert systemd.members()[-1] == "SetUnitProperties"
    assert systemd.body("SetUnitProperties") == ["pykata-c1.scope", True, [("MemoryMax", Variant("t", 128 << 20))]]
    assert (scope / "memory.max").read_text() == str(128 << 20)

    with pytest.raises(ResourceError, match="still has processes"):
        manager.destroy()
    assert "StopUnit" not in systemd.members()
    (scope / "cgroup.procs").write_text("")  # the container's processes have ended
    manager.destroy()
    assert systemd.members()[-3:] == ["Subscribe", "StopUnit", "ResetFailedUnit"]
    assert systemd.body("StopUnit") == ["pykata-c1.scope", "replace"]
    assert not scope.exists()


def test_systemds_refusals_and_failed_jobs_are_named(systemd: FakeSystemd) -> None:
    manager = _manager(systemd.root)
    systemd.refuse["StartTransientUnit"] = "org.freedesktop.systemd1.UnitExists"
    with pytest.raises(AlreadyExists, match=r"pykata-c1\.scope exists already"):
        manager.add_pid(4242)
    # (a failed scope of that name would have been cleared by the ResetFailedUnit before the second try)
    assert systemd.members()[-3:] == ["StartTransientUnit", "ResetFailedUnit", "StartTransientUnit"]
    del systemd.refuse["StartTransientUnit"]
    systemd.job_result = "failed"
    with pytest.raises(ResourceError, match=r"ended 'failed'.*journalctl -u pykata-c1\.scope"):
        manager.add_pid(4242)
    # a scope that has gone (its processes all ended, and systemd removed it) is no error to remove
    shutil.rmtree(systemd.root / "sys/fs/cgroup/system.slice/pykata-c1.scope")
    systemd.refuse["StopUnit"] = "org.freedesktop.systemd1.NoSuchUnit"
    systemd.refuse["ResetFailedUnit"] = "org.freedesktop.systemd1.NoSuchUnit"
    manager.destroy()
    assert systemd.members()[-2:] == ["StopUnit", "ResetFailedUnit"]
    systemd.refuse["StopUnit"] = "org.freedesktop.DBus.Error.AccessDenied"
    with pytest.raises(ResourceError, match="AccessDenied"):
        manager.destroy()


def test_no_systemd_socket_is_named(tmp_path: Path) -> None:
    _fake_root(tmp_path, systemd=True)  # systemd's marker, but nobody at /run/systemd/private
    with pytest.raises(ResourceError, match=r"cannot reach systemd at .*/run/systemd/private"):
        _manager(tmp_path).add_pid(4242)


def test_a_first_message_systemd_holds_does_not_stall_the_driver(systemd: FakeSystemd) -> None:
    systemd.hold_first = True
    manager = _manager(systemd.root)
    manager.add_pid(4242)
    assert systemd.members() == ["Subscribe", "Subscribe", "StartTransientUnit"]
    assert systemd.subscribes == 2  # the first went unanswered; the second woke systemd


def test_v1_limits_become_systemds_v1_properties() -> None:
    from agent.container.cgroups import plan_v1
    from agent.container.cgroups.systemd import unit_properties_v1

    resources = {
        "cpu": {"shares": 512, "quota": 25000, "period": 50000, "cpus": "0"},
        "memory": {"limit": 128 << 20},
        "pids": {"limit": 0},
        "blockIO": {"weight": 300},
    }
    assert dict(unit_properties_v1(plan_v1(resources))) == {
        "CPUShares": ("t", 512),
        "MemoryLimit": ("t", 128 << 20),
        "TasksMax": ("t", INFINITY),  # pids.limit 0: no limit
        "BlockIOWeight": ("t", 300),
        "CPUQuotaPerSecUSec": ("t", 500000),
    }  # (no cpuset: systemd does not manage it on v1)
    assert dict(unit_properties_v1(plan_v1({"cpu": {"quota": -1}, "memory": {"limit": -1}}))) == {
        "MemoryLimit": ("t", INFINITY),
        "CPUQuotaPerSecUSec": ("t", INFINITY),
    }


def test_a_failed_scope_of_the_same_name_is_cleared_and_the_start_tried_again(systemd: FakeSystemd) -> None:
    systemd.refuse_once["StartTransientUnit"] = "org.freedesktop.systemd1.UnitExists"
    _manager(systemd.root).add_pid(4242)
    assert systemd.members() == ["Subscribe", "StartTransientUnit", "ResetFailedUnit", "StartTransientUnit"]
    assert (systemd.root / "sys/fs/cgroup/system.slice/pykata-c1.scope").is_dir()


PROC_DEVICES = """Character devices:
  1 mem
  5 /dev/tty
 10 misc
136 pts

Block devices:
  7 loop
259 blkext
"""


def test_device_rules_become_systemds_allow_list(tmp_path: Path) -> None:
    from agent.container.cgroups.systemd import device_properties
    from agent.container.launch import DEFAULT_DEVICE_RULES

    devices = tmp_path / "devices"
    devices.write_text(PROC_DEVICES)
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
        {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "w"},  # takes write away again
        {"allow": True, "type": "b", "major": 7, "access": "rw"},  # a whole major: its driver's name
        {"allow": True, "type": "b", "major": 42, "access": "r"},  # a major /proc/devices lacks: left out
        {"allow": True, "type": "c", "access": "m"},  # mknod of every char device
        *DEFAULT_DEVICE_RULES,
    ]
    props = dict(device_properties(rules, str(devices)))
    assert props["DevicePolicy"] == ("s", "strict")
    allow = dict(props["DeviceAllow"][1])
    assert allow["/dev/char/10:229"] == "rm"  # (and "m" from the wildcard rule, kept apart below)
    assert allow["block-loop"] == "rw"
    assert allow["char-pts"] == "rwm"  # the default rule for the pty slaves, c 136:* rwm
    assert allow["/dev/char/1:3"] == "rwm"  # /dev/null
    assert allow["char-misc"] == "m" and allow["char-mem"] == "m"
    assert "block-42" not in str(allow)
    # a list that allows by default cannot be told to systemd: its policy stays auto, nothing listed
    blacklist = [{"allow": True, "access": "rwm"}, {"allow": False, "type": "c", "major": 10, "minor": 229}]
    assert dict(device_properties(blacklist, str(devices))) == {
        "DevicePolicy": ("s", "auto"),
        "DeviceAllow": ("a(ss)", []),
    }


USER_MANAGER = "/user.slice/user-1000.slice/user@1000.service"


def test_a_user_gets_its_scope_from_its_own_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.container.cgroups import systemd as driver
    from agent.system.dbus import Variant

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    paths = _fake_root(tmp_path, systemd=True)
    (tmp_path / "run/user/1000/systemd").mkdir(parents=True)
    fake = FakeSystemd(tmp_path, tmp_path / "run/user/1000/systemd/private", manager_cgroup=USER_MANAGER)
    try:
        made = driver.manager(paths, Layout(version=2, root=f"{tmp_path}/sys/fs/cgroup"), "", "c1", uid=1000)
        # asked where the user's manager is before anything is made; an empty path is user.slice:pykata:<id>
        assert fake.members() == ["Subscribe", "Get"]
        assert isinstance(made, SystemdManager)
        assert made.relative == f"{USER_MANAGER[1:]}/user.slice/pykata-c1.scope"
        made.skip_devices = True  # as the engine sets it for a rootless container
        made.apply({"memory": {"limit": 64 << 20}, "devices": [{"allow": False, "access": "rwm"}]})
        made.add_pid(4242)
        unit, _mode, props, _aux = fake.body("StartTransientUnit")
        props = dict(props)
        assert (unit, props["Slice"], props["MemoryMax"]) == ("pykata-c1.scope", Variant("s", "user.slice"),
                                                              Variant("t", 64 << 20))  # fmt: skip
        assert "DevicePolicy" not in props
        scope = tmp_path / "sys/fs/cgroup" / made.relative
        assert (scope / "memory.max").read_text() == str(64 << 20)  # no device program was attached either
        (scope / "cgroup.procs").write_text("")
        made.destroy()
        assert fake.members()[-2:] == ["StopUnit", "ResetFailedUnit"] and not scope.exists()
    finally:
        fake.close()
    # $XDG_RUNTIME_DIR, where set, is where the user's manager listens (as systemctl --user finds it)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "elsewhere"))
    assert driver.private_bus(paths, 1000) == f"{tmp_path}/elsewhere/systemd/private"
    assert driver.private_bus(paths, 0) == f"{tmp_path}/run/systemd/private"


def test_a_user_without_a_reachable_systemd_or_on_cgroup_v1_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.container.cgroups import systemd as driver

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    paths = _fake_root(tmp_path, systemd=True)
    v2 = Layout(version=2, root=f"{tmp_path}/sys/fs/cgroup")
    with pytest.raises(ResourceError, match=r"of user 1000 at .*/run/user/1000/systemd/private .*user@1000\.service"):
        driver.manager(paths, v2, "user.slice:p:c1", "c1", uid=1000)
    v1 = Layout(version=1, root=f"{tmp_path}/sys/fs/cgroup", controllers={"memory": f"{tmp_path}/m"})
    with pytest.raises(Unsupported, match=r"user other than root \(uid 1000\) needs cgroup v2"):
        driver.manager(paths, v1, "user.slice:p:c1", "c1", uid=1000)
    # a slice named explicitly is kept; an empty one is the default slice of whoever asks
    assert parse_systemd_path(":p:c1", "c1", default_slice="user.slice") == ("user.slice", "p-c1.scope")
    assert parse_systemd_path(":p:c1", "c1") == ("system.slice", "p-c1.scope")
    assert parse_systemd_path("a.slice:p:c1", "c1", default_slice="user.slice") == ("a.slice", "p-c1.scope")
