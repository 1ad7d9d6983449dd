"""Guest image size and unpack time: the initrd in gzip, lz4, zstd and xz, by part, against the 12 MiB target.

Uses the cached rootfs and kernel under build/cache (building them first if needed: mkosi, minutes).

Then each initrd boots under QEMU (``agentctl.vm``: TCG on hosts where KVM does not work) with the
kernel's own timestamps on the console, and the unpack time is the span from the kernel's "Trying to
unpack rootfs image as initramfs" to its "Freeing initrd memory" line: the kernel's work, which the
host's load disturbs less than wall clocks. The boots are interleaved (one of each format, then again),
``PYKATA_BENCH_BOOTS`` of each (default 2); the median is shown. ``PYKATA_BENCH_UNPACK=0`` skips them.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
from pathlib import Path

from agentctl import vm
from osbuilder import initrd, rootfs
from osbuilder.context import BuildContext
from osbuilder.kernel import distro

TARGET_MIB = 12.0
KATA_BASELINE = "Kata's initrd with the Rust agent: about 10 to 14 MB"
METHODS = ("gzip", "lz4", "zstd", "xz")
BOOTS = int(os.environ.get("PYKATA_BENCH_BOOTS", "2"))
UNPACK_START = "Trying to unpack rootfs image as initramfs"
UNPACK_END = "Freeing initrd memory"
NAN = float("nan")


def _quiet(message: str) -> None:
    pass


def kernel_time(console: str, text: str) -> float:
    """The printk timestamp (seconds since boot) of the first console line holding ``text``."""
    for line in console.splitlines():
        if text in line:
            found = re.search(r"\[\s*([0-9]+\.[0-9]+)\]", line)
            if found:
                return float(found.group(1))
    return NAN


def unpack_seconds(kernel: Path, image: Path, run_dir: Path) -> tuple[float, str]:
    """Boot ``image`` until the kernel has unpacked it; the kernel's own time for the unpacking, and
    the accelerator QEMU used."""
    config = vm.GuestConfig(
        kernel=kernel,
        initrd=image,
        cmdline="",
        name="bench-unpack",
        run_dir=run_dir,
        ready_marker=UNPACK_END,
        ready_port=None,
        ready_timeout=240.0,
        accel="auto",
    )
    with vm.Guest(config, _quiet) as guest:
        guest.start()
        console = guest.console_text()
        accel = guest.accel
    return kernel_time(console, UNPACK_END) - kernel_time(console, UNPACK_START), accel


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="pykata-bench-") as out:
        ctx = BuildContext(repo / "build/cache", Path(out), source=repo)
        kernel = distro.prepare(ctx)
        tree = rootfs.build(ctx)
        print(f"initrd size by part (target {TARGET_MIB:.0f} MiB compressed; baseline: {KATA_BASELINE})")
        images: dict[str, Path] = {}
        for method in METHODS:
            result = initrd.build(ctx, tree, kernel, method, output_name=f"initrd-{method}.img", measure=True)
            images[method] = result.image
            verdict = "meets" if result.size / mib <= TARGET_MIB else "over"
            print(f"{method:5} total {result.size / mib:6.2f} MiB ({verdict} the {TARGET_MIB:.0f} MiB target)")
            for line in initrd.report(result)[1:]:
                print("   " + line)
        if os.environ.get("PYKATA_BENCH_UNPACK", "1") == "0" or BOOTS < 1:
            return
        times: dict[str, list[float]] = {method: [] for method in METHODS}
        accels = set()
        for index in range(BOOTS):
            for method in METHODS:
                seconds, accel = unpack_seconds(kernel.vmlinuz, images[method], Path(out) / f"vm-{method}{index}")
                times[method].append(seconds)
                accels.add(accel)
        print(
            f"kernel unpacking the initrd under {'/'.join(sorted(accels))}, median of {BOOTS} boots each "
            "(the kernel's timestamps)"
        )
        for method in METHODS:
            runs = " ".join(f"{t:.2f}" for t in times[method])
            print(f"  {method:5} {statistics.median(times[method]):5.2f} s  (runs: {runs})")


if __name__ == "__main__":
    main()
