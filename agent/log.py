"""Logging for the agent: one JSON object per line on stderr (the guest console).

With ``agent.log_vport`` the same lines also go to whoever connects to that vsock port.

Extra fields passed with ``log.info("...", extra={"address": ...})`` appear as keys of the line, so
the host side can filter on them without parsing the message.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import sys
import threading
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "source": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup(level: int, stream: TextIO | None = None) -> None:
    """Send every agent log record, as JSON lines, to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class StreamHandler(logging.Handler):
    """Serves the JSON log lines to whoever connects to ``listener`` (agent.log_vport).

    Lines logged while nobody is connected wait in a bounded buffer (the oldest are dropped), so the
    host sees the boot's log once it connects; one reader at a time, a new connection replaces the old.
    """

    def __init__(self, listener: socket.socket, buffered_lines: int = 2000) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self._listener = listener
        self._buffer: collections.deque[bytes] = collections.deque(maxlen=buffered_lines)
        self._lock = threading.Lock()
        self._reader: socket.socket | None = None
        self._thread = threading.Thread(target=self._accept, name="log-stream", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode()
        except Exception:
            self.handleError(record)
            return
        with self._lock:
            if self._reader is not None:
                try:
                    self._reader.sendall(line)
                    return
                except OSError:
                    self._reader.close()
                    self._reader = None
            self._buffer.append(line)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            conn.settimeout(5.0)  # a reader that stops reading must not stall the agent's logging
            with self._lock:
                if self._reader is not None:
                    self._reader.close()
                try:
                    conn.sendall(b"".join(self._buffer))
                    self._buffer.clear()
                    self._reader = conn
                except OSError:
                    conn.close()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        super().close()


def stream_to(listener: socket.socket) -> StreamHandler:
    """Also send every log record to the connection accepted on ``listener``."""
    handler = StreamHandler(listener)
    logging.getLogger().addHandler(handler)
    return handler


def vsock_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    sock.listen(1)
    return sock
