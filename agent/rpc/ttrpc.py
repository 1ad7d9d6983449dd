"""containerd's ttrpc protocol: framing, a server connection and a small client connection.

Wire format (containerd/ttrpc PROTOCOL.md): every message is a 10-byte header, u32 big-endian payload
length, u32 big-endian stream id, u8 type (1 request, 2 response, 3 data) and u8 flags, followed by the
payload, at most 4 MiB. A unary call is one Request frame from the client on a new odd stream id and
one Response frame from the server on the same id. Requests on one connection run concurrently (a
bounded number at a time) and responses are written whole under a lock, so frames never interleave.

The envelope messages (ttrpc.proto's Request, Response, Status, KeyValue) are encoded and decoded here
with agent/rpc/wire.py rather than the generated classes, so serving the first call does not wait for
the protobuf runtime to load.

A header announcing more than 4 MiB is answered with RESOURCE_EXHAUSTED on its stream id and the payload
is read and dropped without being stored (as containerd does); past DISCARD_LIMIT the connection is
closed instead. An even stream id is a protocol error: INVALID_ARGUMENT is sent on that id, then the
connection is closed.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

from agent.rpc import wire
from agent.rpc.registry import CallContext
from agent.rpc.status import Code
from agent.system import libc
from agent.system.records import Record

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = HEADER.size
MESSAGE_LENGTH_MAX = 4 << 20
DISCARD_LIMIT = 64 << 20

TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2
TYPE_DATA = 0x3

FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4

_RECV_CHUNK = 64 * 1024
SEND_TIMEOUT = 30.0  # seconds a response may wait for a client that does not read
CLIENT_GRACE = 1.0  # seconds a client waits past its deadline for the server's own answer

# (service, method, payload, context) -> (code, message, response payload)
Dispatch = Callable[[str, str, bytes, CallContext], tuple[int, str, bytes]]


class ProtocolError(Exception):
    """The peer broke the framing; the connection cannot continue."""


class FrameHeader(Record):
    _fields = ("length", "stream_id", "type", "flags")
    __slots__ = _fields
    length: int
    stream_id: int
    type: int
    flags: int

    def __init__(self, length: int, stream_id: int, type: int, flags: int) -> None:
        self._assign(length, stream_id, type, flags)


def encode_frame(stream_id: int, frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MESSAGE_LENGTH_MAX:
        raise ValueError(f"ttrpc payload of {len(payload)} bytes exceeds the {MESSAGE_LENGTH_MAX}-byte limit")
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


class Request:
    """ttrpc.Request: the call a Request frame carries."""

    __slots__ = ("metadata", "method", "payload", "service", "timeout_nano")

    def __init__(
        self,
        service: str = "",
        method: str = "",
        payload: bytes = b"",
        timeout_nano: int = 0,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.payload = payload
        self.timeout_nano = timeout_nano
        self.metadata = metadata or {}

    def encode(self) -> bytes:
        """The message as the generated ttrpc_pb2.Request would serialize it (fields in order, proto3
        defaults left out)."""
        out = bytearray()
        if self.service:
            out += wire.length_delimited(1, self.service.encode())
        if self.method:
            out += wire.length_delimited(2, self.method.encode())
        if self.payload:
            out += wire.length_delimited(3, self.payload)
        if self.timeout_nano:
            out += wire.varint_field(4, self.timeout_nano)
        for name, value in self.metadata.items():
            entry = (wire.length_delimited(1, name.encode()) if name else b"") + (
                wire.length_delimited(2, value.encode()) if value else b""
            )
            out += wire.length_delimited(5, entry)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Request:
        """Parse a Request; raises wire.WireError for bytes that are not one. A metadata key given twice
        keeps its last value."""
        request = cls()
        for number, wire_type, value in wire.fields(data):
            if wire_type == wire.LENGTH_DELIMITED:
                assert isinstance(value, bytes)
                if number == 1:
                    request.service = wire.text(value)
                elif number == 2:
                    request.method = wire.text(value)
                elif number == 3:
                    request.payload = value
                elif number == 5:
                    name = text = ""
                    for entry_number, entry_type, entry_value in wire.fields(value):
                        if entry_type == wire.LENGTH_DELIMITED and entry_number in (1, 2):
                            assert isinstance(entry_value, bytes)
                            if entry_number == 1:
                                name = wire.text(entry_value)
                            else:
                                text = wire.text(entry_value)
                    request.metadata[name] = text
            elif wire_type == wire.VARINT and number == 4:
                assert isinstance(value, int)
                request.timeout_nano = wire.signed64(value)
        return request


def encode_response_message(code: int, message: str, payload: bytes) -> bytes:
    """ttrpc.Response{status: Status{code, message}, payload}, as the generated class serializes it."""
    status = (wire.varint_field(1, code) if code else b"") + (
        wire.length_delimited(2, message.encode()) if message else b""
    )
    return wire.length_delimited(1, status) + (wire.length_delimited(2, payload) if payload else b"")


def decode_response_message(data: bytes) -> tuple[int, str, bytes]:
    """(status code, status message, payload) of a ttrpc.Response; raises wire.WireError."""
    code, message, payload = 0, "", b""
    for number, wire_type, value in wire.fields(data):
        if number == 1 and wire_type == wire.LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            for status_number, status_type, status_value in wire.fields(value):
                if status_number == 1 and status_type == wire.VARINT:
                    assert isinstance(status_value, int)
                    code = wire.signed32(status_value)
                elif status_number == 2 and status_type == wire.LENGTH_DELIMITED:
                    assert isinstance(status_value, bytes)
                    message = wire.text(status_value)
        elif number == 2 and wire_type == wire.LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            payload = value
    return code, message, payload


def encode_response(stream_id: int, code: int, message: str, payload: bytes) -> bytes:
    return encode_frame(stream_id, TYPE_RESPONSE, encode_response_message(code, message, payload))


class FrameReader:
    """Reads frames from a socket, starting with bytes already taken off it (the protocol sniff)."""

    def __init__(self, sock: socket.socket, prefix: bytes = b"") -> None:
        self._sock = sock
        self._buffer = bytearray(prefix)

    def _fill(self, wanted: int) -> bool:
        while len(self._buffer) < wanted:
            chunk = self._sock.recv(max(_RECV_CHUNK, wanted - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def read_header(self) -> FrameHeader | None:
        """The next header, or None when the peer closed cleanly between frames."""
        if not self._fill(HEADER_LENGTH):
            if self._buffer:
                raise ProtocolError(f"connection closed inside a frame header ({len(self._buffer)} of 10 bytes)")
            return None
        length, stream_id, frame_type, flags = HEADER.unpack_from(self._buffer)
        del self._buffer[:HEADER_LENGTH]
        return FrameHeader(length, stream_id, frame_type, flags)

    def read_payload(self, length: int) -> bytes:
        if length > MESSAGE_LENGTH_MAX:
            raise ValueError("caller must discard oversized payloads")
        if not self._fill(length):
            raise ProtocolError(f"connection closed inside a payload ({len(self._buffer)} of {length} bytes)")
        payload = bytes(self._buffer[:length])
        del self._buffer[:length]
        return payload

    def discard(self, length: int) -> None:
        """Read and drop ``length`` bytes without holding more than one chunk."""
        dropped = min(length, len(self._buffer))
        del self._buffer[:dropped]
        remaining = length - dropped
        while remaining:
            chunk = self._sock.recv(min(_RECV_CHUNK, remaining))
            if not chunk:
                raise ProtocolError("connection closed inside an oversized payload")
            remaining -= len(chunk)


class Expirable(Protocol):
    """A call that ``Deadlines`` can end: ``done`` once answered, ``expire()`` answers DEADLINE_EXCEEDED
    (ttrpc's responder and h2grpc's stream both are)."""

    done: bool

    def expire(self) -> None: ...


class Deadlines:
    """One thread that expires calls still running at their deadline (time.monotonic()).

    Finished calls leave their entries behind until the heap is compacted, which happens whenever
    it has doubled since the last compaction, so memory follows the calls in flight, not the calls made.
    """

    _COMPACT_FLOOR = 256

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Expirable]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._compact_at = self._COMPACT_FLOOR

    def add(self, deadline: float, responder: Expirable) -> None:
        with self._cond:
            if len(self._heap) >= self._compact_at:
                self._heap = [entry for entry in self._heap if not entry[2].done]
                heapq.heapify(self._heap)
                self._compact_at = max(self._COMPACT_FLOOR, 2 * len(self._heap))
            entry = (deadline, next(self._counter), responder)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ttrpc-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0] is entry:  # the thread sleeps until an earlier deadline: wake it only for this one
                self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline = self._heap[0][0]
                now = time.monotonic()
                if now < deadline:
                    self._cond.wait(deadline - now)
                    continue
                _, _, responder = heapq.heappop(self._heap)
            try:
                responder.expire()
            except Exception:
                log.exception("expiring a call failed")


class _Responder:
    """Sends exactly one response for a stream: the handler's, or DEADLINE_EXCEEDED if that comes first."""

    def __init__(self, connection: TtrpcConnection, stream_id: int, label: str) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self._label = label
        self._lock = threading.Lock()
        self.done = False

    def send(self, code: int, message: str, payload: bytes) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
        self._connection.send_response(self._stream_id, code, message, payload)

    def expire(self) -> None:
        self.send(Code.DEADLINE_EXCEEDED, f"{self._label}: deadline exceeded", b"")


class ByteBudget:
    """Bounds the request bytes held by calls in flight, across every connection.

    A reader that would go over the limit waits (and so stops reading its socket) until calls finish;
    one request always fits, so a single 4 MiB call never waits forever.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._cond:
            while self._used and self._used + size > self._limit:
                self._cond.wait()
            self._used += size

    def release(self, size: int) -> None:
        with self._cond:
            self._used -= size
            self._cond.notify_all()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used


class TtrpcConnection:
    """Serves one accepted connection: reads requests, runs them on ``pool``, writes responses.

    Calls may block for long (WaitProcess and ReadStdout are long polls), so the bounds are on calls
    in flight per connection (``max_in_flight``) and on their request bytes (``budget``, shared by
    all connections), and the pool must be large enough for the long polls a client keeps open.
    """

    def __init__(
        self,
        sock: socket.socket,
        dispatch: Dispatch,
        pool: Executor,
        deadlines: Deadlines,
        prefix: bytes = b"",
        max_in_flight: int = 256,
        budget: ByteBudget | None = None,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self._sock = sock
        self._dispatch = dispatch
        self._pool = pool
        self._deadlines = deadlines
        self._reader = FrameReader(sock, prefix)
        # Bounded sends without a socket timeout (which would also limit the reader's idle wait).
        with contextlib.suppress(OSError):
            libc.set_send_timeout(sock.fileno(), send_timeout)
        self._write_lock = threading.Lock()
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        self._budget = budget or ByteBudget(MESSAGE_LENGTH_MAX * 16)
        self._closed = False
        self._closing = False  # set by a frame after which the connection must end
        self._reading_ended = threading.Event()

    def send_response(self, stream_id: int, code: int, message: str, payload: bytes) -> None:
        if len(payload) > MESSAGE_LENGTH_MAX - 1024:
            code, message, payload = (
                Code.RESOURCE_EXHAUSTED,
                f"response of {len(payload)} bytes exceeds the ttrpc limit of {MESSAGE_LENGTH_MAX}",
                b"",
            )
        frame = encode_response(stream_id, code, message, payload)
        with self._write_lock:
            if self._closed:
                return
            try:
                self._sock.sendall(frame)
                return
            except OSError as exc:
                # A client that stops reading (SO_SNDTIMEO) or went away; a frame may be cut short, so
                # the connection cannot carry another one.
                log.warning("ttrpc: writing the response for stream %d failed: %s; closing", stream_id, exc)
        self.close()

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def serve(self) -> None:
        """Read frames until the peer closes or breaks the protocol; returns when the reading has
        ended (the socket is shut down then; calls still running answer into it in vain). Never raises.

        A request runs on the thread that read it, once it has handed the reading on to a pool thread:
        the call starts at once instead of after a pool thread's wake-up, and the next request is read
        meanwhile. (While the pool is busy the reading waits for a thread, as a call would.)"""
        self._read()
        self._reading_ended.wait()

    def _read(self) -> None:
        call = None
        handed_off = False
        try:
            while True:
                header = self._reader.read_header()
                if header is None or self._closing:
                    break
                call = self._handle_frame(header)
                if call is not None:
                    self._pool.submit(self._read)  # RuntimeError: the pool is shut down, the agent stops
                    handed_off = True
                    break
                if self._closing:
                    break
        except ProtocolError as exc:
            log.warning("ttrpc: closing connection: %s", exc)
        except OSError as exc:
            log.debug("ttrpc: connection ended: %s", exc)
        except RuntimeError:
            log.debug("ttrpc: the pool is shut down; closing connection")
        except Exception:
            log.exception("ttrpc: unexpected error; closing connection")
        if handed_off:
            assert call is not None
            call.run()
            return
        if call is not None:
            call.cancel("the agent is shutting down")
        self.close()
        self._reading_ended.set()

    def _handle_frame(self, header: FrameHeader) -> _Call | None:
        """Handle one frame; a request comes back as the call to run."""
        if header.length > MESSAGE_LENGTH_MAX:
            message = f"message length {header.length} exceeds maximum message size of {MESSAGE_LENGTH_MAX}"
            log.warning("ttrpc: stream %d: %s", header.stream_id, message)
            self.send_response(header.stream_id, Code.RESOURCE_EXHAUSTED, message, b"")
            if header.length > DISCARD_LIMIT:
                self._closing = True
                return None
            self._reader.discard(header.length)
            return None
        self._budget.acquire(header.length)
        call = None
        try:
            call = self._handle_payload(header)
        finally:
            if call is None:
                self._budget.release(header.length)
        return call

    def _handle_payload(self, header: FrameHeader) -> _Call | None:
        """Read the payload; a request becomes a call that owns the frame's budget."""
        payload = self._reader.read_payload(header.length)
        if header.type != TYPE_REQUEST:
            # Data frames belong to streaming calls, which this agent does not serve; ignore them and
            # unknown types, as containerd does for forward compatibility.
            log.debug("ttrpc: ignoring frame of type %d on stream %d", header.type, header.stream_id)
            return None
        if header.stream_id % 2 == 0:
            self.send_response(
                header.stream_id,
                Code.INVALID_ARGUMENT,
                f"stream id {header.stream_id} is even; client-initiated streams must be odd",
                b"",
            )
            log.warning("ttrpc: even stream id %d; closing connection", header.stream_id)
            self._closing = True
            return None
        try:
            request = Request.decode(payload)
        except wire.WireError as exc:
            self.send_response(header.stream_id, Code.INVALID_ARGUMENT, f"cannot decode ttrpc Request: {exc}", b"")
            return None
        label = f"{request.service}/{request.method}"
        if header.flags & FLAG_REMOTE_OPEN:
            self.send_response(header.stream_id, Code.UNIMPLEMENTED, f"{label}: streaming calls are not served", b"")
            return None
        deadline = time.monotonic() + request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        ctx = CallContext("ttrpc", deadline, request.metadata)
        responder = _Responder(self, header.stream_id, label)
        if deadline is not None:
            self._deadlines.add(deadline, responder)
        self._in_flight.acquire()  # backpressure: stop reading while too many calls run
        return _Call(self, request, ctx, responder, header.length)

    def _run(self, request: Request, ctx: CallContext, responder: _Responder, size: int) -> None:
        try:
            if responder.done:
                return
            code, message, payload = self._dispatch(request.service, request.method, request.payload, ctx)
            responder.send(code, message, payload)
        except Exception as exc:  # dispatch never raises; this guards the connection anyway
            log.exception("ttrpc: call failed")
            responder.send(Code.INTERNAL, str(exc), b"")
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self._in_flight.release()
        self._budget.release(size)


class _Call:
    """A request read off a connection, to be run (once) or refused."""

    def __init__(self, connection: TtrpcConnection, request: Request, ctx: CallContext, responder: _Responder,
                 size: int) -> None:  # fmt: skip
        self._connection = connection
        self._request = request
        self._ctx = ctx
        self._responder = responder
        self._size = size

    def run(self) -> None:
        self._connection._run(self._request, self._ctx, self._responder, self._size)

    def cancel(self, message: str) -> None:
        self._connection._release(self._size)
        self._responder.send(Code.UNAVAILABLE, message, b"")


class TtrpcCallError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _PendingCall:
    def __init__(self) -> None:
        self.done = False  # under the connection's lock
        self.response: bytes | None = None
        self.error: BaseException | None = None


class TtrpcClientConnection:
    """A client connection; calls from several threads share it, each on its own odd stream id.

    There is no reader thread: a waiting call reads the socket for every call, hands each response
    to the call it answers, and when its own has come lets another waiting call take the reading
    over. A lone call so reads its own answer, without a thread's wake-up in between, and a long poll
    does not hold up other calls on the same connection (they read past it).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        self._sock = sock
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a response came, or the reader is free
        self._pending: dict[int, _PendingCall] = {}
        self._next_stream = 1
        self._broken: BaseException | None = None
        self._reading = False  # a call reads the socket (the rest wait for _changed)
        self._received = bytearray()  # bytes read and not yet a whole frame (only the reader touches it)

    def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> bytes:
        """Send one request and return the response payload; a non-OK status raises TtrpcCallError,
        no answer within ``timeout`` raises TimeoutError, a lost connection ConnectionError."""
        request = Request(service, method, payload, int(timeout * 1e9) if timeout else 0, dict(metadata or {}))
        pending = _PendingCall()
        with self._lock:
            if self._broken is not None:
                raise ConnectionError(f"ttrpc: connection lost: {self._broken}")
            stream_id = self._next_stream
            self._next_stream += 2
            self._pending[stream_id] = pending
        try:
            frame = encode_frame(stream_id, TYPE_REQUEST, request.encode())
            with self._write_lock:
                self._sock.sendall(frame)
            # The agent answers DEADLINE_EXCEEDED itself at the deadline; wait a little longer for it.
            deadline = None if timeout is None else time.monotonic() + timeout + CLIENT_GRACE
            if not self._wait(pending, deadline):
                raise TimeoutError(f"ttrpc: no answer to {service}/{method} within {timeout} s")
        finally:
            with self._lock:
                self._pending.pop(stream_id, None)
        if pending.error is not None:
            raise ConnectionError(f"ttrpc: {service}/{method}: {pending.error}")
        assert pending.response is not None
        try:
            code, message, response_payload = decode_response_message(pending.response)
        except wire.WireError as exc:
            raise ConnectionError(f"ttrpc: {service}/{method}: cannot decode the Response: {exc}") from None
        if code != Code.OK:
            raise TtrpcCallError(code, message)
        return response_payload

    def _wait(self, pending: _PendingCall, deadline: float | None) -> bool:
        """Until ``pending`` is answered (or failed): read when nobody else does. False at the deadline."""
        while True:
            with self._lock:
                while not pending.done and self._reading:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._changed.wait(remaining)
                if pending.done:
                    return True
                self._reading = True
            try:
                if not self._read_until(pending, deadline):
                    return False
            finally:
                with self._lock:
                    self._reading = False
                    self._changed.notify_all()  # another waiting call takes the reading over

    def _read_until(self, pending: _PendingCall, deadline: float | None) -> bool:
        """As the reader: deliver responses until ``pending``'s has come (True) or the deadline (False).
        A frame cut by the deadline stays in ``_received`` for the next reader."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while True:
            with self._lock:
                if pending.done:
                    return True
            frame = self._take_frame()
            if frame is not None:
                self._deliver(*frame)
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                ready = poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
                if not ready:
                    continue
                chunk = self._sock.recv(_RECV_CHUNK)
            except InterruptedError:
                continue
            except OSError as exc:
                self._fail_all(exc)
                continue
            if not chunk:
                if self._received:
                    self._fail_all(ProtocolError(f"connection closed inside a frame ({len(self._received)} bytes)"))
                else:
                    self._fail_all(ConnectionError("the agent closed the connection"))
                continue
            self._received += chunk

    def _take_frame(self) -> tuple[FrameHeader, bytes] | None:
        """A whole frame off ``_received``, or None while it is not all there."""
        if len(self._received) < HEADER_LENGTH:
            return None
        header = FrameHeader(*HEADER.unpack_from(self._received))
        if header.length > MESSAGE_LENGTH_MAX:
            self._fail_all(ProtocolError(f"response of {header.length} bytes exceeds the limit"))
            return None
        if len(self._received) < HEADER_LENGTH + header.length:
            return None
        body = bytes(self._received[HEADER_LENGTH : HEADER_LENGTH + header.length])
        del self._received[: HEADER_LENGTH + header.length]
        return header, body

    def _deliver(self, header: FrameHeader, body: bytes) -> None:
        if header.type != TYPE_RESPONSE:
            return
        with self._lock:
            pending = self._pending.get(header.stream_id)
            if pending is not None:  # else: its caller gave up waiting
                pending.response = body
                pending.done = True
                self._changed.notify_all()

    def _fail_all(self, error: BaseException) -> None:
        """The connection is broken: every waiting call (and every later one) fails with ``error``."""
        with self._lock:
            if self._broken is None:
                self._broken = error
            for pending in self._pending.values():
                if not pending.done:
                    pending.error = self._broken
                    pending.done = True
            self._changed.notify_all()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
