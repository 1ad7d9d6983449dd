"""The disk image: an MBR partition table and one ext4 partition made from the rootfs tree.

``mkfs.ext4 -d`` fills a file-backed filesystem from the directory and ``dd`` places it at the partition
offset: no loop devices, no mounts. The kernel and the initrd are given to QEMU directly; the initrd's
launcher sees ``root=/dev/vda1`` and switches to it (see osbuilder/guest/launcher.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.system.run import run
from osbuilder import config
from osbuilder.context import BuildContext

MIB = 1024 * 1024
PARTITION_START_MIB = 1
EXT4_UUID = "8e5c5ab1-9c2a-4f55-8d1e-7079b7a9e001"  # fixed, so the image is reproducible


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def filesystem_mib(content_bytes: int) -> int:
    headroom = max(content_bytes * config.IMAGE_HEADROOM_FRACTION, config.IMAGE_HEADROOM_MIN_MIB * MIB)
    return int((content_bytes + headroom) // MIB) + 1


def build(ctx: BuildContext, tree: Path, output: Path) -> Path:
    size_mib = filesystem_mib(tree_size(tree))
    fs_file = ctx.workdir / "rootfs.ext4"
    fs_file.unlink(missing_ok=True)
    with ctx.progress.step("image", f"mkfs.ext4 -d from {tree} ({size_mib} MiB)"):
        run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "pykata-root",
                "-U",
                EXT4_UUID,
                "-E",
                f"root_owner=0:0,hash_seed={EXT4_UUID}",
                "-d",
                tree,
                fs_file,
                f"{size_mib}M",
            ],
            env=ctx.env(),
            package="e2fsprogs",
        )
    total_mib = PARTITION_START_MIB + size_mib + 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    with output.open("wb") as handle:
        handle.truncate(total_mib * MIB)
    with ctx.progress.step("image", "writing the partition table (sfdisk) and the filesystem (dd)"):
        table = f"label: dos\nlabel-id: 0x706b6174\nstart={PARTITION_START_MIB}MiB, size={size_mib}MiB, type=83\n"
        run(["sfdisk", "-q", output], input=table.encode(), package="fdisk")
        run(
            [
                "dd",
                f"if={fs_file}",
                f"of={output}",
                "bs=1M",
                f"seek={PARTITION_START_MIB}",
                "conv=notrunc,sparse",
                "status=none",
            ],
            package="coreutils",
        )
    fs_file.unlink()
    ctx.progress.say("image", f"{output}: {total_mib} MiB, boot with: {config.IMAGE_CMDLINE}")
    return output
