"""Guest image size: the initrd compressed with lz4, gzip, zstd and xz, by part, against the 12 MiB target.

Uses the cached rootfs and kernel under build/cache (building them first if needed: mkosi, minutes).
Boot timing comes with the VM harness.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from osbuilder import initrd, rootfs
from osbuilder.context import BuildContext
from osbuilder.kernel import distro

TARGET_MIB = 12.0
KATA_BASELINE = "Kata's initrd with the Rust agent: about 10 to 14 MB"


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="pykata-bench-") as out:
        ctx = BuildContext(repo / "build/cache", Path(out), source=repo)
        kernel = distro.prepare(ctx)
        tree = rootfs.build(ctx)
        mib = 1024 * 1024
        print(f"initrd size by part (target {TARGET_MIB:.0f} MiB compressed; baseline: {KATA_BASELINE})")
        for method in ("lz4", "gzip", "zstd", "xz"):
            result = initrd.build(ctx, tree, kernel, method, output_name=f"initrd-{method}.img", measure=True)
            verdict = "meets" if result.size / mib <= TARGET_MIB else "over"
            print(f"{method:5} total {result.size / mib:6.2f} MiB ({verdict} the {TARGET_MIB:.0f} MiB target)")
            for line in initrd.report(result)[1:]:
                print("   " + line)


if __name__ == "__main__":
    main()
