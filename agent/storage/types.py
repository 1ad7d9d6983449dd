"""Domain types for storages. The RPC layer converts protobuf Storage into these."""

from __future__ import annotations

from dataclasses import dataclass

DRIVER_9P = "9p"
DRIVER_VIRTIOFS = "virtio-fs"
DRIVER_BLK = "blk"
DRIVER_SCSI = "scsi"
DRIVER_EPHEMERAL = "ephemeral"
DRIVER_LOCAL = "local"
DRIVER_OVERLAYFS = "overlayfs"
DRIVER_BIND = "bind"

DRIVERS = (
    DRIVER_9P,
    DRIVER_VIRTIOFS,
    DRIVER_BLK,
    DRIVER_SCSI,
    DRIVER_EPHEMERAL,
    DRIVER_LOCAL,
    DRIVER_OVERLAYFS,
    DRIVER_BIND,
)

# Kata's names for FSGroupChangePolicy.
POLICY_ALWAYS = "Always"
POLICY_ON_ROOT_MISMATCH = "OnRootMismatch"


@dataclass(frozen=True)
class FSGroup:
    """Give the volume's files this group (Kubernetes fsGroup)."""

    gid: int
    change_policy: str = POLICY_ALWAYS


@dataclass(frozen=True)
class Storage:
    driver: str
    source: str
    mount_point: str
    fstype: str = ""
    options: tuple[str, ...] = ()
    driver_options: tuple[str, ...] = ()
    fs_group: FSGroup | None = None

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    def same_mount(self, other: Storage) -> bool:
        """Whether ``other`` asks for the same mount (so a second user may share it)."""
        return (self.driver, self.source, self.fstype, self.options) == (
            other.driver,
            other.source,
            other.fstype,
            other.options,
        )
