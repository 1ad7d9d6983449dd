"""Guest network and storage calls against the commands a shell-based guest would run.

In a namespace of its own (deleted afterwards): UpdateInterface (rename, MTU, two addresses, up) and
UpdateRoutes (three routes) through NetworkService, against the same steps as ``ip`` commands; the
cost of the first network call (importing pyroute2) in a fresh interpreter; and mount_all + release of
an ephemeral (tmpfs) storage under a temporary directory, against ``mount`` + ``umount``.
``PYKATA_BENCH_RUNS`` sets the repetitions (default 20). Needs root.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("PYKATA_BENCH_RUNS", "20"))
MAC = "02:00:00:be:00:02"


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(ordered) * 1000:7.2f} ms  p90 {p90 * 1000:7.2f} ms"


def _time(step: Callable[[int], None]) -> list[float]:
    samples = []
    for i in range(RUNS):
        started = time.perf_counter()
        step(i)
        samples.append(time.perf_counter() - started)
    return samples


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def main() -> None:
    from pyroute2 import IPRoute

    from agent.config import AgentConfig
    from agent.network.types import Interface, IPAddress, Route
    from agent.services.network import NetworkService
    from agent.services.storage import StorageService
    from agent.storage.types import Storage
    from agent.system.paths import HostPaths

    ns = f"pykata-bench-{secrets.token_hex(3)}"
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "-n", ns, "link", "add", "peer0", "type", "veth", "peer", "name", "eth0", "address", MAC)
        service = NetworkService(AgentConfig(), HostPaths(), open_socket=lambda: IPRoute(netns=ns))

        def ours_iface(i: int) -> None:
            name = f"pk{i % 2}"
            addrs = (IPAddress(f"10.66.{i % 200}.2", 24), IPAddress(f"fd00:66:{i % 200}::2", 64, 6))
            service.update_interface(Interface(name=name, hw_addr=MAC, mtu=1400 + i % 2, addresses=addrs))

        def ip_iface(i: int) -> None:
            current = f"pk{(i + 1) % 2}"
            name = f"pk{i % 2}"
            ip = ("ip", "-n", ns)
            _sh(*ip, "link", "set", "dev", current, "down")
            _sh(*ip, "link", "set", "dev", current, "name", name, "mtu", str(1400 + i % 2))
            _sh(*ip, "addr", "flush", "dev", name, "scope", "global")
            _sh(*ip, "addr", "add", f"10.66.{i % 200}.2/24", "dev", name)
            _sh(*ip, "addr", "add", f"fd00:66:{i % 200}::2/64", "dev", name)
            _sh(*ip, "link", "set", "dev", name, "up")

        print(f"UpdateInterface (NetworkService, pyroute2)  {_ms(_time(ours_iface))}")
        service.update_interface(Interface(name="pk1", hw_addr=MAC))
        print(f"same steps as 6 ip commands (baseline)       {_ms(_time(ip_iface))}")

        service.update_interface(Interface(name="eth0", hw_addr=MAC, addresses=(IPAddress("10.67.0.2", 24),)))

        def ours_routes(i: int) -> None:
            service.update_routes(
                [
                    Route(dest="", gateway="10.67.1.1", device="eth0"),
                    Route(dest=f"192.168.{i % 200}.0/24", gateway="10.67.0.254", device="eth0"),
                    Route(dest="10.67.1.0/24", device="eth0"),
                ]
            )

        def ip_routes(i: int) -> None:
            ip = ("ip", "-n", ns)
            _sh(*ip, "route", "flush", "proto", "boot")
            _sh(*ip, "route", "replace", "10.67.1.0/24", "dev", "eth0")
            _sh(*ip, "route", "replace", "default", "via", "10.67.1.1", "dev", "eth0")
            _sh(*ip, "route", "replace", f"192.168.{i % 200}.0/24", "via", "10.67.0.254", "dev", "eth0")

        print(f"UpdateRoutes, 3 routes (NetworkService)     {_ms(_time(ours_routes))}")
        print(f"same steps as 4 ip commands (baseline)       {_ms(_time(ip_routes))}")
    finally:
        if "service" in locals():
            service.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)

    first = []
    for _ in range(max(3, RUNS // 4)):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "from agent.services.network import NetworkService as N; "
             "from agent.config import AgentConfig as C; from agent.system.paths import HostPaths as H; "
             "N(C(), H()).list_interfaces()"],
            cwd=REPO, check=True,
        )  # fmt: skip
        first.append(time.perf_counter() - started)
    bare = _time(lambda i: _sh(sys.executable, "-c", "pass"))
    print(f"fresh interpreter + first ListInterfaces     {_ms(first)}")
    print(f"fresh interpreter alone (baseline)           {_ms(bare)}")

    with tempfile.TemporaryDirectory(prefix="pykata-bench-") as tmp:
        storage_service = StorageService(AgentConfig(), HostPaths())
        target = os.path.join(tmp, "eph")

        def ours_mount(i: int) -> None:
            storage_service.mount_all([Storage("ephemeral", "tmpfs", target, options=("size=1m",))], "bench")
            storage_service.release("bench")

        def cmd_mount(i: int) -> None:
            os.makedirs(target, exist_ok=True)
            _sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", target)
            _sh("umount", target)
            os.rmdir(target)

        print(f"ephemeral storage mount_all + release        {_ms(_time(ours_mount))}")
        print(f"mkdir + mount -t tmpfs + umount (baseline)   {_ms(_time(cmd_mount))}")
