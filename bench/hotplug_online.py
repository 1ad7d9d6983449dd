"""CPU onlining latency: from a CPU's sysfs node appearing to the agent writing 1 to its online file.

On the fake sysfs tree, with the real online loop (agent/services/resources.py), real threads and real
time. Two ways, alternating sample by sample:

- event: a uevent listener reads a datagram socket; a background thread creates the CPU node, then
  sends the kernel's "add@/devices/system/cpu/cpuN" message on the socket (as the kernel does on
  netlink), which wakes the loop. The re-scan interval stays at its default (100 ms).
- poll:  no uevents; the loop re-scans every 50 ms (the fixed poll the field report's agent used).

The node appears at a random moment 5-45 ms after the loop starts waiting, so the poll's phase is
not in the figures' favour. Prints median, p90 and max per way, side by side.
``PYKATA_BENCH_RUNS`` sets the samples per way (default 40). ``PYKATA_BENCH_GUEST=1`` also boots
the test guest under QEMU (no agent in it yet) and times the guest kernel: device_add to sysfs node,
and the write of 1 to the CPU being online.

In a guest, ``guest_latencies`` measures the same thing end to end from the host: it is given a way
to hot-add a CPU (QMP ``device_add``) and a way to call OnlineCPUMem, and returns seconds per CPU.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import build_config
from agent.hotplug.testing import FakeSysfs
from agent.hotplug.uevent import UeventListener
from agent.services.resources import ResourceService

RUNS = int(os.environ.get("PYKATA_BENCH_RUNS", "40"))
POLL_INTERVAL_MS = 50
# The field report: a fixed 100 x 50 ms loop, so a CPU that is ready waits half an interval on average.
BASELINE = "50 ms poll: expected median about 25 ms, p90 about 45 ms (half and nine tenths of the interval)"


class Way:
    def __init__(self, name: str, root: Path, *, events: bool) -> None:
        self.name = name
        self.fake = FakeSysfs(root)
        self.fake.add_cpu(0, online=None)
        self.next_cpu = 1
        self.samples: list[float] = []
        self._written: dict[str, float] = {}
        self.fake.on_write = self._record
        self.kernel_end: socket.socket | None = None
        self.listener: UeventListener | None = None
        if events:
            self.kernel_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.listener = UeventListener(agent_end).start()
            options = {}
        else:
            options = {"cpu_online_interval_ms": POLL_INTERVAL_MS}
        self.service = ResourceService(
            self.fake.paths, build_config(overrides=options), listener=self.listener, writer=self.fake.write
        )

    def _record(self, path: Path, value: str) -> None:
        self._written.setdefault(path.parent.name, time.perf_counter())

    def sample(self) -> None:
        number = self.next_cpu
        self.next_cpu += 1
        appeared: list[float] = []
        delay = random.uniform(0.005, 0.045)

        def hot_add() -> None:
            time.sleep(delay)
            self.fake.add_cpu(number)  # the node appears atomically (rename) at the end of this
            appeared.append(time.perf_counter())
            if self.kernel_end is not None:
                self.kernel_end.send(self.fake.cpu_added(number).encode())

        adder = threading.Thread(target=hot_add)
        adder.start()
        self.service.online_cpu_mem(number + 1, wait=True, cpu_only=True)
        adder.join()
        self.samples.append(self._written[f"cpu{number}"] - appeared[0])

    def close(self) -> None:
        self.service.close()
        if self.listener is not None:
            self.listener.stop()
        if self.kernel_end is not None:
            self.kernel_end.close()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _row(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return f"{name:<22}{statistics.median(ms):>10.2f}{_percentile(ms, 0.9):>10.2f}{max(ms):>10.2f}{len(ms):>9}"


def fake_tree_latencies(runs: int = RUNS) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="pykata-bench-hotplug-") as tmp:
        ways = [
            Way("event (uevent)", Path(tmp) / "event", events=True),
            Way(f"poll ({POLL_INTERVAL_MS} ms)", Path(tmp) / "poll", events=False),
        ]
        try:
            for _ in range(runs):
                for way in ways:
                    way.sample()
        finally:
            for way in ways:
                way.close()
        return {way.name: way.samples for way in ways}


def guest_latencies(
    add_cpu: Callable[[], None], online_cpu_mem: Callable[[int], None], cpus_before: int, count: int
) -> list[float]:
    """Seconds from each hot-add returning to ``OnlineCPUMem(nb_cpus=N, wait=true)`` returning.

    ``add_cpu`` hot-adds one vCPU (QMP device_add); ``online_cpu_mem(n)`` calls the agent.
    """
    latencies = []
    for index in range(count):
        add_cpu()
        start = time.perf_counter()
        online_cpu_mem(cpus_before + index + 1)
        latencies.append(time.perf_counter() - start)
    return latencies


GUEST_WAIT_AND_ONLINE = """
d=/sys/devices/system/cpu/cpu{n}
while [ ! -e $d/online ]; do usleep 5000; done
a=$(cut -d' ' -f1 /proc/uptime)
echo 1 > $d/online
b=$(cut -d' ' -f1 /proc/uptime)
echo "appeared=$a online=$b state=$(cat $d/online)"
exit
"""


def guest_kernel_timings(cpus: int = 3) -> list[tuple[float, float]]:
    """Boot the test guest (no agent: busybox and socat) with ``-smp 1,maxcpus=4`` and hot-add ``cpus``
    CPUs one by one. For each: (seconds from device_add to the sysfs node, seconds from writing 1 to
    the CPU being online), on the guest's clock; a shell loop polls every 5 ms for the node."""
    from agentctl import qmp as qmp_ops
    from agentctl import testguest, vm

    cache = Path(__file__).resolve().parent.parent / "build" / "cache"
    kernel, initrd = testguest.test_guest_files(cache, lambda message: None)
    timings: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="pykata-bench-guest-") as run_dir:
        config = vm.GuestConfig(
            kernel=kernel,
            initrd=initrd,
            cmdline="quiet",
            name="bench-hotplug",
            run_dir=Path(run_dir),
            ready_marker=testguest.READY_MARKER,
            ready_port=testguest.ECHO_PORT,
            ready_all=True,
            ready_timeout=180.0,
        )
        guest = vm.Guest(config, lambda message: None)
        try:
            guest.start()

            def shell(command: str) -> str:
                with guest.connect(testguest.SHELL_PORT) as sock:
                    sock.settimeout(120)
                    sock.sendall(command.encode() + b"\nexit\n")
                    out = bytearray()
                    while chunk := sock.recv(65536):
                        out += chunk
                return out.decode(errors="replace")

            for number in range(1, cpus + 1):
                result: list[str] = []
                script = GUEST_WAIT_AND_ONLINE.format(n=number)
                waiter = threading.Thread(target=lambda out=result, text=script: out.append(shell(text)))
                waiter.start()
                added = float(shell("cut -d' ' -f1 /proc/uptime").split()[-1])
                with guest.qmp() as qmp:
                    qmp_ops.hotplug_cpus(qmp, 1)
                waiter.join(150)
                fields = dict(item.split("=", 1) for item in (result or [""])[0].split() if "=" in item)
                if fields.get("state") != "1":
                    raise RuntimeError(f"cpu{number} did not come online in the guest: {result}")
                appeared, online = float(fields["appeared"]), float(fields["online"])
                timings.append((appeared - added, online - appeared))
        finally:
            guest.kill()
    return timings


def main() -> None:
    results = fake_tree_latencies()
    print("CPU onlining latency on the fake sysfs tree: node appears -> agent writes 1 to online (ms)")
    print(f"{'way':<22}{'median':>10}{'p90':>10}{'max':>10}{'samples':>9}")
    for name, samples in results.items():
        print(_row(name, samples))
    event, poll = (statistics.median(s) for s in results.values())
    print(f"median speed-up of the event-driven loop over the {POLL_INTERVAL_MS} ms poll: {poll / event:.0f}x")
    print(f"baseline: {BASELINE}")
    if os.environ.get("PYKATA_BENCH_GUEST") == "1":
        print("guest kernel under QEMU (test guest, no agent): device_add -> sysfs node, write 1 -> online (s)")
        for index, (appear, online) in enumerate(guest_kernel_timings(), start=1):
            print(f"  cpu{index}: node after {appear:.2f} s, online {online:.2f} s after the write")
        print("baseline: field report about 1 s for one CPU and 18 s for 5; ENVIRONMENT.md saw 12 s under TCG")
    else:
        print("(PYKATA_BENCH_GUEST=1 also boots the test guest and times the guest kernel's hotplug)")


if __name__ == "__main__":
    main()
