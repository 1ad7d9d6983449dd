"""Mount steps as data: each operation describes itself, applies through a syscall seam, and knows
how to undo what it did. A storage becomes a list of these; ``execute`` runs them all or none.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.errors import AgentError, InvalidArgument, NotFound, ResourceError, Unsupported
from agent.system import libc

log = logging.getLogger(__name__)


class Syscalls(Protocol):
    """The calls a plan makes; ``HostSyscalls`` does them, tests record them."""

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None: ...
    def umount(self, target: str) -> None: ...
    def makedirs(self, path: str, mode: int) -> bool: ...
    def touch(self, path: str) -> bool: ...
    def remove_if_empty(self, path: str) -> None: ...
    def chown_tree(self, path: str, gid: int, only_if_root_differs: bool) -> None: ...
    def chmod(self, path: str, mode: int) -> None: ...
    def chgrp(self, path: str, gid: int) -> None: ...
    def swapon(self, device: str) -> None: ...


class HostSyscalls:
    def __init__(self, load_filesystem: Callable[[str], bool] | None = None) -> None:
        # Called when the kernel lacks a filesystem (ENODEV): loads its module, True if it then knows it.
        self.load_filesystem = load_filesystem

    def swapon(self, device: str) -> None:
        libc.swapon(device)

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        try:
            libc.mount(source, target, fstype, flags, data or None)
        except OSError as exc:
            if exc.errno != errno.ENODEV or not fstype or self.load_filesystem is None:
                raise
            if not self.load_filesystem(fstype):
                raise
            libc.mount(source, target, fstype, flags, data or None)

    def umount(self, target: str) -> None:
        try:
            libc.umount2(target, 0)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # Something still holds it open (a process in a container that is going away): detach so
            # the mount point is free now and the filesystem goes when the last user closes it.
            log.warning("%s is busy; detaching it", target)
            libc.umount2(target, libc.MNT_DETACH)

    def makedirs(self, path: str, mode: int) -> bool:
        if os.path.isdir(path):
            return False
        os.makedirs(path, mode=mode, exist_ok=True)
        return True

    def touch(self, path: str) -> bool:
        if os.path.exists(path):
            return False
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        return True

    def remove_if_empty(self, path: str) -> None:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            elif os.path.isfile(path) and os.path.getsize(path) == 0:
                os.unlink(path)
        except OSError as exc:
            log.debug("leaving %s in place: %s", path, exc)

    def chown_tree(self, path: str, gid: int, only_if_root_differs: bool) -> None:
        if only_if_root_differs and os.lstat(path).st_gid == gid:
            return
        for top, dirs, files in os.walk(path):
            for name in [top, *(os.path.join(top, d) for d in dirs), *(os.path.join(top, f) for f in files)]:
                info = os.lstat(name)
                os.lchown(name, -1, gid)
                if stat.S_ISLNK(info.st_mode):
                    continue
                # Group may read and write; directories pass the group on (setgid), as Kubernetes does.
                mode = stat.S_IMODE(info.st_mode) | stat.S_IRGRP | stat.S_IWGRP
                if stat.S_ISDIR(info.st_mode):
                    mode |= stat.S_IXGRP | stat.S_ISGID
                os.chmod(name, mode)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def chgrp(self, path: str, gid: int) -> None:
        os.chown(path, -1, gid)


class Op(Protocol):
    def describe(self) -> str: ...
    def apply(self, sys: Syscalls) -> bool:
        """Do the step; True when there is something to undo."""
        ...

    def undo(self, sys: Syscalls) -> None: ...


@dataclass(frozen=True)
class MakeDir:
    path: str
    mode: int = 0o755

    def describe(self) -> str:
        return f"mkdir -p -m {self.mode:o} {self.path}"

    def apply(self, sys: Syscalls) -> bool:
        return sys.makedirs(self.path, self.mode)

    def undo(self, sys: Syscalls) -> None:
        sys.remove_if_empty(self.path)


@dataclass(frozen=True)
class MakeFile:
    """A file to bind-mount a file onto."""

    path: str

    def describe(self) -> str:
        return f"touch {self.path}"

    def apply(self, sys: Syscalls) -> bool:
        return sys.touch(self.path)

    def undo(self, sys: Syscalls) -> None:
        sys.remove_if_empty(self.path)


def flag_names(flags: int) -> str:
    names = [name for name in _FLAG_NAMES if flags & getattr(libc, name)]
    return "|".join(names) or "0"


_FLAG_NAMES = (
    "MS_RDONLY",
    "MS_NOSUID",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_SYNCHRONOUS",
    "MS_REMOUNT",
    "MS_MANDLOCK",
    "MS_DIRSYNC",
    "MS_NOATIME",
    "MS_NODIRATIME",
    "MS_BIND",
    "MS_REC",
    "MS_SILENT",
    "MS_UNBINDABLE",
    "MS_PRIVATE",
    "MS_SLAVE",
    "MS_SHARED",
    "MS_RELATIME",
    "MS_STRICTATIME",
    "MS_LAZYTIME",
)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str = ""
    flags: int = 0
    data: str = ""

    def describe(self) -> str:
        text = f"mount {self.source} {self.target}"
        if self.fstype:
            text += f" -t {self.fstype}"
        text += f" flags={flag_names(self.flags)}"
        if self.data:
            text += f" data={self.data}"
        return text

    def apply(self, sys: Syscalls) -> bool:
        sys.mount(self.source, self.target, self.fstype or None, self.flags, self.data or None)
        return True

    def undo(self, sys: Syscalls) -> None:
        sys.umount(self.target)


@dataclass(frozen=True)
class Remount:
    """Change the flags of a mount made earlier in the plan (a read-only bind mount needs this)."""

    target: str
    flags: int
    data: str = ""

    def describe(self) -> str:
        return f"mount -o remount {self.target} flags={flag_names(self.flags)}"

    def apply(self, sys: Syscalls) -> bool:
        sys.mount(None, self.target, None, self.flags, self.data or None)
        return False

    def undo(self, sys: Syscalls) -> None:
        pass


@dataclass(frozen=True)
class SetPropagation:
    target: str
    flags: int

    def describe(self) -> str:
        return f"mount --make {flag_names(self.flags)} {self.target}"

    def apply(self, sys: Syscalls) -> bool:
        sys.mount(None, self.target, None, self.flags, None)
        return False

    def undo(self, sys: Syscalls) -> None:
        pass


@dataclass(frozen=True)
class SetFsGroup:
    """Give every file of a volume group ``gid`` (group read/write, setgid directories)."""

    path: str
    gid: int
    only_if_root_differs: bool = False

    def describe(self) -> str:
        when = " (if the root's group differs)" if self.only_if_root_differs else ""
        return f"chgrp -R {self.gid} {self.path} and g+rw{when}"

    def apply(self, sys: Syscalls) -> bool:
        sys.chown_tree(self.path, self.gid, self.only_if_root_differs)
        return False

    def undo(self, sys: Syscalls) -> None:
        pass


@dataclass(frozen=True)
class SetGroup:
    path: str
    gid: int

    def describe(self) -> str:
        return f"chgrp {self.gid} {self.path}"

    def apply(self, sys: Syscalls) -> bool:
        sys.chgrp(self.path, self.gid)
        return False

    def undo(self, sys: Syscalls) -> None:
        pass


@dataclass(frozen=True)
class SetMode:
    path: str
    mode: int

    def describe(self) -> str:
        return f"chmod {self.mode:o} {self.path}"

    def apply(self, sys: Syscalls) -> bool:
        sys.chmod(self.path, self.mode)
        return False

    def undo(self, sys: Syscalls) -> None:
        pass


@dataclass
class Applied:
    """What a plan did, newest last, so it can be taken back in reverse."""

    ops: list[Op] = field(default_factory=list)

    def undo(self, sys: Syscalls) -> list[str]:
        """Undo everything; returns the failures (the rest is still undone)."""
        failures = []
        while self.ops:
            op = self.ops.pop()
            try:
                op.undo(sys)
            except OSError as exc:
                failures.append(f"undo of '{op.describe()}': {exc}")
        return failures


def describe(plan: Sequence[Op]) -> str:
    return "\n".join(op.describe() for op in plan)


def domain_error(op: Op, exc: OSError) -> AgentError:
    message = f"{op.describe()}: {exc.strerror or exc}"
    if exc.errno == errno.ENOENT:
        return NotFound(message)
    if exc.errno == errno.ENODEV:
        return Unsupported(message + " (the guest kernel lacks this filesystem)")
    if exc.errno in (errno.EINVAL, errno.ENOTDIR, errno.ENOTBLK):
        return InvalidArgument(message)
    return ResourceError(message)


def execute(plan: Sequence[Op], sys: Syscalls) -> Applied:
    """Run every step; if one fails, undo the ones before it and raise a domain error naming the step."""
    applied = Applied()
    for op in plan:
        log.debug("storage: %s", op.describe())
        try:
            if op.apply(sys):
                applied.ops.append(op)
        except OSError as exc:
            for failure in applied.undo(sys):
                log.warning("storage: %s", failure)
            raise domain_error(op, exc) from exc
    return applied
