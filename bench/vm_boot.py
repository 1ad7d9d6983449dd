"""VM boot and hybrid vsock throughput with the test guest (Debian generic kernel, busybox + socat
initrd), under the accelerator ``agentctl.vm`` picks (TCG on hosts where KVM does not work).

Boot: wall time to QEMU's first console output, the guest's uptime when its /init reports ready,
wall time until the guest's vsock echo port answers through hvsock. Throughput: MiB/s host->guest
(the guest's shell runs ``cat >/dev/null``), guest->host (``head -c N /dev/zero``), and echoed
round trip, and the back-end's own CPU time per MiB. Printed next to the figures measured on this
kind of host before (ENVIRONMENT.md).
``PYKATA_BENCH_BOOTS`` sets the number of boots (default 3), ``PYKATA_BENCH_MIB`` the transfer size
(default 16).
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from agentctl import testguest, vm

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "cache"
BOOTS = int(os.environ.get("PYKATA_BENCH_BOOTS", "3"))
MIB = int(os.environ.get("PYKATA_BENCH_MIB", "16"))
CHUNK = 256 * 1024
# ENVIRONMENT.md, busybox initrd on the generic kernel under TCG: user space at 2.7 s uptime, 6.8 s wall.
BASELINE = {"guest uptime at init (s)": 2.7, "wall to user space (s)": 6.8}


def _quiet(message: str) -> None:
    pass


def _boot(kernel: Path, initrd: Path, run_dir: Path) -> tuple[vm.Guest, dict[str, float]]:
    config = vm.GuestConfig(
        kernel=kernel,
        initrd=initrd,
        cmdline="quiet",
        name="bench",
        run_dir=run_dir,
        ready_marker=testguest.READY_MARKER,
        ready_port=testguest.ECHO_PORT,
        ready_all=True,
    )
    guest = vm.Guest(config, _quiet)
    guest.start()
    found = re.search(rf"{testguest.READY_MARKER} uptime=([0-9.]+)", guest.console_text())
    figures = {
        "wall to first console output (s)": guest.timings.get("console_first_line", float("nan")),
        "guest uptime at init (s)": float(found.group(1)) if found else float("nan"),
        "wall to user space (s)": guest.timings.get("marker", float("nan")),
        "wall to vsock answer (s)": guest.timings["ready"],
    }
    return guest, figures


def _host_to_guest(guest: vm.Guest, size: int) -> float:
    block = b"\x5a" * CHUNK
    with guest.connect(testguest.SHELL_PORT) as sock:
        sock.settimeout(300)
        sock.sendall(b"exec cat >/dev/null\n")
        start = time.monotonic()
        sent = 0
        while sent < size:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        return size / (1 << 20) / (time.monotonic() - start)


def _guest_to_host(guest: vm.Guest, size: int) -> float:
    with guest.connect(testguest.SHELL_PORT) as sock:
        sock.settimeout(300)
        start = time.monotonic()
        sock.sendall(f"head -c {size} /dev/zero\n".encode())
        sock.shutdown(socket.SHUT_WR)
        got = 0
        while chunk := sock.recv(CHUNK):
            got += len(chunk)
        took = time.monotonic() - start
    if got < size:
        raise RuntimeError(f"guest sent {got} of {size} bytes")
    return got / (1 << 20) / took


def _echo(guest: vm.Guest, size: int) -> float:
    block = b"\xa5" * CHUNK
    with guest.connect(testguest.ECHO_PORT) as sock:
        sock.settimeout(300)

        def writer() -> None:
            for _ in range(size // CHUNK):
                sock.sendall(block)
            sock.shutdown(socket.SHUT_WR)

        start = time.monotonic()
        thread = threading.Thread(target=writer)
        thread.start()
        got = 0
        while got < size and (chunk := sock.recv(CHUNK)):
            got += len(chunk)
        thread.join()
        return 2 * got / (1 << 20) / (time.monotonic() - start)


def main() -> None:
    kernel, initrd = testguest.test_guest_files(CACHE, print)
    boots: dict[str, list[float]] = {}
    rates: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    accel = ""
    with tempfile.TemporaryDirectory(prefix="pykata-bench-vm-") as tmp:
        for index in range(BOOTS):
            guest, figures = _boot(kernel, initrd, Path(tmp) / f"boot{index}")
            accel = guest.accel
            try:
                for name, value in figures.items():
                    boots.setdefault(name, []).append(value)
                if index == BOOTS - 1:
                    size = MIB << 20
                    backend = psutil.Process(guest.backend.pid) if guest.backend else None
                    for name, transfer in (
                        ("host -> guest", _host_to_guest),
                        ("guest -> host", _guest_to_host),
                        ("echo, both ways", _echo),
                    ):
                        cpu_before = sum(backend.cpu_times()[:2]) if backend else 0.0
                        rates[f"{name} (MiB/s)"] = transfer(guest, size)
                        if backend is not None:
                            cpu = sum(backend.cpu_times()[:2]) - cpu_before
                            cpu_ms[f"{name} back-end CPU (ms/MiB)"] = 1000 * cpu / MIB
            finally:
                guest.kill()
    print(f"\nVM boot, test guest ({kernel.name}, {accel}), {BOOTS} boots; median (min..max) vs. baseline")
    for name, values in boots.items():
        baseline = BASELINE.get(name)
        shown = f"{baseline:.1f}" if baseline is not None else "n/a"
        spread = f"({min(values):.2f}..{max(values):.2f})"
        print(f"  {name:36} {statistics.median(values):6.2f}  {spread:14} baseline {shown}")
    print(f"\nhybrid vsock throughput, {MIB} MiB through the Python back-end")
    for name, value in rates.items():
        print(f"  {name:36} {value:6.1f}   baseline n/a (first measurement)")
    print("\nback-end CPU per MiB moved (what the Python back-end itself costs; the rest is the guest)")
    for name, value in cpu_ms.items():
        print(f"  {name:36} {value:6.1f}   baseline n/a (first measurement)")


if __name__ == "__main__":
    main()
