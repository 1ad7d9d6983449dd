"""PID 1 duties, done only when the agent is the initrd's /init.

Before any thread starts: mount the API filesystems, load the image's kernel modules in order, set a
hostname, bring ``lo`` up, become the child subreaper. While serving: reap orphans. At the end: stop
every process, sync, power off. Under systemd (the rootfs image) none of this runs.

Mounts are data first: ``boot_mounts()`` returns the steps, ``execute()`` performs them, and tests print
and check the plan without root.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

from agent.config import AgentConfig
from agent.system import children, libc, netdev
from agent.system.paths import HostPaths
from agent.system.records import Record

log = logging.getLogger(__name__)

NOSUID_NODEV_NOEXEC = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
V1_CONTROLLERS = ("cpu,cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "perf_event")
DEFAULT_HOSTNAME = "pykata"
# cgroup2 options. "favordynmods" (kernel 6.0 and later) keeps cgroup_threadgroup_rwsem in its slow-reader
# mode, so moving a process into a container's cgroup (a writer) does not wait for an RCU grace period:
# about 10 ms per container start otherwise. Forks and exits pay a little more for it. An older kernel
# refuses the option with EINVAL; the mount is then made with "nsdelegate" alone.
CGROUP2_OPTIONS = "nsdelegate,favordynmods"
CGROUP2_FALLBACK_OPTIONS = "nsdelegate"


class MountStep(Record):
    _fields = ("source", "target", "fstype", "flags", "data", "mode", "fallback_data")
    __slots__ = _fields
    source: str
    target: str
    fstype: str
    flags: int
    data: str
    mode: int
    fallback_data: str | None  # mount with this instead if the kernel refuses ``data`` with EINVAL

    def __init__(self, source: str, target: str, fstype: str, flags: int = 0, data: str = "", mode: int = 0o755,
                 fallback_data: str | None = None) -> None:  # fmt: skip
        self._assign(source, target, fstype, flags, data, mode, fallback_data)

    def describe(self) -> str:
        return f"mount -t {self.fstype} {self.source} {self.target} flags={self.flags:#x} data={self.data!r}"


class SymlinkStep(Record):
    _fields = ("target", "link")
    __slots__ = _fields
    target: str
    link: str

    def __init__(self, target: str, link: str) -> None:
        self._assign(target, link)

    def describe(self) -> str:
        return f"ln -s {self.target} {self.link}"


Step = MountStep | SymlinkStep


def cgroup_v1_requested(cmdline: str, config: AgentConfig) -> bool:
    """v1 when the config says so or the kernel command line asks systemd for the legacy layout."""
    words = cmdline.split()
    return not config.unified_cgroup_hierarchy or "systemd.unified_cgroup_hierarchy=0" in words


def boot_mounts(paths: HostPaths, cgroup_v1: bool, v1_controllers: tuple[str, ...] = V1_CONTROLLERS) -> list[Step]:
    dev = paths.dev
    steps: list[Step] = [
        MountStep("proc", paths.proc, "proc", NOSUID_NODEV_NOEXEC),
        MountStep("sysfs", paths.sys, "sysfs", NOSUID_NODEV_NOEXEC),
        MountStep("devtmpfs", dev, "devtmpfs", libc.MS_NOSUID, "mode=0755"),
        MountStep(
            "devpts", f"{dev}/pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
        ),
        SymlinkStep("pts/ptmx", f"{dev}/ptmx"),
        MountStep("shm", f"{dev}/shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777", 0o1777),
        MountStep("tmpfs", paths.run, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0755"),
    ]
    if cgroup_v1:
        steps.append(MountStep("tmpfs", paths.cgroup_root, "tmpfs", NOSUID_NODEV_NOEXEC, "mode=0755"))
        steps += [
            MountStep("cgroup", f"{paths.cgroup_root}/{name}", "cgroup", NOSUID_NODEV_NOEXEC, name)
            for name in v1_controllers
        ]
    else:
        steps.append(
            MountStep(
                "cgroup2",
                paths.cgroup_root,
                "cgroup2",
                NOSUID_NODEV_NOEXEC,
                CGROUP2_OPTIONS,
                fallback_data=CGROUP2_FALLBACK_OPTIONS,
            )
        )
    return steps


def _is_mountpoint(path: str) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def execute(steps: list[Step]) -> None:
    for step in steps:
        if isinstance(step, SymlinkStep):
            if not os.path.islink(step.link):
                try:
                    os.unlink(step.link)
                except FileNotFoundError:
                    pass
                os.symlink(step.target, step.link)
            continue
        os.makedirs(step.target, mode=step.mode, exist_ok=True)
        if _is_mountpoint(step.target) and step.fstype in ("proc", "sysfs", "devtmpfs"):
            continue  # the kernel (devtmpfs.mount=1) or a previous stage mounted it already
        try:
            _mount(step)
        except OSError as exc:
            # A missing v1 controller (not built into this kernel) is not fatal; anything else is.
            if step.fstype == "cgroup":
                log.warning("cgroup v1 controller %s not mounted: %s", step.data, exc)
                os.rmdir(step.target)
                continue
            raise


def _mount(step: MountStep) -> None:
    try:
        libc.mount(step.source, step.target, step.fstype, step.flags, step.data or None)
    except OSError as exc:
        if exc.errno != errno.EINVAL or step.fallback_data is None:
            raise
        log.info(
            "%s refused options %r (%s); mounting with %r", step.fstype, step.data, exc.strerror, step.fallback_data
        )
        libc.mount(step.source, step.target, step.fstype, step.flags, step.fallback_data or None)


def _kernel_release() -> str:
    return os.uname().release


def modules_to_load(paths: HostPaths) -> list[tuple[str, str]]:
    """The image's module list: one "relative/path.ko [params]" per line, in load order."""
    try:
        with open(paths.modules_load_list) as stream:
            text = stream.read()
    except FileNotFoundError:
        return []
    base = f"{paths.modules_dir}/{_kernel_release()}"
    modules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel, _, params = line.partition(" ")
        modules.append((f"{base}/{rel}", params.strip()))
    return modules


def load_modules(paths: HostPaths) -> int:
    loaded = 0
    for module, params in modules_to_load(paths):
        try:
            if libc.load_module(module, params):
                loaded += 1
        except OSError as exc:
            log.error("loading kernel module %s failed: %s", module, exc)
    return loaded


def _read_if_present(path: str) -> str:
    try:
        with open(path) as stream:
            return stream.read()
    except FileNotFoundError:
        return ""


def boot(config: AgentConfig, paths: HostPaths) -> None:
    """Everything PID 1 must do before the agent serves. Runs single-threaded."""
    started = time.monotonic()
    os.umask(0o022)
    # proc first: the cgroup decision reads the command line
    execute(boot_mounts(paths, cgroup_v1=False)[:1])
    cmdline = _read_if_present(paths.cmdline)
    execute(boot_mounts(paths, cgroup_v1_requested(cmdline, config))[1:])
    loaded = load_modules(paths)
    hostname = DEFAULT_HOSTNAME
    try:
        libc.sethostname(hostname)
    except OSError as exc:
        log.warning("setting hostname %s failed: %s", hostname, exc)
    try:
        netdev.set_link_up("lo")
    except OSError as exc:
        log.warning("bringing lo up failed: %s", exc)
    libc.set_child_subreaper()
    os.environ.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    log.info("init done: %d kernel modules loaded in %.0f ms", loaded, (time.monotonic() - started) * 1000)


def wait_for_deferred_files(why: str) -> bool:
    """Wait until the initrd's deferred files are unpacked; True when they are (or there are none).

    /init (osbuilder/guest/launcher.py) unpacks what the agent does not need to answer its first Check
    in the background; imports of those modules wait by themselves (its finder on ``sys.meta_path``),
    and code that needs another of those files (a kernel module, busybox) calls this first."""
    for finder in sys.meta_path:
        wait = getattr(finder, "wait_for_files", None)
        if wait is not None:
            return bool(wait(why))
    return True


class Reaper:
    """Reaps orphans on SIGCHLD (and every few seconds, in case a signal was coalesced)."""

    def __init__(self, paths: HostPaths, interval: float = 5.0) -> None:
        self._paths = paths
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: self._wake.set())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                children.reap_orphans(self._paths.proc)
            except Exception:
                log.exception("reaping orphans failed")


def _kill_everything(proc: str, timeout: float = 3.0) -> None:
    me = os.getpid()

    def others() -> list[int]:
        return [int(name) for name in os.listdir(proc) if name.isdigit() and int(name) != me]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in others():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children.reap_orphans(proc)
            alive = [pid for pid in others() if _is_user_process(proc, pid)]
            if not alive:
                return
            time.sleep(0.05)


def _is_user_process(proc: str, pid: int) -> bool:
    """Kernel threads have an empty cmdline and cannot be signalled; ignore them."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as stream:
            return bool(stream.read())
    except OSError:
        return False


def power_off(reason: str, paths: HostPaths | None = None) -> NoReturn:
    """Stop every process, sync and power the guest off. Only for PID 1; never returns."""
    paths = paths or HostPaths()
    log.critical("powering off: %s", reason)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    try:
        _kill_everything(paths.proc)
    except Exception:
        pass
    os.sync()
    try:
        libc.reboot(libc.LINUX_REBOOT_CMD_POWER_OFF)
    except OSError as exc:
        log.critical("reboot(POWER_OFF) failed: %s", exc)
    # reboot(2) does not return on success; if it failed, PID 1 may only wait to be killed.
    while True:
        signal.pause()
