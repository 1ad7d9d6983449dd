"""Thin wrappers for the syscalls Python's os module lacks, called through ``_ctypes``.

``_ctypes`` is the C core of ctypes. The ctypes package's Python layer (and ``struct``, which it loads)
costs a few milliseconds at a process's start, on the path of every container start, so this module
declares the few C types it passes itself. Functions are called as ctypes' ``CDLL(use_errno=True)``
calls them: cdecl, an ``int`` result, errno kept for ``_ctypes.get_errno``; without argument types,
a Python int goes as a C int, bytes and None as a pointer and NULL, and the typed values below (or an
array made ``from_buffer``) as what they are.

Every wrapper raises ``OSError(errno, strerror, path)`` through ``raise_errno`` so a failure names
what it was acting on. Constants keep the kernel's names.
"""

from __future__ import annotations

import _ctypes
import _struct
import errno
import os

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import NoReturn


# The C types the wrappers pass (ctypes' c_int, c_uint, c_long, c_ulong, c_char). On Linux, size_t is
# an unsigned long and uint32_t an unsigned int, on 64-bit and 32-bit machines alike.
class _Int(_ctypes._SimpleCData):
    _type_ = "i"


class _UInt(_ctypes._SimpleCData):
    _type_ = "I"


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _ULong(_ctypes._SimpleCData):
    _type_ = "L"


class _Char(_ctypes._SimpleCData):
    _type_ = "c"


_SizeT = _ULong
_UInt32 = _UInt


class _Function(_ctypes.CFuncPtr):
    """A libc function, called as a CDLL(use_errno=True) function: cdecl, an int result, errno saved."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _Library:
    """libc's functions as attributes, each looked up (dlsym) on its first use and kept."""

    # By soname: ctypes.util.find_library would run ldconfig or gcc in a subprocess, at guest boot.
    # Mode 0 is CDLL's default (RTLD_LOCAL); _ctypes.dlopen adds RTLD_NOW.
    _handle = _ctypes.dlopen("libc.so.6", 0)

    def __getattr__(self, name: str) -> _Function:
        if name.startswith("__"):  # no libc function has such a name; copy and pickle ask for these
            raise AttributeError(name)
        # CFuncPtr reads the library's handle from the object's _handle, as it does from a CDLL
        function = _Function((name, self))  # type: ignore[arg-type]
        setattr(self, name, function)
        return function


_libc = _Library()

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
MS_POSIXACL = 1 << 16
MS_I_VERSION = 1 << 23

# mount_setattr(2): struct mount_attr's attr_set/attr_clr bits. The atime ones are a 3-bit field
# (MOUNT_ATTR__ATIME), not bits: to change it, attr_clr holds the whole field and attr_set the value.
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
MOUNT_ATTR_IDMAP = 0x100000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
# open_tree(2) and move_mount(2)
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
# the same numbers on every architecture (syscalls added after the tables merged)
SYS_open_tree = 428
SYS_move_mount = 429
SYS_mount_setattr = 442

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
SYS_ioprio_set = 251
SYS_keyctl = 250
SYS_sched_setattr = 314
SYS_set_mempolicy = 238
SYS_seccomp = 317

# keyctl(2)
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_SETPERM = 5
KEYCTL_DESCRIBE = 6
KEY_USR_SEARCH = 0x00080000
KEY_OTH_SEARCH = 0x00000008

# personality(2) execution domains
PER_LINUX = 0x0000
PER_LINUX32 = 0x0008

# ioprio_set(2)
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_SHIFT = 13

SCHED_ATTR_SIZE_VER0 = 48


def raise_errno(err: int, path: str | None = None) -> NoReturn:
    """Raise the OSError for ``err`` the way os functions do, naming ``path``."""
    if path is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), path)


def _check(result: int, path: str | None = None) -> int:
    if result < 0:
        raise_errno(_ctypes.get_errno(), path)
    return result


def _b(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else os.fsencode(value)


def buffer_address(buffer: bytearray) -> int:
    """The address of ``buffer``'s bytes, for a structure that points at them (the kernel's pointer
    fields). It stays valid while ``buffer`` lives and keeps its length."""
    return _ctypes.addressof((_Char * len(buffer)).from_buffer(buffer))


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), _ULong(flags), _b(data)), target)


def mount_setattr(
    target: str, attr_set: int, attr_clr: int, *, recursive: bool = True, tree_fd: int | None = None, userns_fd: int = 0
) -> None:
    """mount_setattr(2) on the mount at ``target`` (or the detached tree ``tree_fd``, which ``target``
    then only names in errors), and, ``recursive``, every mount below it: set the MOUNT_ATTR_* bits in
    ``attr_set``, clear those in ``attr_clr``; ``userns_fd`` is the user namespace MOUNT_ATTR_IDMAP
    maps ids through. Linux 5.12 or later (ENOSYS before)."""
    attr = bytearray(_struct.pack("=QQQQ", attr_set, attr_clr, 0, userns_fd))  # struct mount_attr, version 0
    buffer = (_Char * len(attr)).from_buffer(attr)
    flags = AT_RECURSIVE if recursive else 0
    where, path = (AT_FDCWD, _b(target)) if tree_fd is None else (tree_fd, b"")
    if tree_fd is not None:
        flags |= AT_EMPTY_PATH
    _check(_libc.syscall(_Long(SYS_mount_setattr), _Int(where), path, _UInt(flags), buffer, _SizeT(len(attr))),
           target)  # fmt: skip


def open_tree(path: str, *, recursive: bool) -> int:
    """open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount at ``path`` (with ``recursive``,
    of every mount below it too), as a close-on-exec descriptor for mount_setattr and move_mount."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_libc.syscall(_Long(SYS_open_tree), _Int(AT_FDCWD), _b(path), _UInt(flags)), path)


def move_mount(tree_fd: int, target: str) -> None:
    """move_mount(2): attach the detached tree ``tree_fd`` at ``target``."""
    _check(_libc.syscall(_Long(SYS_move_mount), _Int(tree_fd), b"", _Int(AT_FDCWD), _b(target),
                         _UInt(MOVE_MOUNT_F_EMPTY_PATH)), target)  # fmt: skip


def swapon(path: str, flags: int = 0) -> None:
    """swapon(2): start swapping to the swap area (made by mkswap) at ``path``."""
    _check(_libc.swapon(_b(path), _Int(flags)), path)


def swapoff(path: str) -> None:
    _check(_libc.swapoff(_b(path)), path)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), _Int(flags)), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)), new_root)


def unshare(flags: int) -> None:
    _check(_libc.unshare(_Int(flags)))


def setns(fd: int, nstype: int = 0, path: str | None = None) -> None:
    _check(_libc.setns(_Int(fd), _Int(nstype)), path)


def finit_module(fd: int, params: str = "", flags: int = 0, path: str | None = None) -> None:
    _check(_libc.syscall(SYS_finit_module, _Int(fd), _b(params), _Int(flags)), path)


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
    _check(_libc.reboot(_Int(cmd)))


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, _SizeT(len(raw))))


def join_session_keyring(name: str) -> int:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING): join the keyring named ``name`` as this process's session
    keyring, made anew if there is none the process may search; its serial number."""
    return _check(_libc.syscall(_Long(SYS_keyctl), _Int(KEYCTL_JOIN_SESSION_KEYRING), _b(name)))


def describe_key(serial: int) -> str:
    """keyctl(KEYCTL_DESCRIBE): "type;uid;gid;perm;description" (perm in hex)."""
    buffer = bytearray(512)
    size = _check(_libc.syscall(_Long(SYS_keyctl), _Int(KEYCTL_DESCRIBE), _Int(serial),
                                (_Char * len(buffer)).from_buffer(buffer), _Long(len(buffer))))  # fmt: skip
    return bytes(buffer[: max(0, min(size, len(buffer)) - 1)]).decode()


def set_key_permissions(serial: int, permissions: int) -> None:
    """keyctl(KEYCTL_SETPERM)."""
    _check(_libc.syscall(_Long(SYS_keyctl), _Int(KEYCTL_SETPERM), _Int(serial), _UInt(permissions)))


def setdomainname(name: str) -> None:
    """The NIS domain name of this UTS namespace (runtime-spec ``domainname``)."""
    raw = name.encode()
    _check(_libc.setdomainname(raw, _SizeT(len(raw))))


def personality(persona: int) -> None:
    """personality(2): the execution domain (PER_LINUX, PER_LINUX32) this process and what it execs run in."""
    _check(_libc.personality(_ULong(persona)))


def set_mempolicy(mode: int, nodes: list[int]) -> None:
    """set_mempolicy(2): this thread's NUMA memory policy (``mode`` with its MPOL_F_* flags) over
    ``nodes``, kept across fork and execve."""
    words = max(nodes) // 64 + 1 if nodes else 0
    mask = [0] * words
    for node in nodes:
        mask[node // 64] |= 1 << (node % 64)
    buffer = bytearray(_struct.pack(f"={words}Q", *mask)) if words else bytearray(8)
    array = (_Char * len(buffer)).from_buffer(buffer)
    _check(_libc.syscall(_Long(SYS_set_mempolicy), _Int(mode), array if words else None, _ULong(words * 64)))


def ioprio_set(which: int, who: int, ioprio: int) -> None:
    """ioprio_set(2): the I/O scheduling class and priority, ``(class << IOPRIO_CLASS_SHIFT) | level``."""
    _check(_libc.syscall(_Long(SYS_ioprio_set), _Int(which), _Int(who), _Int(ioprio)))


def sched_setattr(policy: int, *, flags: int = 0, nice: int = 0, priority: int = 0, runtime: int = 0,
                  deadline: int = 0, period: int = 0) -> None:  # fmt: skip
    """sched_setattr(2) on this thread: the policy with its nice value, static priority (FIFO, RR) or
    deadline parameters (DEADLINE, in ns), and SCHED_FLAG_* ``flags``."""
    # struct sched_attr, first version (48 bytes): size, policy, flags, nice, priority, runtime, deadline, period
    attr = bytearray(_struct.pack("=IIQiIQQQ", SCHED_ATTR_SIZE_VER0, policy, flags, nice, priority, runtime,
                                  deadline, period))  # fmt: skip
    buffer = (_Char * len(attr)).from_buffer(attr)
    _check(_libc.syscall(_Long(SYS_sched_setattr), _Int(0), buffer, _UInt(0)))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); a pointer argument goes as its address (``buffer_address``)."""
    return _check(_libc.prctl(_Int(option), _ULong(arg2), _ULong(arg3), _ULong(arg4), _ULong(arg5)))


def seccomp(operation: int, flags: int, address: int) -> int:
    """seccomp(2): ``operation`` (SECCOMP_SET_MODE_FILTER...) with ``flags``; ``address`` the argument's
    (a ``struct sock_fprog`` for a filter, by ``buffer_address``)."""
    return _check(_libc.syscall(_Long(SYS_seccomp), _UInt(operation), _UInt(flags), _ULong(address)))


def set_process_name(name: str) -> None:
    """The thread's name in /proc/<pid>/comm and ps (at most 15 bytes are kept)."""
    # a bytes object's buffer ends with a NUL byte: the kernel reads a C string from it
    _check(_libc.prctl(_Int(PR_SET_NAME), name.encode()[:15], _ULong(0), _ULong(0), _ULong(0)))


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


_LONG_LIMIT = 1 << (8 * _struct.calcsize("@l") - 1)


def _timeval(sec: int, usec: int) -> bytes:
    """struct timeval { time_t tv_sec; suseconds_t tv_usec; } (two longs on Linux); EINVAL when a
    value does not fit, as the kernel answers for a time it cannot take."""
    if not (-_LONG_LIMIT <= sec < _LONG_LIMIT and -_LONG_LIMIT <= usec < _LONG_LIMIT):
        raise_errno(errno.EINVAL)
    return _struct.pack("@ll", sec, usec)


def settimeofday(sec: int, usec: int) -> None:
    _check(_libc.settimeofday(_timeval(sec, usec), None))


# random(4) ioctls: _IOW('R', 0x03, int[2])
RNDADDENTROPY = 0x40085203


def add_entropy(fd: int, data: bytes, path: str | None = None) -> None:
    """Mix ``data`` into the kernel's pool and credit it as entropy (RNDADDENTROPY; needs CAP_SYS_ADMIN)."""
    # struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    info = _struct.pack("@ii", len(data) * 8, len(data)) + data
    _check(_libc.ioctl(_Int(fd), _ULong(RNDADDENTROPY), info), path)


# inotify(7): cgroup v2 signals changes of files such as memory.events as IN_MODIFY
IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init1(flags: int = IN_NONBLOCK | IN_CLOEXEC) -> int:
    return _check(_libc.inotify_init1(_Int(flags)))


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """The watch descriptor for ``path``; adding the same inode twice returns the same one."""
    return _check(_libc.inotify_add_watch(_Int(fd), _b(path), _UInt32(mask)), path)


def inotify_rm_watch(fd: int, wd: int) -> None:
    _check(_libc.inotify_rm_watch(_Int(fd), _Int(wd)))


SYS_bpf = 321


def bpf(cmd: int, attr: bytearray, path: str | None = None) -> int:
    """bpf(2) with ``attr`` (a union bpf_attr laid out by the caller; the kernel may write into it)."""
    buffer = (_Char * len(attr)).from_buffer(attr)
    return _check(_libc.syscall(_Long(SYS_bpf), _Int(cmd), buffer, _UInt(len(attr))), path)


def madvise(address: int, length: int, advice: int) -> None:
    """madvise(2) on this process's memory at ``address`` (page-aligned) for ``length`` bytes."""
    _check(_libc.madvise(_ULong(address), _SizeT(length), _Int(advice)))


SOL_SOCKET = 1
SO_SNDTIMEO = 21


def set_send_timeout(fd: int, seconds: float) -> None:
    """SO_SNDTIMEO on any socket family. Python's socket.setsockopt takes only integers on AF_VSOCK
    sockets, so a struct timeval cannot be passed there."""
    value = _timeval(int(seconds), int((seconds - int(seconds)) * 1_000_000))
    _check(_libc.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, value, len(value)))


SYS_rt_sigaction = 13
SIGKILL = 9
SIGSTOP = 19
NSIG = 65
# struct kernel_sigaction { void *handler; unsigned long flags; void *restorer; u64 mask; }, all zero:
# SIG_DFL, no flags, no restorer, nothing blocked during a handler
_DEFAULT_SIGACTION = bytes(_struct.calcsize("@PLPQ"))


def reset_all_signals() -> None:
    """Every signal back to SIG_DFL, including the two glibc keeps for itself (32 and 33) that
    signal.signal refuses: an ignored signal stays ignored across execve, and a container's program
    must start with the defaults whatever its launcher inherited (runc does the same)."""
    for signum in range(1, NSIG):
        if signum in (SIGKILL, SIGSTOP):
            continue
        _libc.syscall(SYS_rt_sigaction, signum, _DEFAULT_SIGACTION, None, _SizeT(8))


def resolve_ahead(names: tuple[str, ...] = ("unshare", "setns", "mount", "umount2", "sethostname", "syscall",
                                            "prctl", "madvise")) -> None:  # fmt: skip
    """Look the container setup's libc functions up now. A function is looked up on its first use
    (dlsym and its Python object: in a freshly forked process, mostly page faults); a process that
    forks the setup processes looks them up once, and its children inherit them resolved."""
    for name in names:
        getattr(_libc, name)
