"""A tiny guest for testing the VM harness and hybrid vsock without the agent.

It is Debian's generic kernel (fetched with ``apt-get download``, cached) and an initrd with
busybox-static, socat and its libraries, and the vsock modules. Its /init loads the modules and
serves, over AF_VSOCK:

- port 1024: an echo server (``socat VSOCK-LISTEN:1024,fork EXEC:cat``);
- port 1025: a shell that runs each line it reads (``EXEC:/bin/sh``), for checks inside the guest;
- a loop that dials host CID 2 port 5000 and echoes what it gets (guest -> host path, ``UDS_5000``);
- a loop that sends one JSON log line to host port 5001 every half second (as the agent's log_vport).

It prints ``test guest ready uptime=<s>`` on the console once the servers run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from agent.system.run import run

VSOCK_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
)
ECHO_PORT = 1024
SHELL_PORT = 1025
DIAL_HOST_PORT = 5000
LOG_HOST_PORT = 5001
READY_MARKER = "test guest ready"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {" ".join(VSOCK_MODULES)}; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
socat VSOCK-LISTEN:{ECHO_PORT},fork,reuseaddr,backlog=64 EXEC:cat &
socat VSOCK-LISTEN:{SHELL_PORT},fork,reuseaddr,backlog=64 EXEC:/bin/sh,stderr &
( while true; do socat VSOCK-CONNECT:2:{DIAL_HOST_PORT} EXEC:cat 2>/dev/null; sleep 0.5; done ) &
( n=0; while true; do n=$((n+1)); echo '{{"level": "info", "source": "testguest", "msg": "tick '$n'"}}' \
    | socat - VSOCK-CONNECT:2:{LOG_HOST_PORT} 2>/dev/null; sleep 0.5; done ) &
echo "{READY_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime)"
while true; do sleep 3600; done
"""

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def kernel_package_name() -> str:
    """The versioned package Debian's ``linux-image-amd64`` points at (the newest generic kernel)."""
    out = run(["apt-cache", "depends", "linux-image-amd64"], package="apt").stdout.decode()
    for line in out.splitlines():
        kind, _, word = line.strip().partition(":")
        word = word.strip()
        if kind == "Depends" and word.startswith("linux-image-") and word.endswith("-amd64"):
            return word
    raise RuntimeError("apt-cache depends linux-image-amd64 names no kernel package; run apt-get update")


def fetch_distro_kernel(cache: Path, progress: Progress = _quiet) -> tuple[Path, Path]:
    """(vmlinuz, modules directory) of Debian's generic kernel, downloaded once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    for tree in sorted(cache.glob("linux-image-*-amd64/lib/modules/*")):
        vmlinuz = tree.parents[2] / "boot" / f"vmlinuz-{tree.name}"
        if vmlinuz.is_file():
            return vmlinuz, tree
    package = kernel_package_name()
    progress(f"downloading {package} with apt-get download")
    run(["apt-get", "download", package], cwd=cache, package="apt")
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} left no .deb in {cache}")
    target = cache / package
    partial = cache / f"{package}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    progress(f"extracting {debs[-1].name}")
    run(["dpkg-deb", "-x", debs[-1], partial], package="dpkg")
    partial.rename(target)
    debs[-1].unlink()
    trees = sorted((target / "lib" / "modules").iterdir())
    version = trees[-1].name
    return target / "boot" / f"vmlinuz-{version}", trees[-1]


def _library_closure(binary: Path) -> list[Path]:
    out = run(["ldd", binary], package="libc-bin").stdout.decode()
    libraries = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libraries.append(Path(target))
        elif parts and parts[0].startswith("/"):
            libraries.append(Path(parts[0]))  # the dynamic loader
    return libraries


def build_test_initrd(modules: Path, output: Path, progress: Progress = _quiet) -> Path:
    """Write the test initrd (a newc cpio archive) to ``output``."""
    busybox = shutil.which("busybox")
    socat = shutil.which("socat")
    if busybox is None:
        raise RuntimeError("busybox not found; install it with: apt-get install busybox-static")
    if socat is None:
        raise RuntimeError("socat not found; install it with: apt-get install socat")
    staging = output.with_name(output.name + ".d")
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("bin", "proc", "sys", "dev", "tmp", "lib/modules"):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, staging / "bin" / "busybox")
    shutil.copy2(socat, staging / "bin" / "socat")
    for library in _library_closure(Path(socat)):
        dest = staging / str(library).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library.resolve(), dest)
    for name in VSOCK_MODULES:
        found = sorted(modules.rglob(f"{name}.ko"))
        if not found:
            raise RuntimeError(f"kernel module {name}.ko is not under {modules}")
        shutil.copy2(found[0], staging / "lib" / "modules" / f"{name}.ko")
    init = staging / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    progress(f"packing {output.name}")
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    with open(output, "wb") as archive:
        proc = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--reproducible", "--quiet"],
            input="\n".join(names).encode() + b"\n",
            stdout=archive,
            stderr=subprocess.PIPE,
            cwd=staging,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"cpio failed in {staging}: {proc.stderr.decode(errors='replace')}")
    shutil.rmtree(staging)
    return output


def test_guest_files(cache: Path, progress: Progress = _quiet) -> tuple[Path, Path]:
    """(vmlinuz, initrd) of the test guest, built once into ``cache``."""
    vmlinuz, modules = fetch_distro_kernel(cache, progress)
    initrd = cache / f"test-initrd-{modules.name}.cpio"
    stamp = hashlib.sha256(INIT_SCRIPT.encode()).hexdigest()
    stamp_file = initrd.with_suffix(".stamp")
    if not initrd.is_file() or not stamp_file.is_file() or stamp_file.read_text() != stamp:
        build_test_initrd(modules, initrd, progress)
        stamp_file.write_text(stamp)
    os.utime(initrd)
    return vmlinuz, initrd
