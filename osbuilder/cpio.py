"""A reproducible cpio ``newc`` writer (the format the kernel unpacks as an initramfs).

Entries come out sorted by path, parents before children, with uid/gid 0, one fixed mtime, inode
numbers counted from 1 in output order and device numbers 0. The same tree gives the same bytes.
Hard links are not represented (each path carries its own data).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110


@dataclass(frozen=True)
class Entry:
    """One archive member. ``path`` is relative ("usr/bin/python3"), ``data`` the file bytes or link target."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # major, minor: only for device nodes such as dev/console

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(
    ino: int, mode: int, nlink: int, mtime: int, filesize: int, namesize: int, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, filesize, 0, 0, rdev[0], rdev[1], namesize, 0)
    return NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)


def _sort_key(path: str) -> tuple[str, ...]:
    # Component-wise order keeps every directory right before its contents.
    return tuple(path.split("/"))


def write_archive(out: BinaryIO, entries: Iterable[Entry], mtime: int) -> int:
    """Write ``entries`` (any order) as a newc archive to ``out``; return the number of bytes written."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = entry.path.strip("/")
        if not path or path in (".", ".."):
            continue
        if path in by_path and by_path[path] != entry:
            raise ValueError(f"cpio: {path} given twice with different contents")
        by_path[path] = Entry(path, entry.mode, entry.data, entry.rdev)
    written = 0
    for ino, path in enumerate(sorted(by_path, key=_sort_key), 1):
        entry = by_path[path]
        name = path.encode() + b"\0"
        nlink = 2 if entry.is_dir else 1
        data = b"" if entry.is_dir else entry.data
        chunk = _header(ino, entry.mode, nlink, mtime, len(data), len(name), entry.rdev) + name
        chunk += _pad4(len(chunk)) + data + _pad4(len(data))
        out.write(chunk)
        written += len(chunk)
    trailer = _header(0, 0, 1, 0, 0, len(TRAILER) + 1) + TRAILER.encode() + b"\0"
    trailer += _pad4(len(trailer))
    out.write(trailer)
    return written + len(trailer)


def entries_from_tree(root: Path) -> Iterator[Entry]:
    """Every directory, regular file and symlink under ``root`` (not following links).

    Modes keep the permission bits; ownership and times are not read (the writer fixes them).
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                yield Entry(rel, stat.S_IFLNK | 0o777, os.readlink(full).encode())
            elif stat.S_ISDIR(info.st_mode):
                yield Entry(rel, stat.S_IFDIR | stat.S_IMODE(info.st_mode))
            elif stat.S_ISREG(info.st_mode):
                yield Entry(rel, stat.S_IFREG | stat.S_IMODE(info.st_mode), full.read_bytes())
            else:
                raise ValueError(f"cpio: {full} is neither a file, a directory nor a symlink")


def read_archive(data: bytes) -> list[tuple[str, int, bytes]]:
    """Parse a newc archive into (path, mode, data) tuples; used to check what was written."""
    members: list[tuple[str, int, bytes]] = []
    offset = 0
    while True:
        header = data[offset : offset + HEADER_SIZE]
        if header[:6] != NEWC_MAGIC:
            raise ValueError(f"cpio: bad magic at offset {offset}")
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        offset += HEADER_SIZE
        name = data[offset : offset + namesize - 1].decode()
        offset += namesize + (-(HEADER_SIZE + namesize) % 4)
        body = data[offset : offset + filesize]
        offset += filesize + (-filesize % 4)
        if name == TRAILER:
            return members
        members.append((name, mode, body))
