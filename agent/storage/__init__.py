"""Storage drivers for the ``storages`` of CreateSandbox and CreateContainer (Kata semantics).

``types`` holds the domain ``Storage``; ``options`` turns mount options into flags and data;
``drivers`` turns one storage into a plan of operations (``plan``) that can be printed and tested
before it runs; ``devices`` finds the block device behind a blk or scsi storage; ``table`` counts the
users of each mount point; ``volume`` answers GetVolumeStats and ResizeVolume.
"""

from agent.storage.types import DRIVERS

# What GetGuestDetails reports as the agent's storage handlers.
STORAGE_HANDLERS: tuple[str, ...] = DRIVERS
