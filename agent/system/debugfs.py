"""debugfs at /sys/kernel/debug, mounted on demand (the mem-agent's MGLRU interface lives there).

systemd mounts debugfs itself; as the initrd's PID 1 the agent mounts only what it boots with, so the
first user of a debugfs file mounts it. Data first: ``mount_step`` says what would be mounted,
``ensure_mounted`` does it when nothing is mounted there yet.
"""

from __future__ import annotations

import logging
import os

from agent.system import libc
from agent.system.paths import HostPaths

log = logging.getLogger(__name__)

DEBUGFS_FLAGS = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC


def mount_step(paths: HostPaths) -> tuple[str, str, str, int]:
    """(source, target, fstype, flags) of the debugfs mount."""
    return ("debugfs", paths.debugfs, "debugfs", DEBUGFS_FLAGS)


def is_mounted(paths: HostPaths) -> bool:
    try:
        return os.path.ismount(paths.debugfs)
    except OSError:
        return False


def ensure_mounted(paths: HostPaths) -> None:
    """Mount debugfs at ``paths.debugfs`` unless something is mounted there. Raises OSError (naming the
    target) when the mount fails: not root, no CONFIG_DEBUG_FS, or the directory is missing (no sysfs)."""
    if is_mounted(paths):
        return
    source, target, fstype, flags = mount_step(paths)
    log.info("mounting %s on %s", fstype, target)
    libc.mount(source, target, fstype, flags)
