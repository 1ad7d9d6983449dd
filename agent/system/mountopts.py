"""Mount options as mount(8) words (an OCI mount's options, a storage's options), split into mount(2)
flags, propagation flags and filesystem data. The one table for the container engine and the storage drivers."""

from __future__ import annotations

from agent.system import libc
from agent.system.records import Record

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterable

# word -> (flags to clear, flags to set)
_FLAG_WORDS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (0, libc.MS_RDONLY),
    "rw": (libc.MS_RDONLY, 0),
    "nosuid": (0, libc.MS_NOSUID),
    "suid": (libc.MS_NOSUID, 0),
    "nodev": (0, libc.MS_NODEV),
    "dev": (libc.MS_NODEV, 0),
    "noexec": (0, libc.MS_NOEXEC),
    "exec": (libc.MS_NOEXEC, 0),
    "sync": (0, libc.MS_SYNCHRONOUS),
    "async": (libc.MS_SYNCHRONOUS, 0),
    "dirsync": (0, libc.MS_DIRSYNC),
    "remount": (0, libc.MS_REMOUNT),
    "mand": (0, libc.MS_MANDLOCK),
    "nomand": (libc.MS_MANDLOCK, 0),
    "noatime": (0, libc.MS_NOATIME),
    "atime": (libc.MS_NOATIME, 0),
    "nodiratime": (0, libc.MS_NODIRATIME),
    "diratime": (libc.MS_NODIRATIME, 0),
    "bind": (0, libc.MS_BIND),
    "rbind": (0, libc.MS_BIND | libc.MS_REC),
    "relatime": (0, libc.MS_RELATIME),
    "norelatime": (libc.MS_RELATIME, 0),
    "strictatime": (0, libc.MS_STRICTATIME),
    "nostrictatime": (libc.MS_STRICTATIME, 0),
    "lazytime": (0, libc.MS_LAZYTIME),
    "nolazytime": (libc.MS_LAZYTIME, 0),
    "silent": (0, libc.MS_SILENT),
    "loud": (libc.MS_SILENT, 0),
}

PROPAGATION_WORDS: dict[str, int] = {
    "private": libc.MS_PRIVATE,
    "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED,
    "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE,
    "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE,
    "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}


class MountOptions(Record):
    _fields = ("flags", "propagation", "data")
    __slots__ = _fields
    flags: int
    propagation: int
    data: tuple[str, ...]

    def __init__(self, flags: int = 0, propagation: int = 0, data: tuple[str, ...] = ()) -> None:
        self._assign(flags, propagation, data)

    @property
    def data_text(self) -> str:
        return ",".join(self.data)

    def has_data(self, key: str) -> bool:
        return any(word == key or word.startswith(key + "=") for word in self.data)

    def with_data(self, *words: str) -> MountOptions:
        return MountOptions(self.flags, self.propagation, (*self.data, *words))


def parse_mount_options(options: Iterable[str]) -> MountOptions:
    """Split words (each may hold several, comma-separated) into flags, propagation and data.

    Later words win, as with mount(8): "ro,rw" is read-write. Unknown words are fs data, in order.
    """
    flags = 0
    propagation = 0
    data: list[str] = []
    for option in options:
        for word in option.split(","):
            word = word.strip()
            if not word:
                continue
            if word in _FLAG_WORDS:
                clear, set_ = _FLAG_WORDS[word]
                flags = (flags & ~clear) | set_
            elif word in PROPAGATION_WORDS:
                propagation |= PROPAGATION_WORDS[word]
            else:
                data.append(word)
    return MountOptions(flags, propagation, tuple(data))


def option_values(options: Iterable[str]) -> dict[str, str]:
    """``key=value`` words as a dict (last one wins); bare words map to ""."""
    values: dict[str, str] = {}
    for option in options:
        for word in option.split(","):
            key, _, value = word.strip().partition("=")
            if key:
                values[key] = value
    return values
