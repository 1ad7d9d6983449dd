"""The protobuf wire format, for the few small messages the agent reads and writes before it loads
the protobuf runtime: ttrpc's own envelope (ttrpc.proto) and grpc.Health's Check.

Importing google.protobuf and building the generated descriptors takes about half a second in a small
guest under TCG; the first Check needs none of it. Decoding follows protobuf's rules: the last value
of a scalar field wins, fields with unknown numbers or unexpected wire types are skipped, strings must
be UTF-8, and truncated or malformed input raises ``WireError``.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """Bytes that are not a valid protobuf message."""


def varint(value: int) -> bytes:
    """``value`` as a varint; negative values as their 64-bit two's complement (int32/int64 fields)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, data: bytes) -> bytes:
    return key(number, LENGTH_DELIMITED) + varint(len(data)) + data


def varint_field(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos + index >= len(data):
            raise WireError("truncated varint")
        byte = data[pos + index]
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos + index + 1
    raise WireError("varint longer than 10 bytes")


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field: an int for varints and fixed-size values,
    bytes for length-delimited ones. Groups (wire types 3 and 4) are refused."""
    pos = 0
    end = len(data)
    while pos < end:
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            if length > end - pos:
                raise WireError(f"field {number}: {length} bytes announced, {end - pos} left")
            value = data[pos : pos + length]
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if size > end - pos:
                raise WireError(f"field {number}: truncated fixed-size value")
            value = int.from_bytes(data[pos : pos + size], "little")
            pos += size
        else:
            raise WireError(f"field {number}: unsupported wire type {wire_type}")
        yield number, wire_type, value


def text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"string field is not valid UTF-8: {exc}") from None


def signed64(value: int) -> int:
    """A varint read as an int64 field (two's complement)."""
    return value - (1 << 64) if value & (1 << 63) else value


def signed32(value: int) -> int:
    """A varint read as an int32 field: its low 32 bits, two's complement."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & (1 << 31) else value
