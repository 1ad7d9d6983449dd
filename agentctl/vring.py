"""Split virtqueues (virtio 1.2, section 2.7) as a device sees them, over any guest memory.

A queue is three areas in guest memory: the descriptor table (16 bytes per descriptor), the
driver's avail ring and the device's used ring. The device pops descriptor chains the driver made
available, reads the device-readable segments, fills the device-writable ones, and pushes the chain
head back on the used ring with the number of bytes written. Event-index suppression is not
supported (the backend does not offer VIRTIO_RING_F_EVENT_IDX), nor are indirect descriptors.

Memory is anything with ``read``/``write`` by guest physical address (``GuestMemory``);
``BytesMemory`` wraps a bytearray for tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

DESC_SIZE = 16
_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")

MAX_QUEUE_SIZE = 32768


class VringError(Exception):
    """The driver put something in the ring that a device must not accept (bad index, loop,
    address outside guest memory). The queue should be treated as broken."""


class GuestMemory(Protocol):
    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None: ...


class BytesMemory:
    """Guest memory backed by one bytearray that starts at guest physical address ``base``."""

    def __init__(self, size: int, base: int = 0) -> None:
        self.data = bytearray(size)
        self.base = base

    def _offset(self, addr: int, length: int) -> int:
        offset = addr - self.base
        if offset < 0 or length < 0 or offset + length > len(self.data):
            raise VringError(f"guest address {addr:#x}+{length} is outside memory")
        return offset

    def read(self, addr: int, length: int) -> bytes:
        offset = self._offset(addr, length)
        return bytes(self.data[offset : offset + length])

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        offset = self._offset(addr, len(data))
        self.data[offset : offset + len(data)] = data


@dataclass(frozen=True)
class Segment:
    addr: int
    length: int
    writable: bool


@dataclass
class Chain:
    """One descriptor chain popped from the avail ring."""

    head: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def readable_length(self) -> int:
        return sum(s.length for s in self.segments if not s.writable)

    @property
    def writable_length(self) -> int:
        return sum(s.length for s in self.segments if s.writable)

    def read_all(self, memory: GuestMemory, limit: int | None = None) -> bytes:
        """The device-readable bytes of the chain, in order (at most ``limit``)."""
        parts = []
        left = self.readable_length if limit is None else limit
        for seg in self.segments:
            if seg.writable or left <= 0:
                continue
            take = min(seg.length, left)
            parts.append(memory.read(seg.addr, take))
            left -= take
        return b"".join(parts)

    def write_all(self, memory: GuestMemory, data: bytes | bytearray | memoryview) -> int:
        """Scatter ``data`` over the device-writable segments; returns the bytes written."""
        view = memoryview(data)
        done = 0
        for seg in self.segments:
            if not seg.writable or done >= len(view):
                continue
            take = min(seg.length, len(view) - done)
            memory.write(seg.addr, view[done : done + take])
            done += take
        if done < len(view):
            raise VringError(f"chain {self.head} has room for {done} bytes, not {len(view)}")
        return done


def ring_sizes(num: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, avail ring and used ring of a queue of ``num`` entries."""
    return DESC_SIZE * num, 6 + 2 * num, 6 + 8 * num


class SplitQueue:
    """The device side of one split virtqueue.

    ``desc``, ``avail`` and ``used`` are guest physical addresses of the three areas;
    ``last_avail`` is where the device resumes (SET_VRING_BASE), ``used_idx`` the next used slot.
    """

    def __init__(self, memory: GuestMemory, num: int, desc: int, avail: int, used: int, last_avail: int = 0) -> None:
        if not 0 < num <= MAX_QUEUE_SIZE or num & (num - 1):
            raise VringError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.memory = memory
        self.num = num
        self.desc = desc
        self.avail = avail
        self.used = used
        self.last_avail = last_avail & 0xFFFF
        # The used index lives in guest memory; resume from it so a restarted device continues.
        self.used_idx = self._read_u16(used + 2)

    def _read_u16(self, addr: int) -> int:
        value: int = _U16.unpack(self.memory.read(addr, 2))[0]
        return value

    def avail_idx(self) -> int:
        return self._read_u16(self.avail + 2)

    def pending(self) -> int:
        """Chains the driver made available that the device has not popped yet."""
        return (self.avail_idx() - self.last_avail) & 0xFFFF

    def pop(self) -> Chain | None:
        """The next available chain, or None when the ring is empty."""
        pending = self.pending()
        if pending == 0:
            return None
        if pending > self.num:
            raise VringError(f"avail index runs {pending} ahead of the device on a queue of {self.num}")
        slot = self.last_avail % self.num
        head = self._read_u16(self.avail + 4 + 2 * slot)
        chain = self._walk(head)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        index = head
        for _ in range(self.num):
            if index >= self.num:
                raise VringError(f"descriptor index {index} is outside a queue of {self.num}")
            addr, length, flags, nxt = _DESC.unpack(self.memory.read(self.desc + DESC_SIZE * index, DESC_SIZE))
            if flags & VIRTQ_DESC_F_INDIRECT:
                raise VringError("indirect descriptors were not negotiated")
            writable = bool(flags & VIRTQ_DESC_F_WRITE)
            if not writable and any(s.writable for s in chain.segments):
                raise VringError(f"chain {head}: a readable descriptor follows a writable one")
            chain.segments.append(Segment(addr, length, writable))
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            index = nxt
        raise VringError(f"chain {head} is longer than the queue (a descriptor loop)")

    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes filled in."""
        slot = self.used_idx % self.num
        self.memory.write(self.used + 4 + 8 * slot, _USED_ELEM.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        # The element must be visible before the index; x86 keeps stores in order.
        self.memory.write(self.used + 2, _U16.pack(self.used_idx))

    def wants_interrupt(self) -> bool:
        flags = self._read_u16(self.avail)
        return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT


class DriverQueue:
    """The driver's side of a split queue, for tests and tools: lay out the rings in memory,
    post buffers, collect used ones. It plays the guest in unit tests."""

    def __init__(self, memory: GuestMemory, num: int, base: int) -> None:
        self.memory = memory
        self.num = num
        desc_size, avail_size, _ = ring_sizes(num)
        self.desc = base
        self.avail = base + desc_size
        self.used = (self.avail + avail_size + 3) & ~3
        self.avail_idx = 0
        self.last_used = 0
        self.free = list(range(num))
        self.chains: dict[int, list[int]] = {}
        memory.write(self.avail, bytes(avail_size))
        memory.write(self.used, bytes(ring_sizes(num)[2]))

    def add(self, segments: list[tuple[int, int, bool]]) -> int:
        """Post a chain of (addr, length, writable) segments; returns its head."""
        if len(segments) > len(self.free):
            raise VringError("no free descriptors")
        indices = [self.free.pop(0) for _ in segments]
        for i, (addr, length, writable) in enumerate(segments):
            flags = VIRTQ_DESC_F_WRITE if writable else 0
            nxt = 0
            if i + 1 < len(indices):
                flags |= VIRTQ_DESC_F_NEXT
                nxt = indices[i + 1]
            self.memory.write(self.desc + DESC_SIZE * indices[i], _DESC.pack(addr, length, flags, nxt))
        head = indices[0]
        self.chains[head] = indices
        self.memory.write(self.avail + 4 + 2 * (self.avail_idx % self.num), _U16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write(self.avail + 2, _U16.pack(self.avail_idx))
        return head

    def collect(self) -> list[tuple[int, int]]:
        """Chains the device has used since the last call, as (head, written)."""
        done = []
        used_idx = _U16.unpack(self.memory.read(self.used + 2, 2))[0]
        while self.last_used != used_idx:
            slot = self.last_used % self.num
            head, written = _USED_ELEM.unpack(self.memory.read(self.used + 4 + 8 * slot, 8))
            self.free.extend(self.chains.pop(head))
            done.append((head, written))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return done

    def set_no_interrupt(self, on: bool) -> None:
        self.memory.write(self.avail, _U16.pack(VIRTQ_AVAIL_F_NO_INTERRUPT if on else 0))
