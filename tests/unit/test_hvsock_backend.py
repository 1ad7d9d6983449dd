"""The hybrid vsock back-end end to end without QEMU: the test plays QEMU (the vhost-user front-end,
with guest memory in a memfd passed over SCM_RIGHTS) and the guest driver (posting rx buffers,
sending tx packets, kicking eventfds), and a host client speaks the convention: CONNECT, or
Dragonball's passfd (a descriptor handed over with SCM_RIGHTS)."""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from agentctl import vhost_user as vu
from agentctl.hvsock import HybridVsock, connect, connect_port, pass_fd
from agentctl.virtio_vsock import (
    HEADER_SIZE,
    VIRTIO_VSOCK_OP_CREDIT_REQUEST,
    VIRTIO_VSOCK_OP_CREDIT_UPDATE,
    VIRTIO_VSOCK_OP_REQUEST,
    VIRTIO_VSOCK_OP_RESPONSE,
    VIRTIO_VSOCK_OP_RST,
    VIRTIO_VSOCK_OP_RW,
    VIRTIO_VSOCK_OP_SHUTDOWN,
    VIRTIO_VSOCK_SHUTDOWN_SEND,
    VIRTIO_VSOCK_TYPE_STREAM,
    Header,
    parse_packet,
)
from agentctl.vring import DriverQueue

T = TypeVar("T")

CID = 5
MEM_SIZE = 4 << 20
USER_BASE = 0x7F0000000000  # where "QEMU" pretends to have mapped guest memory
QUEUE_SIZE = 64
RX_BUF = 4096


class MmapMemory:
    def __init__(self, mapping: mmap.mmap) -> None:
        self.mapping = mapping

    def read(self, addr: int, length: int) -> bytes:
        return self.mapping[addr : addr + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.mapping[addr : addr + len(data)] = data


class FakeFrontend:
    """QEMU's side of the vhost-user socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))

    def call(self, request: int, payload: bytes = b"", fds: list[int] | None = None, reply: bool = False) -> bytes:
        message = struct.pack("<III", request, vu.VHOST_USER_VERSION, len(payload)) + payload
        if fds:
            socket.send_fds(self.sock, [message], fds)
        else:
            self.sock.sendall(message)
        if not reply:
            return b""
        head = self.sock.recv(12, socket.MSG_WAITALL)
        got_request, flags, size = struct.unpack("<III", head)
        assert got_request == request and flags & vu.VHOST_USER_FLAG_REPLY
        return self.sock.recv(size, socket.MSG_WAITALL) if size else b""


class FakeGuest:
    """The guest's virtio-vsock driver: rx and tx queues in the shared memfd."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self.memory = MmapMemory(mapping)
        self.rx = DriverQueue(self.memory, QUEUE_SIZE, 0x1000)
        self.tx = DriverQueue(self.memory, QUEUE_SIZE, 0x8000)
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3)]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3)]
        self.buffers: dict[int, int] = {}
        self.next_buffer = 0x100000
        self.tx_next = 0x200000

    def post_rx(self, count: int) -> None:
        for _ in range(count):
            addr = self.next_buffer
            self.next_buffer += 0x2000
            head = self.rx.add([(addr, HEADER_SIZE, True), (addr + HEADER_SIZE, RX_BUF, True)])
            self.buffers[head] = addr
        os.eventfd_write(self.kick[0], 1)

    def send(self, header: Header, payload: bytes = b"") -> None:
        # 256 slots of 8 KiB; the queue has 64 descriptors, so a slot is never reused while in flight.
        assert HEADER_SIZE + len(payload) <= 0x2000
        addr = self.tx_next
        self.tx_next = 0x200000 + (self.tx_next - 0x200000 + 0x2000) % 0x200000
        self.memory.write(addr, header.pack())
        segments = [(addr, HEADER_SIZE, False)]
        if payload:
            self.memory.write(addr + HEADER_SIZE, payload)
            segments.append((addr + HEADER_SIZE, len(payload), False))
        self.tx.collect()
        self.tx.add(segments)
        os.eventfd_write(self.kick[1], 1)

    def receive(self, timeout: float = 10.0) -> list[tuple[Header, bytes]]:
        """Packets the device put on the rx queue (waits for its interrupt); reposts the buffers."""
        packets: list[tuple[Header, bytes]] = []
        while not packets:
            ready, _, _ = select.select([self.call[0]], [], [], timeout)
            if not ready:
                raise TimeoutError("no rx interrupt from the device")
            os.eventfd_read(self.call[0])
            for head, written in self.rx.collect():
                addr = self.buffers.pop(head)
                raw = self.memory.read(addr, HEADER_SIZE) + self.memory.read(addr + HEADER_SIZE, written - HEADER_SIZE)
                packets.append(parse_packet(raw))
            self.post_rx(len(packets))
        return packets


def guest_header(op: int, src_port: int, dst_port: int, length: int = 0, **fields: int) -> Header:
    values = {"buf_alloc": 1 << 20, "fwd_cnt": 0, "flags": 0}
    values.update(fields)
    return Header(CID, 2, src_port, dst_port, length, VIRTIO_VSOCK_TYPE_STREAM, op, **values)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[HybridVsock, FakeFrontend, FakeGuest, Path]]:
    vhost, uds = tmp_path / "vhost.sock", tmp_path / "hv.sock"
    backend = HybridVsock(vhost, uds, CID)
    thread = threading.Thread(target=backend.serve, daemon=True)
    thread.start()
    memfd = os.memfd_create("guest-ram")
    os.ftruncate(memfd, MEM_SIZE)
    mapping = mmap.mmap(memfd, MEM_SIZE)
    frontend = FakeFrontend(vhost)
    guest = FakeGuest(mapping)
    try:
        features = struct.unpack("<Q", frontend.call(vu.VHOST_USER_GET_FEATURES, reply=True))[0]
        assert features & (1 << vu.VIRTIO_F_VERSION_1) and features & (1 << vu.VHOST_USER_F_PROTOCOL_FEATURES)
        proto = struct.unpack("<Q", frontend.call(vu.VHOST_USER_GET_PROTOCOL_FEATURES, reply=True))[0]
        assert proto & (1 << vu.VHOST_USER_PROTOCOL_F_CONFIG)
        frontend.call(vu.VHOST_USER_SET_PROTOCOL_FEATURES, struct.pack("<Q", 1 << vu.VHOST_USER_PROTOCOL_F_CONFIG))
        frontend.call(vu.VHOST_USER_SET_OWNER)
        config = frontend.call(vu.VHOST_USER_GET_CONFIG, struct.pack("<III", 0, 8, 0) + bytes(8), reply=True)
        assert struct.unpack_from("<IIIQ", config) == (0, 8, 0, CID)
        frontend.call(vu.VHOST_USER_SET_FEATURES, struct.pack("<Q", features))
        table = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, MEM_SIZE, USER_BASE, 0)
        frontend.call(vu.VHOST_USER_SET_MEM_TABLE, table, [memfd])
        for index, queue in ((0, guest.rx), (1, guest.tx)):
            frontend.call(vu.VHOST_USER_SET_VRING_NUM, struct.pack("<II", index, QUEUE_SIZE))
            frontend.call(vu.VHOST_USER_SET_VRING_BASE, struct.pack("<II", index, 0))
            addrs = (USER_BASE + queue.desc, USER_BASE + queue.used, USER_BASE + queue.avail, 0)
            frontend.call(vu.VHOST_USER_SET_VRING_ADDR, struct.pack("<IIQQQQ", index, 0, *addrs))
            frontend.call(vu.VHOST_USER_SET_VRING_CALL, struct.pack("<Q", index), [guest.call[index]])
            frontend.call(vu.VHOST_USER_SET_VRING_KICK, struct.pack("<Q", index), [guest.kick[index]])
            frontend.call(vu.VHOST_USER_SET_VRING_ENABLE, struct.pack("<II", index, 1))
        guest.post_rx(16)
        yield backend, frontend, guest, uds
    finally:
        frontend.sock.close()
        thread.join(10)
        assert not thread.is_alive(), "the back-end did not stop when the front-end hung up"
        mapping.close()
        for fd in [memfd, *guest.kick, *guest.call]:
            os.close(fd)
    assert not uds.exists() and not vhost.exists()


def _accept_request(guest: FakeGuest, port: int) -> Header:
    ((request, _),) = guest.receive()
    assert request.op == VIRTIO_VSOCK_OP_REQUEST and request.dst_port == port and request.dst_cid == CID
    guest.send(guest_header(VIRTIO_VSOCK_OP_RESPONSE, port, request.src_port))
    return request


def _dial_accepted(guest: FakeGuest, port: int, dial: Callable[[], T]) -> tuple[T, Header]:
    """Run the client call ``dial`` on a thread while the fake guest accepts ``port``; what it
    returned, and the guest's REQUEST (whose source port is the host port)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(dial())
        except BaseException as exc:
            failure.append(exc)

    client = threading.Thread(target=run)
    client.start()
    request = _accept_request(guest, port)
    client.join(10)
    assert result, failure or "the client did not return"
    return result[0], request


def test_host_client_round_trip(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    _, _, guest, uds = rig
    client, request = _dial_accepted(guest, 1024, lambda: connect(uds, 1024, timeout=10))
    with client:
        client.settimeout(10)
        client.sendall(b"ping" * 3000)  # 12000 bytes: three rx buffers
        got = bytearray()
        while len(got) < 12000:
            for header, payload in guest.receive():
                assert header.op == VIRTIO_VSOCK_OP_RW and header.src_port == request.src_port
                got += payload
        assert bytes(got) == b"ping" * 3000
        guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 1024, request.src_port, 4), b"pong")
        assert client.recv(4, socket.MSG_WAITALL) == b"pong"
        # The guest closes: the client sees EOF, the device answers the full shutdown with RST.
        guest.send(guest_header(VIRTIO_VSOCK_OP_SHUTDOWN, 1024, request.src_port, flags=3))
        assert client.recv(10) == b""
        ops: list[int] = []
        while VIRTIO_VSOCK_OP_RST not in ops:  # a credit update for "pong" may come first
            ops += [h.op for h, _ in guest.receive()]
        assert set(ops) <= {VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_CREDIT_UPDATE}, ops


def test_refused_connect_closes_the_client(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    _, _, guest, uds = rig
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with client:
        client.settimeout(10)
        client.connect(str(uds))
        client.sendall(b"CONNECT 999\n")
        ((request, _),) = guest.receive()
        guest.send(guest_header(VIRTIO_VSOCK_OP_RST, 999, request.src_port))
        assert client.recv(100) == b""


def test_bad_handshake_is_dropped(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    _, _, _, uds = rig
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(uds))
        client.sendall(b"HELLO there\n")
        assert client.recv(100) == b""


def test_guest_connects_to_host_listener(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    _, _, guest, uds = rig
    # Nothing listens on UDS_6000: RST.
    guest.send(guest_header(VIRTIO_VSOCK_OP_REQUEST, 50000, 6000))
    ((rst, _),) = guest.receive()
    assert (rst.op, rst.dst_port, rst.src_port) == (VIRTIO_VSOCK_OP_RST, 50000, 6000)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(f"{uds}_6000")
        listener.listen(1)
        listener.settimeout(10)
        guest.send(guest_header(VIRTIO_VSOCK_OP_REQUEST, 50001, 6000))
        ((response, _),) = guest.receive()
        assert response.op == VIRTIO_VSOCK_OP_RESPONSE and response.dst_port == 50001
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 50001, 6000, 5), b"hello")
            assert conn.recv(5, socket.MSG_WAITALL) == b"hello"
            conn.sendall(b"back")
            conn.shutdown(socket.SHUT_WR)
            packets: list[tuple[Header, bytes]] = []
            while not any(h.op == VIRTIO_VSOCK_OP_SHUTDOWN for h, _ in packets):
                packets += guest.receive()
            assert b"".join(p for h, p in packets if h.op == VIRTIO_VSOCK_OP_RW) == b"back"
    os.unlink(f"{uds}_6000")


def test_get_vring_base_stops_the_ring(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    _, frontend, guest, _ = rig
    guest.send(guest_header(VIRTIO_VSOCK_OP_RST, 1, 2))  # one tx packet, consumed by the device
    ready, _, _ = select.select([guest.call[1]], [], [], 10)
    assert ready and [written for _, written in guest.tx.collect()] == [0]
    state = frontend.call(vu.VHOST_USER_GET_VRING_BASE, struct.pack("<II", 1, 0), reply=True)
    assert struct.unpack("<II", state) == (1, 1)


def test_need_reply_gets_an_ack(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    _, frontend, _, _ = rig
    request = vu.VHOST_USER_SET_VRING_ENABLE
    message = struct.pack("<III", request, vu.VHOST_USER_VERSION | vu.VHOST_USER_FLAG_NEED_REPLY, 8)
    frontend.sock.sendall(message + struct.pack("<II", 2, 1))
    head = frontend.sock.recv(12, socket.MSG_WAITALL)
    assert struct.unpack("<III", head) == (request, vu.VHOST_USER_VERSION | vu.VHOST_USER_FLAG_REPLY, 8)
    assert frontend.sock.recv(8, socket.MSG_WAITALL) == bytes(8)


def _open(guest: FakeGuest, uds: Path, port: int) -> tuple[socket.socket, Header]:
    """A host client connected through the back-end, with the fake guest accepting."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(uds))
    client.sendall(f"CONNECT {port}\n".encode())
    request = _accept_request(guest, port)
    line = b""
    while not line.endswith(b"\n"):
        line += client.recv(1)
    assert line == f"OK {request.src_port}\n".encode()
    return client, request


def test_many_concurrent_connections_stay_apart(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    backend, _, guest, uds = rig
    conns = [_open(guest, uds, 2000 + i) for i in range(20)]
    assert len({request.src_port for _, request in conns}) == 20
    for i, (client, _) in enumerate(conns):
        client.sendall(f"from host {i}".encode())
    seen: dict[int, bytes] = {}
    while len(seen) < 20:
        for header, payload in guest.receive():
            if header.op == VIRTIO_VSOCK_OP_RW:
                seen[header.dst_port] = seen.get(header.dst_port, b"") + payload
    assert seen == {2000 + i: f"from host {i}".encode() for i in range(20)}
    for i, (_client, request) in enumerate(reversed(conns)):
        guest.send(guest_header(VIRTIO_VSOCK_OP_RW, request.dst_port, request.src_port, 7), b"reply%02d" % i)
    for i, (client, _) in enumerate(reversed(conns)):
        assert client.recv(7, socket.MSG_WAITALL) == b"reply%02d" % i
        client.close()
    assert len(backend.mux.connections) == 20  # closed clients half-close; the guest has not closed yet


def test_client_that_vanishes_resets_the_guest_side(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    backend, _, guest, uds = rig
    client, request = _open(guest, uds, 3000)
    # The guest sends data nobody reads; the client is killed with data unread (ECONNRESET-like).
    guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 3000, request.src_port, 4), b"lost")
    client.close()
    ops: list[int] = []
    while VIRTIO_VSOCK_OP_RST not in ops and VIRTIO_VSOCK_OP_SHUTDOWN not in ops:
        ops += [h.op for h, _ in guest.receive()]
    # Either way the guest learns the host end is gone; after its own close the device forgets it.
    guest.send(guest_header(VIRTIO_VSOCK_OP_SHUTDOWN, 3000, request.src_port, flags=3))
    while VIRTIO_VSOCK_OP_RST not in ops:
        ops += [h.op for h, _ in guest.receive()]
    for _ in range(100):  # the back-end's thread finishes the close after sending the RST
        if not backend.mux.connections and not backend.endpoints:
            break
        select.select([], [], [], 0.1)
    assert not backend.mux.connections and not backend.endpoints


def test_guest_rst_mid_stream_closes_the_client(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    _, _, guest, uds = rig
    client, request = _open(guest, uds, 3001)
    with client:
        guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 3001, request.src_port, 5), b"last!")
        guest.send(guest_header(VIRTIO_VSOCK_OP_RST, 3001, request.src_port))
        got = b""
        while chunk := client.recv(100):
            got += chunk
        assert got == b"last!"  # what arrived before the RST is still delivered


def test_connect_to_a_silent_guest_times_out(
    rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentctl import hvsock

    monkeypatch.setattr(hvsock, "CONNECT_TIMEOUT", 0.3)
    _, _, guest, uds = rig
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(uds))
        client.sendall(b"CONNECT 4000\n")
        ((request, _),) = guest.receive()  # the guest sees the REQUEST and never answers
        assert request.op == VIRTIO_VSOCK_OP_REQUEST
        assert client.recv(100) == b""
        ((rst, _),) = guest.receive()
        assert rst.op == VIRTIO_VSOCK_OP_RST and rst.src_port == request.src_port


def test_device_stop_closes_host_connections(rig: tuple[HybridVsock, FakeFrontend, FakeGuest, Path]) -> None:
    backend, frontend, guest, uds = rig
    client, _ = _open(guest, uds, 3002)
    with client:
        frontend.call(vu.VHOST_USER_GET_VRING_BASE, struct.pack("<II", 0, 0), reply=True)
        assert client.recv(10) == b""  # the guest's side is gone with the device
    for _ in range(100):  # the back-end's thread replaces its table right after closing
        if not backend.mux.connections:
            break
        select.select([], [], [], 0.1)
    assert not backend.mux.connections


# --- passfd (Dragonball's command, runtime-rs's passfd I/O)
Rig = tuple[HybridVsock, FakeFrontend, FakeGuest, Path]


def _fd_count(frontend: FakeFrontend) -> int:
    """Descriptors open in this process, the back-end's thread included. A request with a reply
    first: the back-end has then taken every vring eventfd the rig sent it."""
    frontend.call(vu.VHOST_USER_GET_FEATURES, reply=True)
    return len(os.listdir("/proc/self/fd"))


def _wait_for(condition: Callable[[], bool]) -> None:
    """Until the back-end's thread has got there (it runs on after what the test can observe)."""
    for _ in range(100):
        if condition():
            return
        select.select([], [], [], 0.1)
    raise AssertionError("the back-end never got there")


def _until(guest: FakeGuest, op: int) -> list[tuple[Header, bytes]]:
    """Packets from the device up to and including the first ``op``."""
    packets: list[tuple[Header, bytes]] = []
    while not any(h.op == op for h, _ in packets):
        packets += guest.receive()
    return packets


def _guest_reads(guest: FakeGuest, size: int) -> bytes:
    got = b""
    while len(got) < size:
        got += b"".join(p for h, p in guest.receive() if h.op == VIRTIO_VSOCK_OP_RW)
    return got


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n") and (byte := sock.recv(1)):
        line += byte
    return line


def _read_fd(fd: int, size: int = 100) -> bytes:
    ready, _, _ = select.select([fd], [], [], 10)
    assert ready, "nothing to read"
    return os.read(fd, size)


def _control(uds: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(uds))
    return sock


def _pass(guest: FakeGuest, uds: Path, port: int, fd: int, keep: bool = False) -> Header:
    """pass_fd() with the fake guest accepting; the guest's REQUEST, whose source is the host port."""
    host_port, request = _dial_accepted(guest, port, lambda: pass_fd(uds, port, fd, keep=keep, timeout=10))
    assert host_port == request.src_port
    return request


def _guest_closes(backend: HybridVsock, guest: FakeGuest, request: Header) -> None:
    guest.send(guest_header(VIRTIO_VSOCK_OP_SHUTDOWN, request.dst_port, request.src_port, flags=3))
    _until(guest, VIRTIO_VSOCK_OP_RST)
    _wait_for(lambda: not backend.endpoints and not backend.mux.connections)


def test_passfd_socket_carries_both_directions(rig: Rig) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    host, passed = socket.socketpair()
    with host, _control(uds) as control:
        host.settimeout(10)
        control.sendall(b"passfd\n")
        socket.send_fds(control, [b"1027"], [passed.fileno()])
        passed.close()  # the back-end holds the only copy now
        request = _accept_request(guest, 1027)
        assert _read_line(control) == f"OK {request.src_port}\n".encode()
        assert control.recv(10) == b""  # the control socket is done after OK

        host.sendall(b"to the guest")
        assert _guest_reads(guest, 12) == b"to the guest"
        guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 1027, request.src_port, 11), b"to the host")
        assert host.recv(11, socket.MSG_WAITALL) == b"to the host"

        host.shutdown(socket.SHUT_WR)
        (shutdown, _) = _until(guest, VIRTIO_VSOCK_OP_SHUTDOWN)[-1]
        assert shutdown.flags == VIRTIO_VSOCK_SHUTDOWN_SEND and shutdown.src_port == request.src_port
        guest.send(guest_header(VIRTIO_VSOCK_OP_SHUTDOWN, 1027, request.src_port, flags=3))
        assert host.recv(10) == b""  # the back-end closed the passed socket
        _until(guest, VIRTIO_VSOCK_OP_RST)
    _wait_for(lambda: not backend.endpoints and not backend.mux.connections)
    assert _fd_count(frontend) == before


def test_passfd_pipe_read_end_feeds_the_guest_until_eof(rig: Rig) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    r, w = os.pipe()
    request = _pass(guest, uds, 1028, r)
    os.close(r)
    os.write(w, b"stdin bytes")
    assert _guest_reads(guest, 11) == b"stdin bytes"
    # The guest's bytes have nowhere to go: dropped, but taken (its credit comes back).
    guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 1028, request.src_port, 7), b"ignored")
    guest.send(guest_header(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 1028, request.src_port))
    (update, _) = _until(guest, VIRTIO_VSOCK_OP_CREDIT_UPDATE)[-1]
    assert update.fwd_cnt == 7
    os.close(w)
    (shutdown, _) = _until(guest, VIRTIO_VSOCK_OP_SHUTDOWN)[-1]
    assert shutdown.flags == VIRTIO_VSOCK_SHUTDOWN_SEND
    assert (request.src_port, 1028) in backend.mux.connections  # half-closed: the guest decides the end
    _guest_closes(backend, guest, request)
    assert _fd_count(frontend) == before


def test_passfd_keep_leaves_the_stream_open_at_eof(rig: Rig) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    r, w = os.pipe()
    request = _pass(guest, uds, 1029, r, keep=True)
    os.close(r)
    endpoint = backend.mux.connections[(request.src_port, 1029)].handle
    os.write(w, b"x")
    assert _guest_reads(guest, 1) == b"x"
    os.close(w)
    _wait_for(lambda: getattr(endpoint, "eof_read", False))  # the back-end has read the EOF
    guest.send(guest_header(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 1029, request.src_port))
    ops = [h.op for h, _ in _until(guest, VIRTIO_VSOCK_OP_CREDIT_UPDATE)]
    assert VIRTIO_VSOCK_OP_SHUTDOWN not in ops and VIRTIO_VSOCK_OP_RST not in ops
    assert (request.src_port, 1029) in backend.mux.connections
    _guest_closes(backend, guest, request)
    assert _fd_count(frontend) == before


@pytest.mark.parametrize("how", ["rst", "shutdown-send", "close"])
def test_passfd_pipe_write_end_takes_guest_data_until_the_guest_ends(rig: Rig, how: str) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    r, w = os.pipe()
    try:
        request = _pass(guest, uds, 1030, w)
        os.close(w)
        guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 1030, request.src_port, 12), b"stdout bytes")
        assert _read_fd(r) == b"stdout bytes"
        if how == "rst":
            guest.send(guest_header(VIRTIO_VSOCK_OP_RST, 1030, request.src_port))
        else:
            flags = VIRTIO_VSOCK_SHUTDOWN_SEND if how == "shutdown-send" else 3
            guest.send(guest_header(VIRTIO_VSOCK_OP_SHUTDOWN, 1030, request.src_port, flags=flags))
        assert _read_fd(r) == b""  # the back-end closed the write end: EOF
        if how != "rst":
            _until(guest, VIRTIO_VSOCK_OP_RST)
        _wait_for(lambda: not backend.endpoints and not backend.mux.connections)
    finally:
        os.close(r)
    assert _fd_count(frontend) == before


@pytest.mark.parametrize("keep", [False, True])
def test_passfd_write_end_whose_reader_goes(rig: Rig, keep: bool) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    r, w = os.pipe()
    request = _pass(guest, uds, 1031, w, keep=keep)
    os.close(w)
    os.close(r)
    if not keep:
        _until(guest, VIRTIO_VSOCK_OP_RST)  # the stream is gone with its reader
        _wait_for(lambda: not backend.endpoints and not backend.mux.connections)
    else:
        conn = backend.mux.connections[(request.src_port, 1031)]
        guest.send(guest_header(VIRTIO_VSOCK_OP_RW, 1031, request.src_port, 4), b"lost")
        _wait_for(lambda: conn.fwd_cnt == 4)  # dropped (EPIPE), and its credit given back
        guest.send(guest_header(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 1031, request.src_port))
        packets = _until(guest, VIRTIO_VSOCK_OP_CREDIT_UPDATE)
        assert VIRTIO_VSOCK_OP_RST not in [h.op for h, _ in packets] and packets[-1][0].fwd_cnt == 4
        _guest_closes(backend, guest, request)
    assert _fd_count(frontend) == before


def test_passfd_refused_by_the_guest(rig: Rig) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    host, passed = socket.socketpair()
    with host, _control(uds) as control:
        host.settimeout(10)
        control.sendall(b"passfd\n")
        socket.send_fds(control, [b"1032"], [passed.fileno()])
        passed.close()
        ((request, _),) = guest.receive()
        assert request.op == VIRTIO_VSOCK_OP_REQUEST and request.dst_port == 1032
        guest.send(guest_header(VIRTIO_VSOCK_OP_RST, 1032, request.src_port))
        assert control.recv(100) == b""  # no OK
        assert host.recv(10) == b""  # the passed socket is closed too
    _wait_for(lambda: not backend.endpoints and not backend.mux.connections)
    assert _fd_count(frontend) == before


def _send_no_fd(control: socket.socket, fds: list[int]) -> None:
    control.sendall(b"passfd\n1033")


def _send_two_fds(control: socket.socket, fds: list[int]) -> None:
    control.sendall(b"passfd\n")
    socket.send_fds(control, [b"1033"], fds[:2])


def _send_too_many_fds(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"passfd\n", b"1033"], fds)  # more than the back-end makes room for


def _send_bad_port(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"passfd\n", b"port"], fds[:1])


def _send_huge_port(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"passfd\n", b"4294967296"], fds[:1])


def _send_unknown_option(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"passfd\n", b"1033 stay"], fds[:1])


def _send_long_message(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"passfd\n", b"1" * 100], fds[:1])


def _send_garbage_after_passfd(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"passfd please\n", b"1033"], fds[:1])


def _send_fd_with_the_command(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"passfd\n"], fds[:1])


def _send_fd_before_the_newline(control: socket.socket, fds: list[int]) -> None:
    socket.send_fds(control, [b"pass"], fds[:1])
    control.sendall(b"fd\n1033")


@pytest.mark.parametrize(
    "send",
    [
        _send_no_fd,
        _send_two_fds,
        _send_too_many_fds,
        _send_bad_port,
        _send_huge_port,
        _send_unknown_option,
        _send_long_message,
        _send_garbage_after_passfd,
        _send_fd_with_the_command,
        _send_fd_before_the_newline,
    ],
)
def test_malformed_passfd_is_dropped_and_its_fds_closed(
    rig: Rig, send: Callable[[socket.socket, list[int]], None]
) -> None:
    backend, frontend, _, uds = rig
    before = _fd_count(frontend)
    pairs = [socket.socketpair() for _ in range(6)]
    with _control(uds) as control:
        send(control, [passed.fileno() for _, passed in pairs])
        for _, passed in pairs:
            passed.close()
        assert control.recv(100) == b""  # dropped without OK
    for host, _ in pairs:
        with host:
            host.settimeout(10)
            assert host.recv(10) == b""  # whatever the back-end received, it closed
    assert not backend.mux.connections  # the guest was never asked
    _wait_for(lambda: not backend.endpoints)
    assert _fd_count(frontend) == before


def test_passfd_refuses_a_descriptor_epoll_cannot_watch(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend, frontend, _, uds = rig
    before = _fd_count(frontend)
    with open(tmp_path / "file", "w") as regular, _control(uds) as control:
        control.sendall(b"passfd\n")
        socket.send_fds(control, [b"1034"], [regular.fileno()])
        assert control.recv(100) == b""
    assert "passfd for vsock port 1034: refusing the descriptor: epoll cannot watch a regular file" in caplog.text
    assert not backend.mux.connections
    assert _fd_count(frontend) == before


def test_passfd_handshake_and_guest_answer_have_a_deadline(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentctl import hvsock

    monkeypatch.setattr(hvsock, "CONNECT_TIMEOUT", 0.3)
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    with _control(uds) as control:
        control.sendall(b"passfd\n")  # and never the message
        assert control.recv(100) == b""
    host, passed = socket.socketpair()
    with host, _control(uds) as control:
        host.settimeout(10)
        control.sendall(b"passfd\n")
        socket.send_fds(control, [b"1035"], [passed.fileno()])
        passed.close()
        ((request, _),) = guest.receive()  # the guest sees the REQUEST and never answers
        assert control.recv(100) == b""
        assert host.recv(10) == b""
        ((rst, _),) = guest.receive()
        assert rst.op == VIRTIO_VSOCK_OP_RST and rst.src_port == request.src_port
    _wait_for(lambda: not backend.endpoints and not backend.mux.connections)
    assert _fd_count(frontend) == before


def test_descriptors_sent_with_connect_are_closed(rig: Rig) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    host, passed = socket.socketpair()
    with host, _control(uds) as client:
        host.settimeout(10)
        socket.send_fds(client, [b"CONNECT 1036\n"], [passed.fileno()])
        passed.close()
        request = _accept_request(guest, 1036)
        assert _read_line(client) == f"OK {request.src_port}\n".encode()
        assert host.recv(10) == b""  # the stray descriptor was closed, not kept
        client.sendall(b"still a CONNECT stream")
        assert _guest_reads(guest, 22) == b"still a CONNECT stream"
    _until(guest, VIRTIO_VSOCK_OP_SHUTDOWN)
    _guest_closes(backend, guest, request)
    assert _fd_count(frontend) == before


def test_connect_port_returns_the_host_port(rig: Rig) -> None:
    backend, _, guest, uds = rig
    (client, host_port), request = _dial_accepted(guest, 1037, lambda: connect_port(uds, 1037, timeout=10))
    with client:
        assert host_port == request.src_port
        client.sendall(b"hi")
        assert _guest_reads(guest, 2) == b"hi"
    _until(guest, VIRTIO_VSOCK_OP_SHUTDOWN)
    _guest_closes(backend, guest, request)


def test_pass_fd_client(rig: Rig, tmp_path: Path) -> None:
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    r, w = os.pipe()
    request = _pass(guest, uds, 1038, r, keep=True)  # the host port comes back
    endpoint = backend.mux.connections[(request.src_port, 1038)].handle
    assert getattr(endpoint, "keep", None) is True  # "<port> keep" reached the back-end
    os.write(w, b"ok")
    assert _guest_reads(guest, 2) == b"ok"
    _guest_closes(backend, guest, request)

    error: list[BaseException] = []

    def refused() -> None:
        try:
            pass_fd(uds, 1039, w, timeout=10)
        except BaseException as exc:
            error.append(exc)

    client = threading.Thread(target=refused)
    client.start()
    ((request, _),) = guest.receive()
    guest.send(guest_header(VIRTIO_VSOCK_OP_RST, 1039, request.src_port))
    client.join(10)
    assert len(error) == 1 and isinstance(error[0], ConnectionRefusedError) and "1039" in str(error[0])

    with open(tmp_path / "file", "w") as regular, pytest.raises(ConnectionRefusedError, match="1040"):
        pass_fd(uds, 1040, regular.fileno(), timeout=10)  # refused by the back-end: no guest involved
    os.close(r)
    os.close(w)
    _wait_for(lambda: not backend.endpoints and not backend.mux.connections)
    assert _fd_count(frontend) == before


def test_passfd_fifo_opened_both_ways_like_runtime_rs_stdin(rig: Rig, tmp_path: Path) -> None:
    # runtime-rs opens the stdin FIFO O_RDWR (so that it never sees EOF) and passes it with "keep".
    backend, frontend, guest, uds = rig
    before = _fd_count(frontend)
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    stdin = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    request = _pass(guest, uds, 1041, stdin, keep=True)
    os.close(stdin)
    writer = os.open(fifo, os.O_WRONLY)
    os.write(writer, b"typed")
    os.close(writer)  # the back-end's O_RDWR copy is a writer too: no EOF
    assert _guest_reads(guest, 5) == b"typed"
    writer = os.open(fifo, os.O_WRONLY)  # a second writer attaches to the same stream
    os.write(writer, b" more")
    os.close(writer)
    assert _guest_reads(guest, 5) == b" more"
    _guest_closes(backend, guest, request)
    assert _fd_count(frontend) == before
