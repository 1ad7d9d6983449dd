"""Read and write sysfs/procfs attributes. Writes never create files: a missing attribute is an error."""

from __future__ import annotations

import errno
import os

from agent.system.libc import raise_errno

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from os import PathLike

    StrPath = str | PathLike[str]


def read_text(path: StrPath) -> str:
    with open(path, encoding="utf-8") as stream:
        return stream.read().strip()


def read_int(path: StrPath) -> int:
    return int(read_text(path), 0)


def write(path: StrPath, value: str | int | bytes) -> None:
    """Write one attribute value, as ``echo value > path`` would, without O_CREAT.

    O_TRUNC as the shell uses it: kernel attribute files ignore it, and a regular file standing in for
    one (a fake tree in tests) then holds exactly the value written.
    """
    data = value if isinstance(value, bytes) else str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as exc:
        raise_errno(exc.errno or errno.EIO, os.fspath(path))
    try:
        os.write(fd, data)
    except OSError as exc:
        raise_errno(exc.errno or errno.EIO, os.fspath(path))
    finally:
        os.close(fd)
