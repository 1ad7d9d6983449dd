"""The container RPCs through a real agent listener on a unix socket, as root on the host.

The CreateContainer request is Kata's own (tests' fixture 005, encoded by Kata's Go client) with
only the rootfs path and the cgroups path changed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.rpc.pb import agent_pb2, health_pb2, oci_pb2
from agent.system import children
from agent.system.paths import HostPaths
from agentctl.client import AgentCallError, AgentClient, connect
from tests.conftest import FIXTURES
from tests.helpers.agent_server import RunningAgent
from tests.helpers.cgroups import cgroups_below, remove_cgroups

KATA_CREATE = FIXTURES / "kata-client-requests" / "005-grpc.AgentService.CreateContainer.bin"


@pytest.fixture
def agent(served: RunningAgent) -> RunningAgent:
    return served


@pytest.fixture
def client(agent: RunningAgent) -> Iterator[AgentClient]:
    with connect(agent.address) as c:
        yield c


def kata_create_request(
    rootfs: Path, cgroup_parent: str, container_id: str | None = None
) -> agent_pb2.CreateContainerRequest:
    request = agent_pb2.CreateContainerRequest.FromString(KATA_CREATE.read_bytes())
    if container_id:
        request.container_id = container_id
        request.exec_id = container_id
    request.OCI.Root.Path = str(rootfs)
    request.OCI.Linux.CgroupsPath = f"{cgroup_parent}/{request.container_id}"
    return request


def read_all(client: AgentClient, container_id: str, exec_id: str = "", method: str = "ReadStdout") -> bytes:
    out = b""
    while True:
        try:
            reply = client.call(
                method, agent_pb2.ReadStreamRequest(container_id=container_id, exec_id=exec_id, len=4096)
            )
        except AgentCallError as exc:
            assert "EOF" in str(exc)
            return out
        assert isinstance(reply, agent_pb2.ReadStreamResponse)
        out += reply.data


def test_kata_fixture_lifecycle(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    request = kata_create_request(busybox_rootfs, cgroup_parent)
    cid = request.container_id
    client.call("CreateContainer", request)
    client.call("StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    assert read_all(client, cid) == b"hello\n"
    status = client.call("WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid))
    assert isinstance(status, agent_pb2.WaitProcessResponse) and status.status == 3
    client.call("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid))
    with pytest.raises(AgentCallError) as info:
        client.call("StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    assert info.value.code_name == "NOT_FOUND"


def _call(client: AgentClient, method: str, request: Any) -> Any:
    return client.call(method, request)


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _cycle_state(parent: str) -> dict[str, Any]:
    cgroups = cgroups_below(parent)
    return {
        "fds": sorted(f"{fd}->{_link(fd)}" for fd in os.listdir("/proc/self/fd")),
        "mounts": Path("/proc/self/mountinfo").read_text().count("\n"),
        "cgroups": cgroups,
        "zombies": children.zombie_children(Path("/proc"), os.getpid()),
        # the server's pool (rpc_N) grows with concurrent calls up to its size: not per container
        "threads": len(own_threads := [t.name for t in threading.enumerate() if not t.name.startswith("rpc_")]),
        "thread_names": sorted(own_threads),
    }


def test_200_cycles_leave_nothing_behind(
    client: AgentClient, agent: RunningAgent, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    parent = f"{cgroup_parent}/cycles"

    def cycle(i: int) -> None:
        request = kata_create_request(busybox_rootfs, parent, f"cycle-{i}")
        request.OCI.Process.Args[:] = ["/bin/sh", "-c", f"echo {i}; exit {i % 7}"]
        cid = request.container_id
        _call(client, "CreateContainer", request)
        _call(client, "StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
        assert read_all(client, cid) == f"{i}\n".encode()
        status = _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid))
        assert status.status == i % 7
        _call(client, "RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid))

    try:
        cycle(0)  # warm up: the fork server and the service's threads start on first use
        before = _cycle_state(parent)
        started = time.monotonic()
        for i in range(1, 201):
            cycle(i)
        elapsed = time.monotonic() - started
        # a reader thread may still be on its way out after its last event: let them settle
        settle = time.monotonic() + 5
        while _cycle_state(parent)["threads"] > before["threads"] and time.monotonic() < settle:
            time.sleep(0.01)
        after = _cycle_state(parent)
    finally:
        remove_cgroups(parent)
    print(f"200 cycles in {elapsed:.1f} s ({elapsed / 200 * 1000:.0f} ms each)")
    assert after["fds"] == before["fds"], "descriptors leaked"
    assert after["mounts"] == before["mounts"], "mounts leaked"
    assert after["cgroups"] == [] and before["cgroups"] == [], "cgroups left behind"
    assert after["zombies"] == [], "unreaped children"
    assert after["threads"] <= before["threads"], f"threads leaked: {before['thread_names']} -> {after['thread_names']}"
    server = agent.services.containers.engine.forkserver.server_pid
    assert server is not None and Path(f"/proc/{server}").exists()


def _create_started(client: AgentClient, rootfs: Path, parent: str, cid: str, args: list[str], **process: Any) -> None:
    request = kata_create_request(rootfs, parent, cid)
    request.OCI.Process.Args[:] = args
    for key, value in process.items():
        setattr(request.OCI.Process, key, value)
    _call(client, "CreateContainer", request)
    _call(client, "StartContainer", agent_pb2.StartContainerRequest(container_id=cid))


def _remove(client: AgentClient, cid: str) -> None:
    _call(client, "RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid, timeout=10))


def test_exec_stdin_stdout_and_signals(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    cid = "rpc-exec"
    _create_started(client, busybox_rootfs, cgroup_parent, cid, ["/bin/sleep", "300"])
    try:
        process = oci_pb2.Process(Args=["/bin/sh", "-c", "read line; echo got $line; exit 5"], Cwd="/")
        _call(client, "ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id="e1", process=process))
        reply = _call(client, "WriteStdin", agent_pb2.WriteStreamRequest(container_id=cid, exec_id="e1", data=b"abc\n"))
        assert reply.len == 4
        _call(client, "CloseStdin", agent_pb2.CloseStdinRequest(container_id=cid, exec_id="e1"))
        assert read_all(client, cid, "e1") == b"got abc\n"
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="e1")).status == 5
        # an empty exec_id signals every process of the container
        sleeper = oci_pb2.Process(Args=["/bin/sleep", "300"], Cwd="/")
        _call(client, "ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id="e2", process=sleeper))
        _call(client, "SignalProcess", agent_pb2.SignalProcessRequest(container_id=cid, exec_id="", signal=9))
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="e2")).status == 137
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="")).status == 137
    finally:
        _remove(client, cid)


def test_stdin_nobody_reads_is_named_and_bounded(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    """WriteStdin to a process that has ended is FAILED_PRECONDITION (it was INTERNAL, a broken pipe);
    to one that never reads, it waits no longer than the call's deadline: what the pipe took counts,
    and once the pipe is full the next call is DEADLINE_EXCEEDED (it used to wait forever). The agent
    answers Check after each."""
    cid = "rpc-stdin-gone"
    _create_started(client, busybox_rootfs, cgroup_parent, cid, ["/bin/sleep", "300"])
    try:
        _call(client, "ExecProcess", agent_pb2.ExecProcessRequest(
            container_id=cid, exec_id="quick", process=oci_pb2.Process(Args=["/bin/true"], Cwd="/")))  # fmt: skip
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="quick")).status == 0
        with pytest.raises(AgentCallError) as info:
            _call(client, "WriteStdin", agent_pb2.WriteStreamRequest(container_id=cid, exec_id="quick", data=b"x"))
        assert info.value.code_name == "FAILED_PRECONDITION", info.value
        assert "the process no longer reads it" in str(info.value)

        deaf = oci_pb2.Process(Args=["/bin/sleep", "300"], Cwd="/")
        _call(client, "ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id="deaf", process=deaf))
        request = agent_pb2.WriteStreamRequest(container_id=cid, exec_id="deaf", data=b"y" * (1 << 20))
        took = time.monotonic()
        written = client.call("WriteStdin", request, timeout=1.0).len
        assert 0 < written < 1 << 20  # the pipe's capacity, not the megabyte
        with pytest.raises(AgentCallError) as info:
            client.call("WriteStdin", request, timeout=1.0)
        assert info.value.code_name == "DEADLINE_EXCEEDED", info.value
        assert time.monotonic() - took < 10
        client.call("grpc.Health/Check", health_pb2.CheckRequest())
    finally:
        _remove(client, cid)


def test_host_apparmor_profile_is_dropped_and_selinux_label_refused(
    client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    """Kata's runtime passes the host's AppArmor profile (cri-containerd.apparmor.d on an AppArmor host)
    to a guest that has no AppArmor: the agent runs the container without it, as Kata's agent does.
    An SELinux label comes only for a guest with SELinux: without it, CreateContainer refuses by name
    and the agent keeps serving."""
    from agent.container import procattrs

    # a host with AppArmor applies the profile: there, one that always exists
    apparmor = procattrs.apparmor_enabled(HostPaths())
    profile = "unconfined" if apparmor else "cri-containerd.apparmor.d"
    cid = "rpc-apparmor"
    _create_started(client, busybox_rootfs, cgroup_parent, cid, ["/bin/echo", "ran"], ApparmorProfile=profile)
    try:
        assert read_all(client, cid) == b"ran\n"
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid)).status == 0
    finally:
        _remove(client, cid)
    if not procattrs.selinux_enabled(HostPaths()):  # the guest's case (a host with SELinux applies the label)
        request = kata_create_request(busybox_rootfs, cgroup_parent, "rpc-selinux")
        request.OCI.Process.SelinuxLabel = "system_u:system_r:container_t:s0"
        with pytest.raises(AgentCallError) as info:
            _call(client, "CreateContainer", request)
        assert "process.selinuxLabel is set, but SELinux is not enabled" in str(info.value)
    _create_started(client, busybox_rootfs, cgroup_parent, "rpc-after", ["/bin/true"])
    _remove(client, "rpc-after")


def test_terminal_and_resize(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    cid = "rpc-tty"
    _create_started(client, busybox_rootfs, cgroup_parent, cid, ["/bin/sleep", "300"])
    try:
        process = oci_pb2.Process(
            Args=["/bin/sh", "-c", "sleep 0.5; stty size; test -t 0 && test -t 1 && echo is-a-tty"],
            Cwd="/",
            Terminal=True,
        )
        _call(client, "ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id="t", process=process))
        _call(client, "TtyWinResize", agent_pb2.TtyWinResizeRequest(container_id=cid, exec_id="t", row=33, column=77))
        out = read_all(client, cid, "t")
        assert b"33 77" in out
        assert b"is-a-tty" in out
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="t")).status == 0
        with pytest.raises(AgentCallError) as info:
            _call(client, "TtyWinResize", agent_pb2.TtyWinResizeRequest(container_id=cid, exec_id="", row=1, column=1))
        assert info.value.code_name == "INVALID_ARGUMENT"
    finally:
        _remove(client, cid)


def test_terminal_stdin_beyond_the_tty_queue(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    """WriteStdin of more than the terminal's input queue (4 KiB) to a process that reads it only
    later waits for it to read, and loses nothing (the pty master is non-blocking for the reader)."""
    cid = "rpc-tty-stdin"
    _create_started(client, busybox_rootfs, cgroup_parent, cid, ["/bin/sleep", "300"])
    try:
        script = "stty raw -echo; echo raw; sleep 1; head -c 20000 | wc -c; echo done"
        process = oci_pb2.Process(Args=["/bin/sh", "-c", script], Cwd="/", Terminal=True)
        _call(client, "ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id="t", process=process))
        out = b""
        while b"raw" not in out:  # raw mode is set: no line discipline limits, just the queue
            reply = _call(client, "ReadStdout", agent_pb2.ReadStreamRequest(container_id=cid, exec_id="t", len=4096))
            out += reply.data
        request = agent_pb2.WriteStreamRequest(container_id=cid, exec_id="t", data=b"x" * 20000)
        assert _call(client, "WriteStdin", request).len == 20000
        out += read_all(client, cid, "t")
        assert b"20000" in out and b"done" in out, out
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="t")).status == 0
    finally:
        _remove(client, cid)


def test_stats_pause_resume_update(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    cid = "rpc-stats"
    request = kata_create_request(busybox_rootfs, cgroup_parent, cid)
    request.OCI.Process.Args[:] = ["/bin/sleep", "300"]
    request.OCI.Linux.Resources.Pids.Limit = 50
    _call(client, "CreateContainer", request)
    _call(client, "StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    try:
        stats = _call(client, "StatsContainer", agent_pb2.StatsContainerRequest(container_id=cid))
        assert stats.cgroup_stats.pids_stats.current == 1
        assert stats.cgroup_stats.pids_stats.limit == 50
        assert stats.cgroup_stats.memory_stats.usage.usage > 0
        resources = oci_pb2.LinuxResources(Pids=oci_pb2.LinuxPids(Limit=60))
        _call(client, "UpdateContainer", agent_pb2.UpdateContainerRequest(container_id=cid, resources=resources))
        stats = _call(client, "StatsContainer", agent_pb2.StatsContainerRequest(container_id=cid))
        assert stats.cgroup_stats.pids_stats.limit == 60
        _call(client, "PauseContainer", agent_pb2.PauseContainerRequest(container_id=cid))
        with pytest.raises(AgentCallError) as info:
            _call(client, "PauseContainer", agent_pb2.PauseContainerRequest(container_id=cid))
        assert info.value.code_name == "FAILED_PRECONDITION"
        assert "container rpc-stats is paused; pause needs running" in info.value.message
        _call(client, "ResumeContainer", agent_pb2.ResumeContainerRequest(container_id=cid))
    finally:
        _remove(client, cid)


def test_output_is_buffered_and_bounded(
    agent: RunningAgent, client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    """A writer faster than the reader loses nothing; unread output stops at the buffer's bound."""
    cid = "rpc-flood"
    total = 3 * 1024 * 1024
    _create_started(
        client, busybox_rootfs, cgroup_parent, cid, ["/bin/sh", "-c", f"head -c {total} /dev/zero; echo end"]
    )
    try:
        service = agent.services.containers
        limit = agent.services.config.output_buffer_limit
        streams = service._process_streams(cid, "")
        assert streams.stdout is not None
        time.sleep(0.5)
        assert streams.stdout.buffered <= limit
        out = read_all(client, cid)
        assert len(out) == total + 4 and out.endswith(b"end\n")
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="")).status == 0
    finally:
        _remove(client, cid)


def test_oom_kill_is_reported(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    cid = "rpc-oom"
    request = kata_create_request(busybox_rootfs, cgroup_parent, cid)
    # a shell variable that doubles until the 32 MiB limit stops it
    request.OCI.Process.Args[:] = ["/bin/sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
    request.OCI.Linux.Resources.Memory.Limit = 32 << 20
    request.OCI.Linux.Resources.Memory.Swap = 32 << 20
    _call(client, "CreateContainer", request)
    try:
        _call(client, "StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
        event = client.call("GetOOMEvent", agent_pb2.GetOOMEventRequest(), timeout=30)
        assert isinstance(event, agent_pb2.OOMEvent) and event.container_id == cid
        assert _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="")).status == 137
    finally:
        _remove(client, cid)


def test_finished_exec_processes_are_forgotten(
    agent: RunningAgent, client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    """Like liveness probes: many execs, each waited for and read to EOF, leave nothing behind."""
    cid = "rpc-probes"
    _create_started(client, busybox_rootfs, cgroup_parent, cid, ["/bin/sleep", "300"])
    try:
        service = agent.services.containers
        container = service.engine.get(cid)

        def probe(i: int, wait_first: bool) -> None:
            process = oci_pb2.Process(Args=["/bin/echo", f"probe {i}"], Cwd="/")
            _call(
                client, "ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id=f"p{i}", process=process)
            )
            wait = agent_pb2.WaitProcessRequest(container_id=cid, exec_id=f"p{i}")
            if wait_first:
                assert _call(client, "WaitProcess", wait).status == 0
            assert read_all(client, cid, f"p{i}") == f"probe {i}\n".encode()
            assert read_all(client, cid, f"p{i}", "ReadStderr") == b""
            if not wait_first:
                assert _call(client, "WaitProcess", wait).status == 0

        probe(0, True)  # warm up
        fds = sorted(os.listdir("/proc/self/fd"))
        for i in range(1, 21):
            probe(i, wait_first=bool(i % 2))
        assert container.execs == {}
        assert [key for key in service._streams if key[0] == cid] == [(cid, "")]
        assert sorted(os.listdir("/proc/self/fd")) == fds
        with pytest.raises(AgentCallError) as info:
            _call(client, "WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id="p3"))
        assert info.value.code_name == "NOT_FOUND"
    finally:
        _remove(client, cid)


def test_cpuset_targets_are_containers_that_asked_for_cpus(
    agent: RunningAgent, client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    with_cpus = kata_create_request(busybox_rootfs, cgroup_parent, "rpc-cpus")
    with_cpus.OCI.Process.Args[:] = ["/bin/sleep", "300"]
    with_cpus.OCI.Linux.Resources.CPU.Cpus = "0"
    without = kata_create_request(busybox_rootfs, cgroup_parent, "rpc-nocpus")
    without.OCI.Process.Args[:] = ["/bin/sleep", "300"]
    _call(client, "CreateContainer", with_cpus)
    try:
        _call(client, "CreateContainer", without)
        try:
            targets = agent.services.containers.cpuset_targets()
            assert len(targets) == 1
            assert os.path.basename(targets[0]) == "rpc-cpus"
            assert Path(targets[0], "cpuset.cpus").read_text().strip() == "0"
            # an update that sets cpus makes the other one a target too
            resources = oci_pb2.LinuxResources(CPU=oci_pb2.LinuxCPU(Cpus="1"))
            _call(
                client,
                "UpdateContainer",
                agent_pb2.UpdateContainerRequest(container_id="rpc-nocpus", resources=resources),
            )
            names = sorted(os.path.basename(t) for t in agent.services.containers.cpuset_targets())
            assert names == ["rpc-cpus", "rpc-nocpus"]
        finally:
            _remove(client, "rpc-nocpus")
    finally:
        _remove(client, "rpc-cpus")


def test_sandbox_shared_pid_namespace(
    agent: RunningAgent, client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    # no hostname and no DNS: this runs on the host, whose hostname and resolv.conf stay as they are
    _call(client, "CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="sb-pidns", sandbox_pidns=True))
    pause = agent.services.containers._sandbox_pidns
    assert pause is not None
    pause_pid = pause.pid
    try:
        for cid in ("rpc-shared-a", "rpc-shared-b"):
            request = kata_create_request(busybox_rootfs, cgroup_parent, cid)
            request.OCI.Process.Args[:] = ["/bin/sleep", "300"]
            request.sandbox_pidns = True
            _call(client, "CreateContainer", request)
            _call(client, "StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
        pids = [agent.services.containers.engine.get(cid).init.pid for cid in ("rpc-shared-a", "rpc-shared-b")]  # type: ignore[union-attr]
        shared = os.readlink(f"/proc/{pause_pid}/ns/pid")
        assert shared != os.readlink("/proc/self/ns/pid")
        assert [os.readlink(f"/proc/{pid}/ns/pid") for pid in pids] == [shared, shared]
        # the pause process is pid 1 there; the containers see each other
        process = oci_pb2.Process(
            Args=["/bin/sh", "-c", "cat /proc/1/cmdline | head -c 6; echo; ls /proc | grep -c '^[0-9]'"], Cwd="/"
        )
        _call(
            client,
            "ExecProcess",
            agent_pb2.ExecProcessRequest(container_id="rpc-shared-a", exec_id="ps", process=process),
        )
        out = read_all(client, "rpc-shared-a", "ps").decode().split()
        assert "python" in Path(f"/proc/{pause_pid}/cmdline").read_text() and out[0].startswith("/")
        assert int(out[1]) >= 4  # pause, two sleeps, the shell (and its pipeline)
    finally:
        _call(client, "DestroySandbox", agent_pb2.DestroySandboxRequest())
    assert agent.services.containers.container_ids() == []
    assert not Path(f"/proc/{pause_pid}").exists() or "Z" in Path(f"/proc/{pause_pid}/stat").read_text().split()[2]
    assert not agent.services.sandbox.shutdown_requested.is_set()  # not PID 1: no power-off
