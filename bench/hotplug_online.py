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

``PYKATA_BENCH_AGENT=1`` boots the osbuilder guest (``build/guest``, the agent as PID 1) twice with
``-smp 1,maxcpus=4``: once as shipped (uevent-driven) and once with ``agent.hotplug_uevents=false
agent.cpu_online_interval_ms=50`` (the poll). Per boot it hot-adds ``PYKATA_BENCH_AGENT_CPUS`` CPUs
(default 3), calling OnlineCPUMem(wait=true) right after each ``device_add``. A watcher started in the
debug console before the first CPU (a blocking read of the uevent netlink socket and /dev/kmsg, so it
takes no CPU while it waits and prints only at the end) records, on the guest's clocks: the kernel's
"CPUn has been hot-added" printk (the node is registered), the first ``cpuhp_enter`` trace event for
cpuN (the agent's write of 1 has entered cpu_up; tracefs, same clock as printk), and the "add" and
"online" uevents of cpuN. Each way runs in two orders: OnlineCPUMem right after device_add (the RPC
races the kernel), and OnlineCPUMem first with device_add a second later (the loop is waiting when
the node appears, as on the fake tree). ``PYKATA_BENCH_AGENT_BOOTS`` (default 1) rounds of the four
boots, interleaved; about 45 s of wall time per round under TCG.
The first CPU of a boot also pays for the agent building its resource service (imports, the uevent
listener) on the first OnlineCPUMem, so the summary gives the median of the later CPUs too.
"""

from __future__ import annotations

import base64
import os
import random
import socket
import statistics
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
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

    def _record(self, path: str, value: str) -> None:
        self._written.setdefault(os.path.basename(os.path.dirname(path)), time.perf_counter())

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


# Runs in the guest (python3.11 of the initrd). Waits on the uevent socket and /dev/kmsg with select,
# keeps what concerns cpuN, prints it all after the last "online" (printing on the way would compete
# with the agent for the guest's one CPU).
GUEST_WATCHER = """
import ctypes, os, select, socket, time
wanted = {count}
tracing = "/sys/kernel/tracing"
if not os.path.exists(tracing + "/trace"):
    ctypes.CDLL(None, use_errno=True).mount(b"nodev", tracing.encode(), b"tracefs", 0, None)
with open(tracing + "/events/cpuhp/cpuhp_enter/enable", "w") as enable:
    enable.write("1")
open(tracing + "/trace", "w").close()  # empties the buffer
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
sock.bind((0, 1))
kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
os.lseek(kmsg, 0, os.SEEK_END)
print("WATCH", "ready", time.monotonic(), flush=True)
events, online = [], 0
while online < wanted:
    ready, _, _ = select.select([sock, kmsg], [], [], {timeout})
    if not ready:
        break
    now = time.monotonic()
    if sock in ready:
        action, _, devpath = sock.recv(65536).split(b"\\0")[0].decode().partition("@")
        if devpath.startswith("/devices/system/cpu/cpu"):
            events.append(("uevent", action, devpath.rsplit("/", 1)[1], now))
            online += action == "online"
    if kmsg in ready:
        while True:
            try:
                record = os.read(kmsg, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue
            header, _, text = record.partition(";")
            if "hot-added" in text or "Booting" in text:
                events.append(("kmsg", text.strip().replace(" ", "_"), header.split(",")[2], now))
first_step = {{}}
with open(tracing + "/trace") as trace:
    for line in trace:
        if "cpuhp_enter:" in line and "cpu: " in line:
            task, _, rest = line.partition("[")
            stamp = rest.split(":")[0].split()[-1]
            cpu = int(rest.split("cpu: ")[1].split()[0])
            first_step.setdefault(cpu, (stamp, task.strip()))
for cpu, (stamp, task) in sorted(first_step.items()):
    events.append(("trace", "cpu%d" % cpu, stamp, task))
for event in events:
    print("WATCH", *event)
print("WATCH", "done", flush=True)
"""


@dataclass
class GuestCpu:
    """One hot-added CPU, seconds on the guest's clocks except ``rpc`` (host)."""

    number: int
    node: float  # device_add returned (host) -> "add" uevent (guest), through a clock offset
    agent: float | None  # "hot-added" printk -> first cpuhp_enter: the agent noticing and writing 1
    node_to_online: float  # "add" uevent -> "online" uevent
    rpc: float  # device_add returned -> OnlineCPUMem(wait=true) returned, on the host


class ConsoleWatcher:
    """The watcher running in a debug console connection; lines come back on the same socket."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buffer = b""

    def lines_until(self, word: str) -> tuple[list[list[str]], float]:
        """The ``WATCH`` lines up to and including the one whose first field is ``word``, and the
        host's time when that one arrived."""
        found: list[list[str]] = []
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                fields = raw.decode(errors="replace").strip().split()
                if fields[:1] == ["WATCH"]:
                    found.append(fields[1:])
                    if fields[1:2] == [word]:
                        return found, time.perf_counter()
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"the guest's watcher stopped before {word!r}: {self.buffer[-300:]!r}")
            self.buffer += chunk


def _by_cpu(lines: list[list[str]]) -> dict[str, dict[str, float]]:
    """{"cpuN": {"add": t, "online": t, "hot-added": t, "booting": t, "write": t}}: uevents on the
    monotonic clock; the printk lines and the first cpuhp_enter trace event (the agent's write of 1
    entering the kernel) on the kernel's local clock."""
    found: dict[str, dict[str, float]] = {}
    for fields in lines:
        if fields[0] == "uevent":
            _, action, name, at = fields
            found.setdefault(name, {})[action] = float(at)
        elif fields[0] == "trace":
            _, name, stamp, _task = fields
            found.setdefault(name, {})["write"] = float(stamp)
        elif fields[0] == "kmsg":
            _, text, usec, _received = fields
            words = text.replace("_", " ").split()
            if "hot-added" in text and words[0].startswith("CPU"):
                found.setdefault("cpu" + words[0][3:], {})["hot-added"] = int(usec) / 1e6
            elif "Processor" in words:
                found.setdefault("cpu" + words[words.index("Processor") + 1], {})["booting"] = int(usec) / 1e6
    return found


def agent_guest_latencies(options: str, count: int = 3, *, rpc_first: bool = False) -> list[GuestCpu]:
    """Boot the osbuilder guest with the agent (``options`` added to its command line), hot-add
    ``count`` CPUs one at a time and call OnlineCPUMem(wait=true) right after each device_add, or with
    ``rpc_first`` call it first and device_add once the agent's loop is waiting (the node then appears
    while the loop waits, as on the fake tree)."""
    from agent.rpc.pb import agent_pb2
    from agentctl import qmp as qmp_ops
    from agentctl import vm
    from agentctl.client import connect

    guest_dir = Path(__file__).resolve().parent.parent / "build" / "guest"
    if not (guest_dir / "initrd.img").exists():
        raise RuntimeError(f"no guest in {guest_dir}: run python3 -m osbuilder.cli all --output {guest_dir}")
    script = GUEST_WATCHER.format(count=count, timeout=240)
    # The console's shell (busybox ash) edits lines of at most 1 KiB: write the script in pieces.
    packed = base64.b64encode(zlib.compress(script.encode(), 9)).decode()
    stash = "/run/pykata-bench-watcher.b64"
    command = f"rm -f {stash}\n" + "".join(
        f"echo -n {packed[at : at + 512]} >> {stash}\n" for at in range(0, len(packed), 512)
    )
    unpack = f'import base64, zlib; exec(zlib.decompress(base64.b64decode(open("{stash}").read())))'
    command += f"exec python3.11 -c '{unpack}'\n"
    results: list[GuestCpu] = []
    with tempfile.TemporaryDirectory(prefix="pykata-bench-agent-") as run_dir:
        config = vm.GuestConfig(
            kernel=guest_dir / "vmlinuz",
            initrd=guest_dir / "initrd.img",
            cmdline=f"agent.debug_console {options}".strip(),
            cpus=1,
            max_cpus=4,
            name="bench-hotplug-agent",
            run_dir=Path(run_dir),
            ready_timeout=240.0,
        )
        guest = vm.Guest(config, lambda message: None)
        try:
            guest.start()
            agent = connect(guest.address, "ttrpc", timeout=240)
            with guest.connect(config_console_port()) as console:
                console.sendall(command.encode())
                watcher = ConsoleWatcher(console, timeout=300)
                (ready,), ready_host = watcher.lines_until("ready")
                offset = ready_host - float(ready[1])  # host minus guest clock, plus one console trip
                added: dict[str, tuple[float, float]] = {}
                with guest.qmp() as monitor:
                    for index in range(1, count + 1):
                        request = agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=index + 1, cpu_only=True)
                        call = threading.Thread(target=agent.call, args=("grpc.AgentService/OnlineCPUMem", request))
                        if rpc_first:
                            call.start()
                            # the first call also builds the agent's resource service (imports under TCG)
                            time.sleep(RPC_FIRST_SETTLE * (3 if index == 1 else 1))
                        qmp_ops.hotplug_cpus(monitor, 1)
                        at_add = time.perf_counter()
                        if not rpc_first:
                            call.start()
                        call.join()
                        added[f"cpu{index}"] = (at_add, time.perf_counter() - at_add)
                lines, _ = watcher.lines_until("done")
            for name, (at_add, rpc) in added.items():
                seen = _by_cpu(lines).get(name, {})
                if "add" not in seen or "online" not in seen:
                    raise RuntimeError(f"the guest's watcher saw no add/online uevent for {name}: {lines}")
                agent_part = seen["write"] - seen["hot-added"] if {"write", "hot-added"} <= seen.keys() else None
                results.append(
                    GuestCpu(
                        number=int(name[3:]),
                        node=seen["add"] - (at_add - offset),
                        agent=agent_part,
                        node_to_online=seen["online"] - seen["add"],
                        rpc=rpc,
                    )
                )
        finally:
            guest.kill()
    return results


def config_console_port() -> int:
    from agent.config import DEFAULT_DEBUG_CONSOLE_VPORT

    return DEFAULT_DEBUG_CONSOLE_VPORT


RPC_FIRST_SETTLE = 1.0  # seconds between sending OnlineCPUMem and device_add when the call goes first

AGENT_WAYS = (
    ("event (uevent)", ""),
    (f"poll ({POLL_INTERVAL_MS} ms)", f"agent.hotplug_uevents=false agent.cpu_online_interval_ms={POLL_INTERVAL_MS}"),
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


ORDERS = (("add, then rpc", False), ("rpc, then add", True))


def print_agent_guest(fake: dict[str, list[float]]) -> None:
    count = int(os.environ.get("PYKATA_BENCH_AGENT_CPUS", "3"))
    boots = int(os.environ.get("PYKATA_BENCH_AGENT_BOOTS", "1"))
    print(f"agent in the osbuilder guest under QEMU, -smp 1,maxcpus=4, {count} CPUs hot-added per boot (ms)")
    print("  agent  = kernel registers cpuN ('hot-added' printk) -> the write of 1 enters cpu_up (cpuhp_enter)")
    print("  online = 'add' uevent -> 'online' uevent; node = device_add -> 'add' uevent (+ one console trip)")
    print("  rpc    = device_add -> OnlineCPUMem(wait=true) returns, on the host")
    print("  order  = OnlineCPUMem right after device_add, or sent first so the loop waits for the node")
    print(f"{'way':<18}{'order':<16}{'boot':>5}{'cpu':>4}{'node':>7}{'agent':>7}{'online':>7}{'rpc':>7}")
    measured: dict[tuple[str, str], list[GuestCpu]] = {}
    for boot in range(1, boots + 1):
        for order, rpc_first in ORDERS:
            for name, options in AGENT_WAYS:
                for cpu_result in agent_guest_latencies(options, count, rpc_first=rpc_first):
                    measured.setdefault((name, order), []).append(cpu_result)
                    print(
                        f"{name:<18}{order:<16}{boot:>5}{cpu_result.number:>4}{_ms(cpu_result.node):>7}"
                        f"{_ms(cpu_result.agent):>7}{_ms(cpu_result.node_to_online):>7}{_ms(cpu_result.rpc):>7}",
                        flush=True,
                    )
    print("summary, medians in ms ('agent': all CPUs | the CPUs after the first of each boot, whose first")
    print("OnlineCPUMem also builds the agent's resource service), beside the fake tree's median / p90")
    print(f"{'way':<18}{'order':<16}{'agent all':>10}{'later':>7}{'online':>7}{'rpc':>7}   fake tree")
    for (name, order), results in measured.items():
        agent_all = [r.agent for r in results if r.agent is not None]
        later = [r.agent for r in results if r.agent is not None and r.number > 1]
        fake_ms = [v * 1000 for v in fake[name]]

        def median_ms(values: list[float]) -> str:
            return _ms(statistics.median(values)) if values else "-"

        print(
            f"{name:<18}{order:<16}{median_ms(agent_all):>10}{median_ms(later):>7}"
            f"{median_ms([r.node_to_online for r in results]):>7}{median_ms([r.rpc for r in results]):>7}"
            f"   {statistics.median(fake_ms):.2f} / {_percentile(fake_ms, 0.9):.2f}"
        )
    print("baseline: the 50 ms poll should add about 25 ms (up to 50) to 'agent' when the loop is waiting;")
    print("field report: about 1 s for one CPU, 18 s for 5")


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
    if os.environ.get("PYKATA_BENCH_AGENT") == "1":
        print_agent_guest(results)
    else:
        print("(PYKATA_BENCH_AGENT=1 also boots the agent's guest twice: uevents against the 50 ms poll)")


if __name__ == "__main__":
    main()
