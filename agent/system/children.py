"""Who reaps which child when the agent is PID 1.

PID 1 inherits every orphan and must reap it, but it must not steal the exit status of a child that
agent code spawned and will wait for itself (subprocess would then see ECHILD). Agent code that starts a
process it will wait for does so inside ``spawning()``: the pid is registered under the same lock the
reaper takes, so the reaper never sees an unregistered child of ours. Everything else that turns into a
zombie under us is an orphan and is reaped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_owned: set[int] = set()


@contextlib.contextmanager
def spawning() -> Iterator[Callable[[int], None]]:
    """Hold the reaper off while a child is started; call the yielded function with its pid."""
    with _lock:
        yield _owned.add


def release(pid: int) -> None:
    """The owner has waited for ``pid``; the reaper may forget it."""
    with _lock:
        _owned.discard(pid)


def owned() -> frozenset[int]:
    with _lock:
        return frozenset(_owned)


def zombie_children(proc: str | os.PathLike[str], parent: int) -> list[int]:
    """Pids of the zombies whose parent is ``parent`` (``proc``: where procfs is mounted)."""
    base = os.fspath(proc)
    found = []
    for name in os.listdir(base):
        if not name.isdigit():
            continue
        try:
            with open(f"{base}/{name}/stat") as stream:
                stat = stream.read()
        except OSError:
            continue
        # "pid (comm) S ppid ...": comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2 and fields[0] == "Z" and int(fields[1]) == parent:
            found.append(int(name))
    return found


def reap_orphans(proc: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """Reap every zombie child that no agent code owns; return (pid, status) of each."""
    reaped = []
    with _lock:
        for pid in zombie_children(proc, os.getpid()):
            if pid in _owned:
                continue
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if got:
                reaped.append((got, status))
    for pid, status in reaped:
        log.debug("reaped orphan %d (status %d)", pid, os.waitstatus_to_exitcode(status))
    return reaped


def stop(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """End a process we started: SIGTERM, then SIGKILL after ``timeout`` seconds; reaped either way."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
