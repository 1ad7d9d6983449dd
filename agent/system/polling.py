"""Waiting for one descriptor to become readable, in the single-threaded places that do it (the fork
server, pykata-runc and its server): poll(2), which, unlike select(2), takes descriptors above
FD_SETSIZE. Interrupted by a signal, the wait goes on for the time left (PEP 475)."""

from __future__ import annotations

import select

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Protocol

    class HasFileno(Protocol):
        def fileno(self) -> int: ...


def readable(fd: int | HasFileno, timeout: float | None) -> bool:
    """Whether ``fd`` has something to read (data, its end or an error) within ``timeout`` seconds:
    None waits without a limit, 0 only looks. A fraction of a millisecond counts as a whole one."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))
