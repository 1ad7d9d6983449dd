"""GetVolumeStats (statvfs) and ResizeVolume (online grow of ext2/3/4 on a block device)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import InvalidArgument, NotFound, ResourceError, Unsupported
from agent.storage.table import MountedStorage
from agent.storage.types import DRIVER_BLK, DRIVER_SCSI
from agent.system.run import CommandError, run

RESIZABLE_FSTYPES = ("ext2", "ext3", "ext4")


@dataclass(frozen=True)
class Usage:
    total: int
    available: int
    used: int


@dataclass(frozen=True)
class VolumeStats:
    bytes: Usage
    inodes: Usage


def volume_stats(path: str) -> VolumeStats:
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"GetVolumeStats: volume path {path!r} must be absolute, without NUL bytes")
    try:
        st = os.statvfs(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"volume {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidArgument(f"GetVolumeStats: volume path {path[:64]!r}...: {exc.strerror}") from None
        raise ResourceError(f"statvfs {path}: {exc.strerror}") from exc
    block = st.f_frsize or st.f_bsize
    return VolumeStats(
        bytes=Usage(st.f_blocks * block, st.f_bavail * block, (st.f_blocks - st.f_bfree) * block),
        inodes=Usage(st.f_files, st.f_ffree, st.f_files - st.f_ffree),
    )


def resize_volume(
    path: str,
    mounted: MountedStorage | None,
    size: int,
    which: Callable[[str], str | None] = shutil.which,
) -> None:
    """Grow the filesystem at ``path`` to ``size`` bytes (0: to the whole device). Only ext2/3/4 on
    a blk or scsi storage can be resized here; anything else is Unsupported with the reason."""
    if mounted is None:
        raise NotFound(f"ResizeVolume: no storage is mounted at {path}")
    storage = mounted.storage
    if storage.driver not in (DRIVER_BLK, DRIVER_SCSI):
        raise Unsupported(f"ResizeVolume: {path} is a {storage.driver} storage; only blk and scsi can be resized")
    if storage.fstype not in RESIZABLE_FSTYPES:
        raise Unsupported(f"ResizeVolume: {path} is {storage.fstype}; only {', '.join(RESIZABLE_FSTYPES)} can grow")
    tool = which("resize2fs")
    if tool is None:
        raise Unsupported("ResizeVolume: resize2fs is not in this guest image (e2fsprogs)")
    argv = [tool, mounted.source]
    if size:
        argv.append(f"{size // 1024}K")
    try:
        run(argv, timeout=120)
    except CommandError as exc:
        hint = " (online resize needs CAP_SYS_RESOURCE)" if "Permission denied" in exc.stderr else ""
        raise ResourceError(f"ResizeVolume {path}: {exc}{hint}") from exc
