"""Hybrid vsock: a vhost-user-vsock back-end that joins a guest's AF_VSOCK to unix sockets.

QEMU serves the guest a ``vhost-user-vsock-pci`` device whose queues we process here (rx=0,
tx=1, event=2). The host side follows the hybrid vsock convention of Firecracker, Cloud
Hypervisor and Dragonball, which Kata's runtimes speak. A host client connects to the unix socket
``UDS`` and sends one of two commands:

- ``CONNECT <port>\\n``: the client reads ``OK <host-port>\\n``; after that its bytes flow to the
  guest's AF_VSOCK port. When the guest refuses (RST) or does not answer within the connect
  timeout, the client socket is closed.
- ``passfd\\n`` (Dragonball's, for runtime-rs's passfd I/O): then one message whose data is
  ``<port>`` or ``<port> keep`` (no newline) and whose SCM_RIGHTS carry exactly one descriptor: a
  socket, or a pipe or FIFO end. The client reads ``OK <host-port>\\n`` and the back-end closes
  the control socket; from then on the passed descriptor, not the control socket, is joined to
  the vsock connection from ``<host-port>`` (the guest knows the stream by that peer port). The
  directions are the descriptor's access mode: a read-only end only feeds the guest (guest data is
  dropped), a write-only end only takes the guest's data. At the descriptor's EOF the guest gets
  SHUTDOWN, unless ``keep``: then the vsock connection stays open, and a write-only end whose
  reader went away (EPIPE) drops the guest's data instead of resetting the stream. When the guest
  closes or resets, the descriptor is closed. A refusal, a timeout or a malformed message closes
  the control socket without ``OK``, and the descriptor with it.

A guest connection to CID 2 port P is joined to the unix listener at ``UDS_P``; when nothing
listens there the guest gets RST.

One thread runs everything with ``selectors``. Run it as a process:
``python -m agentctl.hvsock --vhost-socket VHOST --uds UDS [--cid 3]``.
"""

from __future__ import annotations

import argparse
import array
import errno
import fcntl
import logging
import os
import select
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentctl.vhost_user import VHOST_USER_GET_VRING_BASE, ProtocolError, VhostUserDevice, recv_message, send_reply
from agentctl.virtio_vsock import (
    HEADER_SIZE,
    MAX_PACKET_PAYLOAD,
    VIRTIO_VSOCK_SHUTDOWN_SEND,
    Connection,
    Event,
    PacketError,
    State,
    VsockMux,
    parse_packet,
)
from agentctl.vring import VringError

log = logging.getLogger(__name__)

RX_QUEUE = 0
TX_QUEUE = 1
EVENT_QUEUE = 2
NUM_QUEUES = 3
DEFAULT_GUEST_CID = 3
CONNECT_TIMEOUT = 10.0  # seconds a CONNECT waits for the guest's answer
HANDSHAKE_LIMIT = 512  # bytes of a command line ("CONNECT <port>", "passfd")
PASSFD_MESSAGE_LIMIT = 64  # bytes of a passfd "<port> keep" message
FD_ROOM = 4  # descriptors one handshake read has room for (one is the most a client may send)
FD_SIZE = array.array("i").itemsize
READ_CHUNK = 64 * 1024
OUTBOX_LIMIT = 256 * 1024  # host bytes buffered per connection beyond what the guest took


class PassedFd:
    """A descriptor a passfd client handed over (a socket, or a pipe or FIFO end); owned from here on.

    Its directions are its access mode: a read-only end only feeds the guest, a write-only end only
    takes the guest's data.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        self.write_only = access == os.O_WRONLY
        self.readable = access != os.O_WRONLY
        self.writable = access != os.O_RDONLY
        self.is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)

    @classmethod
    def adopt(cls, fd: int) -> PassedFd:
        """Take ``fd`` if the loop can serve it; ValueError says why not (the caller still owns it then)."""
        mode = os.fstat(fd).st_mode
        try:
            with select.epoll() as probe:
                probe.register(fd, select.EPOLLIN)
        except OSError as exc:
            raise ValueError(f"epoll cannot watch {_file_kind(mode)} ({exc.strerror})") from None
        passed = cls(fd)
        # O_NONBLOCK lives in the open file description the sender shares; runtime-rs opens its
        # pipes non-blocking anyway, and the single loop must never block on a full pipe.
        os.set_blocking(fd, False)
        return passed

    def fileno(self) -> int:
        return self.fd

    def read(self, size: int) -> bytes:
        return os.read(self.fd, size)

    def write(self, data: bytes | bytearray) -> int:
        return os.write(self.fd, data)

    def shut_write(self) -> None:
        """Half-close a socket. A pipe end has no half-close: a write-only end is closed whole."""
        if not self.is_socket or self.fd < 0:
            return
        sock = socket.socket(fileno=self.fd)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.detach()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return f"a file of mode {mode:o}"


def _recv_with_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int], bool]:
    """Data, descriptors and whether some descriptors did not fit (the kernel closed those).

    A plain recv would make the kernel drop an SCM_RIGHTS descriptor that arrives in the same read
    as the command line (the kernel joins a passfd client's two writes into one read).
    """
    data, ancillary, flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(FD_ROOM * FD_SIZE), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += array.array("i", payload[: len(payload) - len(payload) % FD_SIZE])
    return data, fds, bool(flags & socket.MSG_CTRUNC)


def _parse_passfd_message(message: bytes) -> tuple[int, bool]:
    """``<port>`` or ``<port> keep`` -> (port, keep); ValueError otherwise."""
    words = message.decode("ascii").split()  # UnicodeDecodeError is a ValueError
    if not 1 <= len(words) <= 2 or not words[0].isdigit() or int(words[0]) > 0xFFFFFFFF:
        raise ValueError(f"expected '<port>' or '<port> keep', got {message[:80]!r}")
    if len(words) == 2 and words[1] != "keep":
        raise ValueError(f"expected '<port>' or '<port> keep', got {message[:80]!r}")
    return int(words[0]), len(words) == 2


@dataclass
class Endpoint:
    """The host end of one connection: a unix socket and where it is in the handshake.

    In passfd mode ``sock`` is only the control socket (for the OK line) and ``passed`` carries the
    connection's bytes.
    """

    sock: socket.socket
    conn: Connection | None = None
    handshake: bytearray | None = None  # command bytes being read (host-initiated only)
    greeting: bytearray = field(default_factory=bytearray)  # "OK <port>\n" still to write
    deadline: float | None = None
    eof_read: bool = False  # the client will send nothing more
    eof_written: bool = False  # we shut down its write side after the guest's EOF
    closing: bool = False  # the vsock side is gone; flush the inbox, then close
    events: int = 0
    passfd: bool = False  # the command was "passfd": the port message and its descriptor come next
    fds: list[int] = field(default_factory=list)  # descriptors received in the handshake, not yet taken
    fd_trouble: str | None = None  # why the descriptors received cannot make a passfd message
    passed: PassedFd | None = None  # passfd mode: the descriptor joined to the vsock connection
    keep: bool = False  # passfd "keep": the descriptor's EOF or lost reader leaves the vsock stream open
    broken: bool = False  # keep: the write-only end's reader went away; guest data is dropped meanwhile

    @property
    def stream(self) -> socket.socket | PassedFd:
        """What carries the connection's bytes, and what the selector watches."""
        return self.passed if self.passed is not None else self.sock


class HybridVsock:
    """The back-end: serves one QEMU front-end on ``vhost_socket`` and host clients on ``uds``."""

    def __init__(self, vhost_socket: str | Path, uds: str | Path, guest_cid: int = DEFAULT_GUEST_CID) -> None:
        self.vhost_path = str(vhost_socket)
        self.uds_path = str(uds)
        self.guest_cid = guest_cid
        self.selector = selectors.DefaultSelector()
        self.device = VhostUserDevice(NUM_QUEUES, guest_cid.to_bytes(8, "little"), on_kick_fd=self._kick_fd)
        self.mux = VsockMux(guest_cid, accept=self._accept_from_guest)
        self.endpoints: dict[int, Endpoint] = {}  # by socket fd
        self.frontend: socket.socket | None = None
        self.stopping = threading.Event()
        self.stats = {"rx_packets": 0, "tx_packets": 0, "rx_bytes": 0, "tx_bytes": 0}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.vhost_listener = self._listen(self.vhost_path)
        self.uds_listener = self._listen(self.uds_path)
        self.selector.register(self.vhost_listener, selectors.EVENT_READ, ("vhost-listener", None))
        self.selector.register(self.uds_listener, selectors.EVENT_READ, ("uds-listener", None))
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    @staticmethod
    def _listen(path: str) -> socket.socket:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    # --- running
    def stop(self) -> None:
        """Ask the loop to end (from any thread or a signal handler)."""
        self.stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def serve(self) -> None:
        """Run until stop() or until the front-end (QEMU) hangs up."""
        try:
            while not self.stopping.is_set():
                timeout = self._next_timeout()
                for key, mask in self.selector.select(timeout):
                    self._dispatch(key, mask)
                self._timers()
                self._pump()
        finally:
            self.close()

    def close(self) -> None:
        for endpoint in list(self.endpoints.values()):
            self._drop(endpoint)
        self.device.close()
        for sock in (self.frontend, self.vhost_listener, self.uds_listener):
            if sock is not None:
                try:
                    self.selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
        self.frontend = None
        for path in (self.vhost_path, self.uds_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _next_timeout(self) -> float | None:
        deadlines = [e.deadline for e in self.endpoints.values() if e.deadline is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _timers(self) -> None:
        now = time.monotonic()
        for endpoint in list(self.endpoints.values()):
            if endpoint.deadline is not None and now >= endpoint.deadline:
                log.info("connection %s timed out in its handshake", endpoint.conn or "(no CONNECT)")
                if endpoint.conn is not None:
                    self.mux.reset(endpoint.conn)
                self._drop(endpoint)

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        kind, data = key.data
        if kind == "vhost-listener":
            self._accept_frontend()
        elif kind == "frontend":
            self._frontend_message()
        elif kind == "kick":
            try:
                os.eventfd_read(key.fd)
            except BlockingIOError:
                pass
            if data == TX_QUEUE:
                self._process_tx()
        elif kind == "uds-listener":
            self._accept_client()
        elif kind == "endpoint":
            endpoint = self.endpoints.get(key.fd)
            if endpoint is not None:
                if mask & selectors.EVENT_READ:
                    self._readable(endpoint)
                if mask & selectors.EVENT_WRITE and key.fd in self.endpoints:
                    self._writable(endpoint)
        elif kind == "wake":
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass

    # --- front-end (QEMU)
    def _accept_frontend(self) -> None:
        try:
            sock, _ = self.vhost_listener.accept()
        except BlockingIOError:
            return
        if self.frontend is not None:
            log.warning("a second vhost-user front-end connected; refusing it")
            sock.close()
            return
        sock.setblocking(True)
        self.frontend = sock
        self.selector.register(sock, selectors.EVENT_READ, ("frontend", None))
        log.info("vhost-user front-end connected")

    def _frontend_message(self) -> None:
        assert self.frontend is not None
        try:
            msg = recv_message(self.frontend)
        except (ProtocolError, OSError) as exc:
            log.error("vhost-user front-end: %s", exc)
            msg = None
        if msg is None:
            log.info("vhost-user front-end hung up; stopping")
            self.stopping.set()
            return
        log.debug("vhost-user %s flags=%#x size=%d fds=%d", msg.name, msg.flags, len(msg.payload), len(msg.fds))
        try:
            reply = self.device.handle(msg)
        except (ProtocolError, VringError, OSError, ValueError) as exc:
            log.error("vhost-user %s failed: %s", msg.name, exc)
            self.stopping.set()
            return
        if reply is not None:
            send_reply(self.frontend, msg.request, reply)
        if msg.request == VHOST_USER_GET_VRING_BASE:
            self._device_stopped()
        # A queue may have become ready (enable, kick): look at it now.
        self._process_tx()

    def _device_stopped(self) -> None:
        """The front-end stopped a ring (the guest reset its device): every connection is gone on
        the guest's side, so close their host ends and start from an empty table."""
        if not self.mux.connections and not self.endpoints:
            return
        log.info("device stopped: closing %d connections", len(self.mux.connections))
        for endpoint in list(self.endpoints.values()):
            self._drop(endpoint)
        self.mux = VsockMux(self.guest_cid, accept=self._accept_from_guest)

    def _kick_fd(self, index: int, old: int, new: int) -> None:
        if old >= 0:
            try:
                self.selector.unregister(old)
            except (KeyError, ValueError):
                pass
        if new >= 0:
            os.set_blocking(new, False)
            self.selector.register(new, selectors.EVENT_READ, ("kick", index))

    # --- virtqueues
    def _process_tx(self) -> None:
        vring = self.device.vrings[TX_QUEUE]
        memory = self.device.memory
        queue = vring.queue
        if not vring.ready or memory is None or queue is None:
            return
        used = 0
        try:
            while (chain := queue.pop()) is not None:
                data = chain.read_all(memory, HEADER_SIZE + 64 * 1024 + 4096)
                queue.push(chain.head, 0)
                used += 1
                try:
                    header, payload = parse_packet(data)
                except PacketError as exc:
                    log.warning("dropping a malformed packet from the guest: %s", exc)
                    continue
                log.debug("guest -> host %s", header)
                self.stats["tx_packets"] += 1
                self.stats["tx_bytes"] += len(payload)
                self.mux.receive(header, payload)
                self._handle_events()
        except VringError as exc:
            log.error("tx queue broken: %s", exc)
        if used:
            self.device.notify(TX_QUEUE)

    def _fill_rx(self) -> None:
        vring = self.device.vrings[RX_QUEUE]
        memory = self.device.memory
        queue = vring.queue
        if not vring.ready or memory is None or queue is None:
            return
        used = 0
        try:
            while self.mux.has_output():
                chain = queue.pop()
                if chain is None:
                    break
                packet = self.mux.next_packet(chain.writable_length - HEADER_SIZE)
                if packet is None:
                    queue.last_avail = (queue.last_avail - 1) & 0xFFFF  # give the buffer back
                    break
                header, payload = packet
                log.debug("host -> guest %s", header)
                written = chain.write_all(memory, header.pack() + payload)
                queue.push(chain.head, written)
                used += 1
                self.stats["rx_packets"] += 1
                self.stats["rx_bytes"] += len(payload)
        except VringError as exc:
            log.error("rx queue broken: %s", exc)
        if used:
            self.device.notify(RX_QUEUE)
        # Sending may have closed connections (RST) or freed room for host data.
        self._handle_events()

    def _pump(self) -> None:
        """Move what can move: guest packets out, host data in, until nothing changes."""
        for _ in range(64):
            self._process_tx()
            before = self.stats["rx_packets"]
            self._fill_rx()
            self._refresh_interest()
            if self.stats["rx_packets"] == before:
                break

    # --- mux events -> host sockets
    def _handle_events(self) -> None:
        while self.mux.events:
            event, conn = self.mux.events.popleft()
            endpoint = conn.handle
            if not isinstance(endpoint, Endpoint):
                continue
            if event is Event.CONNECTED:
                endpoint.deadline = None
                if endpoint.passed is not None:
                    self._passfd_ok(endpoint, conn)
                else:
                    endpoint.greeting += f"OK {conn.host_port}\n".encode()
            elif event is Event.REFUSED:
                log.info("guest refused port %d", conn.guest_port)
                self._drop(endpoint)
            elif event is Event.DATA:
                if endpoint.passed is not None and not endpoint.passed.writable and conn.inbox:
                    log.debug(
                        "dropping %d guest bytes for read-only descriptor of port %d", len(conn.inbox), conn.guest_port
                    )
                    self.mux.consumed(conn, len(conn.inbox))
            elif event is Event.CLOSED:
                endpoint.closing = True
                if not conn.inbox:
                    self._drop(endpoint)
            elif event is Event.PEER_EOF and not conn.inbox:
                self._shut_write(endpoint)

    def _accept_from_guest(self, conn: Connection) -> bool:
        path = f"{self.uds_path}_{conn.host_port}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(path)
        except OSError as exc:
            log.debug("guest connection to host port %d: nothing listens on %s (%s)", conn.host_port, path, exc)
            sock.close()
            return False
        sock.setblocking(False)
        endpoint = Endpoint(sock, conn)
        conn.handle = endpoint
        self._register(endpoint)
        return True

    # --- host clients
    def _accept_client(self) -> None:
        while True:
            try:
                sock, _ = self.uds_listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            endpoint = Endpoint(sock, handshake=bytearray(), deadline=time.monotonic() + CONNECT_TIMEOUT)
            self._register(endpoint)

    def _register(self, endpoint: Endpoint) -> None:
        self.endpoints[endpoint.sock.fileno()] = endpoint
        endpoint.events = selectors.EVENT_READ
        self.selector.register(endpoint.sock, endpoint.events, ("endpoint", None))

    def _readable(self, endpoint: Endpoint) -> None:
        if endpoint.handshake is not None:
            self._read_handshake(endpoint)
            return
        if endpoint.passed is not None:
            self._read_passed(endpoint)
            return
        try:
            data = endpoint.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("host socket read failed: %s", exc)
            self._abort(endpoint)
            return
        conn = endpoint.conn
        if conn is None:
            return
        if not data:
            endpoint.eof_read = True
            self.mux.shutdown(conn)
            self._maybe_finish(endpoint)
            return
        self.mux.send(conn, data)

    def _read_handshake(self, endpoint: Endpoint) -> None:
        try:
            data, fds, truncated = _recv_with_fds(endpoint.sock, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("host socket read failed: %s", exc)
            self._abort(endpoint)
            return
        endpoint.fds += fds  # the endpoint owns them now: _drop closes what nobody took
        if truncated:
            endpoint.fd_trouble = f"more than {FD_ROOM} descriptors"
        self._handshake(endpoint, data)

    def _handshake(self, endpoint: Endpoint, data: bytes) -> None:
        assert endpoint.handshake is not None
        if not data:
            self._drop(endpoint)
            return
        endpoint.handshake += data
        if endpoint.passfd:
            self._passfd_message(endpoint)
            return
        line, newline, rest = bytes(endpoint.handshake).partition(b"\n")
        if not newline:
            if endpoint.fds:
                # Nothing can use a descriptor sent with a command that has not ended yet.
                self._close_fds(endpoint)
                endpoint.fd_trouble = "a descriptor came before the end of the command line"
            if len(endpoint.handshake) > HANDSHAKE_LIMIT:
                log.warning("host client sent %d bytes without a CONNECT line", len(endpoint.handshake))
                self._drop(endpoint)
            return
        words = line.decode(errors="replace").split()
        if words == ["passfd"]:
            endpoint.passfd = True
            endpoint.handshake = bytearray(rest)
            self._passfd_message(endpoint)
            return
        if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit() or int(words[1]) > 0xFFFFFFFF:
            log.warning("host client sent %r; expected 'CONNECT <port>' or 'passfd'", line[:80])
            self._drop(endpoint)
            return
        if endpoint.fds or endpoint.fd_trouble:
            log.warning("a CONNECT client for port %s sent descriptors; closing them", words[1])
            self._close_fds(endpoint)
        endpoint.handshake = None
        conn = self.mux.connect(int(words[1]))
        conn.handle = endpoint
        endpoint.conn = conn
        if rest:
            self.mux.send(conn, rest)

    def _passfd_message(self, endpoint: Endpoint) -> None:
        """After ``passfd\\n``: one message, ``<port>`` or ``<port> keep``, carrying one descriptor.

        The kernel ends a read after the data that carries descriptors, so the descriptor arrives
        in the read that completes the message; bytes after the command line without one are an error.
        """
        assert endpoint.handshake is not None
        message = bytes(endpoint.handshake)
        if endpoint.fd_trouble is not None:
            problem = endpoint.fd_trouble
        elif len(message) > PASSFD_MESSAGE_LIMIT:
            problem = f"a {len(message)}-byte port message"
        elif not endpoint.fds:
            if not message:
                return  # the message has not come yet
            problem = "a port message without a descriptor"
        elif len(endpoint.fds) != 1:
            problem = f"{len(endpoint.fds)} descriptors"
        elif not message:
            problem = "the descriptor came with the command line, not with the port message"
        else:
            problem = None
        if problem is not None:
            log.warning("passfd client sent %s; expected '<port>' or '<port> keep' with one descriptor", problem)
            self._drop(endpoint)
            return
        try:
            port, keep = _parse_passfd_message(message)
        except ValueError as exc:
            log.warning("passfd client: %s", exc)
            self._drop(endpoint)
            return
        try:
            passed = PassedFd.adopt(endpoint.fds[0])
        except (OSError, ValueError) as exc:
            log.warning("passfd for vsock port %d: refusing the descriptor: %s", port, exc)
            self._drop(endpoint)
            return
        endpoint.fds.clear()
        # The control socket now only waits for its OK line: stop watching it, key the endpoint by
        # the descriptor (watched once the guest has accepted).
        self._forget(endpoint)
        endpoint.handshake = None
        endpoint.passed = passed
        endpoint.keep = keep
        endpoint.eof_read = passed.write_only  # nothing to read, and nothing to tell the guest about it
        self.endpoints[passed.fd] = endpoint
        conn = self.mux.connect(port)
        conn.handle = endpoint
        endpoint.conn = conn

    def _passfd_ok(self, endpoint: Endpoint, conn: Connection) -> None:
        """The guest accepted: tell the passfd client the host port, and hang up on it."""
        line = f"OK {conn.host_port}\n".encode()
        try:
            sent = endpoint.sock.send(line)  # a fresh socket's buffer takes a dozen bytes at once
        except OSError as exc:
            log.debug("passfd client: %s", exc)
            sent = 0
        if sent != len(line):
            log.info("passfd client for vsock port %d hung up before its OK", conn.guest_port)
            self._abort(endpoint)
            return
        endpoint.sock.close()
        log.debug("passfd: vsock port %d joined to a descriptor from host port %d", conn.guest_port, conn.host_port)

    def _read_passed(self, endpoint: Endpoint) -> None:
        passed, conn = endpoint.passed, endpoint.conn
        assert passed is not None
        if conn is None:
            return
        if passed.write_only:
            # Only EPOLLERR wakes a write-only end: its reader went away.
            if endpoint.keep:
                log.debug("port %d: the reader of its descriptor went away; keeping the stream", conn.guest_port)
                endpoint.broken = True
            else:
                log.debug("port %d: the reader of its descriptor went away", conn.guest_port)
                self._abort(endpoint)
            return
        try:
            data = passed.read(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EBADF:
                log.debug("passed descriptor read failed: %s", exc)
                self._abort(endpoint)
                return
            log.info("port %d: its descriptor cannot be read; nothing goes to the guest", conn.guest_port)
            passed.readable = False
            endpoint.eof_read = True
            return
        if data:
            self.mux.send(conn, data)
            return
        endpoint.eof_read = True
        if endpoint.keep:
            log.debug("port %d: EOF on its descriptor; keeping the stream open", conn.guest_port)
            return
        self.mux.shutdown(conn)
        self._maybe_finish(endpoint)

    def _write_passed(self, endpoint: Endpoint) -> None:
        passed, conn = endpoint.passed, endpoint.conn
        assert passed is not None
        if conn is None:
            return
        if conn.inbox:
            try:
                sent = passed.write(conn.inbox[:MAX_PACKET_PAYLOAD])  # at most a pipe's buffer
            except BlockingIOError:
                return
            except BrokenPipeError:
                if not endpoint.keep:
                    log.debug("port %d: the reader of its descriptor went away", conn.guest_port)
                    self._abort(endpoint)
                    return
                log.debug("port %d: no reader; dropping %d guest bytes", conn.guest_port, len(conn.inbox))
                endpoint.broken = True
                sent = len(conn.inbox)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    log.debug("passed descriptor write failed: %s", exc)
                    self._abort(endpoint)
                    return
                log.info("port %d: its descriptor cannot be written; dropping guest data", conn.guest_port)
                passed.writable = False
                sent = len(conn.inbox)
            else:
                endpoint.broken = False
            self.mux.consumed(conn, sent)
        if conn.inbox:
            return
        if endpoint.closing:
            self._drop(endpoint)
        elif conn.peer_shutdown & VIRTIO_VSOCK_SHUTDOWN_SEND:
            self._shut_write(endpoint)

    def _writable(self, endpoint: Endpoint) -> None:
        if endpoint.passed is not None:
            self._write_passed(endpoint)
            return
        sock = endpoint.sock
        try:
            if endpoint.greeting:
                sent = sock.send(endpoint.greeting)
                del endpoint.greeting[:sent]
                if endpoint.greeting:
                    return
            conn = endpoint.conn
            if conn is not None and conn.inbox:
                sent = sock.send(conn.inbox[: READ_CHUNK * 4])
                self.mux.consumed(conn, sent)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("host socket write failed: %s", exc)
            self._abort(endpoint)
            return
        conn = endpoint.conn
        if conn is None or conn.inbox:
            return
        if endpoint.closing:
            self._drop(endpoint)
        elif conn.peer_shutdown & VIRTIO_VSOCK_SHUTDOWN_SEND:
            self._shut_write(endpoint)

    def _shut_write(self, endpoint: Endpoint) -> None:
        if endpoint.eof_written or endpoint.greeting:
            return
        endpoint.eof_written = True
        if endpoint.passed is not None:
            endpoint.passed.shut_write()
        else:
            try:
                endpoint.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._maybe_finish(endpoint)

    def _maybe_finish(self, endpoint: Endpoint) -> None:
        """Both directions are done: end the vsock connection and close the socket."""
        conn = endpoint.conn
        if conn is None or not (endpoint.eof_read and endpoint.eof_written):
            return
        if conn.outbox:
            return  # SHUTDOWN follows the data; the guest closes when it has read it
        self.mux.reset(conn)
        self._drop(endpoint)

    def _abort(self, endpoint: Endpoint) -> None:
        if endpoint.conn is not None:
            self.mux.reset(endpoint.conn)
        self._drop(endpoint)

    def _forget(self, endpoint: Endpoint) -> None:
        """Stop watching the endpoint's stream and take it out of the table."""
        stream = endpoint.stream
        fd = stream.fileno()
        if fd >= 0 and self.endpoints.pop(fd, None) is not None and endpoint.events:
            try:
                self.selector.unregister(stream)
            except (KeyError, ValueError):
                pass
        endpoint.events = 0

    def _close_fds(self, endpoint: Endpoint) -> None:
        for fd in endpoint.fds:
            os.close(fd)
        endpoint.fds.clear()

    def _drop(self, endpoint: Endpoint) -> None:
        self._forget(endpoint)
        self._close_fds(endpoint)
        if endpoint.passed is not None:
            endpoint.passed.close()
        endpoint.sock.close()  # last: a client that sees it close knows the rest is closed too
        if endpoint.conn is not None:
            endpoint.conn.handle = None

    def _refresh_interest(self) -> None:
        for endpoint in list(self.endpoints.values()):
            conn = endpoint.conn
            want = 0
            if endpoint.handshake is not None:
                want = selectors.EVENT_READ
            elif conn is not None:
                if endpoint.closing and not conn.inbox:
                    self._drop(endpoint)
                    continue
                if endpoint.passed is not None:
                    want = self._passed_interest(endpoint, conn)
                else:
                    want = self._socket_interest(endpoint, conn)
            if want == endpoint.events:
                continue
            if endpoint.events and want:
                self.selector.modify(endpoint.stream, want, ("endpoint", None))
            elif want:
                self.selector.register(endpoint.stream, want, ("endpoint", None))
            else:
                self.selector.unregister(endpoint.stream)  # paused: the guest has no credit for us
            endpoint.events = want

    @staticmethod
    def _socket_interest(endpoint: Endpoint, conn: Connection) -> int:
        want = 0
        if endpoint.greeting or conn.inbox:
            want |= selectors.EVENT_WRITE
        if (
            not endpoint.eof_read
            and not endpoint.closing
            and conn.state is State.ESTABLISHED
            and not endpoint.greeting
            and len(conn.outbox) < OUTBOX_LIMIT
        ):
            want |= selectors.EVENT_READ
        return want

    @staticmethod
    def _passed_interest(endpoint: Endpoint, conn: Connection) -> int:
        passed = endpoint.passed
        assert passed is not None
        want = 0
        if conn.inbox and passed.writable:
            want |= selectors.EVENT_WRITE
        if endpoint.closing or conn.state is not State.ESTABLISHED:
            return want
        if passed.write_only:
            if not endpoint.broken:
                want |= selectors.EVENT_READ  # EPOLLIN never comes; EPOLLERR does when its reader goes
        elif passed.readable and not endpoint.eof_read and len(conn.outbox) < OUTBOX_LIMIT:
            want |= selectors.EVENT_READ
        return want


def connect_port(uds: str | Path, port: int, timeout: float = CONNECT_TIMEOUT) -> tuple[socket.socket, int]:
    """A CONNECT client: a socket joined to the guest's vsock ``port``, and the host port the guest
    sees it come from.

    Raises ConnectionRefusedError when the guest refuses or the back-end closes the socket.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(uds))
        sock.sendall(f"CONNECT {port}\n".encode())
        host_port = _read_ok(sock, uds, port, "CONNECT")
        sock.settimeout(None)
        return sock, host_port
    except BaseException:
        sock.close()
        raise


def connect(uds: str | Path, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A client of the convention: a socket joined to the guest's vsock ``port``.

    Raises ConnectionRefusedError when the guest refuses or the back-end closes the socket.
    """
    return connect_port(uds, port, timeout)[0]


def pass_fd(uds: str | Path, port: int, fd: int, keep: bool = False, timeout: float = CONNECT_TIMEOUT) -> int:
    """A passfd client (runtime-rs's): have the back-end join ``fd`` to the guest's vsock ``port``.

    Returns the host port the guest sees the stream come from. The back-end holds its own copy of
    ``fd`` from then on; the caller's copy stays the caller's to close. Raises ConnectionRefusedError
    when the guest refuses the port or the back-end does not take the descriptor.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(uds))
        sock.sendall(b"passfd\n")
        message = f"{port} keep" if keep else str(port)
        if socket.send_fds(sock, [message.encode()], [fd]) != len(message):
            raise ConnectionError(f"{uds}: short write of the passfd message for vsock port {port}")
        return _read_ok(sock, uds, port, "passfd")


def _read_ok(sock: socket.socket, uds: str | Path, port: int, command: str) -> int:
    """The host port from the back-end's ``OK <host-port>\\n``."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            why = " (or the back-end did not take the descriptor: see its log)" if command == "passfd" else ""
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"guest refused vsock port {port} via {uds}{why}")
        line += byte
        if len(line) > 64:
            raise ConnectionError(f"{uds}: bad answer to {command}: {bytes(line)!r}")
    words = line.split()
    if len(words) != 2 or words[0] != b"OK" or not words[1].isdigit():
        raise ConnectionError(f"{uds}: bad answer to {command}: {bytes(line)!r}")
    return int(words[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentctl.hvsock", description=__doc__.split("\n")[0])
    parser.add_argument("--vhost-socket", required=True, help="unix socket QEMU's vhost-user chardev connects to")
    parser.add_argument("--uds", required=True, help="hybrid vsock socket for host clients")
    parser.add_argument("--cid", type=int, default=DEFAULT_GUEST_CID, help="guest CID")
    parser.add_argument("--ready-fd", type=int, default=-1, help="write a line to this fd once listening")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s hvsock %(levelname)s %(message)s",
    )
    backend = HybridVsock(args.vhost_socket, args.uds, args.cid)
    signal.signal(signal.SIGTERM, lambda *_: backend.stop())
    signal.signal(signal.SIGINT, lambda *_: backend.stop())
    if args.ready_fd >= 0:
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    backend.serve()
    log.info("stats: %s", backend.stats)
    sys.exit(0)


if __name__ == "__main__":
    main()
