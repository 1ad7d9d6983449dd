"""HPACK (RFC 7541): the header compression of HTTP/2, as the gRPC server in h2grpc.py needs it.

Decoder: integers with an N-bit prefix, string literals (raw or Huffman-coded with the code of RFC 7541
Appendix B), the static table (Appendix A), the dynamic table with size updates and eviction, bounded by
the HEADER_TABLE_SIZE this side advertises. A decoded header list larger than ``max_header_list_size``
raises HeaderListTooLarge once the whole block has been decoded, so the dynamic table stays in step with
the peer's encoder and the connection can go on. Every malformed block raises HpackError, which HTTP/2
answers with a COMPRESSION_ERROR on the connection.

Encoder: exact static-table matches as indexed fields, anything else as a literal without indexing
(static name index where the name matches, raw strings, no Huffman), so it never uses the peer's
dynamic table; after the peer lowers its HEADER_TABLE_SIZE the next block opens with a size update to 0.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

ENTRY_OVERHEAD = 32  # RFC 7541 section 4.1: an entry's size is len(name) + len(value) + 32
DEFAULT_TABLE_SIZE = 4096
DEFAULT_MAX_HEADER_LIST_SIZE = 64 * 1024
_MAX_INTEGER = (1 << 32) - 1  # nothing in HTTP/2 needs more; longer encodings are refused

Header = tuple[str, str]


class HpackError(Exception):
    """A header block that cannot be decoded (HTTP/2 COMPRESSION_ERROR)."""


class HeaderListTooLarge(HpackError):
    """The decoded header list is over the limit; the block was decoded in full, the table is intact."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"header list of {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


# RFC 7541 Appendix A: index 1..61
STATIC_TABLE: tuple[Header, ...] = (
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
)
STATIC_LENGTH = len(STATIC_TABLE)
_STATIC_EXACT: dict[Header, int] = {}
_STATIC_NAME: dict[str, int] = {}
for _index, (_name, _value) in enumerate(STATIC_TABLE, start=1):
    _STATIC_EXACT.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)

# RFC 7541 Appendix B: (code, length in bits) for symbols 0..255 and EOS (256)
HUFFMAN_CODES: tuple[tuple[int, int], ...] = (
    (0x1FF8, 13),
    (0x7FFFD8, 23),
    (0xFFFFFE2, 28),
    (0xFFFFFE3, 28),
    (0xFFFFFE4, 28),
    (0xFFFFFE5, 28),
    (0xFFFFFE6, 28),
    (0xFFFFFE7, 28),
    (0xFFFFFE8, 28),
    (0xFFFFEA, 24),
    (0x3FFFFFFC, 30),
    (0xFFFFFE9, 28),
    (0xFFFFFEA, 28),
    (0x3FFFFFFD, 30),
    (0xFFFFFEB, 28),
    (0xFFFFFEC, 28),
    (0xFFFFFED, 28),
    (0xFFFFFEE, 28),
    (0xFFFFFEF, 28),
    (0xFFFFFF0, 28),
    (0xFFFFFF1, 28),
    (0xFFFFFF2, 28),
    (0x3FFFFFFE, 30),
    (0xFFFFFF3, 28),
    (0xFFFFFF4, 28),
    (0xFFFFFF5, 28),
    (0xFFFFFF6, 28),
    (0xFFFFFF7, 28),
    (0xFFFFFF8, 28),
    (0xFFFFFF9, 28),
    (0xFFFFFFA, 28),
    (0xFFFFFFB, 28),
    (0x14, 6),
    (0x3F8, 10),
    (0x3F9, 10),
    (0xFFA, 12),
    (0x1FF9, 13),
    (0x15, 6),
    (0xF8, 8),
    (0x7FA, 11),
    (0x3FA, 10),
    (0x3FB, 10),
    (0xF9, 8),
    (0x7FB, 11),
    (0xFA, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1A, 6),
    (0x1B, 6),
    (0x1C, 6),
    (0x1D, 6),
    (0x1E, 6),
    (0x1F, 6),
    (0x5C, 7),
    (0xFB, 8),
    (0x7FFC, 15),
    (0x20, 6),
    (0xFFB, 12),
    (0x3FC, 10),
    (0x1FFA, 13),
    (0x21, 6),
    (0x5D, 7),
    (0x5E, 7),
    (0x5F, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6A, 7),
    (0x6B, 7),
    (0x6C, 7),
    (0x6D, 7),
    (0x6E, 7),
    (0x6F, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xFC, 8),
    (0x73, 7),
    (0xFD, 8),
    (0x1FFB, 13),
    (0x7FFF0, 19),
    (0x1FFC, 13),
    (0x3FFC, 14),
    (0x22, 6),
    (0x7FFD, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2A, 6),
    (0x7, 5),
    (0x2B, 6),
    (0x76, 7),
    (0x2C, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2D, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7A, 7),
    (0x7B, 7),
    (0x7FFE, 15),
    (0x7FC, 11),
    (0x3FFD, 14),
    (0x1FFD, 13),
    (0xFFFFFFC, 28),
    (0xFFFE6, 20),
    (0x3FFFD2, 22),
    (0xFFFE7, 20),
    (0xFFFE8, 20),
    (0x3FFFD3, 22),
    (0x3FFFD4, 22),
    (0x3FFFD5, 22),
    (0x7FFFD9, 23),
    (0x3FFFD6, 22),
    (0x7FFFDA, 23),
    (0x7FFFDB, 23),
    (0x7FFFDC, 23),
    (0x7FFFDD, 23),
    (0x7FFFDE, 23),
    (0xFFFFEB, 24),
    (0x7FFFDF, 23),
    (0xFFFFEC, 24),
    (0xFFFFED, 24),
    (0x3FFFD7, 22),
    (0x7FFFE0, 23),
    (0xFFFFEE, 24),
    (0x7FFFE1, 23),
    (0x7FFFE2, 23),
    (0x7FFFE3, 23),
    (0x7FFFE4, 23),
    (0x1FFFDC, 21),
    (0x3FFFD8, 22),
    (0x7FFFE5, 23),
    (0x3FFFD9, 22),
    (0x7FFFE6, 23),
    (0x7FFFE7, 23),
    (0xFFFFEF, 24),
    (0x3FFFDA, 22),
    (0x1FFFDD, 21),
    (0xFFFE9, 20),
    (0x3FFFDB, 22),
    (0x3FFFDC, 22),
    (0x7FFFE8, 23),
    (0x7FFFE9, 23),
    (0x1FFFDE, 21),
    (0x7FFFEA, 23),
    (0x3FFFDD, 22),
    (0x3FFFDE, 22),
    (0xFFFFF0, 24),
    (0x1FFFDF, 21),
    (0x3FFFDF, 22),
    (0x7FFFEB, 23),
    (0x7FFFEC, 23),
    (0x1FFFE0, 21),
    (0x1FFFE1, 21),
    (0x3FFFE0, 22),
    (0x1FFFE2, 21),
    (0x7FFFED, 23),
    (0x3FFFE1, 22),
    (0x7FFFEE, 23),
    (0x7FFFEF, 23),
    (0xFFFEA, 20),
    (0x3FFFE2, 22),
    (0x3FFFE3, 22),
    (0x3FFFE4, 22),
    (0x7FFFF0, 23),
    (0x3FFFE5, 22),
    (0x3FFFE6, 22),
    (0x7FFFF1, 23),
    (0x3FFFFE0, 26),
    (0x3FFFFE1, 26),
    (0xFFFEB, 20),
    (0x7FFF1, 19),
    (0x3FFFE7, 22),
    (0x7FFFF2, 23),
    (0x3FFFE8, 22),
    (0x1FFFFEC, 25),
    (0x3FFFFE2, 26),
    (0x3FFFFE3, 26),
    (0x3FFFFE4, 26),
    (0x7FFFFDE, 27),
    (0x7FFFFDF, 27),
    (0x3FFFFE5, 26),
    (0xFFFFF1, 24),
    (0x1FFFFED, 25),
    (0x7FFF2, 19),
    (0x1FFFE3, 21),
    (0x3FFFFE6, 26),
    (0x7FFFFE0, 27),
    (0x7FFFFE1, 27),
    (0x3FFFFE7, 26),
    (0x7FFFFE2, 27),
    (0xFFFFF2, 24),
    (0x1FFFE4, 21),
    (0x1FFFE5, 21),
    (0x3FFFFE8, 26),
    (0x3FFFFE9, 26),
    (0xFFFFFFD, 28),
    (0x7FFFFE3, 27),
    (0x7FFFFE4, 27),
    (0x7FFFFE5, 27),
    (0xFFFEC, 20),
    (0xFFFFF3, 24),
    (0xFFFED, 20),
    (0x1FFFE6, 21),
    (0x3FFFE9, 22),
    (0x1FFFE7, 21),
    (0x1FFFE8, 21),
    (0x7FFFF3, 23),
    (0x3FFFEA, 22),
    (0x3FFFEB, 22),
    (0x1FFFFEE, 25),
    (0x1FFFFEF, 25),
    (0xFFFFF4, 24),
    (0xFFFFF5, 24),
    (0x3FFFFEA, 26),
    (0x7FFFF4, 23),
    (0x3FFFFEB, 26),
    (0x7FFFFE6, 27),
    (0x3FFFFEC, 26),
    (0x3FFFFED, 26),
    (0x7FFFFE7, 27),
    (0x7FFFFE8, 27),
    (0x7FFFFE9, 27),
    (0x7FFFFEA, 27),
    (0x7FFFFEB, 27),
    (0xFFFFFFE, 28),
    (0x7FFFFEC, 27),
    (0x7FFFFED, 27),
    (0x7FFFFEE, 27),
    (0x7FFFFEF, 27),
    (0x7FFFFF0, 27),
    (0x3FFFFEE, 26),
    (0x3FFFFFFF, 30),
)
EOS = 256
_EOS_BITS = HUFFMAN_CODES[EOS][1]

# Decoding tables, built on first use: the symbol for every 8-bit prefix that starts with a code of at
# most 8 bits, and {code | 1 << length: symbol} for the longer codes, tried shortest length first.
_fast: list[tuple[int, int]] | None = None
_slow: dict[int, int] = {}
_slow_lengths: list[int] = []


def _tables() -> list[tuple[int, int]]:
    global _fast
    if _fast is None:
        fast = [(-1, 0)] * 256
        for symbol, (code, length) in enumerate(HUFFMAN_CODES):
            if length <= 8:
                base = code << (8 - length)
                for low in range(1 << (8 - length)):
                    fast[base | low] = (symbol, length)
            else:
                _slow[code | (1 << length)] = symbol
        _slow_lengths[:] = sorted({length for _, length in HUFFMAN_CODES if length > 8})
        _fast = fast
    return _fast


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string literal; HpackError for EOS, bad padding or a truncated code."""
    fast = _tables()
    out = bytearray()
    acc = 0
    bits = 0
    for byte in data:
        acc = ((acc << 8) | byte) & 0xFFFFFFFFFFFF  # at most 29 pending bits + 8 new ones matter
        bits += 8
        while bits >= 8:
            symbol, length = fast[(acc >> (bits - 8)) & 0xFF]
            if symbol < 0:
                for length in _slow_lengths:
                    if length > bits:
                        break
                    symbol = _slow.get(((acc >> (bits - length)) & ((1 << length) - 1)) | (1 << length), -1)
                    if symbol >= 0:
                        break
                if symbol < 0:
                    if bits >= _EOS_BITS:
                        raise HpackError("invalid Huffman code")
                    break  # a longer code: needs the next byte
            if symbol == EOS:
                raise HpackError("EOS symbol inside a Huffman-coded string")
            out.append(symbol)
            bits -= length
    if bits > 7:
        raise HpackError("Huffman-coded string ends inside a code (padding longer than 7 bits)")
    # fewer than 8 bits left: they may hold whole short codes (5..7 bits) before the padding
    while bits >= 5:
        padded = ((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) & 0xFF
        symbol, length = fast[padded]
        if symbol < 0 or length > bits:
            break
        out.append(symbol)
        bits -= length
    mask = (1 << bits) - 1
    if acc & mask != mask:
        raise HpackError("Huffman padding is not a prefix of EOS (must be all ones)")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code ``data`` (the encoder does not use this; tests and tools may)."""
    acc = 0
    bits = 0
    for byte in data:
        code, length = HUFFMAN_CODES[byte]
        acc = (acc << length) | code
        bits += length
    padding = -bits % 8
    acc = (acc << padding) | ((1 << padding) - 1)
    return acc.to_bytes((bits + padding) // 8, "big") if bits else b""


def encode_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """``value`` with an N-bit prefix; ``first`` holds the bits above the prefix in the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """(value, position after it) of the integer whose prefix is in data[pos]."""
    limit = (1 << prefix_bits) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HpackError("header block ends inside an integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if value > _MAX_INTEGER:
            raise HpackError("integer too large")
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_string(value: bytes) -> bytes:
    return encode_integer(len(value), 7) + value


class Decoder:
    """The decoding side of one HTTP/2 connection (one instance for all of its header blocks)."""

    def __init__(
        self,
        max_table_size: int = DEFAULT_TABLE_SIZE,
        max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE,
    ) -> None:
        self.max_allowed = max_table_size  # the limit we advertised (SETTINGS_HEADER_TABLE_SIZE)
        self.max_size = max_table_size  # the encoder's current choice, at most max_allowed
        self.max_header_list_size = max_header_list_size
        self.size = 0
        self.table: deque[Header] = deque()  # newest first: dynamic index 62 is table[0]

    def _add(self, header: Header, entry_size: int) -> None:
        table = self.table
        while table and self.size + entry_size > self.max_size:
            name, value = table.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD
        if entry_size <= self.max_size:
            table.appendleft(header)
            self.size += entry_size

    def _resize(self, new_size: int) -> None:
        if new_size > self.max_allowed:
            raise HpackError(f"dynamic table size update to {new_size} exceeds the limit of {self.max_allowed}")
        self.max_size = new_size
        table = self.table
        while table and self.size > new_size:
            name, value = table.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD

    def _lookup(self, index: int) -> Header:
        if index == 0:
            raise HpackError("header index 0")
        if index <= STATIC_LENGTH:
            return STATIC_TABLE[index - 1]
        dynamic = index - STATIC_LENGTH - 1
        if dynamic >= len(self.table):
            raise HpackError(f"header index {index} is beyond the tables ({STATIC_LENGTH + len(self.table)} entries)")
        return self.table[dynamic]

    def _literal(self, data: bytes, pos: int, prefix_bits: int) -> tuple[tuple[str, str], int]:
        """A literal header field: its name by table index (or a string when the index is 0), then
        its value."""
        index, pos = decode_integer(data, pos, prefix_bits)
        if index:
            name = self._lookup(index)[0]
        else:
            name, pos = self._string(data, pos)
        value, pos = self._string(data, pos)
        return (name, value), pos

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(data):
            raise HpackError("header block ends before a string literal")
        huffman = data[pos] & 0x80
        length, pos = decode_integer(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HpackError(f"string literal of {length} bytes runs past the end of the header block")
        if length > self.max_header_list_size:
            raise HpackError(f"string literal of {length} bytes exceeds the limit of {self.max_header_list_size}")
        raw = data[pos:end]
        if huffman:
            raw = huffman_decode(raw)
        # Header values are octets; latin-1 keeps every byte and never fails.
        return bytes(raw).decode("latin-1"), end

    def decode(self, data: bytes) -> list[Header]:
        """The header list of one complete header block (HEADERS plus its CONTINUATION frames)."""
        headers: list[Header] = []
        list_size = 0
        limit = self.max_header_list_size
        pos = 0
        end = len(data)
        fields_seen = False
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed header field
                index, pos = decode_integer(data, pos, 7)
                header = self._lookup(index)
            elif byte & 0x40:  # literal with incremental indexing
                header, pos = self._literal(data, pos, 6)
                self._add(header, len(header[0]) + len(header[1]) + ENTRY_OVERHEAD)
            elif byte & 0x20:  # dynamic table size update
                if fields_seen:
                    raise HpackError("dynamic table size update after a header field")
                new_size, pos = decode_integer(data, pos, 5)
                self._resize(new_size)
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                header, pos = self._literal(data, pos, 4)
            fields_seen = True
            list_size += len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
            if list_size <= limit:
                headers.append(header)
        if list_size > limit:
            raise HeaderListTooLarge(list_size, limit)
        return headers


class Encoder:
    """Encodes header lists without touching the peer's dynamic table."""

    def __init__(self) -> None:
        self._peer_table_size = DEFAULT_TABLE_SIZE
        self._update_pending = False

    def set_peer_table_size(self, size: int) -> None:
        """Apply the peer's SETTINGS_HEADER_TABLE_SIZE."""
        if size < self._peer_table_size:
            self._update_pending = True  # RFC 7541 4.2: signal the reduced maximum in the next block
        self._peer_table_size = size

    def preamble(self) -> bytes:
        """What the next block must start with: a size update after the peer lowered its table size."""
        if not self._update_pending:
            return b""
        self._update_pending = False
        return encode_integer(0, 5, 0x20)

    def encode(self, headers: Iterable[Header]) -> bytes:
        return self.preamble() + b"".join(encode_header(name, value) for name, value in headers)


def encode_header(name: str, value: str) -> bytes:
    """One field: indexed when the static table has it exactly, else a literal without indexing."""
    index = _STATIC_EXACT.get((name, value))
    if index is not None:
        return encode_integer(index, 7, 0x80)
    raw_value = value.encode("latin-1")
    index = _STATIC_NAME.get(name)
    if index is not None:
        return encode_integer(index, 4) + _encode_string(raw_value)
    return b"\x00" + _encode_string(name.encode("latin-1")) + _encode_string(raw_value)
