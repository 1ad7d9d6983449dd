"""Bring a network link up with one ioctl: no netlink library to import at boot or at CreateSandbox.
And move a link into another network namespace with one rtnetlink request, for linux.netDevices."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Iterator

from agent.system import libc

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH14s"


def set_link_up(name: str = "lo") -> None:
    """``ip link set NAME up``; raises OSError naming the link when the kernel refuses."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            flags = _flags(sock, name)
            if not flags & IFF_UP:
                _set_flags(sock, name, flags | IFF_UP)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, name) from None


def link_is_up(name: str = "lo") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return bool(_flags(sock, name) & IFF_UP)


def _flags(sock: socket.socket, name: str) -> int:
    """The link's IFF_* flags (SIOCGIFFLAGS on a socket of its network namespace)."""
    request = struct.pack(_IFREQ, name.encode(), 0, b"\0" * 14)
    return int(struct.unpack(_IFREQ, fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1])


def _set_flags(sock: socket.socket, name: str, flags: int) -> None:
    fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack(_IFREQ, name.encode(), flags, b"\0" * 14))


# --- moving a link between network namespaces (runtime-spec 1.3's linux.netDevices), with one
# rtnetlink request as `ip link set dev NAME netns NS name NEW` sends it

RTM_NEWLINK = 16
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
IFLA_IFNAME = 3
IFLA_NET_NS_FD = 28
SIOCGIFINDEX = 0x8933
IFNAMSIZ = 16


def valid_link_name(name: str) -> bool:
    """The kernel's rule for an interface name (dev_valid_name): 1 to 15 bytes, not "." or "..", no
    "/", ":" or white space."""
    raw = name.encode()
    return 0 < len(raw) < IFNAMSIZ and name not in (".", "..") and not any(c in "/:" or c.isspace() for c in name)


@contextlib.contextmanager
def _sockets_in(proc: str, ns_fd: int | None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """An ioctl socket and an rtnetlink socket of the network namespace ``ns_fd`` (None: this
    thread's). A socket stays in the namespace it was made in, so this thread enters ``ns_fd`` only to
    make them (network namespaces are per thread: other threads are not affected)."""
    own = None
    if ns_fd is not None:
        own = os.open(f"{proc}/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        libc.setns(ns_fd, libc.CLONE_NEWNET, "the network namespace of the link")
    with contextlib.ExitStack() as sockets:
        try:
            inet = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC))
            rtnl = sockets.enter_context(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0))
        finally:
            if own is not None:
                libc.setns(own, libc.CLONE_NEWNET, "this thread's own network namespace")
                os.close(own)
        yield inet, rtnl  # (rtnl: NETLINK_ROUTE)


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def move_link(name: str, new_name: str, target_ns: int, *, proc: str, source_ns: int | None = None,
              up: bool = True) -> None:  # fmt: skip
    """Move link ``name`` from the network namespace ``source_ns`` (None: this thread's) into
    ``target_ns``, as ``new_name``: down while it moves and, with ``up``, up once there (as runc does).
    ``proc`` is where /proc is mounted. Raises OSError naming the link; a refused move leaves the link
    where and as it was."""
    try:
        with _sockets_in(proc, source_ns) as (inet, rtnl):
            index = struct.unpack("=16si20x", fcntl.ioctl(inet.fileno(), SIOCGIFINDEX,
                                                          struct.pack("=16si20x", name.encode(), 0)))[1]  # fmt: skip
            flags = _flags(inet, name)
            if flags & IFF_UP:
                _set_flags(inet, name, flags & ~IFF_UP)
            body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
            body += _attribute(IFLA_IFNAME, new_name.encode() + b"\0") + _attribute(
                IFLA_NET_NS_FD, struct.pack("=I", target_ns)
            )
            rtnl.send(struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)
            reply = rtnl.recv(65536)
            kind, error = struct.unpack_from("=H", reply, 4)[0], struct.unpack_from("=i", reply, 16)[0]
            if kind == NLMSG_ERROR and error:
                if flags & IFF_UP:
                    _set_flags(inet, name, flags)  # it stayed here: as it was
                raise OSError(-error, os.strerror(-error), name)
        if up:
            with _sockets_in(proc, target_ns) as (inet, _):
                _set_flags(inet, new_name, _flags(inet, new_name) | IFF_UP)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, exc.filename or name) from None
