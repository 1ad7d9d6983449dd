"""Mount options as mount(8) words (an OCI mount's options, a storage's options), split into mount(2)
flags, propagation flags and filesystem data. The one table for the container engine and the storage drivers.

Besides mount(8)'s words, runtime-spec's (config.md, "mounts"): the recursive attributes ``rro``,
``rnosuid``, ``rnoatime``... (mount_setattr(2) with AT_RECURSIVE: the mount and every mount below
it, where ``ro`` on a recursive bind leaves the mounts below writable), and ``tmpcopyup`` (a tmpfs
starts with a copy of what the directory it covers held). Any other word is filesystem data."""

from __future__ import annotations

from agent.errors import InvalidArgument
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
    "nosymfollow": (0, libc.MS_NOSYMFOLLOW),
    "symfollow": (libc.MS_NOSYMFOLLOW, 0),
    "iversion": (0, libc.MS_I_VERSION),
    "noiversion": (libc.MS_I_VERSION, 0),
    "acl": (0, libc.MS_POSIXACL),
    "noacl": (libc.MS_POSIXACL, 0),
}

# recursive attribute word -> (MOUNT_ATTR_* bit, set it?)
RECURSIVE_WORDS: dict[str, tuple[int, bool]] = {
    "rro": (libc.MOUNT_ATTR_RDONLY, True),
    "rrw": (libc.MOUNT_ATTR_RDONLY, False),
    "rnosuid": (libc.MOUNT_ATTR_NOSUID, True),
    "rsuid": (libc.MOUNT_ATTR_NOSUID, False),
    "rnodev": (libc.MOUNT_ATTR_NODEV, True),
    "rdev": (libc.MOUNT_ATTR_NODEV, False),
    "rnoexec": (libc.MOUNT_ATTR_NOEXEC, True),
    "rexec": (libc.MOUNT_ATTR_NOEXEC, False),
    "rnodiratime": (libc.MOUNT_ATTR_NODIRATIME, True),
    "rdiratime": (libc.MOUNT_ATTR_NODIRATIME, False),
    "rnosymfollow": (libc.MOUNT_ATTR_NOSYMFOLLOW, True),
    "rsymfollow": (libc.MOUNT_ATTR_NOSYMFOLLOW, False),
}
# recursive atime word -> the atime mode it sets (one field: relatime, noatime or strictatime). As
# their non-recursive words: "atime" and "nostrictatime" are the kernel's default, relatime;
# "norelatime" updates every access, strictatime.
RECURSIVE_ATIME_WORDS: dict[str, int] = {
    "rnoatime": libc.MOUNT_ATTR_NOATIME,
    "ratime": libc.MOUNT_ATTR_RELATIME,
    "rrelatime": libc.MOUNT_ATTR_RELATIME,
    "rnorelatime": libc.MOUNT_ATTR_STRICTATIME,
    "rstrictatime": libc.MOUNT_ATTR_STRICTATIME,
    "rnostrictatime": libc.MOUNT_ATTR_RELATIME,
}
TMPCOPYUP = "tmpcopyup"

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


# runtime-spec 1.2's idmapped bind mounts: the mount's (or the container's) id mappings applied to
# the mount itself, or with ridmap to every mount below it too
IDMAP_WORDS = {"idmap": 1, "ridmap": 2}


def recognized_words() -> list[str]:
    """The words parse_mount_options takes as flags, propagation, recursive attributes, tmpcopyup or
    idmapping (the rest are filesystem data)."""
    return sorted((*_FLAG_WORDS, *PROPAGATION_WORDS, *RECURSIVE_WORDS, *RECURSIVE_ATIME_WORDS, TMPCOPYUP,
                   *IDMAP_WORDS))  # fmt: skip


class MountOptions(Record):
    """``flags`` and ``propagation`` for mount(2); ``attr_set``/``attr_clr`` for mount_setattr(2) with
    AT_RECURSIVE (both 0: none asked for); ``copy_up``: tmpcopyup was given; ``idmap``: 0, or
    IDMAP_WORDS' value of the last of idmap and ridmap given."""

    _fields = ("flags", "propagation", "data", "attr_set", "attr_clr", "copy_up", "idmap")
    __slots__ = _fields
    flags: int
    propagation: int
    data: tuple[str, ...]
    attr_set: int
    attr_clr: int
    copy_up: bool
    idmap: int

    def __init__(
        self,
        flags: int = 0,
        propagation: int = 0,
        data: tuple[str, ...] = (),
        attr_set: int = 0,
        attr_clr: int = 0,
        copy_up: bool = False,
        idmap: int = 0,
    ) -> None:
        self._assign(flags, propagation, data, attr_set, attr_clr, copy_up, idmap)

    @property
    def data_text(self) -> str:
        return ",".join(self.data)

    def has_data(self, key: str) -> bool:
        return any(word == key or word.startswith(key + "=") for word in self.data)

    def with_data(self, *words: str) -> MountOptions:
        return self.replace(data=(*self.data, *words))


def parse_mount_options(options: Iterable[str]) -> MountOptions:
    """Split words (each may hold several, comma-separated) into flags, propagation and data.

    Later words win, as with mount(8): "ro,rw" is read-write. Unknown words are fs data, in order.
    """
    flags = 0
    propagation = 0
    attr_set = attr_clr = 0
    copy_up = False
    idmap = 0
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
            elif word in RECURSIVE_WORDS:
                bit, on = RECURSIVE_WORDS[word]
                attr_set, attr_clr = (attr_set | bit, attr_clr & ~bit) if on else (attr_set & ~bit, attr_clr | bit)
            elif word in RECURSIVE_ATIME_WORDS:
                attr_set = (attr_set & ~libc.MOUNT_ATTR__ATIME) | RECURSIVE_ATIME_WORDS[word]
                attr_clr |= libc.MOUNT_ATTR__ATIME
            elif word == TMPCOPYUP:
                copy_up = True
            elif word in IDMAP_WORDS:
                idmap = IDMAP_WORDS[word]
            else:
                data.append(word)
    return MountOptions(flags, propagation, tuple(data), attr_set, attr_clr, copy_up, idmap)


def parse_plain_mount_options(options: Iterable[str], what: str) -> MountOptions:
    """parse_mount_options for mounts made with mount(2) alone (the agent's storages): the container
    options a runtime carries out itself (recursive attributes, tmpcopyup) are refused, naming ``what``,
    rather than dropped."""
    parsed = parse_mount_options(options)
    if parsed.attr_set or parsed.attr_clr or parsed.copy_up or parsed.idmap:
        runtime_words = sorted({*RECURSIVE_WORDS, *RECURSIVE_ATIME_WORDS, TMPCOPYUP, *IDMAP_WORDS})
        given = [w.strip() for o in options for w in o.split(",") if w.strip() in runtime_words]
        raise InvalidArgument(f"{what}: options {', '.join(given)} are a container mount's, not a storage's")
    return parsed


def option_values(options: Iterable[str]) -> dict[str, str]:
    """``key=value`` words as a dict (last one wins); bare words map to ""."""
    values: dict[str, str] = {}
    for option in options:
        for word in option.split(","):
            key, _, value = word.strip().partition("=")
            if key:
                values[key] = value
    return values
