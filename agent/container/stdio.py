"""Terminal helpers for container processes: window size, making a pty the controlling terminal."""

from __future__ import annotations

import _struct  # the C module: ``struct`` adds an import to every cold container start
import fcntl
import os
import termios


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _struct.pack("HHHH", rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = _struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def open_pty() -> tuple[int, int]:
    """A new pty pair (master, slave), both close-on-exec."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    os.set_inheritable(slave, False)
    return master, slave


def take_controlling_terminal(fd: int) -> None:
    """In a fresh session: make ``fd`` the controlling terminal and the stdin/stdout/stderr."""
    os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
