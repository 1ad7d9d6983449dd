"""Mounted storages and their users. A storage stays mounted while any user (a container id, or the
sandbox) holds it; ``mount_all`` is all-or-nothing for one call; ``release`` unmounts what the last
user lets go, innermost first.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import AlreadyExists, ResourceError
from agent.storage import plan as p
from agent.storage.devices import resolve_blk, resolve_scsi
from agent.storage.drivers import check_mount_point, plan_storage
from agent.storage.fsmodules import load_filesystem
from agent.storage.types import DRIVER_BIND, DRIVER_BLK, DRIVER_SCSI, Storage
from agent.system.paths import HostPaths
from agent.system.pcipath import Waker

log = logging.getLogger(__name__)


@dataclass
class Entry:
    storage: Storage
    source: str  # what was mounted: the device node for blk and scsi
    applied: p.Applied
    owners: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class MountedStorage:
    """A read-only view of one entry, for callers and tests."""

    storage: Storage
    source: str
    owners: frozenset[str]


class MountTable:
    def __init__(
        self,
        paths: HostPaths,
        device_timeout: float,
        sys: p.Syscalls | None = None,
        waker_factory: Callable[[], Waker | None] = lambda: None,
    ) -> None:
        self.paths = paths
        self.device_timeout = device_timeout
        self.sys: p.Syscalls = sys or p.HostSyscalls(lambda fstype: load_filesystem(paths, fstype))
        self._waker_factory = waker_factory
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}  # by mount point, in mount order

    def block_device(self, driver: str, source: str) -> str:
        """The device node of a blk source (a PCI path, or a /dev path) or a scsi one ("target:lun"),
        waiting up to the device timeout for it to appear."""
        resolve = resolve_blk if driver == DRIVER_BLK else resolve_scsi
        # Made before the first look at sysfs, so no event between the look and the wait is lost.
        waker = self._waker_factory()
        try:
            return resolve(self.paths, source, self.device_timeout, waker)
        finally:
            close = getattr(waker, "close", None)
            if close is not None:
                close()

    def _resolve(self, storage: Storage) -> tuple[str, bool]:
        if storage.driver in (DRIVER_BLK, DRIVER_SCSI):
            return self.block_device(storage.driver, storage.source), True
        if storage.driver == DRIVER_BIND:
            return storage.source, not os.path.exists(storage.source) or os.path.isdir(storage.source)
        return storage.source, True

    def plan(self, storage: Storage) -> list[p.Op]:
        """The plan ``mount_all`` would run for ``storage`` (devices resolved), for display."""
        source, is_dir = self._resolve(storage)
        return plan_storage(storage, source, is_dir)

    def mount_all(self, storages: list[Storage], owner: str) -> list[str]:
        """Make every storage available for ``owner``; returns their mount points in order. A storage
        whose mount point is in use already gains ``owner`` as a user if it asks for the same mount.
        On any failure, what this call mounted is unmounted again and the error is raised."""
        mount_points: list[str] = []
        created: list[str] = []
        joined: list[str] = []
        with self._lock:
            try:
                for storage in storages:
                    mount_point = check_mount_point(storage)
                    entry = self._entries.get(mount_point)
                    if entry is not None:
                        if not entry.storage.same_mount(storage):
                            raise AlreadyExists(
                                f"{mount_point} holds {entry.storage.driver} storage {entry.storage.source!r}; "
                                f"{owner} asks for {storage.driver} storage {storage.source!r} there"
                            )
                        if owner not in entry.owners:
                            entry.owners.add(owner)
                            joined.append(mount_point)
                    else:
                        source, is_dir = self._resolve(storage)
                        applied = p.execute(plan_storage(storage, source, is_dir), self.sys)
                        self._entries[mount_point] = Entry(storage, source, applied, {owner})
                        created.append(mount_point)
                    mount_points.append(mount_point)
            except BaseException:
                for mount_point in reversed(created):
                    for failure in self._entries.pop(mount_point).applied.undo(self.sys):
                        log.warning("storage rollback: %s", failure)
                for mount_point in joined:
                    self._entries[mount_point].owners.discard(owner)
                raise
        return mount_points

    def release(self, owner: str) -> list[str]:
        """Drop ``owner`` from every storage; unmount those nobody uses now. Returns the mount points
        taken down. Every one is tried; failures are raised together at the end."""
        removed: list[str] = []
        failures: list[str] = []
        with self._lock:
            for mount_point in reversed(list(self._entries)):
                entry = self._entries[mount_point]
                if owner not in entry.owners:
                    continue
                entry.owners.discard(owner)
                if entry.owners:
                    continue
                failures += entry.applied.undo(self.sys)
                del self._entries[mount_point]
                removed.append(mount_point)
        if failures:
            raise ResourceError(f"releasing the storages of {owner}: " + "; ".join(failures))
        return removed

    def get(self, mount_point: str) -> MountedStorage | None:
        with self._lock:
            entry = self._entries.get(mount_point.rstrip("/") or "/")
            if entry is None:
                return None
            return MountedStorage(entry.storage, entry.source, frozenset(entry.owners))

    def snapshot(self) -> dict[str, MountedStorage]:
        with self._lock:
            return {mp: MountedStorage(e.storage, e.source, frozenset(e.owners)) for mp, e in self._entries.items()}
