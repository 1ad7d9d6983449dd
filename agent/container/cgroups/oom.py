"""OOM kills of containers, from one thread that waits on every container's OOM source at once.

- v2: ``memory.events`` is watched with inotify (the kernel signals IN_MODIFY when a count changes);
  an event is reported when its ``oom_kill`` count goes up.
- v1: an eventfd registered on ``memory.oom_control`` through ``cgroup.event_control``. The kernel also
  signals that eventfd when the cgroup is removed, so an event is reported only when the cgroup still
  exists and, where ``memory.oom_control`` shows ``oom_kill`` (kernel 4.13+), that count went up.

Events go to the optional callback (on the watcher's thread) and to a queue read by ``next_event``.
"""

from __future__ import annotations

import _struct
import contextlib
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import AlreadyExists, ResourceError, Unsupported
from agent.system import libc, sysfs
from agent.system.paths import HostPaths

from .manager import CgroupManager
from .stats import flat_keyed

log = logging.getLogger(__name__)

INOTIFY_EVENT = _struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
# The queue of unread events is bounded: GetOOMEvent readers that stop reading cost at most this many ids.
MAX_PENDING = 1024
# v1 signals the eventfd when the OOM starts, before the kill is counted: re-read the count this often,
# for at most this long, then report the OOM anyway (the OOM killer may be disabled for the cgroup).
RECHECK_INTERVAL = 0.02
RECHECK_FOR = 1.0


@dataclass
class _Watch:
    container_id: str
    events_file: str  # memory.events (v2) or memory.oom_control (v1)
    count: int
    wd: int = -1  # v2 inotify watch
    eventfd: int = -1  # v1
    control_fd: int = -1  # v1 memory.oom_control, kept open while registered


def _oom_kills(path: str) -> int:
    return flat_keyed(path).get("oom_kill", 0)


class OomWatcher:
    def __init__(self, paths: HostPaths | None = None, callback: Callable[[str], None] | None = None) -> None:
        # ``paths`` is accepted for symmetry with the rest of the package: the watched files come
        # from each container's manager, which derived them from its HostPaths.
        self.callback = callback
        self._events: queue.Queue[str] = queue.Queue(MAX_PENDING)
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._inotify = -1
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._rechecks: dict[str, float] = {}  # container id -> deadline (watcher thread only)

    # --- public API

    def add(self, container_id: str, manager: CgroupManager) -> None:
        """Start watching ``container_id``'s cgroup (which must exist, with a memory controller)."""
        memory = manager.memory_dir()
        if memory is None:
            raise Unsupported(f"container {container_id}: no memory cgroup controller, so no OOM events")
        with self._lock:
            if container_id in self._watches:
                raise AlreadyExists(f"container {container_id} is watched for OOM already")
            watch = (
                self._watch_v2(container_id, memory) if manager.version == 2 else self._watch_v1(container_id, memory)
            )
            self._watches[container_id] = watch
        self._start()
        self._wake()

    def remove(self, container_id: str) -> None:
        """Stop watching; when this returns the watch's descriptors are closed.

        The watcher thread may still be polling them: a poll holds its own reference to each file,
        and the thread reads a watch's eventfd only under the lock, after checking the watch is still
        there, so a descriptor number reused meanwhile is never read as this watch's."""
        with self._lock:
            watch = self._watches.pop(container_id, None)
            if watch is not None:
                self._release(watch)

    def next_event(self, timeout: float | None = None) -> str | None:
        """The id of the next container with an OOM kill, or None after ``timeout`` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def watched(self) -> list[str]:
        with self._lock:
            return sorted(self._watches)

    def close(self) -> None:
        self._closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for watch in self._watches.values():
                self._release(watch)
            self._watches.clear()
        for fd in (self._inotify, self._wake_read, self._wake_write):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._inotify = self._wake_read = self._wake_write = -1

    # --- registration

    def _watch_v2(self, container_id: str, memory: str) -> _Watch:
        events = f"{memory}/memory.events"
        if not os.path.exists(events):
            raise Unsupported(f"container {container_id}: {events} is missing (memory controller not enabled?)")
        if self._inotify < 0:
            self._inotify = libc.inotify_init1()
        wd = libc.inotify_add_watch(self._inotify, events, libc.IN_MODIFY)
        return _Watch(container_id, events, _oom_kills(events), wd=wd)

    def _watch_v1(self, container_id: str, memory: str) -> _Watch:
        control = f"{memory}/memory.oom_control"
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            cfd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(efd)
            raise Unsupported(f"container {container_id}: cannot open {control}: {exc.strerror}") from exc
        try:
            sysfs.write(f"{memory}/cgroup.event_control", f"{efd} {cfd}")
        except OSError as exc:
            os.close(efd)
            os.close(cfd)
            raise ResourceError(
                f"container {container_id}: cannot register for OOM events in {memory}/cgroup.event_control: "
                f"{exc.strerror}"
            ) from exc
        return _Watch(container_id, control, _oom_kills(control), eventfd=efd, control_fd=cfd)

    def _release(self, watch: _Watch) -> None:
        if watch.wd >= 0 and self._inotify >= 0:
            with contextlib.suppress(OSError):  # gone already when the cgroup was removed
                libc.inotify_rm_watch(self._inotify, watch.wd)
        for fd in (watch.eventfd, watch.control_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        watch.wd = watch.eventfd = watch.control_fd = -1

    # --- the thread

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="oom-watcher", daemon=True)
                self._thread.start()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    def _run(self) -> None:
        while not self._closed:
            poller = select.poll()
            poller.register(self._wake_read, select.POLLIN)
            with self._lock:
                if self._inotify >= 0:
                    poller.register(self._inotify, select.POLLIN)
                by_eventfd = {w.eventfd: w for w in self._watches.values() if w.eventfd >= 0}
                for fd in by_eventfd:
                    poller.register(fd, select.POLLIN)
            timeout = RECHECK_INTERVAL * 1000 if self._rechecks else None
            try:
                ready = poller.poll(timeout)
            except InterruptedError:
                continue
            self._recheck()
            for fd, _mask in ready:
                try:
                    if fd == self._wake_read:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_read, 4096)
                    elif fd == self._inotify:
                        self._on_inotify()
                    elif fd in by_eventfd:
                        self._on_eventfd(by_eventfd[fd])
                except Exception:  # the watcher must outlive one bad source
                    log.exception("OOM watcher: handling fd %d failed", fd)

    def _on_inotify(self) -> None:
        try:
            data = os.read(self._inotify, 65536)
        except (BlockingIOError, OSError):
            return
        changed: set[int] = set()
        offset = 0
        while offset + INOTIFY_EVENT.size <= len(data):
            wd, _mask, _cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
            offset += INOTIFY_EVENT.size + length
            changed.add(wd)
        with self._lock:
            hits = [w for w in self._watches.values() if w.wd in changed]
        for watch in hits:
            self._check(watch)

    def _on_eventfd(self, watch: _Watch) -> None:
        with self._lock:  # remove() closes the eventfd under the lock: read it only while it is the watch's
            if self._watches.get(watch.container_id) is not watch:
                return  # removed meanwhile
            try:
                os.eventfd_read(watch.eventfd)
            except (BlockingIOError, OSError):
                return
        if not os.path.isdir(os.path.dirname(watch.events_file)):  # the cgroup was removed
            self.remove(watch.container_id)
            return
        try:
            with open(watch.events_file) as stream:
                text = stream.read()
        except FileNotFoundError:
            text = ""
        if "oom_kill " not in text:  # kernels before 4.13 have no count: the eventfd is the event
            self._report(watch.container_id)
            return
        if not self._check(watch):
            self._rechecks[watch.container_id] = time.monotonic() + RECHECK_FOR

    def _recheck(self) -> None:
        now = time.monotonic()
        for container_id, deadline in list(self._rechecks.items()):
            with self._lock:
                watch = self._watches.get(container_id)
            if watch is None or self._check(watch):
                del self._rechecks[container_id]
            elif now >= deadline:
                del self._rechecks[container_id]
                self._report(container_id)

    def _check(self, watch: _Watch) -> bool:
        """Report when the kill count went up; True when it did."""
        try:
            count = _oom_kills(watch.events_file)
        except OSError:
            return False
        if count > watch.count:
            watch.count = count
            self._report(watch.container_id)
            return True
        return False

    def _report(self, container_id: str) -> None:
        log.info("container %s: OOM kill", container_id)
        try:
            self._events.put_nowait(container_id)
        except queue.Full:
            log.warning("OOM event queue full (%d): dropping the event of %s", MAX_PENDING, container_id)
        if self.callback is not None:
            try:
                self.callback(container_id)
            except Exception:
                log.exception("OOM callback failed for container %s", container_id)
