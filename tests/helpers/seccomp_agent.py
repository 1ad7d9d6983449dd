"""A seccomp agent for the tests of SCMP_ACT_NOTIFY (runtime-spec's listenerPath): it takes each
container process state with its notify listener and answers the calls notified through it."""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any


class SeccompAgent:
    """A seccomp agent for the tests, at the unix socket ``path``: it takes each container process state
    with its notify listener (``states``: the message and how many descriptors came), and answers
    every call notified through it as a success that did nothing (``calls``: their syscall numbers)."""

    RECV = 0xC0502100  # SECCOMP_IOCTL_NOTIF_RECV: _IOWR('!', 0, struct seccomp_notif)
    SEND = 0xC0182101  # SECCOMP_IOCTL_NOTIF_SEND: _IOWR('!', 1, struct seccomp_notif_resp)
    NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, then seccomp_data: nr, arch, ip, args[6]
    RESPONSE = struct.Struct("=QqiI")  # id, val, error, flags

    def __init__(self, path: Path) -> None:
        self.states: list[tuple[dict[str, Any], int]] = []
        self.calls: list[int] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data, fds, _flags, _address = socket.recv_fds(conn, 65536, 4)
            self.states.append((json.loads(data), len(fds)))
            for extra in fds[1:]:
                os.close(extra)
            if fds:
                answering = threading.Thread(target=self._answer, args=(fds[0],), daemon=True)
                answering.start()
                self.threads.append(answering)

    def _answer(self, listener: int) -> None:
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        try:
            while True:
                events = poller.poll(10_000)
                if not events or events[0][1] & (select.POLLHUP | select.POLLERR):
                    return  # every process under the filter has ended
                notification = bytearray(self.NOTIF.size)
                try:
                    fcntl.ioctl(listener, self.RECV, notification, True)
                except OSError:
                    continue  # the caller went away meanwhile
                call_id, _pid, _flags, nr = self.NOTIF.unpack(notification)[:4]
                self.calls.append(nr)
                try:
                    fcntl.ioctl(listener, self.SEND, bytearray(self.RESPONSE.pack(call_id, 0, 0, 0)), True)
                except OSError:
                    pass  # interrupted: nobody waits for the answer
        finally:
            os.close(listener)

    def wait_states(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, Any], int]]:
        """The states taken, once there are ``count`` (the runtime's send returns before we read it)."""
        deadline = time.monotonic() + timeout
        while len(self.states) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.states

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # (wakes the accept; a close alone would not)
        self.server.close()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "the seccomp agent's thread did not end"
