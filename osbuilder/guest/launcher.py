"""Start the pykata agent in a guest: the initrd's /init, and the rootfs image's agent command.

It runs under ``python3.11 -IS`` (isolated, no site scan) and puts the agent's directory on sys.path
itself. As the initrd's PID 1 it has one more job: when the kernel command line carries ``root=`` (the
disk image boot), it loads the kernel modules, mounts that root and hands PID 1 over to its init
(systemd), which then starts the agent from the image. Without ``root=`` the agent itself becomes PID 1.
"""

from __future__ import annotations

import os
import sys
import time

AGENT_LIB = "/usr/lib/pykata"
MODULE_LISTS = ("/etc/pykata/modules.load", "/etc/pykata/modules-root.load")
# Loaded while the agent starts, by a child at the lowest priority: the agent loads modules.load itself.
BACKGROUND_MODULE_LISTS = ("/etc/pykata/modules.load", "/etc/pykata/modules-background.load")
NEW_ROOT = "/sysroot"
ROOT_WAIT_SECONDS = 30.0
MS_MOVE = 0x2000
MS_RDONLY = 0x1
MS_NOSUID_NODEV_NOEXEC = 0x2 | 0x4 | 0x8
# Kernel command line flag: print the uptime at which /init started (bench/guest_boot.py sets it).
BOOT_TIMES_OPTION = "pykata.boot_times"


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
            path = f"/lib/modules/{release}/{rel}"
            try:
                libc.load_module(path, params)
            except OSError as exc:
                if not keep_going:
                    raise
                print(f"pykata init: kernel module {path}: {exc.strerror}", file=sys.stderr, flush=True)


def start_background_modules(release: str) -> int:
    """Fork a child that loads the guest's other kernel modules at nice 19; returns its PID.

    On one busy vCPU it runs when the agent waits, so modules the agent does not need to serve (9p,
    virtiofs, overlay) stop delaying the first answer. The modules the agent loads itself come
    first in the child's lists too: the others depend on them, and a second load of one just waits
    for the first. Called before any thread exists (the agent reaps the child as an orphan).
    """
    pid = os.fork()
    if pid:
        return pid
    status = 0
    try:
        os.nice(19)
        _load_modules(release, BACKGROUND_MODULE_LISTS, keep_going=True)
    except BaseException as exc:
        print(f"pykata init: background kernel modules: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
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
    if os.getpid() == 1:
        try:
            _mount_api_filesystems()
            from agent.system.paths import HostPaths

            with open(HostPaths().cmdline) as handle:
                options = kernel_options(handle.read())
            if BOOT_TIMES_OPTION in options:
                print(f"pykata init: /init started at uptime={started:.3f}", file=sys.stderr, flush=True)
            if options.get("root"):
                _load_modules(os.uname().release)
                switch_root(options)
            start_background_modules(os.uname().release)
        except Exception as exc:  # PID 1 must not exit: say why and power off
            _fail(f"{type(exc).__name__}: {exc}")
    # The agent's entry point called directly: runpy (and what it imports) would only add start-up time.
    from agent.__main__ import main as agent_main

    sys.argv[0] = "agent"
    agent_main()


if __name__ == "__main__":
    main()
