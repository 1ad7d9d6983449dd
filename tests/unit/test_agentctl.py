"""agentctl against an in-process agent: every command over both protocols, errors, hybrid vsock."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentctl.cli import main_group
from agentctl.pump import pump
from tests.helpers.agent_server import RunningAgent, fake_guest_tree, serving_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    with serving_agent(fake_guest_tree(tmp_path_factory.mktemp("ctl") / "root")) as running:
        yield running


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main_group, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


PROTOCOLS = ["ttrpc", "grpc"]


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_check_and_version(agent: RunningAgent, proto: str) -> None:
    code, out, _ = run("--addr", agent.address, "--proto", proto, "check")
    assert code == 0 and json.loads(out) == {"status": "SERVING"}
    code, out, _ = run("--addr", agent.address, "--proto", proto, "version")
    assert code == 0 and set(json.loads(out)) == {"agent_version", "grpc_version"}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_guest_details_and_metrics(agent: RunningAgent, proto: str) -> None:
    code, out, _ = run("--addr", agent.address, "--proto", proto, "guest-details")
    details = json.loads(out)
    assert code == 0 and details["mem_block_size_bytes"] == str(128 * 1024 * 1024)
    assert details["agent_details"]["supports_seccomp"] is True
    code, out, _ = run("--addr", agent.address, "--proto", proto, "metrics", "--raw")
    assert code == 0 and "kata_agent_threads 7" in out.splitlines()


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("method", ["GetGuestDetails", "grpc.AgentService/GetGuestDetails"])
def test_call_by_short_or_full_name(agent: RunningAgent, proto: str, method: str) -> None:
    code, out, _ = run("--addr", agent.address, "--proto", proto, "call", method, "--json", '{"mem_block_size": true}')
    assert code == 0
    assert json.loads(out)["mem_block_size_bytes"] == str(128 * 1024 * 1024)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_failed_call_prints_code_and_exits_non_zero(agent: RunningAgent, proto: str) -> None:
    code, out, err = run(
        "--addr", agent.address, "--proto", proto, "call", "SetGuestDateTime", "--json", '{"Sec": 1, "Usec": -1}'
    )
    assert code == 1 and out == ""
    assert err.startswith("ERROR INVALID_ARGUMENT: ") and "usec=-1" in err


def test_bad_method_and_bad_json_are_usage_errors(agent: RunningAgent) -> None:
    code, _, err = run("--addr", agent.address, "call", "NoSuchMethod")
    assert code == 2 and "unknown method" in err
    code, _, err = run("--addr", agent.address, "call", "CopyFile", "--json", '{"no_such_field": 1}')
    assert code == 2 and "CopyFileRequest" in err


def test_unreachable_agent_is_unavailable(tmp_path: Path) -> None:
    code, _, err = run("--addr", f"unix://{tmp_path}/nothing.sock", "check")
    assert code == 1 and err.startswith("ERROR UNAVAILABLE: ")


class FakeHybridVsock:
    """A unix socket speaking the hybrid vsock convention in front of the agent's own socket."""

    def __init__(self, agent_socket: str, port: int) -> None:
        self.directory = tempfile.mkdtemp(prefix="pk-hv-", dir="/tmp")
        self.path = f"{self.directory}/vsock"
        self.port = port
        self.agent_socket = agent_socket
        self.ports_asked: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n"):
            byte = conn.recv(1)
            if not byte:
                conn.close()
                return
            line += byte
        self.ports_asked.append(line.decode().strip())
        if line != f"CONNECT {self.port}\n".encode():
            conn.close()
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.agent_socket)
        conn.sendall(b"OK 1073741824\n")
        try:
            pump(conn, upstream)
        finally:
            upstream.close()
            conn.close()

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_hybrid_vsock(agent: RunningAgent, proto: str) -> None:
    hybrid = FakeHybridVsock(agent.socket_path, 1024)
    try:
        code, out, err = run("--addr", f"hvsock://{hybrid.path}:1024", "--proto", proto, "check")
        assert (code, json.loads(out)) == (0, {"status": "SERVING"}), err
        assert "CONNECT 1024" in hybrid.ports_asked
        code, _, err = run("--addr", f"hvsock://{hybrid.path}:2000", "--proto", proto, "--timeout", "5", "check")
        assert code == 1 and "ERROR UNAVAILABLE" in err
    finally:
        hybrid.close()


def test_agent_commands_need_an_address_but_the_group_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTCTL_ADDR", raising=False)
    code, _, err = run("check")
    assert code == 2 and "--addr" in err
    code, out, _ = run("--help")
    assert code == 0 and "check" in out and "guest-details" in out


def test_address_from_the_environment(agent: RunningAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTCTL_ADDR", agent.address)
    code, out, _ = run("check")
    assert code == 0 and json.loads(out) == {"status": "SERVING"}


def test_read_to_end_reads_until_the_stream_ends() -> None:
    from agent.address import parse_address
    from agent.rpc.pb import agent_pb2
    from agentctl.client import AgentCallError, AgentClient

    class Replies(AgentClient):
        """Answers ReadStdout/ReadStderr from ``chunks``, then with an error (the agent's end of a stream)."""

        def __init__(self, chunks: list[bytes]) -> None:
            super().__init__(parse_address("unix:///nowhere"), None)
            self.chunks = chunks
            self.asked: list[tuple[str, int]] = []

        def call_raw(self, method: str, payload: bytes, timeout: float | None = None) -> bytes:
            self.asked.append((method, agent_pb2.ReadStreamRequest.FromString(payload).len))
            if not self.chunks:
                raise AgentCallError(11, "stdout is at EOF")
            return agent_pb2.ReadStreamResponse(data=self.chunks.pop(0)).SerializeToString()

        def close(self) -> None:
            pass

    client = Replies([b"ab", b"cd"])
    assert client.read_to_end("c1", "e1", chunk=4096) == b"abcd"
    assert client.asked == [("grpc.AgentService/ReadStdout", 4096)] * 3
    client = Replies([b"x", b"", b"never read"])  # an empty answer ends it too
    assert client.read_to_end("c1", "e1", stream="stderr") == b"x"
    assert client.asked == [("grpc.AgentService/ReadStderr", 65536)] * 2
