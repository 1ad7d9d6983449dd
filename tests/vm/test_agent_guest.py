"""End to end in a booted guest: osbuilder's kernel and initrd, the agent as PID 1, reached over hybrid
vsock, with both protocols. One guest is booted for the module and shared by the tests, which run in
order (the last one destroys the sandbox and expects the guest to power off). Each phase prints its time.

Then the same smoke run on the rootfs image, where systemd starts the agent.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.rpc.pb import agent_pb2, health_pb2, oci_pb2
from agentctl import hvsock, qmp, vm
from agentctl.client import AgentCallError, AgentClient, connect
from tests.conftest import FIXTURES
from tests.helpers.bundle import make_bundle
from tests.vm.conftest import agent_guest_config, booted, exec_in, image_guest_config

SHARED = "/run/kata-containers/shared/containers"
PROTOCOLS = ("ttrpc", "grpc")
FIXTURE_CREATE = FIXTURES / "kata-client-requests" / "005-grpc.AgentService.CreateContainer.bin"
PASSFD_PORT = 1027  # Kata's runtime-rs default


def phase(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Timer:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> Timer:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        phase(f"{self.what}: {(time.monotonic() - self.start) * 1000:.0f} ms")


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 9p share: what Kata's runtime puts in the shared containers directory."""
    root = tmp_path_factory.mktemp("share")
    make_bundle(root / "c-fixture", ["/bin/true"])
    make_bundle(root / "c-sleeper", ["/bin/sleep", "600"])
    return root


@pytest.fixture(scope="module")
def guest(guest_files: Path, share: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.Guest]:
    config = agent_guest_config(
        guest_files,
        name="e2e",
        share=share,
        cmdline=f"agent.debug_console agent.log=debug agent.passfd_listener_port={PASSFD_PORT}",
        run_dir=tmp_path_factory.mktemp("vm"),
        cpus=1,
        max_cpus=4,
        memory="512M",
        max_memory="2G",
    )
    with booted(config, phase) as guest:
        yield guest


def client(guest: vm.Guest, protocol: str) -> AgentClient:
    return connect(guest.address, protocol, timeout=120)


def shared_storage() -> agent_pb2.Storage:
    return agent_pb2.Storage(
        driver="9p",
        source="kataShared",
        fstype="9p",
        options=["trans=virtio,version=9p2000.L,cache=mmap", "nodev"],
        mount_point=SHARED,
    )


def test_check_and_guest_details(guest: vm.Guest) -> None:
    for protocol in PROTOCOLS:
        agent = client(guest, protocol)
        with Timer(f"{protocol} Check"):
            status = agent.call("grpc.Health/Check", health_pb2.CheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        with Timer(f"{protocol} GetGuestDetails"):
            details = agent.call(
                "grpc.AgentService/GetGuestDetails",
                agent_pb2.GuestDetailsRequest(mem_block_size=True, mem_hotplug_probe=True),
            )
        assert details.mem_block_size_bytes > 0
        assert details.mem_block_size_bytes & (details.mem_block_size_bytes - 1) == 0
        assert details.agent_details.init_daemon is True
        assert "9p" in details.agent_details.storage_handlers
    # /init unpacked the initrd's deferred files (what the first Check does not need) in the background,
    # and loaded the device drivers with them (the virtio-net and virtio-blk tests use those)
    console = guest.console_text()
    assert "pykata init: deferred files unpacked at uptime=" in console, console[-3000:]
    modules = guest.run_in_console("cat /proc/modules")
    assert all(name in modules for name in ("virtio_net", "virtio_blk", "vmw_vsock_virtio_transport")), modules


def test_sandbox(guest: vm.Guest) -> None:
    agent = client(guest, "ttrpc")
    # a module the guest does not have fails the call, which then has made nothing
    with pytest.raises(AgentCallError) as info:
        agent.call(
            "grpc.AgentService/CreateSandbox",
            agent_pb2.CreateSandboxRequest(sandbox_id="e2e", kernel_modules=[agent_pb2.KernelModule(name="e1000e")]),
        )
    assert info.value.code_name == "NOT_FOUND" and "e1000e" in info.value.message
    assert "ext4" not in guest.run_in_console("cat /proc/filesystems")  # the initrd loads it only on demand
    with Timer("CreateSandbox (with kernel_modules: ext4)"):
        agent.call(
            "grpc.AgentService/CreateSandbox",
            agent_pb2.CreateSandboxRequest(
                hostname="e2e", sandbox_id="e2e", storages=[shared_storage()],
                kernel_modules=[agent_pb2.KernelModule(name="ext4")],
            ),
        )  # fmt: skip
    assert "ext4" in guest.run_in_console("cat /proc/filesystems")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fixture_container_lifecycle(guest: vm.Guest, protocol: str) -> None:
    """Kata's own CreateContainer request (the fixture its Go client encoded), then the calls Kata's
    runtime makes, over each protocol."""
    agent = client(guest, protocol)
    request = agent_pb2.CreateContainerRequest()
    request.ParseFromString(FIXTURE_CREATE.read_bytes())
    request.OCI.Root.Path = f"{SHARED}/c-fixture/rootfs"
    request.container_id = request.exec_id = cid = f"{request.container_id}-{protocol}"
    with Timer(f"{protocol} CreateContainer (Kata's own request)"):
        agent.call("grpc.AgentService/CreateContainer", request)
    with Timer(f"{protocol} StartContainer"):
        agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    with Timer(f"{protocol} ReadStdout"):
        out = agent.call(
            "grpc.AgentService/ReadStdout", agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=4096)
        )
    assert out.data == b"hello\n"
    with Timer(f"{protocol} WaitProcess"):
        waited = agent.call(
            "grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid)
        )
    assert waited.status == 3
    with Timer(f"{protocol} RemoveContainer"):
        agent.call("grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid, timeout=10))


def _oci_from_bundle(bundle: Path, guest_root: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    spec["root"]["path"] = guest_root
    return spec


def test_exec_in_running_container_over_grpc(guest: vm.Guest, share: Path) -> None:
    from agent.rpc.convert_oci import dict_to_spec

    agent = client(guest, "grpc")
    cid = "sleeper"
    spec = _oci_from_bundle(share / "c-sleeper", f"{SHARED}/c-sleeper/rootfs")
    spec["linux"].setdefault("resources", {})["cpu"] = {"cpus": "0"}  # asks for CPUs: hotplug updates it
    agent.call(
        "grpc.AgentService/CreateContainer",
        agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=dict_to_spec(spec)),
    )
    agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    with Timer("ExecProcess + WaitProcess + ReadStdout"):
        status, data = exec_in(agent, cid, "e1", ["/bin/sh", "-c", "echo exec-in-$(hostname); cat /proc/1/cmdline"])
    assert status == 0
    # the exec joined the container: its pid 1 is the container's sleep
    assert data.startswith(b"exec-in-")
    assert b"sleep" in data


def test_exec_stdio_on_passfd_streams(guest: vm.Guest) -> None:
    """Kata's passfd I/O through our hybrid vsock: the host opens a stream per stdio to the agent's
    passfd port (a CONNECT, whose OK names the host port; and runtime-rs's way, handing the back-end
    pipe ends with "passfd"), and the exec'd process reads and writes them directly."""
    agent = client(guest, "ttrpc")
    opened = {name: hvsock.connect_port(guest.uds, PASSFD_PORT) for name in ("stdin", "stdout", "stderr")}
    socks = {name: sock for name, (sock, _) in opened.items()}
    try:
        request = agent_pb2.ExecProcessRequest(
            container_id="sleeper",
            exec_id="passfd",
            process=oci_pb2.Process(
                Args=["/bin/sh", "-c", 'read line; echo "out $line"; echo "err $line" >&2; exit 7'],
                Cwd="/",
                Env=["PATH=/bin"],
            ),
            stdin_port=opened["stdin"][1],
            stdout_port=opened["stdout"][1],
            stderr_port=opened["stderr"][1],
        )
        with Timer("ExecProcess on passfd streams"):
            agent.call("grpc.AgentService/ExecProcess", request)
        socks["stdin"].sendall(b"over vsock\n")
        socks["stdin"].shutdown(socket.SHUT_WR)
        assert _read_to_eof(socks["stdout"]) == b"out over vsock\n"
        assert _read_to_eof(socks["stderr"]) == b"err over vsock\n"
        waited = agent.call(
            "grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id="sleeper", exec_id="passfd")
        )
        assert waited.status == 7
    finally:
        for sock in socks.values():
            sock.close()
    # runtime-rs's way: pipe ends handed to the back-end, which joins them to the streams it opens
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    try:
        ports = {"stdin_port": hvsock.pass_fd(guest.uds, PASSFD_PORT, stdin_r),
                 "stdout_port": hvsock.pass_fd(guest.uds, PASSFD_PORT, stdout_w)}  # fmt: skip
        os.close(stdin_r)
        os.close(stdout_w)
        stdin_r = stdout_w = -1
        agent.call(
            "grpc.AgentService/ExecProcess",
            agent_pb2.ExecProcessRequest(
                container_id="sleeper",
                exec_id="passfd-pipes",
                process=oci_pb2.Process(Args=["/bin/sh", "-c", "tr a-z A-Z"], Cwd="/", Env=["PATH=/bin:/usr/bin"]),
                **ports,
            ),
        )
        os.write(stdin_w, b"through pipes\n")
        os.close(stdin_w)
        stdin_w = -1
        output = _read_fd_to_eof(stdout_r)
        waited = agent.call(
            "grpc.AgentService/WaitProcess",
            agent_pb2.WaitProcessRequest(container_id="sleeper", exec_id="passfd-pipes"),
        )
        errors = agent.read_to_end("sleeper", "passfd-pipes", stream="stderr")
        assert (output, waited.status, errors) == (b"THROUGH PIPES\n", 0, b"")
    finally:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
            if fd >= 0:
                os.close(fd)


def _read_fd_to_eof(fd: int, timeout: float = 60.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk
    raise TimeoutError(f"no EOF within {timeout:.0f} s; read so far: {data!r}")


def _read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(60)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_hotplug_cpus_and_memory(guest: vm.Guest) -> None:
    agent = client(guest, "ttrpc")
    before = guest.run_in_console("grep MemTotal /proc/meminfo")
    mem_before = int(re.search(r"MemTotal:\s+(\d+)", before).group(1))  # type: ignore[union-attr]
    with qmp.QMPClient(guest.qmp_path) as monitor, Timer("QMP: 2 CPUs and 256 MiB"):
        qmp.hotplug_cpus(monitor, 2)
        qmp.hotplug_memory(monitor, 256 * 1024 * 1024)
    with Timer("OnlineCPUMem(nb_cpus=3)"):
        agent.call("grpc.AgentService/OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=3))
    after = guest.run_in_console("cat /sys/devices/system/cpu/online; grep MemTotal /proc/meminfo; cat /proc/cpuinfo")
    assert "0-2" in after
    assert after.count("processor\t:") == 3
    mem_after = int(re.search(r"MemTotal:\s+(\d+)", after).group(1))  # type: ignore[union-attr]
    assert mem_after - mem_before >= 200 * 1024  # kB
    # the running container that asked for CPUs got the new cpuset
    status, data = exec_in(agent, "sleeper", "cpus", ["/bin/grep", "Cpus_allowed_list", "/proc/self/status"])
    assert status == 0
    assert data.split() == [b"Cpus_allowed_list:", b"0-2"]


def test_destroy_sandbox_powers_off(guest: vm.Guest) -> None:
    agent = client(guest, "ttrpc")
    agent.call(
        "grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id="sleeper", timeout=10)
    )
    with Timer("DestroySandbox"):
        agent.call("grpc.AgentService/DestroySandbox", agent_pb2.DestroySandboxRequest())
    with Timer("guest power-off"):
        status = guest.wait_exit(60)
    assert status == 0
    assert "powering off" in guest.console_text()


def test_rootfs_image_under_systemd(guest_files: Path, tmp_path: Path) -> None:
    config = image_guest_config(guest_files, name="e2e-image", run_dir=tmp_path / "vm")
    with vm.Guest(config, phase) as booted:
        booted.start()
        phase("image booted: " + ", ".join(f"{k} {v:.2f} s" for k, v in booted.timings.items()))
        for protocol in PROTOCOLS:
            status = client(booted, protocol).call("grpc.Health/Check", health_pb2.CheckRequest())
            assert isinstance(status, health_pb2.HealthCheckResponse)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        details = client(booted, "ttrpc").call("grpc.AgentService/GetGuestDetails", agent_pb2.GuestDetailsRequest())
        assert isinstance(details, agent_pb2.GuestDetailsResponse)
        assert details.agent_details.init_daemon is False  # systemd is PID 1 here
        # DestroySandbox with no sandbox is FAILED_PRECONDITION, so the smoke run makes one first.
        agent = client(booted, "ttrpc")
        agent.call(
            "grpc.AgentService/CreateSandbox",
            agent_pb2.CreateSandboxRequest(hostname="e2e-image", sandbox_id="e2e-image"),
        )
        agent.call("grpc.AgentService/DestroySandbox", agent_pb2.DestroySandboxRequest())
        # Under systemd the agent does not power the guest off: it keeps serving.
        status = client(booted, "grpc").call("grpc.Health/Check", health_pb2.CheckRequest())
        assert isinstance(status, health_pb2.HealthCheckResponse)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
