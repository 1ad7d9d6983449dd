"""Bring a network link up with one ioctl: no netlink library to import at boot or at CreateSandbox."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH14s"


def set_link_up(name: str = "lo") -> None:
    """``ip link set NAME up``; raises OSError naming the link when the kernel refuses."""
    raw = name.encode()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack(_IFREQ, raw, 0, b"\0" * 14)
            flags = struct.unpack(_IFREQ, fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
            if not flags & IFF_UP:
                fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack(_IFREQ, raw, flags | IFF_UP, b"\0" * 14))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, name) from None


def link_is_up(name: str = "lo") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, name.encode(), 0, b"\0" * 14)
        return bool(struct.unpack(_IFREQ, fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1] & IFF_UP)
