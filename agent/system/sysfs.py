"""Read and write sysfs/procfs attributes. Writes never create files: a missing attribute is an error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from agent.system.libc import raise_errno


def read_text(path: Path) -> str:
    return path.read_text().strip()


def read_int(path: Path) -> int:
    return int(read_text(path), 0)


def write(path: Path, value: str | int | bytes) -> None:
    """Write one attribute value, as ``echo value > path`` would, without O_CREAT.

    O_TRUNC as the shell uses it: kernel attribute files ignore it, and a regular file standing in for
    one (a fake tree in tests) then holds exactly the value written.
    """
    data = value if isinstance(value, bytes) else str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as exc:
        raise_errno(exc.errno or errno.EIO, str(path))
    try:
        os.write(fd, data)
    except OSError as exc:
        raise_errno(exc.errno or errno.EIO, str(path))
    finally:
        os.close(fd)
