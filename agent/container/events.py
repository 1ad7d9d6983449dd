"""What the engine knows of one forked process, from the events on its status pipe.

The shim and the container process (agent/container/init.py) write JSON lines on the status pipe:
``{"pid": N, "shim": M}``, ``{"mounted": true}``, ``{"created": true}``, ``{"started": true}``,
``{"error": "..."}`` and ``{"exit": code}``; the pipe's end means both are gone. ``ProcessEvents``
keeps that state and the control pipe. Two handles read the pipe for it: the agent's
(forkserver.ProcessHandle, on the reactor thread, waiters on a condition) and pykata-runc's
(cli_backend.LocalProcessHandle, which reads when asked, for a single-threaded command). This module
imports nothing heavy: the CLI's cold start goes through it.
"""

from __future__ import annotations

import os
import time

from agent.system import jsonlite

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

ENDED_UNREPORTED = "the container's setup process ended before it reported"


class ProcessEvents:
    def __init__(self, status_fd: int, control_fd: int | None, description: str) -> None:
        self.description = description
        self.pid = 0
        self.shim_pid = 0
        self.created = False
        self.mounted = False  # the process made its mounts and waits for the runtime's hooks
        self.started = False  # the process ran its startContainer hooks and is about to execve
        self.error: str | None = None
        self._exit: int | None = None
        self._status_fd = status_fd
        self._control_fd = control_fd
        self._eof = False
        self._partial = b""  # the start of a line the pipe has not finished yet
        self.timeline: dict[str, float] = {"spawn": time.monotonic()}  # when each event arrived

    @property
    def exit_code(self) -> int | None:
        return self._exit

    def _events(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        """The events whose lines ``chunk`` completes, in order; ValueError at a line that is not JSON
        (the events before it have been given)."""
        self._partial += chunk
        while b"\n" in self._partial:
            line, self._partial = self._partial.split(b"\n", 1)
            yield jsonlite.loads(line)

    def _apply(self, event: dict[str, Any]) -> None:
        """Take one event in (the caller holds whatever guards this state)."""
        now = time.monotonic()
        for key in event:
            self.timeline.setdefault(key, now)
        if "pid" in event:
            self.pid = int(event["pid"])
        if "shim" in event:
            self.shim_pid = int(event["shim"])
        if event.get("created"):
            self.created = True
        if event.get("mounted"):
            self.mounted = True
        if event.get("started"):
            self.started = True
        if "error" in event:
            self.error = str(event["error"])
        if "exit" in event:
            self._exit = int(event["exit"])

    def _ended(self) -> None:
        """The status pipe's end: the shim and the process are gone. Without an exit report the shim
        was killed: nothing more will come."""
        self._eof = True
        if self._exit is None:
            self._exit = 255
            if self.error is None and not self.created:
                self.error = ENDED_UNREPORTED

    def _ready(self, what: str) -> bool:
        """Whether ``pid``, ``mounted``, ``created``, ``started`` (or an error or the end), ``closed``
        (the pipe's end) or ``exit`` is known."""
        ended = self._exit is not None or self.error is not None
        if what == "pid":
            return self.pid > 0 or ended
        if what == "started":
            return self.started or ended
        if what in ("mounted", "created"):
            # the shim reports the pid and the process reports "mounted" and "created", on one pipe
            # but from two processes, in either order: each means the pid has arrived too (the
            # runtime's hooks at "mounted" get a state with the pid)
            return (bool(getattr(self, what)) and self.pid > 0) or ended
        if what == "closed":
            return self._eof
        return self._exit is not None

    def control(self, message: bytes) -> None:
        if self._control_fd is None:
            return
        try:
            os.write(self._control_fd, message)
        except BrokenPipeError:
            pass  # the process is gone; its exit event tells the rest

    def close_control(self) -> None:
        if self._control_fd is not None:
            os.close(self._control_fd)
            self._control_fd = None
