"""Hybrid vsock: a vhost-user-vsock back-end that joins a guest's AF_VSOCK to unix sockets.

QEMU serves the guest a ``vhost-user-vsock-pci`` device whose queues we process here (rx=0,
tx=1, event=2). The host side follows the hybrid vsock convention of Firecracker and Cloud
Hypervisor, which Kata's runtime speaks:

- a host client connects to the unix socket ``UDS``, writes ``CONNECT <port>\\n`` and reads
  ``OK <host-port>\\n``; after that its bytes flow to the guest's AF_VSOCK port. When the guest
  refuses (RST) or does not answer within the connect timeout, the client socket is closed.
- a guest connection to CID 2 port P is joined to the unix listener at ``UDS_P``; when nothing
  listens there the guest gets RST.

One thread runs everything with ``selectors``. Run it as a process:
``python -m agentctl.hvsock --vhost-socket VHOST --uds UDS [--cid 3]``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentctl.vhost_user import VHOST_USER_GET_VRING_BASE, ProtocolError, VhostUserDevice, recv_message, send_reply
from agentctl.virtio_vsock import (
    HEADER_SIZE,
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
HANDSHAKE_LIMIT = 512  # bytes of a CONNECT line
READ_CHUNK = 64 * 1024
OUTBOX_LIMIT = 256 * 1024  # host bytes buffered per connection beyond what the guest took


@dataclass
class Endpoint:
    """The host end of one connection: a unix socket and where it is in the handshake."""

    sock: socket.socket
    conn: Connection | None = None
    handshake: bytearray | None = None  # CONNECT line being read (host-initiated only)
    greeting: bytearray = field(default_factory=bytearray)  # "OK <port>\n" still to write
    deadline: float | None = None
    eof_read: bool = False  # the client will send nothing more
    eof_written: bool = False  # we shut down its write side after the guest's EOF
    closing: bool = False  # the vsock side is gone; flush the inbox, then close
    events: int = 0


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
                endpoint.greeting += f"OK {conn.host_port}\n".encode()
            elif event is Event.REFUSED:
                log.info("guest refused port %d", conn.guest_port)
                self._drop(endpoint)
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
        try:
            data = endpoint.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("host socket read failed: %s", exc)
            self._abort(endpoint)
            return
        if endpoint.handshake is not None:
            self._handshake(endpoint, data)
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

    def _handshake(self, endpoint: Endpoint, data: bytes) -> None:
        assert endpoint.handshake is not None
        if not data:
            self._drop(endpoint)
            return
        endpoint.handshake += data
        line, newline, rest = bytes(endpoint.handshake).partition(b"\n")
        if not newline:
            if len(endpoint.handshake) > HANDSHAKE_LIMIT:
                log.warning("host client sent %d bytes without a CONNECT line", len(endpoint.handshake))
                self._drop(endpoint)
            return
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit() or int(words[1]) > 0xFFFFFFFF:
            log.warning("host client sent %r; expected 'CONNECT <port>'", line[:80])
            self._drop(endpoint)
            return
        endpoint.handshake = None
        conn = self.mux.connect(int(words[1]))
        conn.handle = endpoint
        endpoint.conn = conn
        if rest:
            self.mux.send(conn, rest)

    def _writable(self, endpoint: Endpoint) -> None:
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

    def _drop(self, endpoint: Endpoint) -> None:
        fd = endpoint.sock.fileno()
        if fd >= 0 and self.endpoints.pop(fd, None) is not None and endpoint.events:
            try:
                self.selector.unregister(endpoint.sock)
            except (KeyError, ValueError):
                pass
        endpoint.sock.close()
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
            if want == endpoint.events:
                continue
            if endpoint.events and want:
                self.selector.modify(endpoint.sock, want, ("endpoint", None))
            elif want:
                self.selector.register(endpoint.sock, want, ("endpoint", None))
            else:
                self.selector.unregister(endpoint.sock)  # paused: the guest has no credit for us
            endpoint.events = want


def connect(uds: str | Path, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A client of the convention: a socket joined to the guest's vsock ``port``.

    Raises ConnectionRefusedError when the guest refuses or the back-end closes the socket.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(uds))
        sock.sendall(f"CONNECT {port}\n".encode())
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"guest refused vsock port {port} via {uds}")
            line += byte
            if len(line) > 64:
                raise ConnectionError(f"{uds}: bad answer to CONNECT: {bytes(line)!r}")
        if not line.startswith(b"OK "):
            raise ConnectionError(f"{uds}: bad answer to CONNECT: {bytes(line)!r}")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


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
