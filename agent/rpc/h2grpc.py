"""Unary gRPC over HTTP/2 (RFC 9113), server side, on one accepted connection; no grpcio.

What it implements: the client preface (the protocol sniff may have taken part of it: ``prefix``),
SETTINGS both ways (ours first), HEADERS with PADDED/PRIORITY and CONTINUATION, HPACK (hpack.py), DATA
with padding, flow control both ways (we credit the connection window once a call has finished with its
request bytes, which bounds the request bytes a connection holds; a response never outruns the peer's
windows), PING, RST_STREAM (the call's answer is dropped), GOAWAY (calls in flight finish, then the
connection closes), PRIORITY and unknown frame types (ignored), and the stream id rules. A broken rule is
answered with GOAWAY and the error code RFC 9113 names; the connection then ends.

gRPC (PROTOCOL-HTTP2.md): ``POST /package.Service/Method`` with content-type ``application/grpc`` or
``application/grpc+proto``, ``grpc-timeout`` (the call's deadline: DEADLINE_EXCEEDED is answered when it
passes, a late handler answer is dropped), metadata from the other non-pseudo, non-binary headers, one
length-prefixed request message of at most 16 MiB, reassembled across DATA frames. The answer is
HEADERS, DATA (one length-prefixed message) and trailers with grpc-status and a percent-encoded
grpc-message, or trailers only for an error. Calls run concurrently on the pool; frames are written
under one lock.

What it does not do: server push, TLS (the agent listens on vsock or a unix socket), compression (a
compressed message is answered UNIMPLEMENTED), streaming calls (a second request message is answered
UNIMPLEMENTED), and the client side.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from agent.rpc import hpack
from agent.rpc.registry import CallContext
from agent.rpc.status import Code
from agent.rpc.ttrpc import SEND_TIMEOUT, Deadlines, Dispatch
from agent.system import libc

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
FRAME_HEADER_LENGTH = 9
_U32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")
_SETTING = struct.Struct(">HI")
_MESSAGE_PREFIX = struct.Struct(">BI")

# frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# settings
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_FRAME_SIZE_LIMIT = (1 << 24) - 1
MAX_WINDOW = (1 << 31) - 1

MAX_MESSAGE = 16 * 1024 * 1024  # one request or response message, either way
MAX_CONCURRENT_STREAMS = 256
STREAM_WINDOW = 4 * 1024 * 1024  # our SETTINGS_INITIAL_WINDOW_SIZE
# The connection window: one largest message plus room; the request bytes a connection holds (streams
# being received and calls running) never exceed it, since credit returns only when a call is done.
CONNECTION_WINDOW = MAX_MESSAGE + 1024 * 1024
CREDIT_THRESHOLD = 64 * 1024  # connection credit is returned in WINDOW_UPDATEs of at least this much
MAX_HEADER_LIST_SIZE = 64 * 1024
MAX_HEADER_BLOCK = 4 * MAX_HEADER_LIST_SIZE  # encoded bytes of one HEADERS + CONTINUATION sequence
MAX_GRPC_MESSAGE = 4096  # bytes of a percent-encoded grpc-message; longer texts are cut
DRAIN_TIMEOUT = 30.0  # seconds calls in flight may take to finish after the peer's GOAWAY
_RECV_CHUNK = 256 * 1024
_LINGER_BYTES = 1 << 20

CONTENT_TYPES = frozenset({"application/grpc", "application/grpc+proto"})
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT_RE = re.compile(r"([0-9]{1,8})([HMSmun])")
_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":path", ":authority"})
_NOT_METADATA = frozenset({"content-type", "te", "connection"})

_STATUS_200 = hpack.encode_header(":status", "200")
_CONTENT_TYPE = hpack.encode_header("content-type", "application/grpc")
_RESPONSE_HEADERS = _STATUS_200 + _CONTENT_TYPE
_TRAILERS_OK = hpack.encode_header("grpc-status", "0")

_shared_deadlines: Deadlines | None = None
_shared_lock = threading.Lock()


def _default_deadlines() -> Deadlines:
    global _shared_deadlines
    with _shared_lock:
        if _shared_deadlines is None:
            _shared_deadlines = Deadlines()
        return _shared_deadlines


class H2ConnectionError(Exception):
    """The peer broke HTTP/2; answered with GOAWAY(code), then the connection ends."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + payload


def percent_encode(message: str) -> str:
    """grpc-message encoding: UTF-8, then %XX for '%' and every byte outside printable ASCII."""
    raw = message.encode("utf-8", "replace")
    if all(0x20 <= byte <= 0x7E and byte != 0x25 for byte in raw):
        encoded = message
    else:
        encoded = "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in raw)
    if len(encoded) > MAX_GRPC_MESSAGE:
        cut = MAX_GRPC_MESSAGE
        while cut > 0 and "%" in encoded[cut - 2 : cut]:
            cut -= 1  # never split a %XX triple
        encoded = encoded[:cut]
    return encoded


def parse_timeout(value: str) -> float:
    """Seconds of a grpc-timeout value ("100m", "5S"); ValueError when malformed."""
    match = _TIMEOUT_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"malformed grpc-timeout {value!r}")
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


class _CallError(Exception):
    """A request the server answers with an error status instead of running it."""

    def __init__(self, code: int, message: str, http_status: str = "200") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class _Stream:
    """One request stream. ``done`` is set once it has its one answer (or none is wanted any more)."""

    __slots__ = (
        "body",
        "connection",
        "ctx",
        "done",
        "encoding",
        "held",
        "label",
        "lock",
        "method",
        "recv_window",
        "remote_closed",
        "send_window",
        "service",
        "stream_id",
    )

    def __init__(self, connection: GrpcConnection, stream_id: int, send_window: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.lock = threading.Lock()
        self.done = False
        self.remote_closed = False  # END_STREAM received
        self.body = bytearray()
        self.held = 0  # connection-window bytes of this stream not yet credited back
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW
        self.service = ""
        self.method = ""
        self.label = ""
        self.encoding = ""
        self.ctx = CallContext("grpc")

    def claim(self) -> bool:
        """True for the one caller that may answer the stream."""
        with self.lock:
            if self.done:
                return False
            self.done = True
            return True

    def expire(self) -> None:
        """Called by Deadlines at the call's deadline."""
        self.connection.answer(self, Code.DEADLINE_EXCEEDED, f"{self.label}: deadline exceeded", b"")


class GrpcConnection:
    """Serves unary gRPC calls on one accepted connection; ``serve()`` returns when it ends, never raises."""

    def __init__(
        self,
        sock: socket.socket,
        dispatch: Dispatch,
        pool: Executor,
        prefix: bytes = b"",
        deadlines: Deadlines | None = None,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self._sock = sock
        self._dispatch = dispatch
        self._pool = pool
        self._deadlines = deadlines or _default_deadlines()
        self._buffer = bytearray(prefix)
        self._send_timeout = send_timeout
        with contextlib.suppress(OSError):
            libc.set_send_timeout(sock.fileno(), send_timeout)
        self._write_lock = threading.Lock()
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder(hpack.DEFAULT_TABLE_SIZE, MAX_HEADER_LIST_SIZE)
        # _state guards the stream table and both directions' windows; senders wait on it for window.
        self._state = threading.Condition()
        self._streams: dict[int, _Stream] = {}
        self._last_stream_id = 0
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self._recv_window = CONNECTION_WINDOW
        self._credit_pending = 0
        self._closed = False
        self._peer_goaway = False
        self._header_block: bytearray | None = None  # a HEADERS block waiting for CONTINUATION
        self._header_stream = 0
        self._header_end_stream = False

    # -- writing ------------------------------------------------------------------------------------

    def _write(self, data: bytes | Callable[[], bytes]) -> bool:
        """Send ``data`` (or what the callable makes of it, under the write lock); False when the
        connection is closed or the write failed (which closes it)."""
        with self._write_lock:
            if self._closed:
                return False
            try:
                self._sock.sendall(data() if callable(data) else data)
                return True
            except OSError as exc:
                log.warning("grpc: write failed: %s; closing the connection", exc)
        self.close()
        return False

    def _write_headers(self, stream_id: int, flags: int, block: bytes) -> bool:
        """A header block in one frame (ours are small), encoded under the write lock for HPACK order."""
        return self._write(
            lambda: frame(HEADERS, flags | FLAG_END_HEADERS, stream_id, self._encoder.preamble() + block)
        )

    def _goaway(self, code: int, message: str) -> None:
        payload = _GOAWAY.pack(self._last_stream_id, code) + message.encode("utf-8", "replace")[:256]
        self._write(frame(GOAWAY, 0, 0, payload))

    def _reset(self, stream_id: int, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
        with self._state:
            streams = list(self._streams.values())
            self._streams.clear()
            self._state.notify_all()
        for stream in streams:
            stream.claim()  # no answer can go out any more
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # -- answers ------------------------------------------------------------------------------------

    def answer(self, stream: _Stream, code: int, message: str, payload: bytes) -> None:
        """Send the stream's one answer (later calls do nothing) and retire the stream."""
        if not stream.claim():
            return
        try:
            if code == Code.OK and len(payload) > MAX_MESSAGE:
                code = Code.RESOURCE_EXHAUSTED
                message = f"{stream.label}: response of {len(payload)} bytes exceeds the limit of {MAX_MESSAGE}"
            if code == Code.OK:
                self._send_ok(stream, payload)
            else:
                self._send_error(stream.stream_id, code, message)
            if not stream.remote_closed:
                self._reset(stream.stream_id, NO_ERROR)  # the request is answered: stop sending it
        finally:
            self._retire(stream)

    def _send_error(self, stream_id: int, code: int, message: str, http_status: str = "200") -> None:
        """A trailers-only response."""
        block = (
            hpack.encode_header(":status", http_status)
            + _CONTENT_TYPE
            + hpack.encode_header("grpc-status", str(int(code)))
            + (hpack.encode_header("grpc-message", percent_encode(message)) if message else b"")
        )
        self._write_headers(stream_id, FLAG_END_STREAM, block)

    def _take_window(self, stream: _Stream, wanted: int) -> int:
        """Reserve up to ``wanted`` bytes of both send windows, waiting for the peer; 0 if the stream
        or the connection went away meanwhile."""
        deadline = time.monotonic() + self._send_timeout
        with self._state:
            while True:
                if self._closed or stream.stream_id not in self._streams:
                    return 0
                available = min(self._send_window, stream.send_window, self._peer_max_frame, wanted)
                if available > 0:
                    self._send_window -= available
                    stream.send_window -= available
                    return available
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
        log.warning(
            "grpc: stream %d: the peer gave no flow-control window for %.0f s", stream.stream_id, self._send_timeout
        )
        self._reset(stream.stream_id, CANCEL)
        return 0

    def _send_ok(self, stream: _Stream, payload: bytes) -> None:
        body = _MESSAGE_PREFIX.pack(0, len(payload)) + payload
        sid = stream.stream_id
        total = len(body)
        first = self._take_window(stream, total)
        if first == 0:
            return
        if first == total:  # the common case: one write for the whole answer
            with self._write_lock:
                if self._closed:
                    return
                data = b"".join(
                    (
                        frame(HEADERS, FLAG_END_HEADERS, sid, self._encoder.preamble() + _RESPONSE_HEADERS),
                        frame(DATA, 0, sid, body),
                        frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, sid, _TRAILERS_OK),
                    )
                )
                try:
                    self._sock.sendall(data)
                    return
                except OSError as exc:
                    log.warning("grpc: write failed: %s; closing the connection", exc)
            self.close()
            return
        if not self._write_headers(sid, 0, _RESPONSE_HEADERS):
            return
        view = memoryview(body)
        sent = 0
        chunk = first
        while True:
            if not self._write(frame(DATA, 0, sid, bytes(view[sent : sent + chunk]))):
                return
            sent += chunk
            if sent == total:
                break
            chunk = self._take_window(stream, total - sent)
            if chunk == 0:
                return
        self._write_headers(sid, FLAG_END_STREAM, _TRAILERS_OK)

    def _retire(self, stream: _Stream) -> None:
        with self._state:
            self._streams.pop(stream.stream_id, None)
            drained = self._peer_goaway and not self._streams
            self._state.notify_all()
        self._credit(stream)
        if drained:
            self.close()

    def _credit(self, stream: _Stream) -> None:
        """Return the stream's connection-window bytes to the peer (once)."""
        with self._state:
            held, stream.held = stream.held, 0
        self._credit_bytes(held)

    def _credit_bytes(self, count: int) -> None:
        if not count:
            return
        with self._state:
            self._credit_pending += count
            if self._credit_pending < CREDIT_THRESHOLD:
                return
            increment, self._credit_pending = self._credit_pending, 0
            self._recv_window += increment
        self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment)))

    # -- the call -----------------------------------------------------------------------------------

    def _run(self, stream: _Stream, request: bytes) -> None:
        try:
            if stream.done:
                return
            code, message, payload = self._dispatch(stream.service, stream.method, request, stream.ctx)
            self._credit(stream)  # the request bytes are no longer held
            self.answer(stream, code, message, payload)
        except Exception as exc:  # dispatch never raises; this guards the connection anyway
            log.exception("grpc: call failed")
            self.answer(stream, Code.INTERNAL, str(exc), b"")
        finally:
            self._retire(stream)

    def _start(self, stream: _Stream) -> None:
        """END_STREAM arrived: check the one request message and run the call."""
        body = stream.body
        if len(body) < 5:
            what = "no request message" if not body else "a truncated message prefix"
            self.answer(stream, Code.INTERNAL, f"{stream.label}: the request ended with {what}", b"")
            return
        length = _MESSAGE_PREFIX.unpack_from(body)[1]
        if len(body) != 5 + length:
            self.answer(stream, Code.INTERNAL, f"{stream.label}: the request message is truncated", b"")
            return
        request = bytes(body[5:])
        stream.body = bytearray()
        if stream.ctx.deadline is not None:
            self._deadlines.add(stream.ctx.deadline, stream)  # Deadlines calls .expire()
        try:
            self._pool.submit(self._run, stream, request)
        except RuntimeError:  # the pool is shut down: the agent is stopping
            self.answer(stream, Code.UNAVAILABLE, "the agent is shutting down", b"")

    def _check_body(self, stream: _Stream) -> None:
        """Reject, as soon as the bytes show it, a message too large, compressed, or a second one."""
        body = stream.body
        if len(body) < 5:
            return
        flag, length = _MESSAGE_PREFIX.unpack_from(body)
        if flag == 1:
            encoding = stream.encoding or "no grpc-encoding"
            raise _CallError(Code.UNIMPLEMENTED, f"{stream.label}: compressed message ({encoding}) is not supported")
        if flag != 0:
            raise _CallError(Code.INTERNAL, f"{stream.label}: invalid message flag {flag}")
        if length > MAX_MESSAGE:
            raise _CallError(
                Code.RESOURCE_EXHAUSTED,
                f"{stream.label}: request message of {length} bytes exceeds the limit of {MAX_MESSAGE}",
            )
        if len(body) > 5 + length:
            raise _CallError(Code.UNIMPLEMENTED, f"{stream.label}: streaming calls are not served (second message)")

    # -- reading ------------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until the peer leaves or breaks the protocol. Never raises."""
        try:
            self._write(
                frame(
                    SETTINGS,
                    0,
                    0,
                    _SETTING.pack(SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS)
                    + _SETTING.pack(SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW)
                    + _SETTING.pack(SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
                )
                + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW))
            )
            self._read_preface()
            self._read_frames()
            self._drain()
        except H2ConnectionError as exc:
            log.warning("grpc: closing the connection: %s", exc)
            self._goaway(exc.code, str(exc))
            self._linger()
        except OSError as exc:
            log.debug("grpc: connection ended: %s", exc)
        except Exception:
            log.exception("grpc: unexpected error; closing the connection")
            self._goaway(INTERNAL_ERROR, "internal error")
        finally:
            self.close()

    def _recv(self) -> bool:
        chunk = self._sock.recv(_RECV_CHUNK)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _read_preface(self) -> None:
        while len(self._buffer) < len(PREFACE):
            if not PREFACE.startswith(bytes(self._buffer)):
                break
            if not self._recv():
                raise OSError("the peer closed the connection inside the preface")
        if not self._buffer.startswith(PREFACE):
            raise H2ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
        del self._buffer[: len(PREFACE)]

    def _drain(self) -> None:
        """The peer closed its side: after its GOAWAY, let the calls in flight answer first."""
        if not self._peer_goaway:
            return
        deadline = time.monotonic() + DRAIN_TIMEOUT
        with self._state:
            while self._streams and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)

    def _linger(self) -> None:
        """After our GOAWAY: stop writing, read what the peer still sends (bounded), so it sees the GOAWAY
        before the connection closes."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
            self._sock.settimeout(1.0)
            read = 0
            while read < _LINGER_BYTES:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                read += len(chunk)

    def _read_frames(self) -> None:
        buffer = self._buffer
        settings_seen = False
        unpack = FRAME_HEADER.unpack_from
        while True:
            pos = 0
            available = len(buffer)
            while available - pos >= FRAME_HEADER_LENGTH:
                high, low, frame_type, flags, stream_id = unpack(buffer, pos)
                length = (high << 16) | low
                if length > DEFAULT_MAX_FRAME_SIZE:
                    raise H2ConnectionError(
                        FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds MAX_FRAME_SIZE {DEFAULT_MAX_FRAME_SIZE}"
                    )
                end = pos + FRAME_HEADER_LENGTH + length
                if end > available:
                    break
                payload = bytes(buffer[pos + FRAME_HEADER_LENGTH : end])
                pos = end
                stream_id &= 0x7FFFFFFF
                if not settings_seen:
                    if frame_type != SETTINGS or flags & FLAG_ACK:
                        raise H2ConnectionError(PROTOCOL_ERROR, "the first frame after the preface must be SETTINGS")
                    settings_seen = True
                self._handle(frame_type, flags, stream_id, payload)
            del buffer[:pos]
            if not self._recv():
                if buffer:
                    log.debug("grpc: the peer closed the connection inside a frame")
                return

    def _handle(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None:
            if frame_type != CONTINUATION or stream_id != self._header_stream:
                raise H2ConnectionError(PROTOCOL_ERROR, "a header block was interrupted by another frame")
            self._header_block += payload
            if len(self._header_block) > MAX_HEADER_BLOCK:
                raise H2ConnectionError(ENHANCE_YOUR_CALM, f"header block exceeds {MAX_HEADER_BLOCK} bytes")
            if flags & FLAG_END_HEADERS:
                block = bytes(self._header_block)
                self._header_block = None
                self._on_header_block(stream_id, block, self._header_end_stream)
            return
        if frame_type == DATA:
            self._on_data(flags, stream_id, payload)
        elif frame_type == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif frame_type == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif frame_type == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif frame_type == PING:
            if stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, f"PING of {len(payload)} bytes")
            if not flags & FLAG_ACK:
                self._write(frame(PING, FLAG_ACK, 0, payload))
        elif frame_type == RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif frame_type == GOAWAY:
            if stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, f"GOAWAY of {len(payload)} bytes")
            with self._state:
                self._peer_goaway = True
                drained = not self._streams
            if drained:
                self.close()
        elif frame_type == PRIORITY:
            if not stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._reset(stream_id, FRAME_SIZE_ERROR)
        elif frame_type == CONTINUATION:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a HEADERS frame before it")
        elif frame_type == PUSH_PROMISE:
            raise H2ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # other types: ignored (RFC 9113 section 4.1)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"SETTINGS of {len(payload)} bytes (not a multiple of 6)")
        for offset in range(0, len(payload), 6):
            identifier, value = _SETTING.unpack_from(payload, offset)
            if identifier == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, f"INITIAL_WINDOW_SIZE {value} exceeds 2^31-1")
                with self._state:
                    delta = value - self._peer_initial_window
                    self._peer_initial_window = value
                    for stream in self._streams.values():
                        stream.send_window += delta
                        if stream.send_window > MAX_WINDOW:
                            raise H2ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE overflows a window")
                    self._state.notify_all()
            elif identifier == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise H2ConnectionError(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                with self._state:
                    self._peer_max_frame = value
            elif identifier == SETTINGS_HEADER_TABLE_SIZE:
                with self._write_lock:
                    self._encoder.set_peer_table_size(value)
            elif identifier == SETTINGS_ENABLE_PUSH and value > 1:
                raise H2ConnectionError(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
            # MAX_CONCURRENT_STREAMS and MAX_HEADER_LIST_SIZE bound what we send; we send little.
        self._write(frame(SETTINGS, FLAG_ACK, 0))

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {len(payload)} bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE with increment 0")
            with self._state:
                self._send_window += increment
                if self._send_window > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window exceeds 2^31-1")
                self._state.notify_all()
            return
        if stream_id > self._last_stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
        with self._state:
            stream = self._streams.get(stream_id)
            if stream is None:
                return  # a closed stream
            error = 0
            if increment == 0:
                error = PROTOCOL_ERROR
            else:
                stream.send_window += increment
                if stream.send_window > MAX_WINDOW:
                    error = FLOW_CONTROL_ERROR
            self._state.notify_all()
        if error:
            self._drop(stream, error)

    def _drop(self, stream: _Stream, code: int) -> None:
        """A stream error: RST_STREAM(code), no answer."""
        if stream.claim():
            self._reset(stream.stream_id, code)
        self._retire(stream)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"RST_STREAM of {len(payload)} bytes")
        if stream_id == 0 or stream_id > self._last_stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        with self._state:
            stream = self._streams.get(stream_id)
        if stream is not None:
            stream.claim()  # cancelled: the handler's answer is dropped
            self._retire(stream)

    def _strip_padding(self, flags: int, payload: bytes) -> tuple[bytes, int]:
        if not flags & FLAG_PADDED:
            return payload, 0
        if not payload:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "PADDED frame without a pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise H2ConnectionError(PROTOCOL_ERROR, f"padding of {pad} bytes in a {len(payload)}-byte frame")
        return payload[1 : len(payload) - pad], pad + 1

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id % 2 == 0 or stream_id > self._last_stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        size = len(payload)
        with self._state:
            if size > self._recv_window:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, f"DATA of {size} bytes beyond the connection window")
            self._recv_window -= size
            stream = self._streams.get(stream_id)
        data, padding = self._strip_padding(flags, payload)
        if stream is None or stream.done:
            self._credit_bytes(size)  # a closed or answered stream: drop the bytes, return the window
            return
        if stream.remote_closed:
            self._credit_bytes(size)
            self._drop(stream, STREAM_CLOSED)
            return
        if size > stream.recv_window:
            self._credit_bytes(size)
            self._drop(stream, FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= size
        with self._state:
            stream.held += len(data)
        self._credit_bytes(padding)
        stream.body += data
        try:
            self._check_body(stream)
        except _CallError as exc:
            self.answer(stream, exc.code, exc.message, b"")
            return
        if flags & FLAG_END_STREAM:
            stream.remote_closed = True
            self._start(stream)
        elif stream.recv_window <= STREAM_WINDOW // 2:
            increment = STREAM_WINDOW - stream.recv_window
            stream.recv_window = STREAM_WINDOW
            self._write(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment)))

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if stream_id % 2 == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"HEADERS on even stream id {stream_id}")
        block, _ = self._strip_padding(flags, payload)
        if flags & FLAG_PRIORITY:
            if len(block) < 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS with PRIORITY shorter than 5 bytes")
            block = block[5:]
        if flags & FLAG_END_HEADERS:
            self._on_header_block(stream_id, block, bool(flags & FLAG_END_STREAM))
        else:
            self._header_block = bytearray(block)
            self._header_stream = stream_id
            self._header_end_stream = bool(flags & FLAG_END_STREAM)

    def _on_header_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        too_large: hpack.HeaderListTooLarge | None = None
        try:
            headers = self._decoder.decode(block)
        except hpack.HeaderListTooLarge as exc:
            too_large, headers = exc, []
        except hpack.HpackError as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        with self._state:
            stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client
            if stream.remote_closed:
                self._drop(stream, STREAM_CLOSED)
            elif not end_stream:
                self._drop(stream, PROTOCOL_ERROR)
            else:
                stream.remote_closed = True
                self._start(stream)
            return
        if stream_id <= self._last_stream_id:
            return  # a stream already answered or reset: nothing to do (the block was decoded above)
        self._last_stream_id = stream_id
        with self._state:
            if self._peer_goaway or len(self._streams) >= MAX_CONCURRENT_STREAMS:
                refuse = True
            else:
                refuse = False
                stream = _Stream(self, stream_id, self._peer_initial_window)
                stream.remote_closed = end_stream
                self._streams[stream_id] = stream
        if refuse or stream is None:
            self._reset(stream_id, REFUSED_STREAM)
            return
        try:
            if too_large is not None:
                raise _CallError(Code.RESOURCE_EXHAUSTED, f"request headers: {too_large}")
            self._read_request_headers(stream, headers)
        except _CallError as exc:
            if stream.claim():
                self._send_error(stream_id, exc.code, exc.message, exc.http_status)
                if not end_stream:
                    self._reset(stream_id, NO_ERROR)
            self._retire(stream)
            return
        except ValueError as exc:  # a malformed request (RFC 9113 8.1.1): a stream error
            log.warning("grpc: stream %d: %s", stream_id, exc)
            self._drop(stream, PROTOCOL_ERROR)
            return
        if end_stream:
            self._start(stream)

    def _read_request_headers(self, stream: _Stream, headers: list[hpack.Header]) -> None:
        pseudo: dict[str, str] = {}
        metadata: dict[str, str] = {}
        content_type = timeout = None
        regular_seen = False
        for name, value in headers:
            if name.startswith(":"):
                if regular_seen:
                    raise ValueError(f"pseudo-header {name} after a regular header")
                if name not in _REQUEST_PSEUDO or name in pseudo:
                    raise ValueError(f"invalid or repeated pseudo-header {name}")
                pseudo[name] = value
                continue
            regular_seen = True
            if name != name.lower():
                raise ValueError(f"header name {name!r} is not lowercase")
            if name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = value
            elif name == "grpc-encoding":
                stream.encoding = value
            elif name in _NOT_METADATA or name.startswith("grpc-") or name.endswith("-bin"):
                continue
            else:
                metadata[name] = value
        for required in (":method", ":scheme", ":path"):
            if required not in pseudo:
                raise ValueError(f"missing {required}")
        path = pseudo[":path"]
        stream.label = path.lstrip("/")
        if pseudo[":method"] != "POST":
            raise _CallError(Code.INTERNAL, f"method {pseudo[':method']} is not allowed; gRPC uses POST", "405")
        if content_type is None or content_type.split(";", 1)[0].strip().lower() not in CONTENT_TYPES:
            raise _CallError(Code.INTERNAL, f"invalid gRPC request content-type {content_type!r}", "415")
        service, slash, method = path[1:].partition("/")
        if not path.startswith("/") or not slash or not service or not method or "/" in method:
            raise _CallError(Code.UNIMPLEMENTED, f"malformed method name {path!r}")
        stream.service, stream.method = service, method
        deadline = None
        if timeout is not None:
            try:
                deadline = time.monotonic() + parse_timeout(timeout)
            except ValueError as exc:
                raise _CallError(Code.INTERNAL, str(exc)) from None
        stream.ctx = CallContext("grpc", deadline, metadata)
