"""Split virtqueues against a bytearray "guest memory": the device pops what a driver posts."""

from __future__ import annotations

import struct

import pytest

from agentctl.vring import (
    DESC_SIZE,
    VIRTQ_DESC_F_NEXT,
    BytesMemory,
    DriverQueue,
    SplitQueue,
    VringError,
    ring_sizes,
)

RING_BASE = 0x1000
BUFFERS = 0x10000


def make(num: int = 8) -> tuple[BytesMemory, DriverQueue, SplitQueue]:
    memory = BytesMemory(0x40000)
    driver = DriverQueue(memory, num, RING_BASE)
    device = SplitQueue(memory, num, driver.desc, driver.avail, driver.used)
    return memory, driver, device


def test_ring_sizes_follow_the_spec() -> None:
    assert ring_sizes(256) == (4096, 6 + 512, 6 + 2048)


def test_empty_queue_pops_nothing() -> None:
    _, _, device = make()
    assert device.pop() is None
    assert device.pending() == 0


def test_pop_reads_a_readable_chain_in_order() -> None:
    memory, driver, device = make()
    memory.write(BUFFERS, b"hello ")
    memory.write(BUFFERS + 0x100, b"world")
    head = driver.add([(BUFFERS, 6, False), (BUFFERS + 0x100, 5, False)])
    chain = device.pop()
    assert chain is not None and chain.head == head
    assert chain.readable_length == 11 and chain.writable_length == 0
    assert chain.read_all(memory) == b"hello world"
    assert chain.read_all(memory, limit=8) == b"hello wo"
    assert device.pop() is None


def test_write_scatters_over_writable_segments_and_push_reports_length() -> None:
    memory, driver, device = make()
    head = driver.add([(BUFFERS, 4, True), (BUFFERS + 0x100, 8, True)])
    chain = device.pop()
    assert chain is not None
    assert chain.write_all(memory, b"abcdefghij") == 10
    device.push(chain.head, 10)
    assert memory.read(BUFFERS, 4) == b"abcd"
    assert memory.read(BUFFERS + 0x100, 6) == b"efghij"
    assert driver.collect() == [(head, 10)]


def test_write_larger_than_the_chain_is_refused() -> None:
    memory, driver, device = make()
    driver.add([(BUFFERS, 4, True)])
    chain = device.pop()
    assert chain is not None
    with pytest.raises(VringError, match="room for 4"):
        chain.write_all(memory, b"12345")


def test_indices_wrap_past_65535() -> None:
    memory, driver, device = make(num=4)
    for round_ in range(70000 // 4 + 3):
        heads = [driver.add([(BUFFERS + i * 16, 16, True)]) for i in range(4)]
        popped = []
        while (chain := device.pop()) is not None:
            chain.write_all(memory, round_.to_bytes(4, "little"))
            device.push(chain.head, 4)
            popped.append(chain.head)
        assert popped == heads
        assert [h for h, _ in driver.collect()] == heads
    assert device.last_avail == driver.avail_idx < 0x10000


def test_descriptor_loop_is_detected() -> None:
    memory, driver, device = make(num=4)
    head = driver.add([(BUFFERS, 4, False), (BUFFERS + 16, 4, False)])
    # Point the second descriptor back at the head.
    second = driver.chains[head][1]
    memory.write(driver.desc + DESC_SIZE * second, struct.pack("<QIHH", BUFFERS + 16, 4, VIRTQ_DESC_F_NEXT, head))
    with pytest.raises(VringError, match="loop"):
        device.pop()


def test_out_of_range_descriptor_index_is_rejected() -> None:
    memory, driver, device = make(num=4)
    driver.add([(BUFFERS, 4, False)])
    memory.write(driver.avail + 4, struct.pack("<H", 9))
    with pytest.raises(VringError, match="outside a queue of 4"):
        device.pop()


def test_avail_index_too_far_ahead_is_rejected() -> None:
    memory, driver, device = make(num=4)
    memory.write(driver.avail + 2, struct.pack("<H", 5))
    with pytest.raises(VringError, match="ahead"):
        device.pop()


def test_buffer_outside_memory_is_an_error() -> None:
    memory, driver, device = make()
    driver.add([(0x7FFF0000, 16, False)])
    chain = device.pop()
    assert chain is not None
    with pytest.raises(VringError, match="outside memory"):
        chain.read_all(memory)


def test_queue_size_must_be_a_power_of_two() -> None:
    memory = BytesMemory(0x1000)
    with pytest.raises(VringError, match="power of two"):
        SplitQueue(memory, 6, 0, 0x100, 0x200)


def test_interrupt_suppression_flag_is_honoured() -> None:
    _, driver, device = make()
    assert device.wants_interrupt()
    driver.set_no_interrupt(True)
    assert not device.wants_interrupt()


def test_restarted_device_resumes_from_base_and_used_index() -> None:
    memory, driver, device = make()
    for _ in range(3):
        driver.add([(BUFFERS, 4, True)])
        chain = device.pop()
        assert chain is not None
        device.push(chain.head, 0)
        driver.collect()
    driver.add([(BUFFERS, 4, True)])
    resumed = SplitQueue(memory, 8, driver.desc, driver.avail, driver.used, last_avail=device.last_avail)
    assert resumed.used_idx == 3
    chain = resumed.pop()
    assert chain is not None
    resumed.push(chain.head, 2)
    assert driver.collect() == [(chain.head, 2)]
