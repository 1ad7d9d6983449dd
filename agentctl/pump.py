"""A byte pump between two sockets, for agentctl's local relays (grpcio dials a unix socket; the relay
joins each of its connections to one dialled our way, e.g. vsock)."""

from __future__ import annotations

import contextlib
import selectors
import socket

_PUMP_CHUNK = 64 * 1024


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides have closed (half-closes are passed on)."""
    with selectors.DefaultSelector() as selector:
        peers = {a: b, b: a}
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)
        open_sides = 2
        while open_sides:
            for key, _ in selector.select():
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = source.recv(_PUMP_CHUNK)
                except OSError:
                    data = b""
                target = peers[source]
                if data:
                    try:
                        target.sendall(data)
                        continue
                    except OSError:
                        return
                selector.unregister(source)
                open_sides -= 1
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
