"""The uevent listener on the kernel's real NETLINK_KOBJECT_UEVENT socket.

A veth pair created in a network namespace of our own makes the kernel send real "add" uevents, and
the kernel delivers a namespace's device events to uevent sockets opened in that namespace, so the
host sees nothing. The namespace is deleted at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.hotplug.uevent import SOCKET_RCVBUF, UeventListener, match, open_netlink_socket
from agent.system import libc
from tests.conftest import require_root


@pytest.fixture
def netns() -> Iterator[str]:
    require_root()
    name = f"pykata-uevent-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def socket_in(netns: str) -> socket.socket:
    """A uevent socket opened by a thread that joined ``netns`` (setns moves only the calling thread)."""
    opened: list[socket.socket | BaseException] = []

    def open_there() -> None:
        try:
            fd = os.open(Path("/run/netns") / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(fd, libc.CLONE_NEWNET, f"/run/netns/{netns}")
            finally:
                os.close(fd)
            opened.append(open_netlink_socket())
        except BaseException as exc:
            opened.append(exc)

    thread = threading.Thread(target=open_there)
    thread.start()
    thread.join()
    result = opened[0]
    if isinstance(result, BaseException):
        raise result
    return result


def test_open_netlink_socket_binds_the_kernel_group() -> None:
    require_root()
    sock = open_netlink_socket()
    try:
        assert sock.family == socket.AF_NETLINK
        assert sock.getsockname()[1] == 1  # multicast group 1: the kernel's own events
        # root may force the receive buffer past rmem_max (the kernel reports twice the size)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= SOCKET_RCVBUF
    finally:
        sock.close()


def test_real_kernel_add_events_reach_a_subscriber(netns: str) -> None:
    listener = UeventListener(socket_in(netns)).start()
    try:
        added = listener.subscribe(match(action="add", subsystem="net"))
        subprocess.run(["ip", "-n", netns, "link", "add", "pkv0", "type", "veth", "peer", "name", "pkv1"], check=True)
        names = set()
        for _ in range(2):
            event = added.get(timeout=10)
            assert event is not None, f"no uevent after {names}"
            assert event.devpath.startswith("/devices/virtual/net/")
            assert event.seqnum > 0
            names.add(event.env.get("INTERFACE"))
        assert names == {"pkv0", "pkv1"}
    finally:
        listener.stop()
