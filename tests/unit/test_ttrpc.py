"""ttrpc framing and one server connection, driven over a socketpair with a scripted dispatch."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from agent.rpc import ttrpc
from agent.rpc.pb import ttrpc_pb2
from agent.rpc.registry import CallContext
from agent.rpc.status import Code
from tests.helpers.agent_server import ttrpc_frame


def request_bytes(method: str = "Echo", payload: bytes = b"x", timeout_nano: int = 0, **metadata: str) -> bytes:
    return ttrpc_pb2.Request(
        service="test.Service",
        method=method,
        payload=payload,
        timeout_nano=timeout_nano,
        metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata.items()],
    ).SerializeToString()


@dataclass
class ScriptedDispatch:
    """Echoes payloads; "Block" waits for ``release``; records every call's context."""

    release: threading.Event = field(default_factory=threading.Event)
    blocked: threading.Event = field(default_factory=threading.Event)
    contexts: list[CallContext] = field(default_factory=list)

    def __call__(self, service: str, method: str, payload: bytes, ctx: CallContext) -> tuple[int, str, bytes]:
        self.contexts.append(ctx)
        if method == "Block":
            self.blocked.set()
            assert self.release.wait(10)
        if method == "Fail":
            return Code.NOT_FOUND, "no such thing", b""
        return Code.OK, "", payload


@dataclass
class Peer:
    sock: socket.socket
    reader: ttrpc.FrameReader
    dispatch: ScriptedDispatch
    thread: threading.Thread
    budget: ttrpc.ByteBudget

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, ttrpc_pb2.Response]:
        header = self.reader.read_header()
        assert header is not None, "connection closed instead of answering"
        assert header.type == ttrpc.TYPE_RESPONSE
        return header.stream_id, ttrpc_pb2.Response.FromString(self.reader.read_payload(header.length))

    def closed(self) -> bool:
        return self.reader.read_header() is None


@pytest.fixture
def peer() -> Iterator[Peer]:
    client, server = socket.socketpair()
    client.settimeout(10)
    dispatch = ScriptedDispatch()
    pool = ThreadPoolExecutor(max_workers=4)
    budget = ttrpc.ByteBudget(ttrpc.MESSAGE_LENGTH_MAX)
    connection = ttrpc.TtrpcConnection(server, dispatch, pool, ttrpc.Deadlines(), budget=budget)
    thread = threading.Thread(target=connection.serve, daemon=True)
    thread.start()
    yield Peer(client, ttrpc.FrameReader(client), dispatch, thread, budget)
    dispatch.release.set()
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_RDWR)  # wakes a client reader thread still blocked on it
    client.close()
    thread.join(10)
    assert not thread.is_alive()
    server.close()
    pool.shutdown(wait=True)


def test_header_layout_is_big_endian_length_stream_type_flags() -> None:
    frame = ttrpc.encode_frame(0x01020304, ttrpc.TYPE_REQUEST, b"abc", flags=ttrpc.FLAG_NO_DATA)
    assert frame == b"\x00\x00\x00\x03\x01\x02\x03\x04\x01\x04abc"


def test_encode_refuses_payloads_over_4_mib() -> None:
    ttrpc.encode_frame(1, ttrpc.TYPE_REQUEST, bytes(ttrpc.MESSAGE_LENGTH_MAX))
    with pytest.raises(ValueError, match="exceeds"):
        ttrpc.encode_frame(1, ttrpc.TYPE_REQUEST, bytes(ttrpc.MESSAGE_LENGTH_MAX + 1))


def test_reader_starts_with_the_sniffed_prefix_and_reports_truncation() -> None:
    a, b = socket.socketpair()
    frame = ttrpc_frame(1, b"hello")
    reader = ttrpc.FrameReader(b, prefix=frame[:3])
    a.sendall(frame[3:] + frame[:6])
    a.close()
    header = reader.read_header()
    assert header == ttrpc.FrameHeader(5, 1, 1, 0)
    assert reader.read_payload(5) == b"hello"
    with pytest.raises(ttrpc.ProtocolError, match="frame header"):
        reader.read_header()
    b.close()


def test_unary_call_answers_on_the_same_stream_with_status_and_payload(peer: Peer) -> None:
    peer.send(ttrpc_frame(1, request_bytes(payload=b"ping")))
    stream, response = peer.response()
    assert (stream, response.status.code, response.payload) == (1, Code.OK, b"ping")
    peer.send(ttrpc_frame(3, request_bytes("Fail")))
    stream, response = peer.response()
    assert (stream, response.status.code, response.status.message) == (3, Code.NOT_FOUND, "no such thing")


def test_concurrent_streams_on_one_connection_complete_out_of_order(peer: Peer) -> None:
    peer.send(ttrpc_frame(1, request_bytes("Block", b"first")))
    assert peer.dispatch.blocked.wait(10)
    peer.send(ttrpc_frame(3, request_bytes("Echo", b"second")))
    stream, response = peer.response()  # answered while stream 1 is still running
    assert (stream, response.payload) == (3, b"second")
    peer.dispatch.release.set()
    stream, response = peer.response()
    assert (stream, response.payload) == (1, b"first")


def test_metadata_and_timeout_reach_the_call_context(peer: Peer) -> None:
    peer.send(ttrpc_frame(1, request_bytes(timeout_nano=30 * 10**9, trace="abc", user="kata")))
    peer.response()
    ctx = peer.dispatch.contexts[0]
    assert ctx.protocol == "ttrpc"
    assert dict(ctx.metadata) == {"trace": "abc", "user": "kata"}
    assert ctx.deadline is not None


def test_a_call_that_overruns_its_deadline_is_answered_deadline_exceeded(peer: Peer) -> None:
    peer.send(ttrpc_frame(5, request_bytes("Block", timeout_nano=50_000_000)))
    stream, response = peer.response()  # while the handler is still blocked
    assert (stream, response.status.code) == (5, Code.DEADLINE_EXCEEDED)
    peer.dispatch.release.set()
    peer.send(ttrpc_frame(7, request_bytes(payload=b"after")))
    stream, response = peer.response()  # the late result of stream 5 was dropped, not sent twice
    assert (stream, response.payload) == (7, b"after")


def test_even_stream_id_gets_invalid_argument_and_the_connection_closes(peer: Peer) -> None:
    peer.send(ttrpc_frame(2, request_bytes()))
    stream, response = peer.response()
    assert (stream, response.status.code) == (2, Code.INVALID_ARGUMENT)
    assert "even" in response.status.message
    assert peer.closed()
    assert peer.dispatch.contexts == []


def test_oversized_frame_is_answered_resource_exhausted_and_discarded(peer: Peer) -> None:
    oversize = ttrpc.MESSAGE_LENGTH_MAX + 1
    peer.send(struct.pack(">IIBB", oversize, 9, ttrpc.TYPE_REQUEST, 0))
    stream, response = peer.response()  # answered before the payload arrives
    assert (stream, response.status.code) == (9, Code.RESOURCE_EXHAUSTED)
    assert str(ttrpc.MESSAGE_LENGTH_MAX) in response.status.message
    peer.send(bytes(oversize))  # the payload is read and dropped; the connection stays usable
    peer.send(ttrpc_frame(11, request_bytes(payload=b"still here")))
    stream, response = peer.response()
    assert (stream, response.payload) == (11, b"still here")


def test_frame_announcing_more_than_the_discard_limit_closes_the_connection(peer: Peer) -> None:
    peer.send(struct.pack(">IIBB", 0xFFFFFFFF, 1, ttrpc.TYPE_REQUEST, 0))
    _, response = peer.response()
    assert response.status.code == Code.RESOURCE_EXHAUSTED
    assert peer.closed()


def test_undecodable_request_is_invalid_argument_and_data_frames_are_ignored(peer: Peer) -> None:
    peer.send(ttrpc_frame(1, b"\xff\xff\xff"))
    stream, response = peer.response()
    assert (stream, response.status.code) == (1, Code.INVALID_ARGUMENT)
    peer.send(ttrpc_frame(3, b"data", frame_type=ttrpc.TYPE_DATA))
    peer.send(ttrpc_frame(5, request_bytes(payload=b"ok")))
    stream, response = peer.response()
    assert (stream, response.payload) == (5, b"ok")


def test_streaming_request_is_unimplemented(peer: Peer) -> None:
    peer.send(ttrpc_frame(1, request_bytes(), flags=ttrpc.FLAG_REMOTE_OPEN))
    stream, response = peer.response()
    assert (stream, response.status.code) == (1, Code.UNIMPLEMENTED)


def test_truncated_frame_closes_the_connection(peer: Peer) -> None:
    frame = ttrpc_frame(1, request_bytes())
    peer.send(frame[:-2])
    peer.sock.shutdown(socket.SHUT_WR)
    assert peer.closed()
    assert peer.dispatch.contexts == []


def test_client_connection_uses_odd_increasing_stream_ids(peer: Peer) -> None:
    client = ttrpc.TtrpcClientConnection(peer.sock)
    assert client.call("test.Service", "Echo", b"one") == b"one"
    assert client.call("test.Service", "Echo", b"two", timeout=5, metadata={"k": "v"}) == b"two"
    with pytest.raises(ttrpc.TtrpcCallError) as failure:
        client.call("test.Service", "Fail", b"")
    assert failure.value.code == Code.NOT_FOUND
    assert peer.dispatch.contexts[1].metadata == {"k": "v"}
    client.close()


def test_client_connection_runs_calls_from_several_threads_concurrently(peer: Peer) -> None:
    client = ttrpc.TtrpcClientConnection(peer.sock)
    answers: list[bytes] = []
    blocked = threading.Thread(target=lambda: answers.append(client.call("test.Service", "Block", b"slow")))
    blocked.start()
    assert peer.dispatch.blocked.wait(10)
    assert client.call("test.Service", "Echo", b"fast", timeout=10) == b"fast"  # not queued behind Block
    peer.dispatch.release.set()
    blocked.join(10)
    assert answers == [b"slow"]
    client.close()


def test_when_the_reading_call_is_answered_a_waiting_call_reads_on() -> None:
    """No reader thread: the first call reads for both; once its own answer is in, the other call
    must take the reading over to get its own."""
    ours, theirs = socket.socketpair()
    client = ttrpc.TtrpcClientConnection(ours)
    server = ttrpc.FrameReader(theirs)
    answers: dict[str, bytes] = {}

    def call(name: str) -> None:
        answers[name] = client.call("test.Service", "Echo", name.encode(), timeout=10)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    header = server.read_header()
    assert header is not None and header.stream_id == 1
    server.read_payload(header.length)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    header = server.read_header()
    assert header is not None and header.stream_id == 3
    server.read_payload(header.length)
    theirs.sendall(ttrpc.encode_response(1, Code.OK, "", b"one"))
    first.join(10)
    assert answers == {"first": b"one"} and second.is_alive()
    theirs.sendall(ttrpc.encode_response(3, Code.OK, "", b"three"))
    second.join(10)
    assert answers == {"first": b"one", "second": b"three"}
    # a response split across two writes, with a call's deadline in between, is read whole later
    with pytest.raises(TimeoutError):
        client.call("test.Service", "Echo", b"", timeout=0.05)  # stream 5: answered in part only
    frame = ttrpc.encode_response(7, Code.OK, "", b"seven")
    theirs.sendall(frame[:6])
    waiting = threading.Thread(target=call, args=("third",))
    waiting.start()
    theirs.sendall(frame[6:])
    waiting.join(10)
    assert answers["third"] == b"seven"
    client.close()
    theirs.close()


def test_server_side_deadline_reaches_the_client_as_deadline_exceeded(peer: Peer) -> None:
    client = ttrpc.TtrpcClientConnection(peer.sock)
    with pytest.raises(ttrpc.TtrpcCallError) as failure:
        client.call("test.Service", "Block", b"", timeout=0.2)
    assert failure.value.code == Code.DEADLINE_EXCEEDED
    client.close()


def test_client_times_out_on_a_silent_peer_and_fails_waiting_calls_when_the_connection_drops() -> None:
    ours, theirs = socket.socketpair()
    client = ttrpc.TtrpcClientConnection(ours)
    with pytest.raises(TimeoutError):
        client.call("test.Service", "Echo", b"", timeout=0.2)
    failures: list[BaseException] = []

    def waiting_call() -> None:
        try:
            client.call("test.Service", "Echo", b"")
        except BaseException as exc:
            failures.append(exc)

    waiter = threading.Thread(target=waiting_call)
    waiter.start()
    reader = ttrpc.FrameReader(theirs)
    streams = []
    for _ in range(2):  # the timed-out request, then the waiting one
        header = reader.read_header()
        assert header is not None
        reader.read_payload(header.length)
        streams.append(header.stream_id)
    assert streams == [1, 3]
    theirs.close()
    waiter.join(10)
    assert len(failures) == 1 and isinstance(failures[0], ConnectionError)
    with pytest.raises(ConnectionError):
        client.call("test.Service", "Echo", b"")
    client.close()


def test_finished_calls_do_not_pile_up_in_the_deadline_heap(peer: Peer) -> None:
    deadlines = ttrpc.Deadlines()
    client, server = socket.socketpair()
    connection = ttrpc.TtrpcConnection(server, peer.dispatch, ThreadPoolExecutor(1), deadlines)
    for stream in range(1, 4000, 2):
        responder = ttrpc._Responder(connection, stream, "test.Service/Echo")
        deadlines.add(time.monotonic() + 3600, responder)
        responder.done = True  # the call finished long before its deadline
    assert deadlines.pending() <= 2 * ttrpc.Deadlines._COMPACT_FLOOR
    client.close()
    server.close()


def test_byte_budget_holds_a_reader_until_calls_finish() -> None:
    budget = ttrpc.ByteBudget(100)
    budget.acquire(60)
    budget.acquire(30)
    waiter_done = threading.Event()

    def waiter() -> None:
        budget.acquire(50)  # 140 > 100: waits for a release
        waiter_done.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert not waiter_done.wait(0.2)
    budget.release(60)
    assert waiter_done.wait(10)
    assert budget.used == 80
    budget.release(30)
    budget.release(50)
    assert budget.used == 0
    budget.acquire(1000)  # alone, an oversized request still fits
    assert budget.used == 1000


def test_calls_release_their_budget(peer: Peer) -> None:
    frame = ttrpc_frame(1, request_bytes("Block", b"x" * 100))
    peer.send(frame)
    assert peer.dispatch.blocked.wait(10)
    assert peer.budget.used == len(frame) - 10  # the payload, held while the call runs
    peer.dispatch.release.set()
    stream, response = peer.response()
    assert (stream, response.payload) == (1, b"x" * 100)
    peer.send(ttrpc_frame(3, b"\xff"))  # an undecodable request releases its bytes at once
    peer.response()
    for _ in range(1000):  # the worker releases just after it sends the response
        if peer.budget.used == 0:
            break
        time.sleep(0.01)
    assert peer.budget.used == 0


def test_a_client_that_stops_reading_gets_its_connection_closed() -> None:
    client, server = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    dispatch = ScriptedDispatch()
    with ThreadPoolExecutor(max_workers=2) as pool:
        connection = ttrpc.TtrpcConnection(server, dispatch, pool, ttrpc.Deadlines(), send_timeout=1)
        thread = threading.Thread(target=connection.serve, daemon=True)
        thread.start()
        big = b"y" * (1 << 20)  # echoed back: far more than the socket buffers hold
        client.sendall(ttrpc_frame(1, request_bytes(payload=big)))
        thread.join(30)  # the send times out, the connection closes, serve() returns
        assert not thread.is_alive()
    client.close()
    server.close()


def test_requests_sent_back_to_back_are_all_answered(peer: Peer) -> None:
    frames = b"".join(ttrpc_frame(stream, request_bytes(payload=bytes([stream]))) for stream in range(1, 40, 2))
    peer.send(frames)  # several frames per read: the reader takes them from its buffer
    answers = dict(peer.response() for _ in range(20))
    assert {stream: response.payload for stream, response in answers.items()} == {
        stream: bytes([stream]) for stream in range(1, 40, 2)
    }


def test_sequential_calls_reuse_the_pool_threads() -> None:
    client, server = socket.socketpair()
    client.settimeout(10)
    pool = ThreadPoolExecutor(max_workers=16)
    connection = ttrpc.TtrpcConnection(server, ScriptedDispatch(), pool, ttrpc.Deadlines())
    thread = threading.Thread(target=connection.serve, daemon=True)
    thread.start()
    reader = ttrpc.FrameReader(client)
    for stream in range(1, 200, 2):
        client.sendall(ttrpc_frame(stream, request_bytes()))
        header = reader.read_header()
        assert header is not None and header.stream_id == stream
        reader.read_payload(header.length)
    # a thread runs a call while another reads the next request: a few threads for 100 calls
    assert len(pool._threads) <= 4
    client.close()
    thread.join(10)
    assert not thread.is_alive()
    pool.shutdown(wait=True)  # the reading ended with the connection
    server.close()
