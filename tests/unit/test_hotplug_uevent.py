"""Uevent parsing and the listener: datagrams from a socketpair stand in for the kernel's netlink."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from agent.hotplug.uevent import Uevent, UeventListener, match, parse_uevent

KERNEL_CPU_ADD = (
    b"add@/devices/system/cpu/cpu3\0ACTION=add\0DEVPATH=/devices/system/cpu/cpu3\0"
    b"SUBSYSTEM=cpu\0DRIVER=processor\0SEQNUM=1789\0"
)
KERNEL_BLOCK_ADD = (
    b"add@/devices/pci0000:00/0000:00:05.0/virtio2/block/vda\0ACTION=add\0"
    b"DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/block/vda\0SUBSYSTEM=block\0MAJOR=254\0MINOR=0\0"
    b"DEVNAME=vda\0DEVTYPE=disk\0SEQNUM=1790\0"
)


def test_parse_kernel_message() -> None:
    event = parse_uevent(KERNEL_CPU_ADD)
    assert event is not None
    assert (event.action, event.devpath, event.subsystem, event.seqnum, event.name) == (
        "add",
        "/devices/system/cpu/cpu3",
        "cpu",
        1789,
        "cpu3",
    )
    assert event.env["DRIVER"] == "processor"
    block = parse_uevent(KERNEL_BLOCK_ADD)
    assert block is not None
    assert (block.subsystem, block.devname, block.name, block.env["DEVTYPE"]) == ("block", "vda", "vda", "disk")


@pytest.mark.parametrize(
    "data",
    [b"", b"libudev\0\xfe\xed\xca\xfe", b"no at sign\0ACTION=add\0", b"add@relative/path\0", b"@/devices/x\0"],
)
def test_parse_rejects_what_is_not_a_kernel_uevent(data: bytes) -> None:
    assert parse_uevent(data) is None


def test_parse_header_only_and_odd_fields() -> None:
    event = parse_uevent(b"remove@/devices/system/memory/memory9\0junk\0=x\0K=v=w\0\xff\0")
    assert event is not None
    fields = (event.action, event.devpath, event.subsystem, event.seqnum)
    assert fields == ("remove", "/devices/system/memory/memory9", "", 0)
    assert event.env["K"] == "v=w"
    assert "" not in event.env


def test_encode_round_trip() -> None:
    event = Uevent("add", "/devices/system/memory/memory12", {"SUBSYSTEM": "memory", "SEQNUM": "7"})
    parsed = parse_uevent(event.encode())
    assert parsed is not None
    assert (parsed.action, parsed.devpath, parsed.subsystem, parsed.seqnum) == ("add", event.devpath, "memory", 7)


def test_match_predicates() -> None:
    cpu = parse_uevent(KERNEL_CPU_ADD)
    assert cpu is not None
    assert match(action="add", subsystem="cpu")(cpu)
    assert not match(action="remove", subsystem="cpu")(cpu)
    assert not match(subsystem="block")(cpu)
    assert match(devpath_prefix="/devices/system/cpu/")(cpu)
    assert not match(devpath_prefix="/devices/pci")(cpu)
    assert match()(cpu)


@pytest.fixture
def wire() -> Iterator[tuple[UeventListener, socket.socket]]:
    kernel_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener = UeventListener(agent_end).start()
    yield listener, kernel_end
    listener.stop()
    kernel_end.close()


def test_listener_delivers_matching_events_to_each_subscriber(wire: tuple[UeventListener, socket.socket]) -> None:
    listener, kernel = wire
    assert listener.running
    blocks = listener.subscribe(match(action="add", subsystem="block"))
    everything = listener.subscribe(match())
    kernel.send(KERNEL_CPU_ADD)
    kernel.send(b"libudev\0ignored")
    kernel.send(KERNEL_BLOCK_ADD)
    block = blocks.get(timeout=5)
    assert block is not None and block.devname == "vda"
    first, second = everything.get(timeout=5), everything.get(timeout=5)
    assert first is not None and second is not None
    assert [first.subsystem, second.subsystem] == ["cpu", "block"]
    assert blocks.get(timeout=0) is None
    assert everything.get(timeout=0) is None
    blocks.close()
    everything.close()


def test_callback_subscription_and_unsubscribe(wire: tuple[UeventListener, socket.socket]) -> None:
    listener, kernel = wire
    woken = threading.Event()
    seen: list[str] = []

    def on_event(event: Uevent) -> None:
        seen.append(event.devpath)
        woken.set()

    with listener.subscribe(match(subsystem="cpu"), callback=on_event):
        kernel.send(KERNEL_CPU_ADD)
        assert woken.wait(5)
    assert seen == ["/devices/system/cpu/cpu3"]
    # after close nothing more arrives; a queue subscription shows the event was read
    probe = listener.subscribe(match(subsystem="cpu"))
    kernel.send(KERNEL_CPU_ADD)
    assert probe.get(timeout=5) is not None
    assert seen == ["/devices/system/cpu/cpu3"]


def test_failing_callback_does_not_stop_the_reader(wire: tuple[UeventListener, socket.socket]) -> None:
    listener, kernel = wire

    def broken(event: Uevent) -> None:
        raise RuntimeError("subscriber bug")

    listener.subscribe(match(), callback=broken)
    survivor = listener.subscribe(match())
    kernel.send(KERNEL_CPU_ADD)
    kernel.send(KERNEL_BLOCK_ADD)
    assert survivor.get(timeout=5) is not None
    assert survivor.get(timeout=5) is not None
    assert listener.running


def test_full_queue_drops_and_counts() -> None:
    listener = UeventListener(None)
    sub = listener.subscribe(match(), limit=2)
    event = Uevent("add", "/devices/system/cpu/cpu1", {"SUBSYSTEM": "cpu"})
    for _ in range(5):
        listener.inject(event)
    assert sub.dropped == 3
    assert listener.received == 5
    assert sub.get(timeout=0) == event
    assert sub.get(timeout=0) == event
    assert sub.get(timeout=0) is None
    listener.stop()


def test_stop_ends_the_thread_and_closes_the_socket() -> None:
    kernel_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener = UeventListener(agent_end).start()
    assert listener.running
    listener.stop()
    assert not listener.running
    assert agent_end.fileno() == -1
    kernel_end.close()
