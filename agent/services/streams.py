"""Bounded output buffers for container stdio.

Each stdout/stderr (or pty) of a container process is drained into a ``StreamBuffer`` of at most
``limit`` bytes (``agent.output_buffer_limit``, 8 MiB by default) by the agent's reactor thread
(agent/system/reactor.py), which serves every buffer and status pipe. When the buffer is full the
reactor stops reading that descriptor, so the pipe fills and the process's next write blocks: output
is never dropped, and memory stays bounded when nobody calls ReadStdout; a read that makes room
lets the reactor read again. A read returns what is buffered (up to the requested length) as soon
as there is any, waits while there is none, and reports the end of the stream once the writer side
is closed and the buffer is empty.

The buffer owns its descriptor: it is closed at the stream's end or when the buffer is closed.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from agent.system.reactor import Reactor, default_reactor

READ_CHUNK = 64 * 1024
log = logging.getLogger(__name__)


class StreamBuffer:
    def __init__(self, fd: int, limit: int, name: str, reactor: Reactor | None = None) -> None:
        self.name = name
        self._fd = fd
        self._limit = max(1, limit)
        self._data = bytearray()
        self._eof = False  # the descriptor is closed: at the stream's end, or by close()
        self._closed = False
        self._paused = False  # full: the reactor waits for a read to make room
        self._cond = threading.Condition()
        os.set_blocking(fd, False)
        self._reactor = reactor or default_reactor()
        self._handler = self._readable  # one bound method: the reactor knows its handlers by identity
        self._reactor.add(fd, self._handler)

    def _readable(self) -> bool | None:
        """On the reactor's thread: take what the descriptor has, as far as there is room."""
        with self._cond:
            space = self._limit - len(self._data)
            if space <= 0:
                self._paused = True
                return None
        try:
            chunk = os.read(self._fd, min(READ_CHUNK, space))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: a pty whose last slave closed, its usual end
                log.warning("%s: read failed: %s", self.name, exc)
            chunk = b""
        if not chunk:
            self._reactor.remove(self._fd, self._handler)
            os.close(self._fd)
            with self._cond:
                self._eof = True
                self._cond.notify_all()
            return False
        with self._cond:
            self._data += chunk
            self._cond.notify_all()
            if len(self._data) >= self._limit:
                self._paused = True
                return None
        return True

    def read(self, length: int, timeout: float | None = None) -> bytes | None:
        """Up to ``length`` bytes; b"" when ``timeout`` passed with nothing; None at end of stream."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._data) or self._eof, timeout)
            if not self._data:
                return None if self._eof else b""
            taken = bytes(self._data[:length])
            del self._data[:length]
            resume = self._paused and not self._eof
            self._paused = False
        if resume:
            self._reactor.rearm(self._fd, self._handler)
        return taken

    @property
    def buffered(self) -> int:
        with self._cond:
            return len(self._data)

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._eof

    def close(self) -> None:
        """Stop reading, close the descriptor, drop what is buffered."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._reactor.remove(self._fd, self._handler)  # no handler runs from here on
        with self._cond:
            if not self._eof:
                os.close(self._fd)
                self._eof = True
            self._data.clear()
            self._cond.notify_all()
