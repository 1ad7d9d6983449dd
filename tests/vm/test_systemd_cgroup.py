"""The systemd cgroup driver in a booted guest: osbuilder's rootfs image, where systemd is PID 1 and
starts the agent. A container whose linux.cgroupsPath is ``slice:prefix:name`` gets a transient scope
that systemd makes and knows (as Kata's agent does there); its limits are unit properties, so systemd
keeps them across a daemon-reload; update, stats and removal go through the same unit. The guest's
state is read through the agent's debug console (systemctl and the cgroup files).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.cli import rootless_spec
from agent.rpc.convert_oci import dict_to_spec
from agent.rpc.pb import agent_pb2, oci_pb2
from agentctl import vm
from agentctl.client import AgentCallError, AgentClient, connect
from tests.helpers.bundle import runc_default_spec
from tests.vm.conftest import booted, console_answers, exec_in, image_guest_config

ROOTFS = "/run/sd-test/rootfs"  # made in the guest, from the image's busybox
MiB = 1024 * 1024
# `systemctl show` lines (KEY=VALUE) as tagged answers (conftest.console_answers)
TAGGED = '| sed "s/^\\([^=]*\\)=/${t}\\1 /"'


class Files:
    """Where a layout keeps a scope's files, by what they hold: cgroup v2 (one directory) or v1
    (systemd's legacy layout: a directory per hierarchy)."""

    def __init__(self, version: int) -> None:
        self.version = version

    def of(self, relative: str) -> dict[str, str]:
        if self.version == 2:
            where = f"/sys/fs/cgroup/{relative}"
            return {"memory": f"{where}/memory.max", "pids": f"{where}/pids.max", "weight": f"{where}/cpu.weight",
                    "quota": f"{where}/cpu.max", "procs": f"{where}/cgroup.procs",
                    "frozen": f"{where}/cgroup.freeze"}  # fmt: skip
        cpu = f"/sys/fs/cgroup/cpu,cpuacct/{relative}"
        return {"memory": f"/sys/fs/cgroup/memory/{relative}/memory.limit_in_bytes",
                "pids": f"/sys/fs/cgroup/pids/{relative}/pids.max", "weight": f"{cpu}/cpu.shares",
                "quota": f"{cpu}/cpu.cfs_quota_us", "procs": f"/sys/fs/cgroup/pids/{relative}/cgroup.procs",
                # a controller systemd does not manage on v1: the engine made and joined it
                "frozen": f"/sys/fs/cgroup/freezer/{relative}/freezer.state"}  # fmt: skip


def phase(message: str) -> None:
    print(f"[systemd {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module", params=[2, 1], ids=["cgroup-v2", "cgroup-v1"])
def guest(request: pytest.FixtureRequest, guest_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[vm.Guest, Files]
]:  # fmt: skip
    """The image booted with systemd's default (cgroup v2) or its legacy layout (v1 controllers)."""
    legacy = " systemd.unified_cgroup_hierarchy=0" if request.param == 1 else ""
    config = image_guest_config(
        guest_files, name=f"systemd-cgroup-v{request.param}", run_dir=tmp_path_factory.mktemp("vm"),
        cmdline=f"agent.debug_console{legacy}",
    )  # fmt: skip
    with booted(config, phase) as started:
        started.run_in_console(
            f"mkdir -p {ROOTFS}/bin && cp /bin/busybox {ROOTFS}/bin/ && "
            f"for a in sh sleep cat true grep head; do ln -sf busybox {ROOTFS}/bin/$a; done"
        )
        agent = connect(started.address, "ttrpc", timeout=120)
        agent.call("grpc.AgentService/CreateSandbox", agent_pb2.CreateSandboxRequest(hostname="sd", sandbox_id="sd"))
        yield started, Files(request.param)


def answers(guest: vm.Guest, command: str) -> dict[str, str]:
    """``command``'s tagged answers (conftest.console_answers) by key, the last of each."""
    return dict(console_answers(guest, command))


def unit_state(guest: vm.Guest, files: Files, unit: str, relative: str = "") -> dict[str, str]:
    """systemd's view of ``unit``, what the files of its cgroup (``relative``: system.slice/UNIT)
    hold, how many processes are in it and how many directories of that name are left."""
    relative = relative or f"system.slice/{unit}"
    props = "LoadState,ActiveState,ControlGroup,MemoryMax,MemoryLimit,TasksMax,CPUWeight,CPUShares,CPUQuotaPerSecUSec"
    reads = "; ".join(f"echo ${{t}}{key} $(cat {path} 2>/dev/null)" for key, path in files.of(relative).items())
    state = answers(
        guest,
        f"systemctl show {unit} -p {props},Delegate {TAGGED}; {reads}; "
        f"echo ${{t}}dirs $(find /sys/fs/cgroup -type d -name {unit} | wc -l)",
    )
    state["procs"] = str(len(state.get("procs", "").split()))
    return state


def container_spec(cgroups_path: str, args: list[str], resources: dict[str, Any]) -> oci_pb2.Spec:
    spec = runc_default_spec()
    spec["root"] = {"path": ROOTFS, "readonly": True}
    spec["process"]["args"] = args
    spec["process"]["terminal"] = False
    spec["linux"]["cgroupsPath"] = cgroups_path
    spec["linux"]["resources"] = resources
    return dict_to_spec(spec)


def client(guest: vm.Guest) -> AgentClient:
    return connect(guest.address, "ttrpc", timeout=120)


def test_container_in_a_systemd_scope(guest: tuple[vm.Guest, Files]) -> None:
    booted, files = guest
    agent = client(booted)
    resources = {
        "memory": {"limit": 64 * MiB},
        "pids": {"limit": 50},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
    }
    agent.call(
        "grpc.AgentService/CreateContainer",
        agent_pb2.CreateContainerRequest(
            container_id="sd1",
            exec_id="sd1",
            OCI=container_spec("system.slice:pykata:sd1", ["sleep", "600"], resources),
        ),
    )
    agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id="sd1"))
    state = unit_state(booted, files, "pykata-sd1.scope")
    phase(f"after create: {state}")
    # systemd made the scope and knows the container's limits as its own
    assert state["LoadState"] == "loaded"
    assert state["ActiveState"] == "active"
    assert state["ControlGroup"] == "/system.slice/pykata-sd1.scope"
    assert state["Delegate"] == "yes"
    assert state["MemoryMax" if files.version == 2 else "MemoryLimit"] == str(64 * MiB)
    assert state["TasksMax"] == "50"
    if files.version == 2:
        assert state["CPUWeight"] == "20"  # shares 512, runc's map to a weight
    else:
        assert state["CPUShares"] == "512"
    assert state["CPUQuotaPerSecUSec"] == "500ms"
    # and the scope's cgroup holds them and the container's process
    assert state["memory"] == str(64 * MiB)
    assert state["pids"] == "50"
    assert state["weight"] == ("20" if files.version == 2 else "512")
    assert state["quota"] == ("50000 100000" if files.version == 2 else "50000")
    assert state["procs"] == "1"
    assert state["frozen"] == ("0" if files.version == 2 else "THAWED")

    # an update sets the unit's properties: a daemon-reload (systemd writes every unit's cgroup again)
    # leaves the new limit in place
    update = oci_pb2.LinuxResources(Memory=oci_pb2.LinuxMemory(Limit=128 * MiB), Pids=oci_pb2.LinuxPids(Limit=80))
    agent.call("grpc.AgentService/UpdateContainer", agent_pb2.UpdateContainerRequest(container_id="sd1",
                                                                                      resources=update))  # fmt: skip
    booted.run_in_console("systemctl daemon-reload")
    state = unit_state(booted, files, "pykata-sd1.scope")
    assert state["MemoryMax" if files.version == 2 else "MemoryLimit"] == str(128 * MiB)
    assert state["memory"] == str(128 * MiB)
    assert state["TasksMax"] == "80"
    assert state["pids"] == "80"

    # an exec'd process joins the scope (and, on v1, the engine's own hierarchies); pause freezes
    # them; stats come from the scope's cgroup
    agent.call(
        "grpc.AgentService/ExecProcess",
        agent_pb2.ExecProcessRequest(
            container_id="sd1", exec_id="e1", process=oci_pb2.Process(Args=["sleep", "600"], Cwd="/", Env=["PATH=/bin"])
        ),
    )
    assert unit_state(booted, files, "pykata-sd1.scope")["procs"] == "2"
    stats = agent.call("grpc.AgentService/StatsContainer", agent_pb2.StatsContainerRequest(container_id="sd1"))
    assert stats.cgroup_stats.memory_stats.usage.usage > 0
    assert stats.cgroup_stats.pids_stats.current == 2
    agent.call("grpc.AgentService/PauseContainer", agent_pb2.PauseContainerRequest(container_id="sd1"))
    assert unit_state(booted, files, "pykata-sd1.scope")["frozen"] == ("1" if files.version == 2 else "FROZEN")
    agent.call("grpc.AgentService/ResumeContainer", agent_pb2.ResumeContainerRequest(container_id="sd1"))

    agent.call("grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id="sd1", timeout=10))
    state = unit_state(booted, files, "pykata-sd1.scope")
    assert state["LoadState"] == "not-found", state
    assert state["dirs"] == "0"


def test_an_oom_kill_in_the_scope(guest: tuple[vm.Guest, Files]) -> None:
    """A process of the container killed for memory: GetOOMEvent names the container, and the scope
    and the container's init stay, as with the cgroupfs driver."""
    booted, files = guest
    agent = client(booted)
    spec = container_spec("system.slice:pykata:sd4", ["sleep", "600"], {"memory": {"limit": 32 * MiB}})
    agent.call("grpc.AgentService/CreateContainer",
               agent_pb2.CreateContainerRequest(container_id="sd4", exec_id="sd4", OCI=spec))  # fmt: skip
    agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id="sd4"))
    hog = oci_pb2.Process(Args=["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"], Cwd="/", Env=["PATH=/bin"])
    agent.call("grpc.AgentService/ExecProcess",
               agent_pb2.ExecProcessRequest(container_id="sd4", exec_id="hog", process=hog))  # fmt: skip
    waited = agent.call(
        "grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id="sd4", exec_id="hog")
    )
    assert waited.status == 128 + 9
    event = agent.call("grpc.AgentService/GetOOMEvent", agent_pb2.GetOOMEventRequest(), timeout=30)
    assert event.container_id == "sd4"
    state = unit_state(booted, files, "pykata-sd4.scope")
    assert (state["ActiveState"], state["procs"]) == ("active", "1"), state
    agent.call("grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id="sd4", timeout=10))
    assert unit_state(booted, files, "pykata-sd4.scope")["dirs"] == "0"


def test_device_rules_hold_across_a_reload(guest: tuple[vm.Guest, Files]) -> None:
    """systemd rewrites its units' devices controller (v1) when it reloads: there the container's device
    rules are the scope's properties too; on v2 the engine's eBPF program, which systemd leaves alone
    (the scope has no device policy of its own). Either way a reload keeps them."""
    booted, files = guest
    agent = client(booted)
    spec = runc_default_spec()
    spec["root"] = {"path": ROOTFS, "readonly": True}
    spec["process"].update(args=["sleep", "600"], terminal=False)
    spec["linux"]["cgroupsPath"] = "system.slice:pykata:sd5"
    spec["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}]
    # everything denied, but making the node (m) of /dev/fuse; the engine's defaults (/dev/zero...) follow
    fuse_node = {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "m"}
    spec["linux"]["resources"] = {"devices": [{"allow": False, "access": "rwm"}, fuse_node]}
    agent.call("grpc.AgentService/CreateContainer",
               agent_pb2.CreateContainerRequest(container_id="sd5", exec_id="sd5", OCI=dict_to_spec(spec)))  # fmt: skip
    agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id="sd5"))
    probe = ["sh", "-c", "head -c1 /dev/zero >/dev/null && echo zero-ok; cat /dev/fuse 2>&1 | head -1"]
    policy = answers(booted, "echo ${t}policy $(systemctl show pykata-sd5.scope -p DevicePolicy --value)")
    assert policy == {"policy": "strict" if files.version == 1 else "auto"}
    for when in ("before", "after"):
        if when == "after":
            booted.run_in_console("systemctl daemon-reload")
        status, out = exec_in(agent, "sd5", f"probe-{when}", probe)
        assert (status, out.decode().splitlines()) == (
            0, ["zero-ok", "cat: can't open '/dev/fuse': Operation not permitted"]
        ), f"{when} the reload"  # fmt: skip
    agent.call("grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id="sd5", timeout=10))


def test_bad_systemd_paths_are_refused_and_leave_nothing(guest: tuple[vm.Guest, Files]) -> None:
    booted, _ = guest
    agent = client(booted)
    for cgroups_path, words in (
        ("nodot:pykata:sd2", "slice"),  # a slice is NAME.slice
        ("a--b.slice:pykata:sd2", "slice"),
        ("system.slice:pykata:", "needs a name"),
    ):
        with pytest.raises(AgentCallError) as refused:
            agent.call(
                "grpc.AgentService/CreateContainer",
                agent_pb2.CreateContainerRequest(
                    container_id="sd2", exec_id="sd2", OCI=container_spec(cgroups_path, ["true"], {})
                ),
            )
        assert refused.value.code_name == "INVALID_ARGUMENT", refused.value
        assert words in str(refused.value)
    found = answers(booted, "echo ${t}units $(systemctl list-units --all --no-legend 'pykata-sd*' | wc -l)")
    assert found["units"] == "0"


def test_scope_ends_with_its_container(guest: tuple[vm.Guest, Files]) -> None:
    """A container whose process ends: systemd stops its scope on its own; removing the container
    then finds nothing left to stop, and says nothing is wrong."""
    booted, files = guest
    agent = client(booted)
    agent.call(
        "grpc.AgentService/CreateContainer",
        agent_pb2.CreateContainerRequest(
            container_id="sd3", exec_id="sd3", OCI=container_spec(":pykata:sd3", ["true"], {"pids": {"limit": 10}})
        ),
    )
    agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id="sd3"))
    waited = agent.call(
        "grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id="sd3", exec_id="sd3")
    )
    assert waited.status == 0
    agent.call("grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id="sd3", timeout=10))
    state = unit_state(booted, files, "pykata-sd3.scope")
    assert state["LoadState"] == "not-found", state
    assert state["dirs"] == "0"


def test_runtime_cli_with_systemd_cgroup(guest: tuple[vm.Guest, Files]) -> None:
    """pykata-runc --systemd-cgroup in the guest (the image holds the agent's code, the CLI's with it):
    a foreground run in its scope, in a sub-slice systemd makes for it; and a detached one that a later
    call (without the flag: the container's state remembers) deletes, stopping the unit."""
    booted, files = guest
    spec = runc_default_spec()
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["process"]["terminal"] = False
    scope = "pykata.slice/pykata-cli.slice/cli-1.scope"
    spec["process"]["args"] = ["grep", "-e", "^0::", "-e", "name=systemd", "/proc/self/cgroup"]
    spec["linux"]["cgroupsPath"] = "pykata-cli.slice:cli:1"
    spec["linux"]["resources"] = {"pids": {"limit": 33}}
    cli = "PYTHONPATH=/usr/lib/pykata python3 -m agent.container.cli --root /run/sd-runc"

    def bundle(config: dict[str, Any]) -> str:
        """The shell words that write ``config`` as /run/sd-test/config.json."""
        return f"echo {base64.b64encode(json.dumps(config).encode()).decode()} | base64 -d > /run/sd-test/config.json"

    text = booted.run_in_console(
        f't=@; {bundle(spec)} && cd /run/sd-test && {cli} --systemd-cgroup run cli1 2>&1 | sed "s/^/${{t}}out /"; cd /'
    )
    lines = [line.strip()[5:] for line in text.splitlines() if line.strip().startswith("@out ")]
    assert lines == ([f"0::/{scope}"] if files.version == 2 else [f"1:name=systemd:/{scope}", f"0::/{scope}"]), text
    state = unit_state(booted, files, "cli-1.scope", scope)
    assert (state["LoadState"], state["dirs"]) == ("not-found", "0")  # gone with its process

    spec["process"]["args"] = ["sleep", "600"]
    found = answers(
        booted,
        f"{bundle(spec)} && cd /run/sd-test && {cli} --systemd-cgroup run -d cli2 >/dev/null 2>&1; "
        "echo ${t}rc $?; cd /; echo ${t}active $(systemctl show cli-1.scope -p ActiveState --value)",
    )
    assert found == {"rc": "0", "active": "active"}, found
    state = unit_state(booted, files, "cli-1.scope", scope)
    assert (state["TasksMax"], state["pids"], state["procs"]) == ("33", "33", "1")
    assert answers(booted, f"{cli} delete --force cli2; echo ${{t}}rc $?") == {"rc": "0"}
    state = unit_state(booted, files, "cli-1.scope", scope)
    assert (state["LoadState"], state["dirs"]) == ("not-found", "0")


USER_MANAGER = "user.slice/user-1000.slice/user@1000.service"


def test_a_user_gets_a_scope_from_its_own_systemd(guest: tuple[vm.Guest, Files]) -> None:
    """Rootless pykata-runc --systemd-cgroup: user 1000's own systemd (user@1000.service) makes the
    scope, in the subtree systemd delegates to it, so the rootless container has limits, pause and
    stats; on cgroup v1 (where a user's manager is delegated nothing) it is refused by name. The
    image runs no logind or system bus: the test starts D-Bus (a user's systemd has the system's move
    a process from outside its own cgroup, such as this console's, into the scope, as on any host with
    logins), and user-runtime-dir@1000 is told to make /run/user/1000 itself."""
    booted, files = guest
    spec = rootless_spec(runc_default_spec(), 1000, 1000)
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["process"].update(terminal=False, args=["sleep", "600"])
    spec["linux"]["resources"] = {"memory": {"limit": 48 * MiB}, "pids": {"limit": 21}}  # cgroupsPath empty
    config = base64.b64encode(json.dumps(spec).encode()).decode()
    dropin = "/run/systemd/system/user-runtime-dir@1000.service.d"
    booted.run_in_console(
        "systemctl unmask dbus.socket dbus.service >/dev/null 2>&1; systemctl start dbus.socket; "
        f"id pk >/dev/null 2>&1 || useradd -m -u 1000 pk; mkdir -p {dropin} && printf '[Service]\\nExecStart=\\n"
        "ExecStart=/bin/sh -c \"mkdir -p /run/user/1000 && chown pk: /run/user/1000 && chmod 700 /run/user/1000\"\\n"
        f"ExecStop=\\nExecStop=/bin/rm -rf /run/user/1000\\n' > {dropin}/pykata.conf && systemctl daemon-reload && "
        "systemctl start user@1000.service; "
        f"mkdir -p /run/sd-user/rootfs && cp -a {ROOTFS}/bin /run/sd-user/rootfs/ && "
        f"echo {config} | base64 -d > /run/sd-user/config.json && chown -R pk: /run/sd-user"
    )  # fmt: skip
    as_user = "runuser -u pk -- env XDG_RUNTIME_DIR=/run/user/1000"
    cli = f"{as_user} PYTHONPATH=/usr/lib/pykata python3 -m agent.container.cli --root /run/user/1000/pykata-runc"
    # (the detached container keeps the stdio it is given: a file, not a pipe whose reader would wait for it)
    run = answers(booted, f"{cli} --systemd-cgroup run -d --bundle /run/sd-user u1 >/tmp/u1.out 2>&1 </dev/null; "
                          "echo ${t}rc $?; sed \"s/^/${t}out /\" /tmp/u1.out")  # fmt: skip
    if files.version == 1:
        assert run["rc"] == "1" and "needs cgroup v2" in run["out"], run
        assert answers(booted, "echo ${t}left $(ls /run/user/1000/pykata-runc 2>/dev/null | wc -l)") == {"left": "0"}
        return
    assert run["rc"] == "0", run
    scope = f"{USER_MANAGER}/user.slice/pykata-u1.scope"
    where = f"/sys/fs/cgroup/{scope}"
    state = answers(
        booted,
        f"{as_user} systemctl --user show pykata-u1.scope -p ActiveState,Delegate,MemoryMax,TasksMax,ControlGroup "
        f"{TAGGED}; echo ${{t}}memory $(cat {where}/memory.max); "
        f"echo ${{t}}pids $(cat {where}/pids.max); echo ${{t}}procs $(cat {where}/cgroup.procs | wc -l); "
        f"echo ${{t}}owner $(stat -c %U {where}/cgroup.procs)",
    )  # fmt: skip
    assert state == {"ActiveState": "active", "Delegate": "yes", "MemoryMax": str(48 * MiB), "TasksMax": "21",
                     "ControlGroup": f"/{scope}", "memory": str(48 * MiB), "pids": "21", "procs": "1",
                     "owner": "pk"}, state  # fmt: skip
    paused = answers(
        booted,
        f"{cli} pause u1; echo ${{t}}frozen $(grep frozen {where}/cgroup.events); "
        f"echo ${{t}}state $({cli} state u1 | grep -o '\"status\": \"[a-z]*\"'); {cli} resume u1; "
        f"{cli} events --stats u1 | python3 -c 'import json, sys; data = json.load(sys.stdin)[\"data\"][\"memory\"]; "
        f"print(sys.argv[1] + \"usage\", data[\"usage\"][\"usage\"], data[\"usage\"][\"limit\"])' \"$t\"; "
        f"{cli} update --pids-limit 30 u1; echo ${{t}}updated $(cat {where}/pids.max) "
        f"$({as_user} systemctl --user show pykata-u1.scope -p TasksMax --value)",
    )  # fmt: skip
    assert paused["frozen"] == "frozen 1" and paused["state"] == '"status": "paused"', paused
    assert paused["updated"] == "30 30", paused  # the file and the unit's property (kept across a reload)
    usage, limit = (int(number) for number in paused["usage"].split())
    assert usage > 0 and limit == 48 * MiB, paused  # the memory the scope's processes use, and its limit
    gone = answers(
        booted,
        f"{cli} delete --force u1; echo ${{t}}rc $?; "
        f"echo ${{t}}dirs $(find /sys/fs/cgroup -name pykata-u1.scope | wc -l); "
        f"{as_user} systemctl --user show pykata-u1.scope -p LoadState {TAGGED}",
    )  # fmt: skip
    assert gone == {"rc": "0", "dirs": "0", "LoadState": "not-found"}, gone
