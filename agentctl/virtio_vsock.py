"""virtio-vsock packets and the connection state machine of the device side (virtio 1.2, 5.10).

No sockets and no rings here: ``VsockMux`` takes packets the guest sent (``receive``), hands out
packets for the guest (``next_packet``), and reports what the host side must do through
``events``. ``agentctl.hvsock`` connects it to unix sockets and virtqueues; unit tests drive it
directly, playing the guest.

Flow control is the spec's credit scheme: each side advertises ``buf_alloc`` (bytes it can
buffer) and ``fwd_cnt`` (bytes it has passed on); a sender may have at most
``peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`` bytes in flight.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

HEADER = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = HEADER.size  # 44

VIRTIO_VSOCK_TYPE_STREAM = 1
VIRTIO_VSOCK_TYPE_SEQPACKET = 2

VIRTIO_VSOCK_OP_INVALID = 0
VIRTIO_VSOCK_OP_REQUEST = 1
VIRTIO_VSOCK_OP_RESPONSE = 2
VIRTIO_VSOCK_OP_RST = 3
VIRTIO_VSOCK_OP_SHUTDOWN = 4
VIRTIO_VSOCK_OP_RW = 5
VIRTIO_VSOCK_OP_CREDIT_UPDATE = 6
VIRTIO_VSOCK_OP_CREDIT_REQUEST = 7

VIRTIO_VSOCK_SHUTDOWN_RCV = 1
VIRTIO_VSOCK_SHUTDOWN_SEND = 2
SHUTDOWN_BOTH = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND

VMADDR_CID_HOST = 2
# Host-side ports of connections the host opens; the guest sees them as the source port.
EPHEMERAL_PORT_FIRST = 1 << 30

DEFAULT_BUF_ALLOC = 256 * 1024
# A guest packet never carries more than this (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
MAX_PACKET_PAYLOAD = 64 * 1024

OP_NAMES = {
    VIRTIO_VSOCK_OP_INVALID: "INVALID",
    VIRTIO_VSOCK_OP_REQUEST: "REQUEST",
    VIRTIO_VSOCK_OP_RESPONSE: "RESPONSE",
    VIRTIO_VSOCK_OP_RST: "RST",
    VIRTIO_VSOCK_OP_SHUTDOWN: "SHUTDOWN",
    VIRTIO_VSOCK_OP_RW: "RW",
    VIRTIO_VSOCK_OP_CREDIT_UPDATE: "CREDIT_UPDATE",
    VIRTIO_VSOCK_OP_CREDIT_REQUEST: "CREDIT_REQUEST",
}


class PacketError(ValueError):
    """A packet that cannot be parsed (short header, length mismatch)."""


@dataclass(frozen=True)
class Header:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(
            self.src_cid,
            self.dst_cid,
            self.src_port,
            self.dst_port,
            self.len,
            self.type,
            self.op,
            self.flags,
            self.buf_alloc,
            self.fwd_cnt,
        )

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Header:
        if len(data) < HEADER_SIZE:
            raise PacketError(f"vsock header needs {HEADER_SIZE} bytes, got {len(data)}")
        return cls(*HEADER.unpack_from(data))

    def __str__(self) -> str:
        op = OP_NAMES.get(self.op, str(self.op))
        return (
            f"{op} {self.src_cid}:{self.src_port}->{self.dst_cid}:{self.dst_port} len={self.len} "
            f"flags={self.flags} buf_alloc={self.buf_alloc} fwd_cnt={self.fwd_cnt}"
        )


def parse_packet(data: bytes) -> tuple[Header, bytes]:
    """Header and payload of one packet read from a tx chain."""
    header = Header.unpack(data)
    payload = data[HEADER_SIZE : HEADER_SIZE + header.len]
    if len(payload) != header.len:
        raise PacketError(f"packet says len={header.len} but carries {len(payload)} bytes")
    return header, payload


class State(enum.Enum):
    CONNECTING = "connecting"  # host sent REQUEST, waiting for RESPONSE
    ESTABLISHED = "established"
    CLOSED = "closed"


class Event(enum.Enum):
    CONNECTED = "connected"  # a host-initiated connection was accepted by the guest
    REFUSED = "refused"  # the guest answered a REQUEST with RST
    DATA = "data"  # bytes arrived in conn.inbox
    PEER_EOF = "peer-eof"  # the guest will send nothing more
    WRITABLE = "writable"  # the guest gave credit: the host side may read more into the outbox
    CLOSED = "closed"  # the connection is gone (RST either way); flush conn.inbox, then close


class Connection:
    """One stream between a host port and a guest port, as the device tracks it."""

    def __init__(self, host_port: int, guest_port: int, state: State, buf_alloc: int) -> None:
        self.host_port = host_port
        self.guest_port = guest_port
        self.state = state
        self.buf_alloc = buf_alloc
        self.inbox = bytearray()  # guest -> host bytes not yet taken by the host side
        self.outbox = bytearray()  # host -> guest bytes not yet sent
        self.rx_cnt = 0  # bytes received from the guest
        self.fwd_cnt = 0  # bytes the host side has taken (our advertised fwd_cnt)
        self.advertised_fwd_cnt = 0
        self.tx_cnt = 0  # bytes sent to the guest
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.peer_shutdown = 0
        self.host_eof = False  # the host side sends nothing more
        self.shutdown_sent = 0
        self.send_response = False
        self.send_request = False
        self.send_credit_update = False
        self.credit_requested = False
        self.send_rst = False
        self.close_deadline: float | None = None
        self.queued = False  # in the mux's ready queue
        self.handle: object = None  # the host side's endpoint (a socket), owned by agentctl.hvsock

    @property
    def key(self) -> tuple[int, int]:
        return (self.host_port, self.guest_port)

    def peer_credit(self) -> int:
        """Bytes the guest can take now."""
        in_flight = (self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF
        return max(0, self.peer_buf_alloc - in_flight)

    def __repr__(self) -> str:
        return f"Connection(host {self.host_port} <-> guest {self.guest_port}, {self.state.value})"


class VsockMux:
    """All stream connections of one guest, seen from the device (the host side of the transport)."""

    def __init__(
        self,
        guest_cid: int,
        accept: Callable[[Connection], bool] | None = None,
        buf_alloc: int = DEFAULT_BUF_ALLOC,
        host_cid: int = VMADDR_CID_HOST,
    ) -> None:
        self.guest_cid = guest_cid
        self.host_cid = host_cid
        self.buf_alloc = buf_alloc
        # Called for each guest REQUEST; True accepts (the callback sets conn.handle), False sends RST.
        self.accept = accept or (lambda conn: False)
        self.connections: dict[tuple[int, int], Connection] = {}
        self.events: deque[tuple[Event, Connection]] = deque()
        self._control: deque[Header] = deque()  # packets not tied to a live connection (RST replies)
        self._ready: deque[Connection] = deque()  # connections that may have a packet to send
        self._next_port = EPHEMERAL_PORT_FIRST

    # --- host side API
    def connect(self, guest_port: int) -> Connection:
        """Open a connection to the guest's ``guest_port``; Event.CONNECTED or REFUSED follows."""
        host_port = self._allocate_port(guest_port)
        conn = Connection(host_port, guest_port, State.CONNECTING, self.buf_alloc)
        conn.send_request = True
        self.connections[conn.key] = conn
        self._wake(conn)
        return conn

    def send(self, conn: Connection, data: bytes | bytearray | memoryview) -> None:
        """Queue host bytes for the guest. Callers bound conn.outbox themselves."""
        if conn.state is State.CLOSED or conn.host_eof:
            return
        conn.outbox += data
        self._wake(conn)

    def consumed(self, conn: Connection, count: int) -> None:
        """The host side took ``count`` bytes off conn.inbox; give the guest that credit back.

        Like Linux, an explicit CREDIT_UPDATE goes out only when the guest's view of our free
        space has fallen below one maximum packet; otherwise the fwd_cnt riding on our next
        packet is enough, and a bulk sender never waits for credit.
        """
        del conn.inbox[:count]
        conn.fwd_cnt = (conn.fwd_cnt + count) & 0xFFFFFFFF
        if conn.state is not State.ESTABLISHED or conn.fwd_cnt == conn.advertised_fwd_cnt:
            return
        seen_free = conn.buf_alloc - ((conn.rx_cnt - conn.advertised_fwd_cnt) & 0xFFFFFFFF)
        if seen_free < min(MAX_PACKET_PAYLOAD, conn.buf_alloc // 2):
            conn.send_credit_update = True
            self._wake(conn)

    def shutdown(self, conn: Connection) -> None:
        """The host side sends nothing more (EOF): SHUTDOWN(SEND) follows the queued bytes."""
        if conn.state is State.CLOSED:
            return
        conn.host_eof = True
        self._wake(conn)

    def reset(self, conn: Connection) -> None:
        """Abort the connection (the host socket failed or closed): RST to the guest."""
        if conn.state is State.CLOSED:
            return
        conn.outbox.clear()
        conn.send_rst = True
        self._wake(conn)

    def expire(self, now: float) -> None:
        """Reset connections whose close handshake ran past its deadline."""
        for conn in list(self.connections.values()):
            if conn.close_deadline is not None and now >= conn.close_deadline:
                self.reset(conn)

    # --- guest side
    def receive(self, header: Header, payload: bytes = b"") -> None:
        """A packet from the guest's tx queue."""
        if header.dst_cid != self.host_cid or header.src_cid != self.guest_cid:
            return  # not for us (or spoofed); the spec says drop
        key = (header.dst_port, header.src_port)
        conn = self.connections.get(key)
        if header.type != VIRTIO_VSOCK_TYPE_STREAM:
            if header.op != VIRTIO_VSOCK_OP_RST:
                self._reply_rst(header)
            return
        if conn is None:
            if header.op == VIRTIO_VSOCK_OP_REQUEST:
                self._incoming(header)
            elif header.op != VIRTIO_VSOCK_OP_RST:
                self._reply_rst(header)
            return
        conn.peer_buf_alloc = header.buf_alloc
        conn.peer_fwd_cnt = header.fwd_cnt
        conn.credit_requested = False
        op = header.op
        if op == VIRTIO_VSOCK_OP_RST:
            self._closed(conn, refused=conn.state is State.CONNECTING)
            return
        if conn.state is State.CONNECTING:
            if op == VIRTIO_VSOCK_OP_RESPONSE:
                conn.state = State.ESTABLISHED
                self.events.append((Event.CONNECTED, conn))
                self._wake(conn)
            else:
                conn.send_rst = True
                self._wake(conn)
            return
        if op == VIRTIO_VSOCK_OP_RW:
            self._data(conn, payload)
        elif op == VIRTIO_VSOCK_OP_CREDIT_REQUEST:
            conn.send_credit_update = True
        elif op == VIRTIO_VSOCK_OP_SHUTDOWN:
            self._peer_shutdown(conn, header.flags & SHUTDOWN_BOTH)
        elif op == VIRTIO_VSOCK_OP_REQUEST:
            conn.send_rst = True  # a second REQUEST on a live connection is a protocol error
        # CREDIT_UPDATE carries nothing beyond the credit fields read above; RESPONSE is ignored.
        if conn.outbox or conn.send_credit_update or conn.send_rst:
            self._wake(conn)
        if conn.outbox and conn.peer_credit() > 0:
            self.events.append((Event.WRITABLE, conn))

    def _incoming(self, header: Header) -> None:
        conn = Connection(header.dst_port, header.src_port, State.ESTABLISHED, self.buf_alloc)
        conn.peer_buf_alloc = header.buf_alloc
        conn.peer_fwd_cnt = header.fwd_cnt
        if not self.accept(conn):
            self._reply_rst(header)
            return
        conn.send_response = True
        self.connections[conn.key] = conn
        self._wake(conn)

    def _data(self, conn: Connection, payload: bytes) -> None:
        if conn.peer_shutdown & VIRTIO_VSOCK_SHUTDOWN_SEND:
            return
        in_flight = (conn.rx_cnt + len(payload) - conn.fwd_cnt) & 0xFFFFFFFF
        if in_flight > conn.buf_alloc:
            conn.send_rst = True  # the guest ignored our credit
            self._wake(conn)
            return
        if not payload:
            return
        conn.rx_cnt = (conn.rx_cnt + len(payload)) & 0xFFFFFFFF
        conn.inbox += payload
        self.events.append((Event.DATA, conn))

    def _peer_shutdown(self, conn: Connection, flags: int) -> None:
        newly = flags & ~conn.peer_shutdown
        conn.peer_shutdown |= flags
        if newly & VIRTIO_VSOCK_SHUTDOWN_SEND:
            self.events.append((Event.PEER_EOF, conn))
        if conn.peer_shutdown == SHUTDOWN_BOTH:
            # The guest closed its socket and waits for our RST to finish the close.
            conn.send_rst = True
        elif conn.peer_shutdown & VIRTIO_VSOCK_SHUTDOWN_RCV:
            conn.outbox.clear()  # nobody will read it

    def _closed(self, conn: Connection, refused: bool = False) -> None:
        conn.state = State.CLOSED
        self.connections.pop(conn.key, None)
        self.events.append((Event.REFUSED if refused else Event.CLOSED, conn))

    def _reply_rst(self, header: Header) -> None:
        self._control.append(
            Header(
                src_cid=self.host_cid,
                dst_cid=header.src_cid,
                src_port=header.dst_port,
                dst_port=header.src_port,
                len=0,
                type=header.type or VIRTIO_VSOCK_TYPE_STREAM,
                op=VIRTIO_VSOCK_OP_RST,
            )
        )

    # --- packets for the guest
    def has_output(self) -> bool:
        return bool(self._control or self._ready)

    def next_packet(self, max_payload: int) -> tuple[Header, bytes] | None:
        """The next packet for the guest's rx queue, with at most ``max_payload`` payload bytes."""
        if self._control:
            return self._control.popleft(), b""
        for _ in range(len(self._ready)):
            conn = self._ready.popleft()
            packet = self._packet_for(conn, max_payload)
            if packet is not None:
                self._ready.append(conn)  # round robin: it may have more
                return packet
            conn.queued = False
        return None

    def _header(self, conn: Connection, op: int, length: int = 0, flags: int = 0) -> Header:
        conn.advertised_fwd_cnt = conn.fwd_cnt
        return Header(
            src_cid=self.host_cid,
            dst_cid=self.guest_cid,
            src_port=conn.host_port,
            dst_port=conn.guest_port,
            len=length,
            type=VIRTIO_VSOCK_TYPE_STREAM,
            op=op,
            flags=flags,
            buf_alloc=conn.buf_alloc,
            fwd_cnt=conn.fwd_cnt,
        )

    def _packet_for(self, conn: Connection, max_payload: int) -> tuple[Header, bytes] | None:
        if conn.state is State.CLOSED:
            return None
        if conn.send_rst:
            conn.send_rst = False
            header = self._header(conn, VIRTIO_VSOCK_OP_RST)
            self._closed(conn)
            return header, b""
        if conn.send_request:
            conn.send_request = False
            return self._header(conn, VIRTIO_VSOCK_OP_REQUEST), b""
        if conn.state is State.CONNECTING:
            return None
        if conn.send_response:
            conn.send_response = False
            return self._header(conn, VIRTIO_VSOCK_OP_RESPONSE), b""
        if conn.outbox:
            credit = conn.peer_credit()
            if credit > 0:
                size = min(len(conn.outbox), credit, max_payload, MAX_PACKET_PAYLOAD)
                payload = bytes(conn.outbox[:size])
                del conn.outbox[:size]
                conn.tx_cnt = (conn.tx_cnt + size) & 0xFFFFFFFF
                conn.send_credit_update = False  # this packet carries our credit too
                return self._header(conn, VIRTIO_VSOCK_OP_RW, size), payload
            if not conn.credit_requested:
                conn.credit_requested = True
                return self._header(conn, VIRTIO_VSOCK_OP_CREDIT_REQUEST), b""
        if conn.send_credit_update:
            conn.send_credit_update = False
            return self._header(conn, VIRTIO_VSOCK_OP_CREDIT_UPDATE), b""
        if conn.host_eof and not conn.outbox and not conn.shutdown_sent & VIRTIO_VSOCK_SHUTDOWN_SEND:
            conn.shutdown_sent |= VIRTIO_VSOCK_SHUTDOWN_SEND
            return self._header(conn, VIRTIO_VSOCK_OP_SHUTDOWN, flags=VIRTIO_VSOCK_SHUTDOWN_SEND), b""
        return None

    def _wake(self, conn: Connection) -> None:
        if not conn.queued:
            conn.queued = True
            self._ready.append(conn)

    def _allocate_port(self, guest_port: int) -> int:
        for _ in range(1 << 20):
            port = self._next_port
            self._next_port = port + 1 if port < 0xFFFFFFFE else EPHEMERAL_PORT_FIRST
            if (port, guest_port) not in self.connections:
                return port
        raise RuntimeError("no free host-side vsock port")
