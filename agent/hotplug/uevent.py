"""Kernel uevents: parse them and hand them to whoever waits for a device.

The kernel announces every device it adds or removes on a NETLINK_KOBJECT_UEVENT socket, multicast
group 1, one datagram per event::

    add@/devices/system/cpu/cpu3\\0ACTION=add\\0DEVPATH=/devices/system/cpu/cpu3\\0SUBSYSTEM=cpu\\0SEQNUM=1789\\0

Usage (one listener per agent, shared by hotplug and storage)::

    listener = shared_listener()                # starts a reader thread on the netlink socket
    sub = listener.subscribe(match(action="add", subsystem="block"))
    event = sub.get(timeout=3.0)                # a Uevent, or None when the time is up
    sub.close()

    # or be called in the reader thread (keep it short: set an Event, put in a queue):
    sub = listener.subscribe(match(action="add", subsystem="cpu"), callback=lambda ev: wake.set())

Tests and benchmarks build ``UeventListener(source)`` on any datagram socket (a socketpair stands in
for netlink), or ``UeventListener(None)`` and call ``inject(event)``. Subscribing before looking at
sysfs and looking again after every event is race-free; the listener keeps no history.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
UEVENT_KERNEL_GROUP = 1  # group 2 is udev's re-broadcast, which starts with "libudev\0"
UEVENT_BUFFER_SIZE = 64 * 1024  # a uevent is at most a page of text; this is room for one datagram
SOCKET_RCVBUF = 4 * 1024 * 1024  # hot-adding gigabytes of memory sends one event per block
SUBSCRIPTION_QUEUE_LIMIT = 1024
SO_RCVBUFFORCE = 33  # not exported by Python's socket module


@dataclass(frozen=True)
class Uevent:
    action: str  # add, remove, change, move, online, offline, bind, unbind
    devpath: str  # /devices/system/cpu/cpu3 (relative to /sys)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def subsystem(self) -> str:
        return self.env.get("SUBSYSTEM", "")

    @property
    def devname(self) -> str:
        """DEVNAME (``vda``, ``vda1``) for devices with a node under /dev, else ""."""
        return self.env.get("DEVNAME", "")

    @property
    def seqnum(self) -> int:
        text = self.env.get("SEQNUM", "")
        return int(text) if text.isdigit() else 0

    @property
    def name(self) -> str:
        """The last part of the device path: ``cpu3``, ``memory32``, ``vda``."""
        return self.devpath.rsplit("/", 1)[-1]

    def encode(self) -> bytes:
        """The kernel's wire format (used to inject events in tests and benchmarks)."""
        env = {"ACTION": self.action, "DEVPATH": self.devpath, **self.env}
        fields = [f"{self.action}@{self.devpath}"] + [f"{key}={value}" for key, value in env.items()]
        return ("\0".join(fields) + "\0").encode()


def parse_uevent(data: bytes) -> Uevent | None:
    """One datagram as a Uevent; None for anything that is not a kernel uevent (udev's "libudev"
    messages, garbage). Never raises on malformed input."""
    if not data or data.startswith(b"libudev\0"):
        return None
    fields = data.decode("utf-8", errors="replace").split("\0")
    header = fields[0]
    action, at, devpath = header.partition("@")
    if not at or not action or not devpath.startswith("/"):
        return None
    env: dict[str, str] = {}
    for item in fields[1:]:
        key, equals, value = item.partition("=")
        if equals and key:
            env[key] = value
    env.setdefault("ACTION", action)
    env.setdefault("DEVPATH", devpath)
    return Uevent(action=env["ACTION"], devpath=env["DEVPATH"], env=env)


Predicate = Callable[[Uevent], bool]


def match(*, action: str | None = None, subsystem: str | None = None, devpath_prefix: str | None = None) -> Predicate:
    """A predicate on the given fields (those left None match anything)."""

    def predicate(event: Uevent) -> bool:
        return (
            (action is None or event.action == action)
            and (subsystem is None or event.subsystem == subsystem)
            and (devpath_prefix is None or event.devpath.startswith(devpath_prefix))
        )

    return predicate


class Subscription:
    """Events that matched one predicate. Either queued (``get``) or passed to a callback."""

    def __init__(
        self,
        listener: UeventListener,
        predicate: Predicate,
        callback: Callable[[Uevent], None] | None,
        limit: int,
    ) -> None:
        self._listener = listener
        self.predicate = predicate
        self.callback = callback
        self._queue: queue.Queue[Uevent] = queue.Queue(maxsize=limit)
        self.dropped = 0  # events lost because nobody read the queue: look at sysfs again

    def deliver(self, event: Uevent) -> None:
        if self.callback is not None:
            self.callback(event)
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def get(self, timeout: float | None = None) -> Uevent | None:
        """The next matching event, or None when ``timeout`` seconds pass first."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._listener.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class UeventListener:
    """Reads uevents from a datagram socket in one thread and hands each to the matching subscriptions.

    ``source`` is the socket to read (``open_netlink_socket()`` in the agent; one end of a socketpair in
    tests) or None for a listener that only gets what ``inject`` gives it.
    """

    def __init__(self, source: socket.socket | None) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._thread: threading.Thread | None = None
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.received = 0

    def subscribe(
        self,
        predicate: Predicate,
        *,
        callback: Callable[[Uevent], None] | None = None,
        limit: int = SUBSCRIPTION_QUEUE_LIMIT,
    ) -> Subscription:
        subscription = Subscription(self, predicate, callback, limit)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    def inject(self, event: Uevent) -> None:
        """Deliver ``event`` as if it had been received (in the caller's thread)."""
        with self._lock:
            self.received += 1
            targets = [s for s in self._subscriptions if s.predicate(event)]
        for subscription in targets:
            try:
                subscription.deliver(event)
            except Exception:  # a subscriber's bug must not stop the reader thread
                log.exception("uevent subscriber failed on %s %s", event.action, event.devpath)

    def start(self) -> UeventListener:
        if self._source is None or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._read_loop, name="uevent-listener", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """End the reader thread and close the socket."""
        thread = self._thread
        if thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_write, b"x")
            thread.join()
            self._thread = None
        if self._source is not None:
            self._source.close()
            self._source = None
        for fd in (self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_read = self._stop_write = -1

    def _read_loop(self) -> None:
        source = self._source
        assert source is not None
        poller = select.poll()
        poller.register(source.fileno(), select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_read in ready:
                return
            try:
                data, sender = source.recvfrom(UEVENT_BUFFER_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    log.error("uevent socket is gone (%s): device waits fall back to polling sysfs", exc)
                    return
                # ENOBUFS: the kernel dropped events while we were slow; subscribers re-scan anyway.
                log.warning("uevent socket: %s; some events were lost", exc)
                continue
            if source.family == socket.AF_NETLINK and isinstance(sender, tuple) and sender[0] != 0:
                continue  # only the kernel (port id 0) speaks for devices
            event = parse_uevent(data)
            if event is not None:
                self.inject(event)


def open_netlink_socket() -> socket.socket:
    """A socket bound to the kernel's uevent multicast group. Raises OSError when the kernel has none
    (CONFIG_NET missing) or we may not bind it."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT)
    try:
        with contextlib.suppress(OSError):
            # SO_RCVBUFFORCE needs CAP_NET_ADMIN (the agent has it as PID 1); fall back to the capped one.
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_RCVBUF)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < SOCKET_RCVBUF:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        sock.bind((0, UEVENT_KERNEL_GROUP))
    except OSError:
        sock.close()
        raise
    return sock


_shared: UeventListener | None = None
_shared_lock = threading.Lock()


def shared_listener() -> UeventListener:
    """The agent's one netlink listener, started on first use. Where the kernel offers no uevent
    socket it returns a listener that never receives anything (callers re-scan sysfs anyway)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            try:
                source: socket.socket | None = open_netlink_socket()
            except OSError as exc:
                log.warning("no kernel uevent socket (%s): device waits fall back to polling sysfs", exc)
                source = None
            _shared = UeventListener(source).start()
        return _shared
