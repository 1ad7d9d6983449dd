"""The gRPC server of agent/rpc/h2grpc.py against grpcio's client, agentctl's client and hostile bytes.

A small test server serves GrpcConnection with a dispatch of its own (echo, errors, metadata, slow and
large answers); the agentctl tests run the real agent (tests/helpers/agent_server.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from agent.rpc import h2grpc, hpack
from agent.rpc.pb import health_pb2
from agent.rpc.registry import CallContext
from agent.rpc.status import Code
from agentctl.client import AgentCallError, connect
from tests.helpers.agent_server import fake_guest_tree, serving_agent

BIG = 10 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", 32 << 20), ("grpc.max_send_message_length", 32 << 20)]


class Server:
    """GrpcConnection on a unix socket, with a dispatch whose behaviour the method name picks."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="h2-", dir="/tmp"))
        self.path = str(self.dir / "s.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.pool = ThreadPoolExecutor(max_workers=64)
        self.release = threading.Event()
        self.slow_started = threading.Semaphore(0)
        self.slow_finished = threading.Semaphore(0)
        self.calls: list[tuple[str, str, CallContext]] = []
        self.connections: list[h2grpc.GrpcConnection] = []
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            connection = h2grpc.GrpcConnection(conn, self.dispatch, self.pool)
            self.connections.append(connection)

            def serve(conn: socket.socket = conn, connection: h2grpc.GrpcConnection = connection) -> None:
                try:
                    connection.serve()
                finally:
                    conn.close()

            thread = threading.Thread(target=serve, daemon=True)
            self.threads.append(thread)
            thread.start()

    def dispatch(self, service: str, method: str, payload: bytes, ctx: CallContext) -> tuple[int, str, bytes]:
        self.calls.append((service, method, ctx))
        if method == "Check":
            return Code.OK, "", health_pb2.HealthCheckResponse(status=1).SerializeToString()
        if method == "Echo":
            return Code.OK, "", payload
        if method == "Fail":
            return Code.NOT_FOUND, payload.decode(), b""
        if method == "Meta":
            return Code.OK, "", json.dumps({"metadata": dict(ctx.metadata), "deadline": ctx.deadline}).encode()
        if method == "Big":
            return Code.OK, "", bytes(range(256)) * (int(payload) // 256)
        if method == "Slow":
            self.slow_started.release()
            self.release.wait(30)
            self.slow_finished.release()
            return Code.OK, "", b"late"
        return Code.UNIMPLEMENTED, f"{service}/{method}: unknown", b""

    def close(self) -> None:
        self.release.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.accepter.join(5)
        for connection in self.connections:
            connection.close()
        for thread in self.threads:
            thread.join(5)
        self.pool.shutdown(wait=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix:{server.path}", options=OPTIONS) as opened:
        yield opened


def unary(channel: grpc.Channel, path: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def check(channel: grpc.Channel) -> None:
    answer = unary(channel, "/grpc.health.v1.Health/Check")(b"", timeout=10)
    assert health_pb2.HealthCheckResponse.FromString(answer).status == 1


def test_unary_check_and_echo(server: Server, channel: grpc.Channel) -> None:
    check(channel)
    assert unary(channel, "/test.Echo/Echo")(b"hello", timeout=10) == b"hello"
    assert unary(channel, "/test.Echo/Echo")(b"", timeout=10) == b""
    assert [(s, m) for s, m, _ in server.calls] == [("grpc.health.v1.Health", "Check"), *[("test.Echo", "Echo")] * 2]
    assert all(ctx.protocol == "grpc" for _, _, ctx in server.calls)


@pytest.mark.parametrize("message", ["container abc not found", "conteneur « été » introuvable: 100% ✓", ""])
def test_error_status_and_message(channel: grpc.Channel, message: str) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        unary(channel, "/test.Echo/Fail")(message.encode(), timeout=10)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert failure.value.details() == message


def test_unknown_method_and_malformed_path(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        unary(channel, "/test.Echo/Nope")(b"", timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as failure:
        unary(channel, "/no-method")(b"", timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "malformed method name" in (failure.value.details() or "")


def test_metadata_and_deadline_reach_the_handler(channel: grpc.Channel) -> None:
    answer = unary(channel, "/test.Echo/Meta")(
        b"", timeout=20, metadata=[("x-request-id", "r-1"), ("x-blob-bin", b"\x00\x01")]
    )
    seen = json.loads(answer)
    assert seen["metadata"]["x-request-id"] == "r-1"
    assert not any(name.endswith("-bin") or name.startswith(("grpc-", ":")) for name in seen["metadata"])
    assert seen["deadline"] is not None
    assert json.loads(unary(channel, "/test.Echo/Meta")(b""))["deadline"] is None


def test_deadline_exceeded_while_the_handler_runs(server: Server, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        unary(channel, "/test.Echo/Slow")(b"", timeout=0.5)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    server.release.set()
    assert server.slow_finished.acquire(timeout=10)  # its late answer is dropped; the channel still works
    check(channel)


def test_server_answers_deadline_exceeded_itself(server: Server) -> None:
    """A raw request with grpc-timeout: the server's own trailers say DEADLINE_EXCEEDED."""
    with raw_connection(server) as sock:
        sock.sendall(request_frames(1, "/test.Echo/Slow", b"", extra=[("grpc-timeout", "200m")]))
        frames = read_frames(sock, until_stream_end=1)
    trailers = decode_headers(frames, 1)[-1]
    assert trailers["grpc-status"] == str(Code.DEADLINE_EXCEEDED)
    server.release.set()


def test_ten_mib_request_and_response(channel: grpc.Channel) -> None:
    payload = bytes(range(256)) * (BIG // 256)
    assert unary(channel, "/test.Echo/Echo")(payload, timeout=60) == payload
    answer = unary(channel, "/test.Echo/Big")(str(BIG).encode(), timeout=60)
    assert answer == payload


def test_message_size_limit(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        unary(channel, "/test.Echo/Echo")(b"x" * (h2grpc.MAX_MESSAGE + 1), timeout=60)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as failure:
        unary(channel, "/test.Echo/Big")(str(h2grpc.MAX_MESSAGE + 256).encode(), timeout=60)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    check(channel)


def test_concurrent_calls_with_a_slow_one(server: Server, channel: grpc.Channel) -> None:
    slow = unary(channel, "/test.Echo/Slow").future(b"", timeout=30)
    assert server.slow_started.acquire(timeout=10)
    echo = unary(channel, "/test.Echo/Echo")
    futures = [echo.future(f"call {index}".encode(), timeout=30) for index in range(15)]
    assert [future.result() for future in futures] == [f"call {index}".encode() for index in range(15)]
    assert not slow.done()
    server.release.set()
    assert slow.result() == b"late"
    assert len(server.connections) == 1  # one channel, one connection


def test_many_sequential_calls_on_one_connection(server: Server, channel: grpc.Channel) -> None:
    echo = unary(channel, "/test.Echo/Echo")
    for index in range(300):
        assert echo(str(index).encode(), timeout=10, metadata=[("x-n", str(index % 7))]) == str(index).encode()
    assert len(server.connections) == 1
    assert server.connections[0]._decoder.table  # the client's HPACK dynamic table is in use


def test_client_cancellation(server: Server, channel: grpc.Channel) -> None:
    future = unary(channel, "/test.Echo/Slow").future(b"", timeout=30)
    assert server.slow_started.acquire(timeout=10)
    future.cancel()
    assert future.cancelled()
    server.release.set()
    assert server.slow_finished.acquire(timeout=10)
    check(channel)
    # The handler's thread retires the cancelled stream just after the handler returns; _retire
    # notifies the connection's condition, so wait on it rather than race it.
    connection = server.connections[0]
    with connection._state:
        assert connection._state.wait_for(lambda: not connection._streams, timeout=10), connection._streams


def test_streaming_request_is_an_error_not_a_hang(channel: grpc.Channel) -> None:
    call = channel.stream_unary("/test.Echo/Echo", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as failure:
        call(iter([b"one", b"two"]), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as failure:
        call(iter([]), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INTERNAL


# -- raw HTTP/2 ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_connection(server: Server, settings: bytes = b"") -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(server.path)
    sock.sendall(h2grpc.PREFACE + h2grpc.frame(h2grpc.SETTINGS, 0, 0, settings))
    try:
        yield sock
    finally:
        sock.close()


def request_frames(
    stream_id: int,
    path: str,
    message: bytes,
    extra: list[tuple[str, str]] | None = None,
    content_type: str = "application/grpc",
    method: str = "POST",
) -> bytes:
    headers = [(":method", method), (":scheme", "http"), (":path", path), ("content-type", content_type)]
    block = hpack.Encoder().encode(headers + (extra or []))
    body = struct.pack(">BI", 0, len(message)) + message
    return h2grpc.frame(h2grpc.HEADERS, h2grpc.FLAG_END_HEADERS, stream_id, block) + h2grpc.frame(
        h2grpc.DATA, h2grpc.FLAG_END_STREAM, stream_id, body
    )


def read_frames(sock: socket.socket, until_stream_end: int | None = None) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) until the connection closes, or the given stream ends."""
    buffer = b""
    frames = []
    while True:
        while len(buffer) >= 9:
            high, low, frame_type, flags, stream_id = h2grpc.FRAME_HEADER.unpack_from(buffer)
            length = (high << 16) | low
            if len(buffer) < 9 + length:
                break
            frames.append((frame_type, flags, stream_id & 0x7FFFFFFF, buffer[9 : 9 + length]))
            buffer = buffer[9 + length :]
            ended = frame_type in (h2grpc.HEADERS, h2grpc.DATA) and flags & h2grpc.FLAG_END_STREAM
            if until_stream_end is not None and stream_id == until_stream_end and ended:
                return frames
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return frames
        buffer += chunk


def decode_headers(frames: list[tuple[int, int, int, bytes]], stream_id: int) -> list[dict[str, str]]:
    decoder = hpack.Decoder()
    return [
        dict(decoder.decode(payload))
        for frame_type, _, sid, payload in frames
        if frame_type == h2grpc.HEADERS and sid == stream_id
    ]


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int:
    codes = [struct.unpack_from(">II", payload)[1] for frame_type, _, _, payload in frames if frame_type == 7]
    assert codes, f"no GOAWAY in {[f[0] for f in frames]}"
    return codes[-1]


def test_raw_request_answer_shape_and_ping(server: Server) -> None:
    with raw_connection(server) as sock:
        sock.sendall(h2grpc.frame(h2grpc.PING, 0, 0, b"12345678"))
        sock.sendall(h2grpc.frame(h2grpc.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"))  # ignored
        sock.sendall(h2grpc.frame(0x42, 0, 0, b"unknown type"))  # ignored
        sock.sendall(request_frames(1, "/test.Echo/Echo", b"abc"))
        frames = read_frames(sock, until_stream_end=1)
    types = [frame_type for frame_type, _, _, _ in frames]
    assert types[0] == h2grpc.SETTINGS  # our SETTINGS come first
    assert (h2grpc.PING, h2grpc.FLAG_ACK, 0, b"12345678") in frames
    assert (h2grpc.SETTINGS, h2grpc.FLAG_ACK, 0, b"") in frames
    headers, trailers = decode_headers(frames, 1)
    assert headers == {":status": "200", "content-type": "application/grpc"}
    assert trailers == {"grpc-status": "0"}
    assert [payload for t, _, sid, payload in frames if t == h2grpc.DATA and sid == 1] == [b"\x00\x00\x00\x00\x03abc"]


def test_padded_headers_with_priority_and_continuation(server: Server) -> None:
    block = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/test.Echo/Echo"), ("content-type", "application/grpc")]
    )
    first = bytes([3]) + b"\x00\x00\x00\x00\x10" + block[:5] + b"\x00" * 3
    flags = h2grpc.FLAG_PADDED | h2grpc.FLAG_PRIORITY
    data = bytes([2]) + b"\x00\x00\x00\x00\x02hi" + b"\x00\x00"
    with raw_connection(server) as sock:
        sock.sendall(
            h2grpc.frame(h2grpc.HEADERS, flags, 1, first)
            + h2grpc.frame(h2grpc.CONTINUATION, h2grpc.FLAG_END_HEADERS, 1, block[5:])
            + h2grpc.frame(h2grpc.DATA, h2grpc.FLAG_PADDED | h2grpc.FLAG_END_STREAM, 1, data)
        )
        frames = read_frames(sock, until_stream_end=1)
    assert decode_headers(frames, 1)[-1] == {"grpc-status": "0"}
    assert [payload for t, _, sid, payload in frames if t == h2grpc.DATA and sid == 1] == [b"\x00\x00\x00\x00\x02hi"]


@pytest.mark.parametrize(
    ("method", "content_type", "status", "code"),
    [
        ("GET", "application/grpc", "405", Code.INTERNAL),
        ("POST", "text/plain", "415", Code.INTERNAL),
        ("POST", "application/grpc+proto", "200", Code.OK),
    ],
)
def test_method_and_content_type(server: Server, method: str, content_type: str, status: str, code: int) -> None:
    with raw_connection(server) as sock:
        sock.sendall(request_frames(1, "/test.Echo/Echo", b"", content_type=content_type, method=method))
        frames = read_frames(sock, until_stream_end=1)
    headers = decode_headers(frames, 1)
    assert headers[0][":status"] == status
    assert headers[-1]["grpc-status"] == str(code)


def test_compressed_message_is_unimplemented(server: Server) -> None:
    with raw_connection(server) as sock:
        frames_out = request_frames(1, "/test.Echo/Echo", b"zz", extra=[("grpc-encoding", "gzip")])
        compressed = frames_out.replace(b"\x00\x00\x00\x00\x02zz", b"\x01\x00\x00\x00\x02zz")
        sock.sendall(compressed)
        frames = read_frames(sock, until_stream_end=1)
    trailers = decode_headers(frames, 1)[-1]
    assert trailers["grpc-status"] == str(Code.UNIMPLEMENTED)
    assert "gzip" in trailers["grpc-message"]


def test_flow_control_waits_for_the_peers_window(server: Server) -> None:
    """With a 1000-byte stream window the 40 KiB answer comes in pieces, never beyond what was granted."""
    total = 40 * 1024 + 5
    settings = struct.pack(">HI", h2grpc.SETTINGS_INITIAL_WINDOW_SIZE, 1000)
    with raw_connection(server, settings) as sock:
        sock.sendall(request_frames(1, "/test.Echo/Big", str(40 * 1024).encode()))
        frames = FrameStream(sock)
        granted = received = 0
        trailers = None
        while trailers is None:
            frame_type, flags, stream_id, payload = frames.next()
            if frame_type == h2grpc.DATA and stream_id == 1:
                received += len(payload)
                assert received <= granted + 1000
                if received == granted + 1000:  # the window is used up: grant another 1000 bytes
                    granted += 1000
                    sock.sendall(h2grpc.frame(h2grpc.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1000)))
            elif frame_type == h2grpc.HEADERS and flags & h2grpc.FLAG_END_STREAM:
                trailers = payload
    assert received == total
    assert granted == 40 * 1000  # 41 windows of 1000 bytes: 40 updates
    assert hpack.Decoder().decode(trailers) == [("grpc-status", "0")]


class FrameStream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self) -> tuple[int, int, int, bytes]:
        while True:
            if len(self.buffer) >= 9:
                high, low, frame_type, flags, stream_id = h2grpc.FRAME_HEADER.unpack_from(self.buffer)
                length = (high << 16) | low
                if len(self.buffer) >= 9 + length:
                    payload = self.buffer[9 : 9 + length]
                    self.buffer = self.buffer[9 + length :]
                    return frame_type, flags, stream_id, payload
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk


HEADERS_ONLY = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", "/test.Echo/Echo")])


@pytest.mark.parametrize(
    ("hostile", "code"),
    [
        (b"\xde\xad\xbe\xef" * 64, h2grpc.FRAME_SIZE_ERROR),
        (h2grpc.frame(h2grpc.DATA, 0, 1, b"x" * 20000), h2grpc.FRAME_SIZE_ERROR),
        (h2grpc.frame(h2grpc.HEADERS, h2grpc.FLAG_END_HEADERS, 0, HEADERS_ONLY), h2grpc.PROTOCOL_ERROR),
        (h2grpc.frame(h2grpc.HEADERS, h2grpc.FLAG_END_HEADERS, 2, HEADERS_ONLY), h2grpc.PROTOCOL_ERROR),
        (h2grpc.frame(h2grpc.DATA, 0, 5, b"\x00"), h2grpc.PROTOCOL_ERROR),
        (
            h2grpc.frame(h2grpc.HEADERS, 0, 1, HEADERS_ONLY) + h2grpc.frame(h2grpc.PING, 0, 0, b"8 bytes!"),
            h2grpc.PROTOCOL_ERROR,
        ),
        (
            h2grpc.frame(h2grpc.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)),
            h2grpc.FLOW_CONTROL_ERROR,
        ),
        (h2grpc.frame(h2grpc.HEADERS, h2grpc.FLAG_END_HEADERS, 1, b"\xff\xff\xff"), h2grpc.COMPRESSION_ERROR),
        (h2grpc.frame(h2grpc.PING, 0, 0, b"short"), h2grpc.FRAME_SIZE_ERROR),
        (h2grpc.frame(h2grpc.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), h2grpc.FLOW_CONTROL_ERROR),
        (h2grpc.frame(h2grpc.CONTINUATION, h2grpc.FLAG_END_HEADERS, 1, b""), h2grpc.PROTOCOL_ERROR),
    ],
    ids=[
        "garbage",
        "oversized-frame",
        "headers-stream-0",
        "even-stream",
        "data-idle-stream",
        "headers-interrupted",
        "window-overflow",
        "bad-hpack",
        "short-ping",
        "bad-initial-window",
        "lone-continuation",
    ],
)
def test_hostile_bytes_end_with_goaway(server: Server, hostile: bytes, code: int) -> None:
    with raw_connection(server) as sock:
        sock.sendall(hostile)
        frames = read_frames(sock)
    assert goaway_code(frames) == code
    with grpc.insecure_channel(f"unix:{server.path}") as fresh:
        check(fresh)


def test_garbage_instead_of_settings(server: Server) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    with sock:
        sock.connect(server.path)
        sock.sendall(h2grpc.PREFACE + h2grpc.frame(h2grpc.PING, 0, 0, b"12345678"))
        assert goaway_code(read_frames(sock)) == h2grpc.PROTOCOL_ERROR


def test_peer_goaway_lets_calls_in_flight_finish(server: Server) -> None:
    with raw_connection(server) as sock:
        sock.sendall(request_frames(1, "/test.Echo/Slow", b""))
        assert server.slow_started.acquire(timeout=10)
        sock.sendall(h2grpc.frame(h2grpc.GOAWAY, 0, 0, struct.pack(">II", 1, 0)))
        sock.shutdown(socket.SHUT_WR)
        server.release.set()
        frames = read_frames(sock)  # until the server closes, after answering stream 1
    assert decode_headers(frames, 1)[-1] == {"grpc-status": "0"}


def test_rst_stream_drops_the_answer(server: Server) -> None:
    with raw_connection(server) as sock:
        sock.sendall(request_frames(1, "/test.Echo/Slow", b""))
        assert server.slow_started.acquire(timeout=10)
        sock.sendall(h2grpc.frame(h2grpc.RST_STREAM, 0, 1, struct.pack(">I", h2grpc.CANCEL)))
        sock.sendall(h2grpc.frame(h2grpc.PING, 0, 0, b"after-rs"))  # its ACK: the RST_STREAM was handled
        stream = FrameStream(sock)
        frames = []
        while (received := stream.next())[:2] != (h2grpc.PING, h2grpc.FLAG_ACK):
            frames.append(received)
        server.release.set()
        assert server.slow_finished.acquire(timeout=10)
        sock.sendall(request_frames(3, "/test.Echo/Echo", b"next"))
        while not ((received := stream.next())[2] == 3 and received[1] & h2grpc.FLAG_END_STREAM):
            frames.append(received)
        frames.append(received)
    assert not [f for f in frames if f[2] == 1 and f[0] in (h2grpc.HEADERS, h2grpc.DATA)]
    assert decode_headers(frames, 3)[-1] == {"grpc-status": "0"}


def test_percent_encoding() -> None:
    assert h2grpc.percent_encode("plain text") == "plain text"
    assert h2grpc.percent_encode("100% é\n") == "100%25 %C3%A9%0A"
    assert len(h2grpc.percent_encode("é" * 5000)) <= h2grpc.MAX_GRPC_MESSAGE
    assert h2grpc.parse_timeout("100m") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="malformed"):
        h2grpc.parse_timeout("123456789S")


# -- the real agent through agentctl's client ---------------------------------------------------------


def test_agentctl_grpc_client_against_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.errors import NotFound
    from agent.rpc import registry

    def missing(services: object, request: object, ctx: CallContext) -> object:
        raise NotFound(f"container « ünïcode » not found; metadata {dict(ctx.metadata)}")

    monkeypatch.setitem(registry.METHODS, "grpc.AgentService/StatsContainer", missing)
    with serving_agent(fake_guest_tree(tmp_path / "root")) as agent, connect(agent.address, "grpc") as client:
        for _ in range(20):
            response = client.call("grpc.Health/Check", health_pb2.CheckRequest())
            assert response.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]
        with pytest.raises(AgentCallError) as failure:
            client.call("StatsContainer")
        assert failure.value.code == Code.NOT_FOUND
        assert "container « ünïcode » not found" in failure.value.message
