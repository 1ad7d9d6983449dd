"""Start the pykata agent in a guest: the initrd's /init, and the rootfs image's agent command.

It runs under ``python3.11 -IS`` (isolated, no site scan) and puts the agent's directory on sys.path
itself. As the initrd's PID 1 it has one more job: when the kernel command line carries ``root=`` (the
disk image boot), it loads the kernel modules, mounts that root and hands PID 1 over to its init
(systemd), which then starts the agent from the image. Without ``root=`` the agent itself becomes PID 1.

The initrd's deferred archive (osbuilder/initrd.py: what the agent does not need to answer its first
Check) is unpacked by a child at the lowest priority, which then loads the other kernel modules; until
it is done, an import of a module the archive holds waits for it (``DeferredFiles``, the first finder
on ``sys.meta_path``, so no other finder loads a module of the archive before the drivers are there),
and so does code that needs another of its files (``wait_for_files``). Each file appears whole (it is
written under a hidden name, then renamed): a shared object the loader maps while it is still being
written is a SIGBUS at the first page past its end. The image boot (``root=``) unpacks it before it
loads the root's modules.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

AGENT_LIB = "/usr/lib/pykata"
MODULE_LISTS = ("/etc/pykata/modules.load", "/etc/pykata/modules-root.load")
# Loaded while the agent starts, by a child at the lowest priority: the agent loads modules.load itself.
# The drivers come before the child says the deferred files are there, the rest after.
DRIVER_MODULE_LISTS = ("/etc/pykata/modules.load", "/etc/pykata/modules-drivers.load")
BACKGROUND_MODULE_LISTS = ("/etc/pykata/modules-background.load",)
NEW_ROOT = "/sysroot"
ROOT_WAIT_SECONDS = 30.0
MS_MOVE = 0x2000
MS_RDONLY = 0x1
MS_NOSUID_NODEV_NOEXEC = 0x2 | 0x4 | 0x8
# Kernel command line flag: print the uptime at which /init started (bench/guest_boot.py sets it).
BOOT_TIMES_OPTION = "pykata.boot_times"
# osbuilder/initrd.py's DEFERRED_ARCHIVE and DEFERRED_INDEX.
DEFERRED_ARCHIVE = "/etc/pykata/deferred.cpio.gz"
DEFERRED_INDEX = "/etc/pykata/deferred.modules"
CPIO_NEWC_MAGIC = b"070701"
CPIO_HEADER_SIZE = 110
CPIO_TRAILER = "TRAILER!!!"
S_IFMT, S_IFDIR, S_IFREG, S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000


def kernel_options(cmdline: str) -> dict[str, str]:
    options = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        options[key] = value
    return options


def _fail(message: str) -> None:
    from agent.system import libc

    print(f"pykata init: {message}; powering off", file=sys.stderr, flush=True)
    os.sync()
    libc.reboot(libc.LINUX_REBOOT_CMD_POWER_OFF)


def _mount_api_filesystems() -> None:
    from agent.system import libc
    from agent.system.paths import HostPaths

    paths = HostPaths()
    for source, target, fstype, flags in (
        ("proc", str(paths.proc), "proc", MS_NOSUID_NODEV_NOEXEC),
        ("sysfs", str(paths.sys), "sysfs", MS_NOSUID_NODEV_NOEXEC),
        ("devtmpfs", str(paths.dev), "devtmpfs", 0x2),
    ):
        os.makedirs(target, exist_ok=True)
        if not os.path.ismount(target):
            libc.mount(source, target, fstype, flags, None)


def _module_name(relpath: str) -> str:
    """``kernel/net/vmw_vsock/vsock.ko`` -> ``vsock``, as /sys/module names it."""
    return relpath.rsplit("/", 1)[-1].split(".", 1)[0].replace("-", "_")


def _load_modules(release: str, lists: tuple[str, ...] = MODULE_LISTS, keep_going: bool = False) -> None:
    """Load the listed modules in order; a failure raises, or with ``keep_going`` is printed and skipped."""
    from agent.system import libc

    seen: set[str] = set()
    for listing in lists:
        try:
            with open(listing) as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            rel, _, params = line.strip().partition(" ")
            if not rel or rel.startswith("#") or rel in seen:
                continue
            seen.add(rel)
            if os.path.isdir("/sys/module/" + _module_name(rel)):
                continue  # loaded already (by the agent, or built in)
            path = f"/lib/modules/{release}/{rel}"
            try:
                libc.load_module(path, params)
            except OSError as exc:
                if not keep_going:
                    raise
                print(f"pykata init: kernel module {path}: {exc.strerror}", file=sys.stderr, flush=True)


def unpack_cpio(data: bytes, root: str = "/") -> int:
    """Write the members of a newc archive under ``root`` (directories, files, symlinks); returns how
    many. Parents come before their children in the archive (osbuilder's writer sorts them).

    Each file and symlink is made under a hidden name and renamed into place, so nobody ever sees one
    half written: the agent runs while this unpacks, and the dynamic loader maps a shared object it
    finds (an import the finders resolve, or a library a boot-archive symlink points to); a page of it
    past the end of a file still being written is a SIGBUS, and for PID 1 a kernel panic."""
    view = memoryview(data)
    offset = count = 0
    while True:
        header = bytes(view[offset : offset + CPIO_HEADER_SIZE])
        if header[:6] != CPIO_NEWC_MAGIC:
            raise ValueError(f"cpio: bad magic at offset {offset}")
        mode, size, namesize = (int(header[6 + 8 * i : 14 + 8 * i], 16) for i in (1, 6, 11))
        offset += CPIO_HEADER_SIZE
        name = bytes(view[offset : offset + namesize - 1]).decode()
        offset += namesize + (-(CPIO_HEADER_SIZE + namesize) % 4)
        body = view[offset : offset + size]
        offset += size + (-size % 4)
        if name == CPIO_TRAILER:
            return count
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"cpio: member {name!r} is outside the tree")
        path = os.path.join(root, name)
        head, tail = os.path.split(path)
        hidden = os.path.join(head, f".{tail}.unpacking")
        kind = mode & S_IFMT
        if kind == S_IFDIR:
            os.makedirs(path, exist_ok=True)
            os.chmod(path, mode & 0o7777)
        elif kind == S_IFREG:
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode & 0o7777)
            try:
                written = 0
                while written < size:
                    written += os.write(fd, body[written:])
            finally:
                os.close(fd)
            os.rename(hidden, path)
        elif kind == S_IFLNK:
            os.symlink(bytes(body).decode(), hidden)
            os.rename(hidden, path)
        else:
            raise ValueError(f"cpio: member {name!r} has mode {mode:o}; only directories, files and symlinks")
        count += 1


def unpack_deferred(archive: str = DEFERRED_ARCHIVE, root: str = "/") -> int:
    """Unpack the deferred archive (gzip) under ``root`` and delete it; returns the members written."""
    import zlib

    with open(archive, "rb") as handle:
        data = zlib.decompress(handle.read(), 16 + zlib.MAX_WBITS)
    count = unpack_cpio(data, root)
    os.unlink(archive)
    return count


class DeferredFiles:
    """A finder for the modules of the deferred archive, first on ``sys.meta_path``: it waits until the
    child has unpacked them, then finds them with the other finders. Names it does not hold go on to
    the other finders at once, as without it.

    ``done_fd`` is the read end of a pipe whose write end the child holds: it writes ``ok`` (or what
    failed) and exits, so the end of the pipe means the files are there, or never will be."""

    def __init__(self, done_fd: int, index: str = DEFERRED_INDEX) -> None:
        import _thread

        self._fd = done_fd
        self._index = index
        self._names: frozenset[str] | None = None
        self._lock = _thread.allocate_lock()
        self._done = False
        self.ok = False

    def _deferred_names(self) -> frozenset[str]:
        if self._names is None:
            try:
                with open(self._index) as handle:
                    self._names = frozenset(handle.read().split())
            except OSError:
                self._names = frozenset()
        return self._names

    def wait_for_files(self, why: str = "a caller") -> bool:
        """Block until the deferred files are unpacked (at once when they are); True if they were."""
        if self._done:
            return self.ok
        with self._lock:
            if self._done:
                return self.ok
            started = time.monotonic()
            report = b""
            while chunk := os.read(self._fd, 4096):
                report += chunk
            os.close(self._fd)
            self.ok = report == b"ok"
            for finder in sys.meta_path:  # directories listed before the files came are listed again
                invalidate = getattr(finder, "invalidate_caches", None)
                if invalidate is not None and finder is not self:
                    invalidate()
            self._done = True
            waited = (time.monotonic() - started) * 1000
            uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
            state = "unpacked" if self.ok else f"not unpacked ({report.decode(errors='replace') or 'no report'})"
            print(
                f"pykata init: deferred files {state} at uptime={uptime:.3f}; {why} waited {waited:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
        return self.ok

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if self._done or name not in self._deferred_names():
            return None
        self.wait_for_files(f"import {name}")
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                return spec
        return None

    def invalidate_caches(self) -> None:
        pass


def start_background_work(release: str | None, archive: str | None) -> DeferredFiles | None:
    """Fork a child at nice 19 that unpacks ``archive`` (the deferred files), loads the device drivers,
    says the files are there, and then loads the guest's other kernel modules (no modules without
    ``release``); returns the finder that waits for the files and drivers, which is on
    ``sys.meta_path`` already (None without an archive).

    On one busy vCPU the child runs when the agent waits, so what the agent does not need to answer
    its first Check (the deferred files, the drivers; 9p, virtiofs, overlay) stops delaying it. Any
    call but that Check waits for the RPC handlers, whose imports wait for the files, so the drivers
    are there before a handler runs. The modules the agent loads itself (modules.load) come first in
    the child's driver lists too: the drivers depend on them, and a second load of one just waits for
    the first. Called before any thread exists (the agent reaps the child as an orphan).
    """
    if archive is None and release is not None:  # nothing to announce: the drivers load before the agent
        _load_modules(release, DRIVER_MODULE_LISTS)
    read_fd, write_fd = os.pipe() if archive else (-1, -1)
    pid = os.fork()
    if pid:
        if archive is None:
            return None
        os.close(write_fd)
        deferred = DeferredFiles(read_fd)
        sys.meta_path.insert(0, deferred)  # first: asked before a finder could see the file itself
        return deferred
    status = 0
    try:
        os.nice(19)
        if archive is not None:
            os.close(read_fd)
            try:
                unpack_deferred(archive)
                if release is not None:
                    _load_modules(release, DRIVER_MODULE_LISTS, keep_going=True)
                os.write(write_fd, b"ok")
            except Exception as exc:
                os.write(write_fd, f"{type(exc).__name__}: {exc}".encode()[:4000])
                raise
            finally:
                os.close(write_fd)
        if release is not None:
            _load_modules(release, BACKGROUND_MODULE_LISTS, keep_going=True)
    except BaseException as exc:
        print(f"pykata init: background work: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        status = 1
    os._exit(status)


def _remove_initramfs(root_dev: int) -> None:
    """Free the initramfs' memory: delete its files (never crossing into another filesystem)."""
    for dirpath, dirnames, filenames in os.walk("/", topdown=True):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == root_dev]
        for name in filenames:
            try:
                os.unlink(os.path.join(dirpath, name))
            except OSError:
                pass


def switch_root(options: dict[str, str]) -> None:
    """Mount ``root=`` and exec its init as PID 1. Returns only by raising."""
    from agent.system import libc

    device = options["root"]
    deadline = time.monotonic() + ROOT_WAIT_SECONDS
    while not os.path.exists(device):
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"root device {device} did not appear within {ROOT_WAIT_SECONDS:.0f} s")
        time.sleep(0.05)
    os.makedirs(NEW_ROOT, exist_ok=True)
    flags = 0 if "rw" in options else MS_RDONLY
    libc.mount(device, NEW_ROOT, options.get("rootfstype") or "ext4", flags, None)
    init = options.get("init") or "/sbin/init"
    if not os.path.exists(NEW_ROOT + init) and not os.path.islink(NEW_ROOT + init):
        raise FileNotFoundError(f"{device} has no {init}")
    from agent.system.paths import HostPaths

    paths = HostPaths()
    for api in (str(paths.dev), str(paths.proc), str(paths.sys)):
        os.makedirs(NEW_ROOT + api, exist_ok=True)
        libc.mount(api, NEW_ROOT + api, None, MS_MOVE, None)
    initramfs_dev = os.lstat("/").st_dev
    os.chdir(NEW_ROOT)
    _remove_initramfs(initramfs_dev)
    libc.mount(".", "/", None, MS_MOVE, None)
    os.chroot(".")
    os.chdir("/")
    os.execv(init, [init])


def main() -> None:
    started = time.clock_gettime(time.CLOCK_BOOTTIME)  # the kernel's uptime, before /proc is mounted
    sys.path.insert(0, AGENT_LIB)
    archive = DEFERRED_ARCHIVE if os.path.exists(DEFERRED_ARCHIVE) else None
    if os.getpid() == 1:
        try:
            _mount_api_filesystems()
            from agent.system.paths import HostPaths

            with open(HostPaths().cmdline) as handle:
                options = kernel_options(handle.read())
            if BOOT_TIMES_OPTION in options:
                print(f"pykata init: /init started at uptime={started:.3f}", file=sys.stderr, flush=True)
            if options.get("root"):
                if archive is not None:
                    unpack_deferred(archive)
                _load_modules(os.uname().release)
                switch_root(options)
            start_background_work(os.uname().release, archive)
        except Exception as exc:  # PID 1 must not exit: say why and power off
            _fail(f"{type(exc).__name__}: {exc}")
    elif archive is not None:  # the initrd's tree run in a chroot: the agent needs its files now
        unpack_deferred(archive)
    # The agent's entry point called directly: runpy (and what it imports) would only add start-up time.
    from agent.__main__ import main as agent_main

    sys.argv[0] = "agent"
    agent_main()


if __name__ == "__main__":
    main()
