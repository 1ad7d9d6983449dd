"""StorageService: storages for sandboxes and containers, and the volume RPCs, in domain types.

The container engine calls ``mount_all(storages, owner)`` when it creates a container (owner: the
container id) or the sandbox (owner: ``SANDBOX_OWNER``), and ``release(owner)`` when it goes.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.errors import InvalidArgument, NotFound, ResourceError
from agent.storage import plan as p
from agent.storage.fsmodules import load_filesystem
from agent.storage.mountinfo import read_mountinfo
from agent.storage.table import MountedStorage, MountTable
from agent.storage.types import DRIVER_BLK, DRIVER_EPHEMERAL, Storage
from agent.storage.volume import VolumeStats, resize_volume, volume_stats
from agent.system import libc
from agent.system.mountopts import parse_plain_mount_options
from agent.system.paths import HostPaths
from agent.system.pcipath import Waker

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

SANDBOX_OWNER = "sandbox"


class StorageService:
    def __init__(
        self,
        config: AgentConfig,
        paths: HostPaths,
        sys: p.Syscalls | None = None,
        waker_factory: Callable[[], Waker | None] = lambda: None,
    ) -> None:
        self.config = config
        self.paths = paths
        self.sys: p.Syscalls = sys or p.HostSyscalls(lambda fstype: load_filesystem(paths, fstype))
        self.table = MountTable(paths, config.hotplug_timeout, self.sys, waker_factory)

    @classmethod
    def from_services(cls, services: Services) -> StorageService:
        from agent.services.devicewait import waker_factory

        return cls(services.config, services.paths, waker_factory=waker_factory(services.paths, "block"))

    def mount_all(self, storages: list[Storage], owner: str) -> list[str]:
        """Mount every storage for ``owner`` (all or nothing); returns the mount points in order."""
        mount_points = self.table.mount_all(storages, owner)
        if storages:
            log.info("storages for %s: %s", owner, ", ".join(mount_points))
        return mount_points

    def release(self, owner: str) -> None:
        """``owner`` no longer uses its storages; unmount those nobody else uses."""
        removed = self.table.release(owner)
        if removed:
            log.info("released storages of %s: %s", owner, ", ".join(removed))

    def mounted(self, mount_point: str) -> MountedStorage | None:
        return self.table.get(mount_point)

    def add_swap(self, pci_path: str) -> str:
        """AddSwap: swap to the virtio-blk device at ``pci_path``, which the runtime hot-plugged and
        formatted with mkswap; waits for it up to agent.hotplug_timeout. Returns its device node."""
        if not pci_path:
            raise InvalidArgument("AddSwap: the PCI path is empty")
        device = self.table.block_device(DRIVER_BLK, pci_path)
        try:
            self.sys.swapon(device)
        except OSError as exc:
            hint = ": it holds no swap area (the runtime makes one with mkswap)" if exc.errno == errno.EINVAL else ""
            raise ResourceError(f"AddSwap: swapon {device} (PCI path {pci_path}): {exc.strerror}{hint}") from exc
        log.info("swapping to %s (PCI path %s)", device, pci_path)
        return device

    def update_ephemeral_mounts(self, storages: list[Storage]) -> None:
        """Remount ephemeral (tmpfs) storages with new options, e.g. a new size limit."""
        for storage in storages:
            if storage.driver != DRIVER_EPHEMERAL:
                log.info("UpdateEphemeralMounts: skipping %s storage %s", storage.driver, storage.mount_point)
                continue
            if self.table.get(storage.mount_point) is None:
                raise NotFound(f"UpdateEphemeralMounts: no ephemeral storage is mounted at {storage.mount_point}")
            options = parse_plain_mount_options(storage.options, f"ephemeral storage {storage.mount_point}")
            remount = p.Remount(storage.mount_point, libc.MS_REMOUNT | options.flags, options.data_text)
            try:
                remount.apply(self.sys)
            except OSError as exc:
                raise p.domain_error(remount, exc) from exc

    def volume_stats(self, path: str) -> VolumeStats:
        return volume_stats(path)

    def resize_volume(self, path: str, size: int) -> None:
        resize_volume(path, self.table.get(path), size)

    def remove_stale_virtiofs_share_mounts(self) -> int:
        """Stat every virtiofs mount: virtiofsd drops its cached inodes (and their host fds) for paths
        that are gone only when the guest looks them up. Returns how many were stale."""
        stale = 0
        for mount in read_mountinfo(self.paths.mountinfo):
            if mount.fstype != "virtiofs":
                continue
            try:
                os.stat(mount.mount_point)
            except OSError as exc:
                stale += 1
                log.info("virtiofs mount %s is stale: %s", mount.mount_point, exc)
        return stale
