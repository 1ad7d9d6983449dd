"""Bounded output buffers for container stdio.

Each stdout/stderr (or pty) of a container process gets one reader thread that drains the pipe into
a ``StreamBuffer`` of at most ``limit`` bytes (``agent.output_buffer_limit``, 8 MiB by default). When
the buffer is full the thread stops reading, so the pipe fills and the process's next write blocks:
output is never dropped, and memory stays bounded when nobody calls ReadStdout. A read returns what
is buffered (up to the requested length) as soon as there is any, waits while there is none, and
reports the end of the stream once the writer side is closed and the buffer is empty.

The reader thread owns its descriptor and closes it at EOF or when the buffer is closed.
"""

from __future__ import annotations

import errno
import os
import select
import threading

READ_CHUNK = 64 * 1024


class StreamBuffer:
    def __init__(self, fd: int, limit: int, name: str) -> None:
        self.name = name
        self._fd = fd
        self._limit = max(1, limit)
        self._data = bytearray()
        self._eof = False
        self._closing = False
        self._cond = threading.Condition()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._drain, name=f"stream {name}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closing or len(self._data) < self._limit)
                    if self._closing:
                        return
                    space = self._limit - len(self._data)
                # poll, not select: the agent may hold more than FD_SETSIZE (1024) descriptors
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_r in ready:
                    return
                try:
                    chunk = os.read(self._fd, min(READ_CHUNK, space))
                except InterruptedError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:  # a pty whose last slave closed
                        return
                    raise
                if not chunk:
                    return
                with self._cond:
                    self._data += chunk
                    self._cond.notify_all()
        finally:
            os.close(self._fd)
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def read(self, length: int, timeout: float | None = None) -> bytes | None:
        """Up to ``length`` bytes; b"" when ``timeout`` passed with nothing; None at end of stream."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._data) or self._eof, timeout)
            if self._data:
                taken = bytes(self._data[:length])
                del self._data[:length]
                self._cond.notify_all()
                return taken
            return None if self._eof else b""

    @property
    def buffered(self) -> int:
        with self._cond:
            return len(self._data)

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._eof

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading, close the descriptor, drop what is buffered."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout)
        os.close(self._wake_r)
        os.close(self._wake_w)
        with self._cond:
            self._data.clear()
