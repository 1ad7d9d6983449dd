"""The passfd stream table: streams wait by their peer's port until a request takes them. Over TCP on
loopback here (the peer's port is what a vsock connection's host port is in the guest)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agent.errors import IncorrectState, InvalidArgument
from agent.services import passfd
from agent.services.passfd import PassfdStreams, put_back


@pytest.fixture
def streams() -> Iterator[PassfdStreams]:
    listener = socket.create_server(("127.0.0.1", 0))
    table = PassfdStreams(listener, listener.getsockname()[1]).start()
    yield table
    table.close()


@contextlib.contextmanager
def opened(table: PassfdStreams, count: int) -> Iterator[list[socket.socket]]:
    """``count`` host-side streams, connected and seen by the table."""
    socks = [socket.create_connection(("127.0.0.1", table.port)) for _ in range(count)]
    try:
        ports = [s.getsockname()[1] for s in socks]
        deadline = time.monotonic() + 10
        while not set(ports) <= set(table.pending()) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def test_take_gives_the_streams_by_host_port(streams: PassfdStreams) -> None:
    with opened(streams, 2) as (out, err):
        taken = streams.take({"stdin": 0, "stdout": _port(out), "stderr": _port(err)})
        assert sorted(taken) == ["stderr", "stdout"]
        taken["stdout"].sendall(b"to the host")
        assert out.recv(100) == b"to the host"
        assert streams.pending() == []
        for sock in taken.values():
            sock.close()


def test_take_waits_for_a_stream_that_comes_later(streams: PassfdStreams) -> None:
    early = socket.create_connection(("127.0.0.1", streams.port))
    late = socket.socket()
    late.bind(("127.0.0.1", 0))  # its port is known before it connects
    timer = threading.Timer(0.3, late.connect, args=(("127.0.0.1", streams.port),))
    timer.start()
    try:
        taken = streams.take({"stdout": _port(early), "stderr": _port(late)})
        assert set(taken) == {"stdout", "stderr"}
        for sock in taken.values():
            sock.close()
    finally:
        timer.join()
        early.close()
        late.close()


def test_a_missing_stream_is_named_and_the_others_stay(streams: PassfdStreams, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passfd, "STREAM_WAIT", 0.2)
    with opened(streams, 1) as (out,):
        with pytest.raises(IncorrectState, match=r"stderr \(host port 9\).*vsock port") as info:
            streams.take({"stdout": _port(out), "stderr": 9})
        assert "stdout" not in str(info.value)
        assert streams.pending() == [_port(out)]  # all or none: the stdout stream is still there


def test_the_call_deadline_bounds_the_wait(streams: PassfdStreams) -> None:
    started = time.monotonic()
    with pytest.raises(IncorrectState):
        streams.take({"stdout": 9}, deadline=time.monotonic() + 0.1)
    assert time.monotonic() - started < passfd.STREAM_WAIT


def test_one_port_for_two_streams_is_refused(streams: PassfdStreams) -> None:
    with opened(streams, 1) as (out,), pytest.raises(InvalidArgument, match="one host port names two streams"):
        streams.take({"stdout": _port(out), "stderr": _port(out)})


def test_pending_streams_are_bounded_oldest_first(streams: PassfdStreams, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passfd, "MAX_PENDING_STREAMS", 2)
    with opened(streams, 2) as (first, second), opened(streams, 1) as (third,):
        assert streams.pending() == [_port(second), _port(third)]
        first.settimeout(5)
        assert first.recv(1) == b""  # the agent closed the oldest


def test_put_back_returns_streams_a_failed_request_took(streams: PassfdStreams) -> None:
    with opened(streams, 1) as (out,):
        taken = streams.take({"stdout": _port(out)})
        put_back(streams, taken)
        assert streams.pending() == [_port(out)]


def test_close_ends_pending_streams(streams: PassfdStreams) -> None:
    with opened(streams, 1) as (out,):
        streams.close()
        out.settimeout(5)
        assert out.recv(1) == b""
