"""One thread that waits on many descriptors and calls their handlers (epoll).

The agent reads every container process's status pipe and every stdout/stderr into buffers. A
thread per descriptor cost a thread start when a process was made, a wake-up and a join when it was
removed, and a stack each meanwhile; here one thread waits on all of them. Adding a descriptor is
an ``epoll_ctl`` that takes effect even while the thread waits: nobody has to be woken.

Each descriptor is registered one-shot: after an event its handler runs (on the reactor's thread,
under the reactor's lock) and returns True to be armed again, None to stay registered but disarmed
until ``rearm`` (a full buffer waits for its reader), or False to be dropped. Handlers must not
block: their descriptors are non-blocking, and a spurious call (an event that raced a ``remove``
whose descriptor number was then reused) reads EAGAIN. A handler may take its own locks; code that
holds such a lock must not call the reactor (the order is always reactor, then the handler's lock).

When ``remove`` returns, the handler is not running and will not run again for that descriptor, so
its owner may close it.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Handler = Callable[[], "bool | None"]
_ARMED = select.EPOLLIN | select.EPOLLONESHOT


class Reactor:
    def __init__(self, name: str = "reactor") -> None:
        self._name = name
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def add(self, fd: int, handler: Handler) -> None:
        """Call ``handler`` when ``fd`` is readable (or at its end or error)."""
        with self._lock:
            if fd in self._handlers:
                raise ValueError(f"descriptor {fd} is watched already")
            self._epoll.register(fd, _ARMED)
            self._handlers[fd] = handler
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def rearm(self, fd: int, handler: Handler) -> None:
        """Watch ``fd`` again after its handler returned None (if ``handler`` still owns it)."""
        with self._lock:
            if self._handlers.get(fd) is handler:
                self._epoll.modify(fd, _ARMED)

    def remove(self, fd: int, handler: Handler) -> None:
        """Stop watching ``fd`` (if ``handler`` still owns it); safe from a handler."""
        with self._lock:
            if self._handlers.get(fd) is handler:
                del self._handlers[fd]
                self._epoll.unregister(fd)

    def watched(self) -> int:
        with self._lock:
            return len(self._handlers)

    def _run(self) -> None:
        while True:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _mask in events:
                with self._lock:
                    handler = self._handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        keep = handler()
                    except Exception:
                        log.exception("%s: the handler of descriptor %d failed; it is watched no more", self._name, fd)
                        keep = False
                    if self._handlers.get(fd) is not handler:
                        continue  # the handler removed itself
                    if keep:
                        self._epoll.modify(fd, _ARMED)
                    elif keep is False:
                        del self._handlers[fd]
                        self._epoll.unregister(fd)


_default: Reactor | None = None
_default_lock = threading.Lock()


def default_reactor() -> Reactor:
    """The process's shared reactor (its thread starts with the first descriptor)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Reactor("io reactor")
        return _default
