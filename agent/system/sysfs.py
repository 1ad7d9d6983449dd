"""Read and write sysfs/procfs attributes. Writes never create files: a missing attribute is an error."""

from __future__ import annotations

import errno
import os

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
        raise _naming(exc, path) from None
    try:
        os.write(fd, data)
    except OSError as exc:
        raise _naming(exc, path) from None
    finally:
        os.close(fd)


def _naming(exc: OSError, path: StrPath) -> OSError:
    """``exc`` as an OSError naming ``path`` (as a str), the way os functions raise it. (Not through
    agent.system.libc's raise_errno: sysfs is on paths that load no libc, a ``pykata-runc delete``.)"""
    code = exc.errno or errno.EIO
    return OSError(code, os.strerror(code), os.fspath(path))
