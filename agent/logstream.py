"""Stream the agent's JSON log lines to a vsock port of the host (``agent.log_vport``).

In the guest the agent connects out to the host (CID 2) on that port; with hybrid vsock the host's
back-end joins the connection to the unix listener ``UDS_<port>``, where ``agentctl logs`` reads.
The handler never blocks or fails the agent: lines go into a bounded queue that a daemon thread
sends; when nobody listens it retries once a second and drops the oldest lines, then reports how
many it dropped.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable

from agent.config import AgentConfig

VMADDR_CID_HOST = 2
QUEUE_LIMIT = 10000
RETRY_INTERVAL = 1.0
CONNECT_TIMEOUT = 2.0

Connector = Callable[[], socket.socket]


def vsock_connector(port: int, cid: int = VMADDR_CID_HOST) -> Connector:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect((cid, port))
        except OSError:
            sock.close()
            raise
        return sock

    return connect


class StreamLogHandler(logging.Handler):
    """Sends formatted records, one per line, to whatever ``connect`` returns, from a thread."""

    def __init__(self, connect: Connector, limit: int = QUEUE_LIMIT, retry_interval: float = RETRY_INTERVAL) -> None:
        super().__init__()
        self.connect = connect
        self.retry_interval = retry_interval
        self.lines: collections.deque[bytes] = collections.deque()
        self.limit = limit
        self.dropped = 0
        self._cond = threading.Condition()
        self._closed = False
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="log-stream", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode(errors="replace") + b"\n"
        except Exception:
            self.handleError(record)
            return
        with self._cond:
            if len(self.lines) >= self.limit:
                self.lines.popleft()
                self.dropped += 1
            self.lines.append(line)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)
        super().close()

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is sent (or ``timeout``); True when it is empty."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.lines and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return not self.lines

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.lines and not self._closed:
                    self._cond.wait()
                if self._closed and (not self.lines or self._sock is None):
                    break
                wait = self._retry_at - time.monotonic()
                if wait > 0 and not self._closed:
                    self._cond.wait(wait)  # new lines must not hurry a reconnect
                    continue
                batch = b"".join(self.lines)
                count = len(self.lines)
                dropped, self.dropped = self.dropped, 0
            if dropped:
                notice = {"level": "warning", "source": __name__, "msg": f"{dropped} log lines dropped"}
                batch = json.dumps(notice).encode() + b"\n" + batch
            if self._send(batch):
                with self._cond:
                    for _ in range(min(count, len(self.lines))):
                        self.lines.popleft()
                    self._cond.notify_all()
            else:
                with self._cond:
                    self.dropped += dropped
                    if self._closed:
                        break
                    self._retry_at = time.monotonic() + self.retry_interval
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, data: bytes) -> bool:
        try:
            if self._sock is None:
                self._sock = self.connect()
                self._sock.settimeout(CONNECT_TIMEOUT)
            self._sock.sendall(data)
            return True
        except OSError:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None
            return False


def install_log_stream(config: AgentConfig, connect: Connector | None = None) -> StreamLogHandler | None:
    """Add the vsock log handler to the root logger when ``agent.log_vport`` is set.

    Call it after the agent's logging setup (which replaces the root logger's handlers).
    """
    if not config.log_vport:
        return None
    from agent.log import JsonFormatter  # the same line format as the console

    handler = StreamLogHandler(connect or vsock_connector(config.log_vport))
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    return handler
