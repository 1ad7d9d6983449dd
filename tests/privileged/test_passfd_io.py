"""Process stdio over the runtime's passfd streams, as root on the host: a real agent listener, real
containers, and the passfd table listening on TCP loopback (in the guest it is a vsock port; the
peer's port plays the host port the hybrid vsock hands the runtime)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.rpc.pb import agent_pb2, oci_pb2
from agent.services import passfd
from agent.services.passfd import PassfdStreams
from agentctl.client import AgentCallError, AgentClient
from tests.helpers.agent_server import RunningAgent
from tests.privileged.test_container_rpcs import kata_create_request


@pytest.fixture
def table() -> Iterator[PassfdStreams]:
    listener = socket.create_server(("127.0.0.1", 0))
    streams = PassfdStreams(listener, listener.getsockname()[1]).start()
    yield streams
    streams.close()


@pytest.fixture
def agent(served: RunningAgent, table: PassfdStreams) -> RunningAgent:
    served.services.passfd = table  # before the containers service is built: it takes it then
    return served


@pytest.fixture
def client(agent: RunningAgent, ttrpc_client: AgentClient) -> AgentClient:
    return ttrpc_client


def open_streams(table: PassfdStreams, *names: str) -> dict[str, socket.socket]:
    """The runtime's side: one connection per stream, each known to the agent by its port."""
    socks = {name: socket.create_connection(("127.0.0.1", table.port)) for name in names}
    ports = {s.getsockname()[1] for s in socks.values()}
    deadline = time.monotonic() + 10
    while not ports <= set(table.pending()) and time.monotonic() < deadline:
        time.sleep(0.01)
    for sock in socks.values():
        sock.settimeout(20)
    return socks


def ports_of(socks: dict[str, socket.socket]) -> dict[str, int]:
    return {f"{name}_port": sock.getsockname()[1] for name, sock in socks.items()}


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_init_stdio_is_the_runtimes_streams(
    client: AgentClient, table: PassfdStreams, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    socks = open_streams(table, "stdin", "stdout", "stderr")
    try:
        request = kata_create_request(busybox_rootfs, cgroup_parent, "passfd-init")
        request.OCI.Process.Args[:] = ["/bin/sh", "-c", 'read line; echo "got $line"; echo oops >&2; exit 3']
        for field, port in ports_of(socks).items():
            setattr(request, field, port)
        client.call("CreateContainer", request)
        client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="passfd-init"))
        socks["stdin"].sendall(b"hello\n")
        socks["stdin"].shutdown(socket.SHUT_WR)
        assert read_to_eof(socks["stdout"]) == b"got hello\n"
        assert read_to_eof(socks["stderr"]) == b"oops\n"
        status = client.call("WaitProcess", agent_pb2.WaitProcessRequest(container_id="passfd-init"))
        assert isinstance(status, agent_pb2.WaitProcessResponse) and status.status == 3
        with pytest.raises(AgentCallError) as info:
            client.call("ReadStdout", agent_pb2.ReadStreamRequest(container_id="passfd-init", len=10))
        port = socks["stdout"].getsockname()[1]
        assert info.value.code_name == "FAILED_PRECONDITION" and f"host port {port}" in info.value.message
        with pytest.raises(AgentCallError) as info:
            client.call("WriteStdin", agent_pb2.WriteStreamRequest(container_id="passfd-init", data=b"x"))
        assert info.value.code_name == "FAILED_PRECONDITION" and "passfd stream" in info.value.message
        assert table.pending() == []
    finally:
        for sock in socks.values():
            sock.close()


def test_only_named_streams_are_taken_the_rest_are_pipes(
    client: AgentClient, table: PassfdStreams, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    socks = open_streams(table, "stderr")
    try:
        request = kata_create_request(busybox_rootfs, cgroup_parent, "passfd-mixed")
        request.OCI.Process.Args[:] = ["/bin/sh", "-c", "echo out; echo err >&2"]
        request.stderr_port = socks["stderr"].getsockname()[1]
        client.call("CreateContainer", request)
        client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="passfd-mixed"))
        assert read_to_eof(socks["stderr"]) == b"err\n"
        assert client.read_to_end("passfd-mixed", "") == b"out\n"
    finally:
        socks["stderr"].close()


def test_an_exec_with_a_terminal_is_copied_to_and_from_its_streams(
    client: AgentClient, table: PassfdStreams, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    request = kata_create_request(busybox_rootfs, cgroup_parent, "passfd-tty")
    request.OCI.Process.Args[:] = ["/bin/sleep", "60"]
    client.call("CreateContainer", request)
    client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="passfd-tty"))
    socks = open_streams(table, "stdin", "stdout", "stderr")
    try:
        process = oci_pb2.Process(
            Terminal=True, Args=["/bin/sh", "-c", "stty -echo; echo ready; read x; echo x=$x"], Cwd="/",
            Env=["PATH=/bin"],
        )  # fmt: skip
        exec_request = agent_pb2.ExecProcessRequest(container_id="passfd-tty", exec_id="t1", process=process)
        for field, port in ports_of(socks).items():
            setattr(exec_request, field, port)
        client.call("ExecProcess", exec_request)
        assert read_to_eof(socks["stderr"]) == b""  # a terminal has no stderr: ended at once
        seen = b""
        while b"ready" not in seen:
            seen += socks["stdout"].recv(100)
        socks["stdin"].sendall(b"abc\n")
        seen += read_to_eof(socks["stdout"])  # EOF: the pty ended with the process
        assert seen.replace(b"\r", b"").endswith(b"ready\nx=abc\n")
        status = client.call("WaitProcess", agent_pb2.WaitProcessRequest(container_id="passfd-tty", exec_id="t1"))
        assert isinstance(status, agent_pb2.WaitProcessResponse) and status.status == 0
    finally:
        for sock in socks.values():
            sock.close()


def test_a_stream_that_never_comes_fails_the_create_and_leaves_nothing(
    client: AgentClient, table: PassfdStreams, busybox_rootfs: Path, cgroup_parent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passfd, "STREAM_WAIT", 0.3)
    socks = open_streams(table, "stdout")
    try:
        request = kata_create_request(busybox_rootfs, cgroup_parent, "passfd-missing")
        request.stdout_port = socks["stdout"].getsockname()[1]
        request.stderr_port = 9
        with pytest.raises(AgentCallError) as info:
            client.call("CreateContainer", request)
        assert info.value.code_name == "FAILED_PRECONDITION"
        assert "stderr (host port 9)" in info.value.message
        with pytest.raises(AgentCallError) as info:
            client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="passfd-missing"))
        assert info.value.code_name == "NOT_FOUND"
        assert table.pending() == [socks["stdout"].getsockname()[1]]  # still there for a retry
        request.stderr_port = 0
        client.call("CreateContainer", request)  # the retry finds it
        client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="passfd-missing"))
        assert read_to_eof(socks["stdout"]) == b"hello\n"
    finally:
        socks["stdout"].close()


def test_ports_without_the_listener_are_refused(
    client: AgentClient, agent: RunningAgent, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    agent.services.passfd = None
    containers = agent.services.containers
    containers.passfd = None
    request = kata_create_request(busybox_rootfs, cgroup_parent, "passfd-off")
    request.stdout_port = 1234
    with pytest.raises(AgentCallError) as info:
        client.call("CreateContainer", request)
    assert info.value.code_name == "FAILED_PRECONDITION"
    assert "agent.passfd_listener_port is off" in info.value.message and "stdout_port=1234" in info.value.message
