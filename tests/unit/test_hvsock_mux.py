"""virtio-vsock packets and the device-side connection state machine, with the test playing the
guest: it sends headers as a Linux guest would and looks at what the device answers."""

from __future__ import annotations

import itertools

import pytest

from agentctl.virtio_vsock import (
    EPHEMERAL_PORT_FIRST,
    HEADER_SIZE,
    SHUTDOWN_BOTH,
    VIRTIO_VSOCK_OP_CREDIT_REQUEST,
    VIRTIO_VSOCK_OP_CREDIT_UPDATE,
    VIRTIO_VSOCK_OP_REQUEST,
    VIRTIO_VSOCK_OP_RESPONSE,
    VIRTIO_VSOCK_OP_RST,
    VIRTIO_VSOCK_OP_RW,
    VIRTIO_VSOCK_OP_SHUTDOWN,
    VIRTIO_VSOCK_SHUTDOWN_SEND,
    VIRTIO_VSOCK_TYPE_SEQPACKET,
    VIRTIO_VSOCK_TYPE_STREAM,
    Connection,
    Event,
    Header,
    PacketError,
    State,
    VsockMux,
    parse_packet,
)

GUEST = 3
HOST = 2


def from_guest(op: int, src_port: int, dst_port: int, payload: bytes = b"", **fields: int) -> tuple[Header, bytes]:
    values = {"buf_alloc": 65536, "fwd_cnt": 0, "flags": 0, "type": VIRTIO_VSOCK_TYPE_STREAM}
    values.update(fields)
    header = Header(GUEST, HOST, src_port, dst_port, len(payload), op=op, **values)
    return header, payload


def drain(mux: VsockMux, max_payload: int = 4096) -> list[tuple[Header, bytes]]:
    out = []
    while (packet := mux.next_packet(max_payload)) is not None:
        out.append(packet)
    return out


def events(mux: VsockMux) -> list[tuple[Event, Connection]]:
    found = list(mux.events)
    mux.events.clear()
    return found


def established(mux: VsockMux, guest_port: int = 1024, buf_alloc: int = 65536) -> Connection:
    conn = mux.connect(guest_port)
    ((request, _),) = drain(mux)
    assert request.op == VIRTIO_VSOCK_OP_REQUEST
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RESPONSE, guest_port, conn.host_port, buf_alloc=buf_alloc))
    assert events(mux) == [(Event.CONNECTED, conn)]
    return conn


def test_header_is_44_bytes_little_endian_and_round_trips() -> None:
    header = Header(2, 3, 0x11223344, 1024, 5, VIRTIO_VSOCK_TYPE_STREAM, VIRTIO_VSOCK_OP_RW, 0, 4096, 7)
    raw = header.pack()
    assert len(raw) == HEADER_SIZE == 44
    assert raw[:8] == (2).to_bytes(8, "little")
    assert raw[16:20] == (0x11223344).to_bytes(4, "little")
    assert raw[28:30] == b"\x01\x00" and raw[30:32] == b"\x05\x00"
    assert Header.unpack(raw) == header
    parsed, payload = parse_packet(raw + b"hello")
    assert parsed == header and payload == b"hello"


def test_short_or_truncated_packets_are_rejected() -> None:
    with pytest.raises(PacketError, match="44 bytes"):
        Header.unpack(b"\0" * 20)
    header = Header(3, 2, 1, 2, 10, VIRTIO_VSOCK_TYPE_STREAM, VIRTIO_VSOCK_OP_RW)
    with pytest.raises(PacketError, match="len=10"):
        parse_packet(header.pack() + b"abc")


def test_host_connect_sends_request_and_response_establishes() -> None:
    mux = VsockMux(GUEST)
    conn = mux.connect(1024)
    assert conn.state is State.CONNECTING and conn.host_port == EPHEMERAL_PORT_FIRST
    ((header, payload),) = drain(mux)
    assert (header.op, header.src_cid, header.dst_cid, header.src_port, header.dst_port) == (
        VIRTIO_VSOCK_OP_REQUEST,
        HOST,
        GUEST,
        conn.host_port,
        1024,
    )
    assert header.buf_alloc == mux.buf_alloc and payload == b""
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RESPONSE, 1024, conn.host_port))
    assert conn.state is State.ESTABLISHED
    assert events(mux) == [(Event.CONNECTED, conn)]


def test_guest_rst_to_request_means_refused() -> None:
    mux = VsockMux(GUEST)
    conn = mux.connect(1024)
    drain(mux)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RST, 1024, conn.host_port))
    assert events(mux) == [(Event.REFUSED, conn)]
    assert conn.state is State.CLOSED and not mux.connections


def test_concurrent_connections_get_distinct_ports() -> None:
    mux = VsockMux(GUEST)
    ports = {mux.connect(1024).host_port for _ in range(50)}
    assert len(ports) == 50


def test_data_respects_the_guests_credit() -> None:
    mux = VsockMux(GUEST)
    conn = established(mux, buf_alloc=10000)
    mux.send(conn, b"x" * 25000)
    sent = drain(mux, max_payload=4096)
    data = [h for h, _ in sent if h.op == VIRTIO_VSOCK_OP_RW]
    assert [h.len for h in data] == [4096, 4096, 1808]
    assert sum(len(p) for _, p in sent) == 10000
    # Out of credit with bytes left: one CREDIT_REQUEST, not a storm.
    assert [h.op for h, _ in sent][-1] == VIRTIO_VSOCK_OP_CREDIT_REQUEST
    assert drain(mux) == []
    # The guest read 6000 bytes and says so.
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 1024, conn.host_port, buf_alloc=10000, fwd_cnt=6000))
    assert events(mux) == [(Event.WRITABLE, conn)]
    more = drain(mux, max_payload=65536)
    assert sum(len(p) for _, p in more) == 6000
    assert conn.tx_cnt == 16000 and len(conn.outbox) == 9000


def test_guest_data_is_delivered_and_credit_returned() -> None:
    mux = VsockMux(GUEST, buf_alloc=8192)
    conn = established(mux)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RW, 1024, conn.host_port, b"a" * 3000))
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RW, 1024, conn.host_port, b"b" * 3000))
    assert [e for e, _ in events(mux)] == [Event.DATA, Event.DATA]
    assert bytes(conn.inbox) == b"a" * 3000 + b"b" * 3000
    # The guest thinks 2192 bytes are free: under half of buf_alloc, so any progress is announced.
    mux.consumed(conn, 1000)
    ((update, _),) = drain(mux)
    assert update.op == VIRTIO_VSOCK_OP_CREDIT_UPDATE and update.fwd_cnt == 1000 and update.buf_alloc == 8192
    assert bytes(conn.inbox) == b"a" * 2000 + b"b" * 3000


def test_no_credit_update_while_the_guest_has_room() -> None:
    mux = VsockMux(GUEST, buf_alloc=1 << 20)
    conn = established(mux)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RW, 1024, conn.host_port, b"x" * 4096))
    mux.consumed(conn, 4096)
    assert drain(mux) == []  # plenty of credit left in the guest's view
    mux.send(conn, b"reply")
    ((rw, _),) = drain(mux)
    assert rw.op == VIRTIO_VSOCK_OP_RW and rw.fwd_cnt == 4096  # the credit rides along
    for _ in range(250):
        mux.receive(*from_guest(VIRTIO_VSOCK_OP_RW, 1024, conn.host_port, b"y" * 4096))
    mux.consumed(conn, 250 * 4096)
    ((update, _),) = drain(mux)
    assert update.op == VIRTIO_VSOCK_OP_CREDIT_UPDATE and update.fwd_cnt == 251 * 4096


def test_guest_that_ignores_credit_is_reset() -> None:
    mux = VsockMux(GUEST, buf_alloc=4096)
    conn = established(mux)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RW, 1024, conn.host_port, b"z" * 5000))
    ((rst, _),) = drain(mux)
    assert rst.op == VIRTIO_VSOCK_OP_RST
    assert conn.state is State.CLOSED and not conn.inbox


def test_credit_request_is_answered() -> None:
    mux = VsockMux(GUEST)
    conn = established(mux)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 1024, conn.host_port))
    ((update, _),) = drain(mux)
    assert update.op == VIRTIO_VSOCK_OP_CREDIT_UPDATE


def test_packets_for_unknown_connections_get_rst() -> None:
    mux = VsockMux(GUEST)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RW, 5555, 6666, b"data"))
    ((rst, _),) = drain(mux)
    assert (rst.op, rst.src_port, rst.dst_port, rst.dst_cid) == (VIRTIO_VSOCK_OP_RST, 6666, 5555, GUEST)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RST, 5555, 6666))
    assert drain(mux) == []  # never answer RST with RST


def test_seqpacket_is_refused() -> None:
    mux = VsockMux(GUEST, accept=lambda conn: True)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_REQUEST, 5555, 80, type=VIRTIO_VSOCK_TYPE_SEQPACKET))
    ((rst, _),) = drain(mux)
    assert rst.op == VIRTIO_VSOCK_OP_RST and rst.type == VIRTIO_VSOCK_TYPE_SEQPACKET


def test_packets_from_other_cids_are_dropped() -> None:
    mux = VsockMux(GUEST)
    header = Header(7, HOST, 1, 2, 0, VIRTIO_VSOCK_TYPE_STREAM, VIRTIO_VSOCK_OP_REQUEST)
    mux.receive(header)
    assert drain(mux) == [] and not events(mux)


def test_guest_request_to_a_closed_port_gets_rst() -> None:
    mux = VsockMux(GUEST, accept=lambda conn: False)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_REQUEST, 40000, 5000))
    ((rst, _),) = drain(mux)
    assert (rst.op, rst.src_port, rst.dst_port) == (VIRTIO_VSOCK_OP_RST, 5000, 40000)
    assert not mux.connections


def test_guest_request_to_a_listener_gets_response() -> None:
    accepted: list[Connection] = []

    def accept(conn: Connection) -> bool:
        accepted.append(conn)
        return True

    mux = VsockMux(GUEST, accept=accept)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_REQUEST, 40000, 5000, buf_alloc=4096))
    ((response, _),) = drain(mux)
    assert response.op == VIRTIO_VSOCK_OP_RESPONSE and response.dst_port == 40000
    (conn,) = accepted
    assert conn.key == (5000, 40000) and conn.peer_buf_alloc == 4096 and conn.state is State.ESTABLISHED


def test_host_eof_sends_shutdown_after_the_data() -> None:
    mux = VsockMux(GUEST)
    conn = established(mux)
    mux.send(conn, b"last words")
    mux.shutdown(conn)
    ops = [(h.op, h.flags, p) for h, p in drain(mux)]
    assert ops == [(VIRTIO_VSOCK_OP_RW, 0, b"last words"), (VIRTIO_VSOCK_OP_SHUTDOWN, VIRTIO_VSOCK_SHUTDOWN_SEND, b"")]
    mux.send(conn, b"ignored after EOF")
    assert drain(mux) == []


def test_guest_shutdown_both_is_answered_with_rst_and_closes() -> None:
    mux = VsockMux(GUEST)
    conn = established(mux)
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RW, 1024, conn.host_port, b"tail"))
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_SHUTDOWN, 1024, conn.host_port, flags=SHUTDOWN_BOTH))
    assert [e for e, _ in events(mux)] == [Event.DATA, Event.PEER_EOF]
    ((rst, _),) = drain(mux)
    assert rst.op == VIRTIO_VSOCK_OP_RST
    assert [e for e, _ in events(mux)] == [Event.CLOSED]
    assert bytes(conn.inbox) == b"tail"  # still there for the host side to flush


def test_guest_rst_on_established_connection_closes_it() -> None:
    mux = VsockMux(GUEST)
    conn = established(mux)
    mux.send(conn, b"pending")
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_RST, 1024, conn.host_port))
    assert events(mux) == [(Event.CLOSED, conn)]
    assert drain(mux) == [] and not mux.connections


def test_host_reset_sends_rst_and_forgets() -> None:
    mux = VsockMux(GUEST)
    conn = established(mux)
    mux.send(conn, b"dropped")
    mux.reset(conn)
    ((rst, _),) = drain(mux)
    assert rst.op == VIRTIO_VSOCK_OP_RST and not mux.connections


def test_connections_are_served_round_robin() -> None:
    mux = VsockMux(GUEST)
    first, second = established(mux, 1024), established(mux, 1025)
    mux.send(first, b"1" * 8192)
    mux.send(second, b"2" * 8192)
    order = [h.dst_port for h, _ in drain(mux, max_payload=4096)]
    assert sorted(order) == [1024, 1024, 1025, 1025]
    assert all(a != b for a, b in itertools.pairwise(order)), order


def test_counters_wrap_at_32_bits() -> None:
    mux = VsockMux(GUEST)
    conn = established(mux)
    conn.tx_cnt = 0xFFFFFF00
    conn.peer_fwd_cnt = 0xFFFFFF00
    mux.receive(*from_guest(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 1024, conn.host_port, buf_alloc=4096, fwd_cnt=0xFFFFFF00))
    mux.send(conn, b"w" * 1024)
    ((rw, _),) = drain(mux)
    assert rw.len == 1024 and conn.tx_cnt == 0x300
    assert conn.peer_credit() == 4096 - 1024
