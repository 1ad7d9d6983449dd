"""The back-end side of the vhost-user protocol (QEMU docs/interop/vhost-user.rst), for one
virtio device whose virtqueues we serve from shared guest memory.

QEMU (the front-end) connects to our unix socket and sends messages: a 12-byte header (u32
request, u32 flags, u32 payload size, little endian) and a payload; file descriptors ride along
as SCM_RIGHTS. ``VhostUserDevice.handle`` applies one message and returns the reply payload, if
the message has one. Vring addresses arrive as QEMU virtual addresses and are translated through
the memory table into guest physical addresses.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from agentctl.vring import SplitQueue, VringError

log = logging.getLogger(__name__)

VHOST_USER_GET_FEATURES = 1
VHOST_USER_SET_FEATURES = 2
VHOST_USER_SET_OWNER = 3
VHOST_USER_RESET_OWNER = 4
VHOST_USER_SET_MEM_TABLE = 5
VHOST_USER_SET_LOG_BASE = 6
VHOST_USER_SET_LOG_FD = 7
VHOST_USER_SET_VRING_NUM = 8
VHOST_USER_SET_VRING_ADDR = 9
VHOST_USER_SET_VRING_BASE = 10
VHOST_USER_GET_VRING_BASE = 11
VHOST_USER_SET_VRING_KICK = 12
VHOST_USER_SET_VRING_CALL = 13
VHOST_USER_SET_VRING_ERR = 14
VHOST_USER_GET_PROTOCOL_FEATURES = 15
VHOST_USER_SET_PROTOCOL_FEATURES = 16
VHOST_USER_GET_QUEUE_NUM = 17
VHOST_USER_SET_VRING_ENABLE = 18
VHOST_USER_GET_CONFIG = 24
VHOST_USER_SET_CONFIG = 25

REQUEST_NAMES = {value: name for name, value in globals().items() if name.startswith("VHOST_USER_")}

VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0x3
VHOST_USER_FLAG_REPLY = 0x4
VHOST_USER_FLAG_NEED_REPLY = 0x8

VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32
VHOST_USER_PROTOCOL_F_REPLY_ACK = 3
VHOST_USER_PROTOCOL_F_CONFIG = 9

VHOST_USER_VRING_INDEX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 0x100

HEADER = struct.Struct("<III")
MAX_PAYLOAD = 4096
MAX_FDS = 8
_U64 = struct.Struct("<Q")
_VRING_STATE = struct.Struct("<II")
_VRING_ADDR = struct.Struct("<IIQQQQ")
_MEM_HEADER = struct.Struct("<II")
_MEM_REGION = struct.Struct("<QQQQ")
_CONFIG_HEADER = struct.Struct("<III")


class ProtocolError(Exception):
    """The front-end sent something we cannot apply; the connection should be dropped."""


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return REQUEST_NAMES.get(self.request, f"request {self.request}")


def recv_message(sock: socket.socket) -> Message | None:
    """One message from the front-end, or None when it hung up."""
    head, fds, _flags, _addr = socket.recv_fds(sock, HEADER.size, MAX_FDS)
    if not head:
        for fd in fds:
            os.close(fd)
        return None
    while len(head) < HEADER.size:
        more = sock.recv(HEADER.size - len(head))
        if not more:
            raise ProtocolError("front-end hung up inside a message header")
        head += more
    request, flags, size = HEADER.unpack(head)
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"message {request} has a {size}-byte payload (limit {MAX_PAYLOAD})")
    payload = b""
    while len(payload) < size:
        more = sock.recv(size - len(payload))
        if not more:
            raise ProtocolError("front-end hung up inside a message payload")
        payload += more
    return Message(request, flags, payload, list(fds))


def send_reply(sock: socket.socket, request: int, payload: bytes) -> None:
    sock.sendall(HEADER.pack(request, VHOST_USER_VERSION | VHOST_USER_FLAG_REPLY, len(payload)) + payload)


@dataclass
class Region:
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int
    mapping: mmap.mmap

    def close(self) -> None:
        try:
            self.mapping.close()
        except BufferError:
            pass  # a view is still alive; the mapping goes when it does


class MemoryTable:
    """Guest memory shared by the front-end: regions mapped from its file descriptors."""

    def __init__(self, regions: list[Region]) -> None:
        self.regions = regions
        self._last = regions[0] if regions else None

    @classmethod
    def from_message(cls, payload: bytes, fds: list[int]) -> MemoryTable:
        if len(payload) < _MEM_HEADER.size:
            raise ProtocolError("SET_MEM_TABLE payload is too short")
        count, _padding = _MEM_HEADER.unpack_from(payload)
        if count != len(fds) or len(payload) < _MEM_HEADER.size + count * _MEM_REGION.size:
            raise ProtocolError(f"SET_MEM_TABLE names {count} regions but carries {len(fds)} fds")
        regions = []
        for i in range(count):
            guest_addr, size, user_addr, offset = _MEM_REGION.unpack_from(payload, _MEM_HEADER.size + i * 32)
            # Map from the start of the file: the offset need not be page aligned for us.
            mapping = mmap.mmap(fds[i], offset + size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            regions.append(Region(guest_addr, size, user_addr, offset, mapping))
        return cls(regions)

    def close(self) -> None:
        for region in self.regions:
            region.close()
        self.regions = []
        self._last = None

    def _find(self, addr: int, length: int) -> tuple[Region, int]:
        last = self._last
        if last is not None and last.guest_addr <= addr and addr + length <= last.guest_addr + last.size:
            return last, last.mmap_offset + addr - last.guest_addr
        for region in self.regions:
            if region.guest_addr <= addr and addr + length <= region.guest_addr + region.size:
                self._last = region
                return region, region.mmap_offset + addr - region.guest_addr
        raise VringError(f"guest address {addr:#x}+{length} is in no shared memory region")

    def read(self, addr: int, length: int) -> bytes:
        region, offset = self._find(addr, length)
        return region.mapping[offset : offset + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        region, offset = self._find(addr, len(data))
        region.mapping[offset : offset + len(data)] = data

    def user_to_guest(self, user_addr: int) -> int:
        """A front-end virtual address as a guest physical address."""
        for region in self.regions:
            if region.user_addr <= user_addr < region.user_addr + region.size:
                return region.guest_addr + user_addr - region.user_addr
        raise ProtocolError(f"front-end address {user_addr:#x} is in no memory region")


@dataclass
class Vring:
    index: int
    num: int = 0
    desc_user: int = 0
    avail_user: int = 0
    used_user: int = 0
    base: int = 0
    kick_fd: int = -1
    call_fd: int = -1
    err_fd: int = -1
    enabled: bool = False
    started: bool = False
    queue: SplitQueue | None = None

    @property
    def ready(self) -> bool:
        return self.started and self.enabled and self.queue is not None


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


class VhostUserDevice:
    """Applies front-end messages to the state of one device with ``num_queues`` vrings."""

    def __init__(
        self,
        num_queues: int,
        config: bytes,
        device_features: int = 0,
        on_kick_fd: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.features_offered = device_features | (1 << VIRTIO_F_VERSION_1) | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        self.protocol_features_offered = (1 << VHOST_USER_PROTOCOL_F_CONFIG) | (1 << VHOST_USER_PROTOCOL_F_REPLY_ACK)
        self.features = 0
        self.protocol_features = 0
        self.config = bytearray(config)
        self.memory: MemoryTable | None = None
        self.vrings = [Vring(i) for i in range(num_queues)]
        # Called as on_kick_fd(index, old_fd, new_fd) so the event loop can watch the new fd.
        self.on_kick_fd = on_kick_fd or (lambda index, old, new: None)

    @property
    def protocol_features_negotiated(self) -> bool:
        return bool(self.features & (1 << VHOST_USER_F_PROTOCOL_FEATURES))

    def close(self) -> None:
        for vring in self.vrings:
            self._stop(vring)
            for name in ("call_fd", "err_fd"):
                _close(getattr(vring, name))
                setattr(vring, name, -1)
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    def handle(self, msg: Message) -> bytes | None:
        """Apply ``msg``; the reply payload when the message needs one, else None."""
        handler = self._HANDLERS.get(msg.request)
        if handler is None:
            for fd in msg.fds:
                os.close(fd)
            raise ProtocolError(f"unsupported vhost-user message {msg.name}")
        reply: bytes | None = handler(self, msg)
        if reply is None and msg.flags & VHOST_USER_FLAG_NEED_REPLY:
            reply = _U64.pack(0)  # REPLY_ACK: success
        return reply

    # --- message handlers
    def _get_features(self, msg: Message) -> bytes:
        return _U64.pack(self.features_offered)

    def _set_features(self, msg: Message) -> None:
        (features,) = _U64.unpack_from(msg.payload)
        if features & ~self.features_offered:
            raise ProtocolError(f"front-end acked features {features:#x} we did not offer")
        self.features = features
        if not self.protocol_features_negotiated:
            for vring in self.vrings:
                vring.enabled = True

    def _get_protocol_features(self, msg: Message) -> bytes:
        return _U64.pack(self.protocol_features_offered)

    def _set_protocol_features(self, msg: Message) -> None:
        (features,) = _U64.unpack_from(msg.payload)
        self.protocol_features = features & self.protocol_features_offered

    def _nothing(self, msg: Message) -> None:
        for fd in msg.fds:
            os.close(fd)

    def _reset_owner(self, msg: Message) -> None:
        for vring in self.vrings:
            self._stop(vring)
        self.features = 0

    def _set_mem_table(self, msg: Message) -> None:
        try:
            table = MemoryTable.from_message(msg.payload, msg.fds)
        finally:
            for fd in msg.fds:
                os.close(fd)  # the mappings keep the memory
        old, self.memory = self.memory, table
        for vring in self.vrings:
            if vring.queue is not None:
                self._build_queue(vring)
        if old is not None:
            old.close()
        log.debug("memory table: %s", [(hex(r.guest_addr), r.size) for r in table.regions])

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise ProtocolError(f"vring {index} does not exist (the device has {len(self.vrings)})")
        return self.vrings[index]

    def _set_vring_num(self, msg: Message) -> None:
        index, num = _VRING_STATE.unpack_from(msg.payload)
        self._vring(index).num = num

    def _set_vring_addr(self, msg: Message) -> None:
        index, _flags, desc, used, avail, _log = _VRING_ADDR.unpack_from(msg.payload)
        vring = self._vring(index)
        vring.desc_user, vring.used_user, vring.avail_user = desc, used, avail
        self._build_queue(vring)

    def _set_vring_base(self, msg: Message) -> None:
        index, base = _VRING_STATE.unpack_from(msg.payload)
        vring = self._vring(index)
        vring.base = base
        if vring.queue is not None:
            vring.queue.last_avail = base

    def _get_vring_base(self, msg: Message) -> bytes:
        index, _ = _VRING_STATE.unpack_from(msg.payload)
        vring = self._vring(index)
        base = vring.queue.last_avail if vring.queue is not None else vring.base
        self._stop(vring)
        vring.base = base
        return _VRING_STATE.pack(index, base)

    def _fd_message(self, msg: Message) -> tuple[Vring, int]:
        (value,) = _U64.unpack_from(msg.payload)
        vring = self._vring(value & VHOST_USER_VRING_INDEX_MASK)
        if value & VHOST_USER_VRING_NOFD_MASK:
            for fd in msg.fds:
                os.close(fd)
            return vring, -1
        if len(msg.fds) != 1:
            raise ProtocolError(f"{msg.name} for vring {vring.index} carries {len(msg.fds)} fds, not 1")
        return vring, msg.fds[0]

    def _set_vring_kick(self, msg: Message) -> None:
        vring, fd = self._fd_message(msg)
        old = vring.kick_fd
        vring.kick_fd = fd
        vring.started = fd >= 0
        if vring.started and vring.queue is None:
            self._build_queue(vring)
        self.on_kick_fd(vring.index, old, fd)
        _close(old)

    def _set_vring_call(self, msg: Message) -> None:
        vring, fd = self._fd_message(msg)
        _close(vring.call_fd)
        vring.call_fd = fd

    def _set_vring_err(self, msg: Message) -> None:
        vring, fd = self._fd_message(msg)
        _close(vring.err_fd)
        vring.err_fd = fd

    def _set_vring_enable(self, msg: Message) -> None:
        index, enable = _VRING_STATE.unpack_from(msg.payload)
        self._vring(index).enabled = bool(enable)

    def _get_queue_num(self, msg: Message) -> bytes:
        return _U64.pack(len(self.vrings))

    def _get_config(self, msg: Message) -> bytes:
        offset, size, flags = _CONFIG_HEADER.unpack_from(msg.payload)
        data = bytes(self.config[offset : offset + size]).ljust(size, b"\0")
        return _CONFIG_HEADER.pack(offset, size, flags) + data

    def _set_config(self, msg: Message) -> None:
        pass  # the vsock config space is read-only for the driver

    _HANDLERS: dict[int, Callable[[VhostUserDevice, Message], bytes | None]] = {
        VHOST_USER_GET_FEATURES: _get_features,
        VHOST_USER_SET_FEATURES: _set_features,
        VHOST_USER_SET_OWNER: _nothing,
        VHOST_USER_RESET_OWNER: _reset_owner,
        VHOST_USER_SET_MEM_TABLE: _set_mem_table,
        VHOST_USER_SET_LOG_BASE: _nothing,
        VHOST_USER_SET_LOG_FD: _nothing,
        VHOST_USER_SET_VRING_NUM: _set_vring_num,
        VHOST_USER_SET_VRING_ADDR: _set_vring_addr,
        VHOST_USER_SET_VRING_BASE: _set_vring_base,
        VHOST_USER_GET_VRING_BASE: _get_vring_base,
        VHOST_USER_SET_VRING_KICK: _set_vring_kick,
        VHOST_USER_SET_VRING_CALL: _set_vring_call,
        VHOST_USER_SET_VRING_ERR: _set_vring_err,
        VHOST_USER_GET_PROTOCOL_FEATURES: _get_protocol_features,
        VHOST_USER_SET_PROTOCOL_FEATURES: _set_protocol_features,
        VHOST_USER_GET_QUEUE_NUM: _get_queue_num,
        VHOST_USER_SET_VRING_ENABLE: _set_vring_enable,
        VHOST_USER_GET_CONFIG: _get_config,
        VHOST_USER_SET_CONFIG: _set_config,
    }

    # --- helpers
    def _build_queue(self, vring: Vring) -> None:
        if self.memory is None or not vring.num or not vring.desc_user:
            return
        memory = self.memory
        try:
            vring.queue = SplitQueue(
                memory,
                vring.num,
                memory.user_to_guest(vring.desc_user),
                memory.user_to_guest(vring.avail_user),
                memory.user_to_guest(vring.used_user),
                last_avail=vring.queue.last_avail if vring.queue is not None else vring.base,
            )
        except VringError as exc:
            raise ProtocolError(f"vring {vring.index}: {exc}") from exc

    def _stop(self, vring: Vring) -> None:
        if vring.kick_fd >= 0:
            self.on_kick_fd(vring.index, vring.kick_fd, -1)
            _close(vring.kick_fd)
            vring.kick_fd = -1
        vring.started = False
        vring.queue = None

    def notify(self, index: int) -> None:
        """Interrupt the guest for vring ``index`` (write its call eventfd) if it wants one."""
        vring = self.vrings[index]
        if vring.call_fd >= 0 and vring.queue is not None and vring.queue.wants_interrupt():
            os.eventfd_write(vring.call_fd, 1)
