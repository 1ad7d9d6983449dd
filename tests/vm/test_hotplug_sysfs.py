"""The real guest kernel's hotplug sysfs, as the onlining code and its fake tree assume it to be.

QEMU hot-adds a CPU and a 256 MiB DIMM through QMP; the test guest's shell (no agent needed) checks
the layout the fake tree in agent/hotplug/testing.py copies (a new cpuN with online=0, cpu/possible,
memory blocks offline with Movable in valid_zones, block_size_bytes in hex), checks with busybox's
uevent listener that the kernel announces each one as the online loop's subscription expects, onlines
them the way agent/hotplug does, and prints how long the kernel took.
"""

from __future__ import annotations

import re
import threading
import time

from agent.hotplug.cpuset import parse_cpuset
from agent.hotplug.uevent import Uevent
from agent.services.resources import is_hotplug_add
from agentctl import qmp as qmp_ops
from agentctl import testguest, vm
from tests.vm.conftest import phase

MiB = 1 << 20

WAIT_AND_ONLINE_CPU = """
d=/sys/devices/system/cpu/cpu{n}
while [ ! -e $d/online ]; do usleep 10000; done
a=$(cut -d' ' -f1 /proc/uptime); s=$(cat $d/online)
echo 1 > $d/online; r=$?
b=$(cut -d' ' -f1 /proc/uptime)
echo "appeared=$a state=$s rc=$r online=$(cat $d/online) done=$b all=$(cat /sys/devices/system/cpu/online)"
"""


def shell(guest: vm.Guest, command: str, timeout: float = 120.0) -> str:
    """Run ``command`` in the guest's shell. The shell exits by itself: half-closing the socket would
    make socat end a command that runs longer than half a second."""
    with guest.connect(testguest.SHELL_PORT) as sock:
        sock.settimeout(timeout)
        sock.sendall(command.encode() + b"\nexit\n")
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def record_uevents(guest: vm.Guest, log: str) -> None:
    """Start busybox's uevent listener in the guest, appending ACTION|SUBSYSTEM|DEVPATH to ``log``."""
    shell(
        guest,
        f"mkdir -p /tmp; rm -f {log}; "
        f"uevent sh -c 'echo \"$ACTION|$SUBSYSTEM|$DEVPATH\" >> {log}' </dev/null >/dev/null 2>&1 & "
        f"echo $! > {log}.pid; sleep 0.5",
    )


def recorded_uevents(guest: vm.Guest, log: str) -> list[Uevent]:
    out = shell(guest, f"kill $(cat {log}.pid); cat {log}")
    events = []
    for line in out.splitlines():
        action, subsystem, devpath = [*line.split("|"), "", "", ""][:3]
        events.append(Uevent(action, devpath, {"SUBSYSTEM": subsystem}))
    return events


def uptime(guest: vm.Guest) -> float:
    return float(shell(guest, "cut -d' ' -f1 /proc/uptime").split()[-1])


def test_cpu_hotplug_sysfs_and_onlining(test_guest: vm.Guest) -> None:
    possible = parse_cpuset(shell(test_guest, "cat /sys/devices/system/cpu/possible").strip())
    assert possible == frozenset(range(4))  # -smp 1,maxcpus=4
    present = shell(test_guest, "ls -d /sys/devices/system/cpu/cpu[0-9]*").split()
    assert present == ["/sys/devices/system/cpu/cpu0"]
    cpu0_has_online = shell(test_guest, "test -e /sys/devices/system/cpu/cpu0/online && echo yes || echo no")
    phase(f"cpu0 has an online file: {cpu0_has_online.strip()}")
    assert shell(test_guest, "cat /sys/devices/system/cpu/online").strip() == "0"

    record_uevents(test_guest, "/tmp/cpu-events")
    result: list[str] = []
    waiter = threading.Thread(target=lambda: result.append(shell(test_guest, WAIT_AND_ONLINE_CPU.format(n=1))))
    waiter.start()
    added_at = uptime(test_guest)
    with test_guest.qmp() as qmp:
        qmp_ops.hotplug_cpus(qmp, 1)
    waiter.join(150)
    assert result, "the guest never saw cpu1"
    fields = dict(re.findall(r"(\w+)=(\S+)", result[0]))
    assert "state" in fields, result[0]
    assert fields["state"] == "0"  # a hot-added CPU appears offline
    assert fields["rc"] == "0"
    assert fields["online"] == "1"
    assert parse_cpuset(fields["all"]) == {0, 1}
    # the kernel announces the new CPU the way the online loop's subscription expects
    events = recorded_uevents(test_guest, "/tmp/cpu-events")
    assert [e.devpath for e in events if is_hotplug_add(e)] == ["/devices/system/cpu/cpu1"], events
    appeared, done = float(fields["appeared"]), float(fields["done"])
    phase(
        f"cpu1: sysfs node {appeared - added_at:.2f} s after device_add, online {done - appeared:.2f} s "
        f"after the node appeared (guest uptime clock, {test_guest.accel})"
    )


def test_memory_hotplug_sysfs_and_onlining(test_guest: vm.Guest) -> None:
    block_size = int(shell(test_guest, "cat /sys/devices/system/memory/block_size_bytes").split()[-1], 16)
    assert block_size > 0 and block_size % MiB == 0
    before = set(shell(test_guest, "ls -d /sys/devices/system/memory/memory*").split())
    mem_before = int(shell(test_guest, "grep MemTotal /proc/meminfo").split()[1])
    record_uevents(test_guest, "/tmp/memory-events")
    with test_guest.qmp() as qmp:
        qmp_ops.hotplug_memory(qmp, 256 * MiB)
    deadline = time.monotonic() + 60
    while True:
        blocks = set(shell(test_guest, "ls -d /sys/devices/system/memory/memory*").split()) - before
        if len(blocks) == (256 * MiB) // block_size:
            break
        assert time.monotonic() < deadline, f"only {len(blocks)} new memory blocks appeared"
        time.sleep(0.5)
    for block in sorted(blocks):
        state, zones = shell(test_guest, f"cat {block}/state {block}/valid_zones").split("\n", 1)
        assert state.strip() == "offline"
        assert "Movable" in zones.split()
        out = shell(test_guest, f"echo online_movable > {block}/state; echo rc=$?; cat {block}/state")
        assert out.split() == ["rc=0", "online"], out
    events = recorded_uevents(test_guest, "/tmp/memory-events")
    added = sorted(e.devpath for e in events if is_hotplug_add(e))
    assert added == sorted(b.removeprefix("/sys") for b in blocks), events
    mem_after = int(shell(test_guest, "grep MemTotal /proc/meminfo").split()[1])
    assert mem_after - mem_before == 256 * 1024
    phase(f"256 MiB online as Movable in {len(blocks)} blocks of {block_size // MiB} MiB")
