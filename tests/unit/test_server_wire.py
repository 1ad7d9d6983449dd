"""The listener on the wire: protocol sniffing, bad input, and the agent still serving afterwards.

Every bad-input case ends with a Check on a new connection that must answer SERVING, over ttrpc and
over gRPC. One test runs the agent as a subprocess (python3 -m agent) and stops it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.rpc import ttrpc
from agent.rpc.pb import health_pb2, ttrpc_pb2
from agent.rpc.server import HTTP2_PREFACE, sniff
from agent.rpc.status import Code
from agentctl.client import connect
from tests.helpers.agent_server import RunningAgent, fake_guest_tree, serving_agent, ttrpc_frame

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    with serving_agent(fake_guest_tree(tmp_path / "root"), sniff_timeout=2.0) as running:
        yield running


def check_serving(address: str, protocol: str) -> None:
    with connect(address, protocol, timeout=10) as client:
        response = client.call("grpc.Health/Check", health_pb2.CheckRequest())
    assert isinstance(response, health_pb2.HealthCheckResponse)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def read_until_closed(sock: socket.socket) -> bytes:
    """What the agent sent before closing; a reset (closed with our bytes unread) counts as closed."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def check_request(stream_id: int = 1) -> bytes:
    request = ttrpc_pb2.Request(service="grpc.Health", method="Check", payload=b"")
    return ttrpc_frame(stream_id, request.SerializeToString())


def test_sniff_classifies_by_first_bytes() -> None:
    for sent, expected in (
        (HTTP2_PREFACE + b"\x00\x00", "grpc"),
        (b"PRI * HTTP/1.1\r\n", "ttrpc"),
        (check_request(), "ttrpc"),
    ):
        a, b = socket.socketpair()
        a.sendall(sent)
        protocol, seen = sniff(b, timeout=5)
        assert protocol == expected
        assert sent.startswith(seen) and len(seen) <= len(HTTP2_PREFACE)
        a.close()
        b.close()


def test_sniff_gives_up_on_a_silent_client() -> None:
    a, b = socket.socketpair()
    assert sniff(b, timeout=0.2) == ("closed", b"")
    a.close()
    b.close()


@pytest.mark.parametrize("protocol", ["ttrpc", "grpc"])
def test_check_answers_serving(agent: RunningAgent, protocol: str) -> None:
    check_serving(agent.address, protocol)


def test_silent_client_does_not_block_others(agent: RunningAgent) -> None:
    silent = agent.connect()
    try:
        check_serving(agent.address, "ttrpc")
        check_serving(agent.address, "grpc")
    finally:
        silent.close()


def test_random_bytes_get_a_clean_error_or_close(agent: RunningAgent) -> None:
    rng = random.Random(20261129)
    for _ in range(5):
        with agent.connect() as sock:
            sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
            sock.shutdown(socket.SHUT_WR)
            received = read_until_closed(sock)
        assert len(received) < 1024  # at most an error response, never an echo of the junk
    check_serving(agent.address, "ttrpc")
    check_serving(agent.address, "grpc")


def test_truncated_frame_closes_and_agent_keeps_serving(agent: RunningAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(check_request()[:-3])
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""
    check_serving(agent.address, "ttrpc")


def test_oversized_header_is_answered_resource_exhausted(agent: RunningAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(ttrpc_frame(1, b"", length=ttrpc.MESSAGE_LENGTH_MAX + 1))
        reader = ttrpc.FrameReader(sock)
        header = reader.read_header()
        assert header is not None and header.stream_id == 1
        response = ttrpc_pb2.Response.FromString(reader.read_payload(header.length))
        assert response.status.code == Code.RESOURCE_EXHAUSTED
    check_serving(agent.address, "ttrpc")
    check_serving(agent.address, "grpc")


@pytest.mark.parametrize(
    ("service", "method", "fragment"),
    [
        ("grpc.NoSuchService", "Check", "unknown service or method"),
        ("grpc.AgentService", "NoSuchMethod", "unknown service or method"),
    ],
)
def test_unknown_service_or_method_is_unimplemented(
    agent: RunningAgent, service: str, method: str, fragment: str
) -> None:
    with agent.connect() as sock:
        client = ttrpc.TtrpcClientConnection(sock)
        with pytest.raises(ttrpc.TtrpcCallError) as failure:
            client.call(service, method, b"")
    assert failure.value.code == Code.UNIMPLEMENTED
    assert fragment in failure.value.message and f"{service}/{method}" in failure.value.message
    check_serving(agent.address, "ttrpc")


def test_unknown_method_over_grpc_is_unimplemented(agent: RunningAgent) -> None:
    import grpc

    with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
        call = channel.unary_unary("/grpc.AgentService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as failure:
            call(b"", timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    check_serving(agent.address, "grpc")


def test_even_stream_id_closes_the_connection(agent: RunningAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(check_request(stream_id=2))
        reader = ttrpc.FrameReader(sock)
        header = reader.read_header()
        assert header is not None
        response = ttrpc_pb2.Response.FromString(reader.read_payload(header.length))
        assert response.status.code == Code.INVALID_ARGUMENT
        assert reader.read_header() is None
    check_serving(agent.address, "ttrpc")


def test_http2_preface_followed_by_garbage(agent: RunningAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(HTTP2_PREFACE + b"\xde\xad\xbe\xef" * 64)
        sock.shutdown(socket.SHUT_WR)
        received = read_until_closed(sock)  # h2grpc sends its SETTINGS, WINDOW_UPDATE and a GOAWAY, then closes
    assert b"\xde\xad\xbe\xef" not in received
    check_serving(agent.address, "grpc")
    check_serving(agent.address, "ttrpc")


def test_many_concurrent_connections_each_get_their_answer(agent: RunningAgent) -> None:
    sockets = [agent.connect() for _ in range(8)]
    try:
        for index, sock in enumerate(sockets):
            sock.sendall(check_request(stream_id=2 * index + 1))
        for index, sock in enumerate(sockets):
            reader = ttrpc.FrameReader(sock)
            header = reader.read_header()
            assert header is not None and header.stream_id == 2 * index + 1
            response = ttrpc_pb2.Response.FromString(reader.read_payload(header.length))
            assert health_pb2.HealthCheckResponse.FromString(response.payload).status == 1
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def agent_subprocess(*args: str, script: str | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The agent as a process of its own, serving a unix socket in a short temp dir (unix socket paths
    are limited to 108 bytes): yields (process, socket path). ``script`` replaces ``-m agent``.
    Killed if still running, and cleaned up, after."""
    short_dir = Path(tempfile.mkdtemp(prefix="pk-", dir="/tmp"))
    path = str(short_dir / "agent.sock")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KATA_AGENT_SERVER_ADDR", None)  # it would override --server-addr (Kata's precedence)
    process = None
    try:
        command = ["-c", script] if script is not None else ["-m", "agent"]
        process = subprocess.Popen(
            [sys.executable, *command, "--server-addr", f"unix://{path}", *args],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        yield process, path
    finally:
        if process is not None:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        for leftover in short_dir.iterdir():
            leftover.unlink()
        short_dir.rmdir()


def test_agent_subprocess_serves_both_protocols_and_stops_on_sigterm() -> None:
    with agent_subprocess() as (process, path):
        assert process.stderr is not None
        ready = json.loads(process.stderr.readline())
        assert ready["msg"] == "agent ready"
        assert ready["address"] == f"unix://{path}"
        check_serving(f"unix://{path}", "ttrpc")
        check_serving(f"unix://{path}", "grpc")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not os.path.exists(path)


def test_agent_rejects_a_malformed_server_addr_with_exit_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--server-addr", "carrier-pigeon://x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "carrier-pigeon" in result.stderr


def test_tcp_listener_warns_and_serves_both_protocols(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from agent.address import parse_address
    from agent.config import AgentConfig
    from agent.rpc.server import AgentServer
    from agent.rpc.servicer import Servicer
    from agent.services import Services

    services = Services(AgentConfig(), fake_guest_tree(tmp_path / "root"))
    server = AgentServer(parse_address("tcp://127.0.0.1:0"), Servicer(services), run_dir=tmp_path / "run")
    with caplog.at_level("WARNING", logger="agent.rpc.server"):
        server.start()
    try:
        assert any("development only" in record.getMessage() for record in caplog.records)
        assert server.bound.startswith("tcp://127.0.0.1:") and not server.bound.endswith(":0")
        check_serving(server.bound, "ttrpc")
        check_serving(server.bound, "grpc")
    finally:
        server.shutdown()


def test_vsock_listener_binds_any_cid() -> None:
    from agent.address import parse_address
    from agent.rpc.server import listen

    rng = random.Random()
    for _ in range(20):
        port = rng.randrange(20000, 60000)
        try:
            sock = listen(parse_address(f"vsock://-1:{port}"))
        except Exception as exc:  # a port another process holds: try the next one
            if "in use" in str(exc):
                continue
            raise
        try:
            assert sock.family == socket.AF_VSOCK
            assert sock.getsockname() == (socket.VMADDR_CID_ANY, port)
        finally:
            sock.close()
        return
    raise AssertionError("no free vsock port found in 20 tries")


def test_unix_listener_replaces_a_stale_socket_but_not_a_file(tmp_path: Path) -> None:
    from agent.address import parse_address
    from agent.errors import ResourceError
    from agent.rpc.server import listen

    short = tempfile.mkdtemp(prefix="pk-", dir="/tmp")
    try:
        stale = os.path.join(short, "stale.sock")
        old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old.bind(stale)
        old.close()  # the file stays behind, as after a crash
        listen(parse_address(f"unix://{stale}")).close()
        regular = os.path.join(short, "regular")
        Path(regular).write_text("keep me")
        with pytest.raises(ResourceError, match="cannot listen"):
            listen(parse_address(f"unix://{regular}"))
        assert Path(regular).read_text() == "keep me"
    finally:
        for leftover in Path(short).iterdir():
            leftover.unlink()
        os.rmdir(short)


def test_stopping_closes_built_services_last_built_first_despite_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.__main__ import close_services
    from agent.config import AgentConfig
    from agent.services import Services
    from agent.system.paths import HostPaths

    closed: list[str] = []

    class Fake:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def close(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise RuntimeError("stuck")

    services = Services(AgentConfig(), HostPaths(tmp_path))
    built = {"storage": Fake("storage"), "guest": object(), "containers": Fake("containers", fail=True)}
    monkeypatch.setattr(services, "built", lambda: built)
    close_services(services)
    assert closed == ["containers", "storage"]


@pytest.mark.parametrize("protocol", ["ttrpc", "grpc"])
def test_many_long_polls_do_not_starve_a_check(
    agent: RunningAgent, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """Kata keeps WaitProcess/ReadStdout calls open for every process; Check must still answer."""
    import threading

    from agent.rpc import registry
    from agent.rpc.pb import agent_pb2

    release = threading.Event()
    started = threading.Semaphore(0)

    def long_poll(services: object, request: object, ctx: registry.CallContext) -> object:
        started.release()
        assert release.wait(30)
        return agent_pb2.GuestDetailsResponse()

    monkeypatch.setitem(registry.METHODS, "grpc.AgentService/GetGuestDetails", long_poll)
    polls = 40
    results: list[object] = []
    clients = [connect(agent.address, protocol, timeout=30) for _ in range(2)]
    try:
        threads = [
            threading.Thread(target=lambda: results.append(clients[0].call("GetGuestDetails")), daemon=True)
            for _ in range(polls)
        ]
        if protocol == "ttrpc":  # our ttrpc client is sequential: put the polls on one raw connection
            threads = []
            raw = agent.connect()
            for index in range(polls):
                request = ttrpc_pb2.Request(service="grpc.AgentService", method="GetGuestDetails")
                raw.sendall(ttrpc_frame(2 * index + 1, request.SerializeToString()))
        for thread in threads:
            thread.start()
        for _ in range(polls):
            assert started.acquire(timeout=30), "the long polls did not all start"
        response = clients[1].call("grpc.Health/Check")
        assert response.status == 1  # type: ignore[attr-defined]
        release.set()
        if protocol == "ttrpc":
            reader = ttrpc.FrameReader(raw)
            streams = set()
            for _ in range(polls):
                header = reader.read_header()
                assert header is not None
                answer = ttrpc_pb2.Response.FromString(reader.read_payload(header.length))
                assert answer.status.code == Code.OK
                streams.add(header.stream_id)
            assert streams == {2 * index + 1 for index in range(polls)}
            raw.close()
        else:
            for thread in threads:
                thread.join(30)
            assert len(results) == polls
    finally:
        release.set()
        for client in clients:
            client.close()


def test_agent_subprocess_starts_its_debug_console_and_serves_with_an_unheard_log_vport() -> None:
    port = random.Random().randrange(20000, 60000)
    config = f'debug_console = true\ndebug_console_vport = {port}\nlog_vport = 1025\nlog_level = "debug"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config_file:
        config_file.write(config)
        config_file.flush()
        with agent_subprocess("--config", config_file.name) as (process, path):
            assert process.stderr is not None
            lines = []
            for raw in process.stderr:
                lines.append(json.loads(raw))
                if lines[-1]["msg"] == "agent ready":
                    break
            console = [line for line in lines if line["msg"] == "debug console listening"]
            assert console and console[0]["vport"] == port
            check_serving(f"unix://{path}", "ttrpc")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0


def test_agent_subprocess_exits_on_sigterm_while_a_call_is_blocked() -> None:
    """A long poll still running must not keep the stopped agent alive."""
    # a handler that never returns, registered before the agent starts serving
    script = (
        "import threading, sys\n"
        "from agent.rpc import registry\n"
        "from agent.rpc.pb import agent_pb2\n"
        "registry.METHODS['grpc.AgentService/AddSwap'] = lambda s, r, c: threading.Event().wait()\n"
        "from agent.__main__ import main\n"
        "main(sys.argv[1:])\n"
    )
    with agent_subprocess(script=script) as (process, path):
        assert process.stderr is not None
        for raw in process.stderr:
            if json.loads(raw)["msg"] == "agent ready":
                break
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendall(
                ttrpc_frame(1, ttrpc_pb2.Request(service="grpc.AgentService", method="AddSwap").SerializeToString())
            )
            check_serving(f"unix://{path}", "ttrpc")  # the blocked call is in flight; the agent still serves
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
        messages = [json.loads(raw)["msg"] for raw in process.stderr]
        assert messages[-1] == "agent stopped"
