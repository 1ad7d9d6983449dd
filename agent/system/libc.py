"""Thin ctypes wrappers for the syscalls Python's os module lacks.

Every wrapper raises ``OSError(errno, strerror, path)`` through ``raise_errno`` so a failure names
what it was acting on. Constants keep the kernel's names.
"""

from __future__ import annotations

import ctypes
import os

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import NoReturn

# By soname: ctypes.util.find_library would run ldconfig or gcc in a subprocess, at guest boot.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# clone(2)/unshare(2)/setns(2) flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# reboot(2)
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_HALT = 0xCDEF0123

# finit_module(2)
MODULE_INIT_IGNORE_MODVERSIONS = 1
MODULE_INIT_IGNORE_VERMAGIC = 2

# prctl(2)
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

SYS_pivot_root = 155
SYS_finit_module = 313
SYS_setns = 308


def raise_errno(err: int, path: str | None = None) -> NoReturn:
    """Raise the OSError for ``err`` the way os functions do, naming ``path``."""
    if path is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), path)


def _check(result: int, path: str | None = None) -> int:
    if result < 0:
        raise_errno(ctypes.get_errno(), path)
    return result


def _b(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)), new_root)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def setns(fd: int, nstype: int = 0, path: str | None = None) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), path)


def finit_module(fd: int, params: str = "", flags: int = 0, path: str | None = None) -> None:
    _check(_libc.syscall(SYS_finit_module, ctypes.c_int(fd), _b(params), ctypes.c_int(flags)), path)


def load_module(path: str, params: str = "") -> bool:
    """Load the kernel module file at ``path`` (finit_module); False when the kernel has it already
    (built in, or loaded before). OSError names the file when it cannot be opened or loaded."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        finit_module(fd, params, 0, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.close(fd)


def reboot(cmd: int) -> None:
    _check(_libc.reboot(ctypes.c_int(cmd)))


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        )
    )


def set_process_name(name: str) -> None:
    """The thread's name in /proc/<pid>/comm and ps (at most 15 bytes are kept)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(ctypes.c_int(PR_SET_NAME), buffer, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)))


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def settimeofday(sec: int, usec: int) -> None:
    class Timeval(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]

    _check(_libc.settimeofday(ctypes.byref(Timeval(sec, usec)), None))


# random(4) ioctls: _IOW('R', 0x03, int[2])
RNDADDENTROPY = 0x40085203


def add_entropy(fd: int, data: bytes, path: str | None = None) -> None:
    """Mix ``data`` into the kernel's pool and credit it as entropy (RNDADDENTROPY; needs CAP_SYS_ADMIN)."""
    # struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    header = (ctypes.c_int * 2)(len(data) * 8, len(data))
    info = ctypes.create_string_buffer(bytes(header) + data)
    _check(_libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(RNDADDENTROPY), info), path)


# inotify(7): cgroup v2 signals changes of files such as memory.events as IN_MODIFY
IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init1(flags: int = IN_NONBLOCK | IN_CLOEXEC) -> int:
    return _check(_libc.inotify_init1(ctypes.c_int(flags)))


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """The watch descriptor for ``path``; adding the same inode twice returns the same one."""
    return _check(_libc.inotify_add_watch(ctypes.c_int(fd), _b(path), ctypes.c_uint32(mask)), path)


def inotify_rm_watch(fd: int, wd: int) -> None:
    _check(_libc.inotify_rm_watch(ctypes.c_int(fd), ctypes.c_int(wd)))


SYS_bpf = 321


def bpf(cmd: int, attr: bytearray, path: str | None = None) -> int:
    """bpf(2) with ``attr`` (a union bpf_attr laid out by the caller; the kernel may write into it)."""
    buffer = (ctypes.c_char * len(attr)).from_buffer(attr)
    return _check(_libc.syscall(ctypes.c_long(SYS_bpf), ctypes.c_int(cmd), buffer, ctypes.c_uint(len(attr))), path)


SOL_SOCKET = 1
SO_SNDTIMEO = 21


def set_send_timeout(fd: int, seconds: float) -> None:
    """SO_SNDTIMEO on any socket family. Python's socket.setsockopt takes only integers on AF_VSOCK
    sockets, so a struct timeval cannot be passed there."""

    class Timeval(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]

    value = Timeval(int(seconds), int((seconds - int(seconds)) * 1_000_000))
    _check(_libc.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, ctypes.byref(value), ctypes.sizeof(value)))


SYS_rt_sigaction = 13
SIGKILL = 9
SIGSTOP = 19
NSIG = 65


def reset_all_signals() -> None:
    """Every signal back to SIG_DFL, including the two glibc keeps for itself (32 and 33) that
    signal.signal refuses: an ignored signal stays ignored across execve, and a container's program
    must start with the defaults whatever its launcher inherited (runc does the same)."""

    class KernelSigaction(ctypes.Structure):
        _fields_ = [
            ("handler", ctypes.c_void_p),
            ("flags", ctypes.c_ulong),
            ("restorer", ctypes.c_void_p),
            ("mask", ctypes.c_uint64),
        ]

    default = KernelSigaction(None, 0, None, 0)
    for signum in range(1, NSIG):
        if signum in (SIGKILL, SIGSTOP):
            continue
        _libc.syscall(SYS_rt_sigaction, signum, ctypes.byref(default), None, ctypes.c_size_t(8))


def resolve_ahead(names: tuple[str, ...] = ("unshare", "setns", "mount", "umount2", "sethostname", "syscall",
                                            "prctl", "madvise")) -> None:  # fmt: skip
    """Look the container setup's libc functions up now. ctypes resolves a function on its first use
    (about a quarter of a millisecond each in a freshly forked process); a process that forks the
    setup processes resolves them once, and its children inherit them resolved."""
    for name in names:
        getattr(_libc, name)
