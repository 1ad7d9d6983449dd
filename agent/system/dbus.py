"""A D-Bus client: enough for the container engine to ask systemd for transient scope units.

It talks to one peer over a unix stream socket: systemd's private socket (/run/systemd/private, peer
to peer: no bus daemon, so no Hello) or a bus daemon (Hello first, for a unique name). It does:

* authentication: the NUL byte, then SASL's EXTERNAL mechanism (the peer reads our credentials from
  the socket; we claim our effective uid), then BEGIN;
* the wire format: every D-Bus type marshalled and unmarshalled by its signature (``marshal``,
  ``unmarshal``), messages framed and checked (``Message.encode``, ``Message.decode``);
* method calls (``Connection.call`` waits for the METHOD_RETURN, an ERROR raises ``DBusError``) and
  signals (queued while a call waits; ``Connection.wait_signal`` takes them).

It does not pass unix file descriptors (it never asks for them; an 'h' value is only the index), it
does not serve methods (a call from the peer is answered org.freedesktop.DBus.Error.UnknownMethod),
and it sends little-endian messages only (it reads both byte orders). A connection is used by one
thread at a time.

Python values by type code: y n q i u x t h are int (range-checked when marshalled), b is bool, d is
float, s o g are str, ``a<T>`` is a list (``ay`` also marshals bytes), ``a{KV}`` is a dict (a list of
pairs marshals too), a struct ``(...)`` is a tuple (a list marshals too) and v is a ``Variant``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import deque

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

# message types
METHOD_CALL = 1
METHOD_RETURN = 2
ERROR = 3
SIGNAL = 4
# message flags
NO_REPLY_EXPECTED = 0x1
NO_AUTO_START = 0x2
ALLOW_INTERACTIVE_AUTHORIZATION = 0x4

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
BUS_INTERFACE = "org.freedesktop.DBus"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"

PROTOCOL_VERSION = 1
MAX_MESSAGE = 128 << 20  # bytes, header and body
MAX_ARRAY = 64 << 20  # bytes of an array's elements
MAX_SIGNATURE = 255
MAX_ARRAY_NESTING = 32
MAX_STRUCT_NESTING = 32  # dict entries count as structs
MAX_NESTING = 64  # containers in a value, variants included
MAX_QUEUED_SIGNALS = 1024
FIXED_HEADER = 16  # endianness, type, flags, version, body length, serial, header fields' array length
_RECV_CHUNK = 65536
_MAX_AUTH_LINE = 16384

_NAMES = {
    "y": "byte",
    "b": "boolean",
    "n": "int16",
    "q": "uint16",
    "i": "int32",
    "u": "uint32",
    "x": "int64",
    "t": "uint64",
    "d": "double",
    "h": "unix fd index",
    "s": "string",
    "o": "object path",
    "g": "signature",
    "v": "variant",
    "a": "array",
    "(": "struct",
    "{": "dict entry",
}
_BASIC = frozenset("ybnqiuxtdhsog")
# fixed-size types: struct format character and size (which is also the alignment)
_FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d", "h": "I"}
_PACKERS = {order: {code: struct.Struct(order + fmt) for code, fmt in _FIXED.items()} for order in "<>"}
_RANGES = {
    "y": (0, 0xFF),
    "n": (-(1 << 15), (1 << 15) - 1),
    "q": (0, 0xFFFF),
    "i": (-(1 << 31), (1 << 31) - 1),
    "u": (0, 0xFFFFFFFF),
    "x": (-(1 << 63), (1 << 63) - 1),
    "t": (0, (1 << 64) - 1),
    "h": (0, 0xFFFFFFFF),
}
_ALIGNMENT = {"s": 4, "o": 4, "g": 1, "v": 1, "a": 4, "(": 8, "{": 8}
_ALIGNMENT.update((code, struct.calcsize(fmt)) for code, fmt in _FIXED.items())
_U32 = {order: struct.Struct(order + "I") for order in "<>"}

_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_BUS_WORD = _WORD | {"-"}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class DBusError(Exception):
    """An ERROR reply: ``name`` (e.g. 'org.freedesktop.systemd1.NoSuchUnit') and ``message`` (the
    reply's first argument when it is a string, else '')."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.name, self.message)


class Variant:
    """A 'v' value: the signature of one complete type, and a value of that type."""

    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value: Any) -> None:
        self.signature = signature
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Variant):
            return NotImplemented
        return self.signature == other.signature and self.value == other.value

    def __repr__(self) -> str:
        return f"Variant({self.signature!r}, {self.value!r})"


# --- signatures


class _Type:
    """One complete type of a signature: its code ('a', '(' and '{' for the containers), the types it
    holds, and its text (for error messages)."""

    __slots__ = ("code", "items", "text")

    def __init__(self, code: str, items: tuple[_Type, ...], text: str) -> None:
        self.code = code
        self.items = items
        self.text = text


_parsed: dict[str, tuple[_Type, ...]] = {}


def parse_signature(signature: str) -> tuple[_Type, ...]:
    """The complete types of ``signature``; ValueError naming the problem when it is not a valid one
    (unknown type code, unclosed or empty struct, dict entry outside an array or with a key that is
    not a basic type, nesting over 32 arrays or 32 structs, over 255 characters)."""
    if not isinstance(signature, str):
        raise ValueError(f"a D-Bus signature is a str, not {_shown(signature)}")
    types = _parsed.get(signature)
    if types is not None:
        return types
    if len(signature) > MAX_SIGNATURE or not signature.isascii():
        raise ValueError(f"invalid D-Bus signature {_shown(signature)}: over {MAX_SIGNATURE} characters or not ASCII")
    found = []
    pos = 0
    while pos < len(signature):
        one, pos = _parse_one(signature, pos, 0, 0)
        found.append(one)
    types = tuple(found)
    if len(_parsed) < 512:
        _parsed[signature] = types
    return types


def _parse_one(signature: str, pos: int, arrays: int, structs: int) -> tuple[_Type, int]:
    code = signature[pos]
    if code in _BASIC or code == "v":
        return _Type(code, (), code), pos + 1
    if code == "a":
        if arrays == MAX_ARRAY_NESTING:
            raise _bad_signature(signature, f"arrays nest over {MAX_ARRAY_NESTING} deep")
        if pos + 1 == len(signature):
            raise _bad_signature(signature, "it ends with an array's 'a' and no element type")
        if signature[pos + 1] == "{":
            entry, end = _parse_dict_entry(signature, pos + 1, arrays + 1, structs)
            return _Type("a", (entry,), signature[pos:end]), end
        element, end = _parse_one(signature, pos + 1, arrays + 1, structs)
        return _Type("a", (element,), signature[pos:end]), end
    if code == "(":
        if structs == MAX_STRUCT_NESTING:
            raise _bad_signature(signature, f"structs nest over {MAX_STRUCT_NESTING} deep")
        items = []
        end = pos + 1
        while end < len(signature) and signature[end] != ")":
            item, end = _parse_one(signature, end, arrays, structs + 1)
            items.append(item)
        if end == len(signature):
            raise _bad_signature(signature, f"the struct at character {pos} is not closed")
        if not items:
            raise _bad_signature(signature, "a struct holds no types")
        return _Type("(", tuple(items), signature[pos : end + 1]), end + 1
    if code == "{":
        raise _bad_signature(signature, "a dict entry is only allowed as an array's element type")
    raise _bad_signature(signature, f"unexpected {code!r} at character {pos}")


def _parse_dict_entry(signature: str, pos: int, arrays: int, structs: int) -> tuple[_Type, int]:
    if structs == MAX_STRUCT_NESTING:
        raise _bad_signature(signature, f"structs and dict entries nest over {MAX_STRUCT_NESTING} deep")
    if pos + 1 == len(signature) or signature[pos + 1] not in _BASIC:
        raise _bad_signature(signature, f"the dict entry at character {pos} needs a basic type as its key")
    key = _Type(signature[pos + 1], (), signature[pos + 1])
    if pos + 2 == len(signature) or signature[pos + 2] == "}":
        raise _bad_signature(signature, f"the dict entry at character {pos} has no value type")
    value, end = _parse_one(signature, pos + 2, arrays, structs + 1)
    if end == len(signature) or signature[end] != "}":
        raise _bad_signature(signature, f"the dict entry at character {pos} needs exactly a key and a value type")
    return _Type("{", (key, value), signature[pos : end + 1]), end + 1


def _bad_signature(signature: str, problem: str) -> ValueError:
    return ValueError(f"invalid D-Bus signature {signature!r}: {problem}")


def _single_type(signature: str) -> _Type:
    """The one complete type a variant's signature must be."""
    types = parse_signature(signature)
    if len(types) != 1:
        raise ValueError(f"a variant's signature is one complete type, not {signature!r}")
    return types[0]


# --- names


def valid_object_path(path: str) -> bool:
    """'/', or '/' followed by elements of [A-Za-z0-9_] separated by single '/' (no '/' at the end)."""
    if path == "/":
        return True
    return path.startswith("/") and all(part and _WORD.issuperset(part) for part in path[1:].split("/"))


def valid_member_name(name: str) -> bool:
    """A method or signal name: 1 to 255 of [A-Za-z0-9_], not starting with a digit."""
    return 0 < len(name) <= 255 and _WORD.issuperset(name) and not name[0].isdigit()


def valid_interface_name(name: str) -> bool:
    """An interface or error name: two or more member-like elements separated by '.', at most 255."""
    parts = name.split(".")
    return len(name) <= 255 and len(parts) > 1 and all(valid_member_name(part) for part in parts)


def valid_bus_name(name: str) -> bool:
    """A unique name (':1.42') or a well-known one ('org.freedesktop.systemd1'): elements of
    [A-Za-z0-9_-] separated by '.', two or more, at most 255; a well-known name's elements do not start
    with a digit."""
    if not 0 < len(name) <= 255:
        return False
    unique = name.startswith(":")
    parts = (name[1:] if unique else name).split(".")
    return len(parts) > 1 and all(
        part and _BUS_WORD.issuperset(part) and (unique or not part[0].isdigit()) for part in parts
    )


def _shown(value: object) -> str:
    """A repr short enough for an error message (the value may be large)."""
    if isinstance(value, (bytes, bytearray)) and len(value) > 40:
        return f"{bytes(value[:40])!r}... ({len(value)} bytes)"
    import reprlib  # only on the way to an error

    shorter = reprlib.Repr()
    shorter.maxstring = shorter.maxother = 80
    shorter.maxlong = 60
    return shorter.repr(value)


# --- marshalling


def marshal(signature: str, values: Sequence[Any], offset: int = 0) -> bytes:
    """The little-endian bytes of ``values`` by ``signature``; ``offset`` is the position of the first
    byte in its message (alignment is counted from the message's start). ValueError on a bad
    signature or a value that does not fit its type, naming both."""
    types = parse_signature(signature)
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"the values to marshal as {signature!r} are a list or a tuple, not {_shown(values)}")
    if len(values) != len(types):
        raise ValueError(f"signature {signature!r} has {len(types)} values, {len(values)} were given")
    writer = _Writer(offset)
    try:
        for one, value in zip(types, values, strict=True):
            writer.write(one, value, 0)
    except ValueError as exc:
        raise ValueError(f"cannot marshal as {signature!r}: {exc}") from None
    return bytes(writer.buf)


class _Writer:
    __slots__ = ("base", "buf")

    def __init__(self, base: int) -> None:
        self.base = base
        self.buf = bytearray()

    def pad(self, alignment: int) -> None:
        self.buf += bytes(-(self.base + len(self.buf)) % alignment)

    def write(self, one: _Type, value: Any, depth: int) -> None:
        code = one.code
        if code in _FIXED:
            self.write_fixed(one, value)
        elif code in "so":
            raw = self.text(one, value)
            if code == "o" and not valid_object_path(value):
                raise _misfit(one, value, "not a valid object path ('/', or '/'-separated [A-Za-z0-9_]+)")
            self.pad(4)
            self.buf += _U32["<"].pack(len(raw))
            self.buf += raw
            self.buf.append(0)
        elif code == "g":
            raw = self.text(one, value)
            try:
                parse_signature(value)
            except ValueError as exc:
                raise _misfit(one, value, str(exc)) from None
            self.buf.append(len(raw))
            self.buf += raw
            self.buf.append(0)
        elif code == "v":
            if not isinstance(value, Variant):
                raise _misfit(one, value, "a variant is marshalled from a Variant(signature, value)")
            if depth == MAX_NESTING:
                raise _misfit(one, value, f"containers and variants nest over {MAX_NESTING} deep")
            try:
                inner = _single_type(value.signature)
            except ValueError as exc:
                raise _misfit(one, value, str(exc)) from None
            self.buf.append(len(value.signature))
            self.buf += value.signature.encode()
            self.buf.append(0)
            self.write(inner, value.value, depth + 1)
        elif code == "a":
            self.write_array(one, value, depth)
        else:  # a struct or a dict entry
            if not isinstance(value, (tuple, list)) or len(value) != len(one.items):
                raise _misfit(one, value, f"a tuple or list of {len(one.items)} values")
            if depth == MAX_NESTING:
                raise _misfit(one, value, f"containers and variants nest over {MAX_NESTING} deep")
            self.pad(8)
            for item, item_value in zip(one.items, value, strict=True):
                self.write(item, item_value, depth + 1)

    def write_fixed(self, one: _Type, value: Any) -> None:
        code = one.code
        if code == "b":
            if not (isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))):
                raise _misfit(one, value, "a bool (or 0 or 1)")
            value = int(value)
        elif code == "d":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _misfit(one, value, "a float")
            try:
                value = float(value)
            except OverflowError:
                raise _misfit(one, value, "too large for a double") from None
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _misfit(one, value, "an int")
            low, high = _RANGES[code]
            if not low <= value <= high:
                raise _misfit(one, value, f"out of the range {low}..{high}")
        packer = _PACKERS["<"][code]
        self.pad(packer.size)
        self.buf += packer.pack(value)

    def text(self, one: _Type, value: Any) -> bytes:
        if not isinstance(value, str):
            raise _misfit(one, value, "a str")
        if "\0" in value:
            raise _misfit(one, value, "a D-Bus string cannot hold a NUL character")
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise _misfit(one, value, "not encodable as UTF-8") from None

    def write_array(self, one: _Type, value: Any, depth: int) -> None:
        element = one.items[0]
        if depth == MAX_NESTING:
            raise _misfit(one, value, f"containers and variants nest over {MAX_NESTING} deep")
        if element.code == "{":
            items = value.items() if isinstance(value, dict) else value
            if not isinstance(value, (dict, list, tuple)):
                raise _misfit(one, value, "a dict, or a list of (key, value) pairs")
        else:
            items = value
            allowed = (list, tuple, bytes, bytearray) if element.code == "y" else (list, tuple)
            if not isinstance(value, allowed):
                raise _misfit(one, value, "a list" + (" or bytes" if element.code == "y" else ""))
        self.pad(4)
        at = len(self.buf)
        self.buf += b"\0\0\0\0"
        self.pad(_ALIGNMENT[element.code])
        start = len(self.buf)
        if not self.write_fixed_array(element.code, value):
            for item in items:
                self.write(element, item, depth + 1)
        length = len(self.buf) - start
        if length > MAX_ARRAY:
            raise _misfit(one, value, f"{length} bytes of elements, over the {MAX_ARRAY} an array may hold")
        _U32["<"].pack_into(self.buf, at, length)

    def write_fixed_array(self, code: str, value: Any) -> bool:
        """Write the elements of an array of bytes or integers in one piece when they all fit (else the
        caller writes them one by one, which names the one that does not)."""
        if code == "y" and isinstance(value, (bytes, bytearray)):
            elements = bytes(value)
        elif code in _RANGES and len(value) > 1:
            low, high = _RANGES[code]
            if not all(type(item) is int and low <= item <= high for item in value):
                return False
            elements = struct.pack(f"<{len(value)}{_FIXED[code]}", *value)
        else:
            return False
        if len(elements) > MAX_ARRAY:
            raise ValueError(
                f"{_shown(value)}: {len(elements)} bytes of elements, over the {MAX_ARRAY} an array may hold"
            )
        self.buf += elements
        return True


def _misfit(one: _Type, value: object, why: str) -> ValueError:
    return ValueError(f"{_shown(value)} does not fit {one.text!r} ({_NAMES[one.code]}): {why}")


# --- unmarshalling


def unmarshal(signature: str, data: bytes, offset: int = 0, *, big_endian: bool = False) -> list[Any]:
    """The values of ``signature`` in ``data``, whose first byte is at ``offset`` in its message.
    ValueError naming the problem on a bad signature or malformed data: truncated, left-over bytes, a
    boolean other than 0 or 1, a string without its NUL, with a NUL inside or not UTF-8, an invalid
    object path or signature, an array longer than its data or than 64 MiB, nesting over 64 deep."""
    types = parse_signature(signature)
    reader = _Reader(data, offset, ">" if big_endian else "<")
    values = [reader.read(one, 0) for one in types]
    if reader.pos != len(data):
        raise ValueError(f"{len(data) - reader.pos} bytes are left over after the values of {signature!r}")
    return values


class _Reader:
    __slots__ = ("base", "data", "order", "pos")

    def __init__(self, data: bytes, base: int, order: str, pos: int = 0) -> None:
        self.data = data
        self.base = base
        self.order = order
        self.pos = pos

    def align(self, alignment: int) -> None:
        pos = self.pos + (-(self.base + self.pos) % alignment)
        if pos > len(self.data):
            raise ValueError(f"truncated: the data ends in the padding at byte {self.base + self.pos}")
        self.pos = pos

    def take(self, size: int, what: str) -> int:
        """The position of the next ``size`` bytes, which are passed."""
        start = self.pos
        if start + size > len(self.data):
            raise ValueError(
                f"truncated: {what} at byte {self.base + start} needs {size} bytes, {len(self.data) - start} are left"
            )
        self.pos = start + size
        return start

    def u32(self, what: str) -> int:
        self.align(4)
        return int(_U32[self.order].unpack_from(self.data, self.take(4, what))[0])

    def read(self, one: _Type, depth: int) -> Any:
        code = one.code
        if code in _FIXED:
            packer = _PACKERS[self.order][code]
            self.align(packer.size)
            start = self.take(packer.size, _NAMES[code])
            value = packer.unpack_from(self.data, start)[0]
            if code == "b":
                if value > 1:
                    raise ValueError(f"the boolean at byte {self.base + start} is {value}, not 0 or 1")
                return bool(value)
            return value
        if code in "sog":
            return self.read_text(code)
        if code == "v":
            if depth == MAX_NESTING:
                raise ValueError(f"containers and variants nest over {MAX_NESTING} deep")
            signature = self.read_text("g")
            return Variant(signature, self.read(_single_type(signature), depth + 1))
        if depth == MAX_NESTING:
            raise ValueError(f"containers and variants nest over {MAX_NESTING} deep")
        if code == "a":
            return self.read_array(one, depth)
        self.align(8)  # a struct or a dict entry
        return tuple(self.read(item, depth + 1) for item in one.items)

    def read_text(self, code: str) -> str:
        if code == "g":
            length = self.data[self.take(1, "a signature's length")]
        else:
            length = self.u32(f"the length of a {_NAMES[code]}")
        start = self.take(length + 1, f"a {_NAMES[code]} of {length} bytes and its NUL")
        raw = self.data[start : start + length]
        if self.data[start + length] != 0:
            raise ValueError(f"the {_NAMES[code]} at byte {self.base + start} does not end with a NUL")
        if b"\0" in raw:
            raise ValueError(f"the {_NAMES[code]} at byte {self.base + start} holds a NUL")
        try:
            text = bytes(raw).decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"the {_NAMES[code]} at byte {self.base + start} is not UTF-8: {exc.reason}") from None
        if code == "o" and not valid_object_path(text):
            raise ValueError(f"{text!r} at byte {self.base + start} is not a valid object path")
        if code == "g":
            parse_signature(text)
        return text

    def read_array(self, one: _Type, depth: int) -> Any:
        length = self.u32("an array's length")
        if length > MAX_ARRAY:
            raise ValueError(
                f"an array of {length} bytes at byte {self.base + self.pos - 4}: over the {MAX_ARRAY} allowed"
            )
        element = one.items[0]
        self.align(_ALIGNMENT[element.code])
        start = self.pos
        end = start + length
        if end > len(self.data):
            raise ValueError(
                f"the array of {length} bytes at byte {self.base + start} runs past the end of the data"
                f" ({len(self.data) - start} bytes left)"
            )
        code = element.code
        if code in _FIXED and code != "b":
            size = _PACKERS["<"][code].size
            if length % size:
                raise ValueError(f"the array of {_NAMES[code]} at byte {self.base + start} has {length} bytes")
            self.pos = end
            if code == "y":
                return list(self.data[start:end])
            return list(struct.unpack_from(f"{self.order}{length // size}{_FIXED[code]}", self.data, start))
        if code == "{":
            entries = {}
            while self.pos < end:
                key, value = self.read(element, depth + 1)
                entries[key] = value
            result: Any = entries
        else:
            items = []
            while self.pos < end:
                items.append(self.read(element, depth + 1))
            result = items
        if self.pos != end:
            raise ValueError(f"the elements of the array at byte {self.base + start} overrun its {length} bytes")
        return result


# --- messages

# header field codes: the Message attribute each sets and the type it must have
_FIELDS = {
    1: ("path", "o"),
    2: ("interface", "s"),
    3: ("member", "s"),
    4: ("error_name", "s"),
    5: ("reply_serial", "u"),
    6: ("destination", "s"),
    7: ("sender", "s"),
    8: ("signature", "g"),
    9: ("unix_fds", "u"),
}
_REQUIRED = {
    METHOD_CALL: ("path", "member"),
    METHOD_RETURN: ("reply_serial",),
    ERROR: ("error_name", "reply_serial"),
    SIGNAL: ("path", "interface", "member"),
}
_TYPE_NAMES = {METHOD_CALL: "METHOD_CALL", METHOD_RETURN: "METHOD_RETURN", ERROR: "ERROR", SIGNAL: "SIGNAL"}
_HEADER_FIELDS = parse_signature("a(yv)")[0]
_ENDIANNESS = {ord("l"): "<", ord("B"): ">"}


def message_length(head: bytes | bytearray) -> int:
    """The whole length of the message whose first 16 bytes (at least) are ``head``; ValueError when
    they are not a D-Bus message's start or the message would be over 128 MiB."""
    if len(head) < FIXED_HEADER:
        raise ValueError(f"a D-Bus message starts with {FIXED_HEADER} bytes, {len(head)} were given")
    order = _ENDIANNESS.get(head[0])
    if order is None:
        raise ValueError(f"a D-Bus message starts with 'l' or 'B' (its byte order), not {bytes(head[:1])!r}")
    if head[3] != PROTOCOL_VERSION:
        raise ValueError(f"the message is of D-Bus protocol version {head[3]}; only {PROTOCOL_VERSION} is known")
    body_length, _, fields_length = struct.unpack_from(order + "III", head, 4)
    if fields_length > MAX_ARRAY:
        raise ValueError(f"the message's header fields take {fields_length} bytes, over the {MAX_ARRAY} allowed")
    header = FIXED_HEADER + fields_length
    total = header + (-header % 8) + body_length
    if total > MAX_MESSAGE:
        raise ValueError(f"the message would take {total} bytes, over the {MAX_MESSAGE} allowed")
    return int(total)


class Message:
    """A D-Bus message: ``type`` (METHOD_CALL, METHOD_RETURN, ERROR or SIGNAL), ``flags``, ``serial``,
    the header fields (``path``, ``interface``, ``member``, ``error_name``, ``reply_serial``,
    ``destination``, ``sender``: None when absent; ``signature``: '' when absent; ``unix_fds``: 0) and
    the ``body``, a list of values of ``signature``."""

    __slots__ = (
        "body",
        "destination",
        "error_name",
        "flags",
        "interface",
        "member",
        "path",
        "reply_serial",
        "sender",
        "serial",
        "signature",
        "type",
        "unix_fds",
    )

    def __init__(
        self,
        type: int,
        *,
        flags: int = 0,
        serial: int = 0,
        path: str | None = None,
        interface: str | None = None,
        member: str | None = None,
        error_name: str | None = None,
        reply_serial: int | None = None,
        destination: str | None = None,
        sender: str | None = None,
        signature: str = "",
        body: Sequence[Any] = (),
        unix_fds: int = 0,
    ) -> None:
        self.type = type
        self.flags = flags
        self.serial = serial
        self.path = path
        self.interface = interface
        self.member = member
        self.error_name = error_name
        self.reply_serial = reply_serial
        self.destination = destination
        self.sender = sender
        self.signature = signature
        self.body = list(body)
        self.unix_fds = unix_fds

    def __repr__(self) -> str:
        shown = [_TYPE_NAMES.get(self.type, f"type {self.type}"), f"serial={self.serial}"]
        for name, _ in _FIELDS.values():
            value = getattr(self, name)
            if value not in (None, "", 0):
                shown.append(f"{name}={value!r}")
        if self.flags:
            shown.append(f"flags={self.flags:#x}")
        if self.body:
            shown.append(f"body={_shown(self.body)}")
        return f"Message({' '.join(shown)})"

    def encode(self) -> bytes:
        """The message in little-endian bytes; ValueError when it lacks a field its type requires, has a
        malformed name, a serial of 0, or a body that does not fit its signature."""
        missing = [name for name in _REQUIRED.get(self.type, ()) if getattr(self, name) is None]
        if self.type not in _REQUIRED or missing:
            raise ValueError(f"cannot encode {self!r}: it needs {', '.join(missing) or 'a known message type'}")
        if not 0 < self.serial <= 0xFFFFFFFF:
            raise ValueError(f"cannot encode {self!r}: a serial is 1 to 2**32-1")
        for name, valid in (
            ("interface", valid_interface_name),
            ("member", valid_member_name),
            ("error_name", valid_interface_name),
            ("destination", valid_bus_name),
            ("sender", valid_bus_name),
        ):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and valid(value)):
                raise ValueError(f"cannot encode {self!r}: {value!r} is not a valid D-Bus {name.replace('_', ' ')}")
        body = marshal(self.signature, self.body)
        fields = []
        for code, (name, signature) in _FIELDS.items():
            value = getattr(self, name)
            if value not in (None, "") and not (code == 9 and value == 0):
                fields.append((code, Variant(signature, value)))
        head = struct.pack("<cBBBII", b"l", self.type, self.flags, PROTOCOL_VERSION, len(body), self.serial)
        header = head + marshal("a(yv)", [fields], offset=len(head))
        header += bytes(-len(header) % 8)
        if len(header) + len(body) > MAX_MESSAGE:
            raise ValueError(f"cannot encode {self!r}: {len(header) + len(body)} bytes, over the {MAX_MESSAGE} allowed")
        return header + body

    @classmethod
    def decode(cls, data: bytes) -> Message:
        """The message that is all of ``data`` (either byte order); ValueError naming what is malformed."""
        total = message_length(data)
        if total != len(data):
            raise ValueError(f"the message's header says {total} bytes, {len(data)} were given")
        order = _ENDIANNESS[data[0]]
        (serial,) = struct.unpack_from(order + "I", data, 8)
        message = cls(data[1], flags=data[2], serial=serial)
        if message.type == 0:
            raise ValueError("the message is of type 0, which is invalid")
        if serial == 0:
            raise ValueError(f"{message!r} has the serial 0, which is invalid")
        reader = _Reader(data, 0, order, 12)
        for code, value in reader.read(_HEADER_FIELDS, 0):
            known = _FIELDS.get(code)
            if known is None:
                continue  # fields of later versions of the protocol are ignored
            name, signature = known
            if value.signature != signature:
                raise ValueError(f"header field {code} ({name}) is of type {value.signature!r}, not {signature!r}")
            setattr(message, name, value.value)
        reader.align(8)
        missing = [name for name in _REQUIRED.get(message.type, ()) if getattr(message, name) is None]
        if missing:
            raise ValueError(f"{message!r} lacks the header fields {', '.join(missing)}")
        message.body = unmarshal(message.signature, data[reader.pos :], big_endian=order == ">")
        return message


# --- connections


def socket_address(address: str) -> str:
    """The unix socket address (a path, or '\\0name' for an abstract one) that ``address`` names: a
    path, or a D-Bus address of the unix transport ('unix:path=/x', 'unix:abstract=name', keys such as
    guid= ignored; the first of several ';'-separated ones that fits). ValueError otherwise."""
    transport, colon, _ = address.partition(":")
    if address and not (colon and transport.isalnum()):
        return address  # a path
    for entry in address.split(";"):
        transport, _, keys = entry.partition(":")
        if transport != "unix":
            continue
        options = dict(_unescape_pair(pair) for pair in keys.split(",") if pair)
        if "path" in options:
            return options["path"]
        if "abstract" in options:
            return "\0" + options["abstract"]
    raise ValueError(f"no unix socket path in the D-Bus address {address!r}: give a path, unix:path= or unix:abstract=")


def _unescape_pair(pair: str) -> tuple[str, str]:
    key, _, value = pair.partition("=")
    raw = bytearray()
    pos = 0
    while pos < len(value):
        if value[pos] == "%":
            digits = value[pos + 1 : pos + 3]
            if len(digits) != 2 or not _HEX_DIGITS.issuperset(digits):
                raise ValueError(f"bad %-escape in the D-Bus address value {value!r}: % takes two hex digits")
            raw.append(int(digits, 16))
            pos += 3
        else:
            raw += value[pos].encode()
            pos += 1
    return key, raw.decode(errors="surrogateescape")


class Connection:
    """An authenticated connection to a D-Bus peer; ``unique_name`` is ours on a bus (from Hello), ''
    on a peer-to-peer connection, ``guid`` the server's. Not for use by several threads at once."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        """Wrap a connected socket that is not authenticated yet (``from_socket`` and ``open`` do that)."""
        self.address = address
        self.unique_name = ""
        self.guid = ""
        self._sock: socket.socket | None = sock
        self._buffer = bytearray()
        self._serial = 0
        self._signals: deque[Message] = deque(maxlen=MAX_QUEUED_SIGNALS)

    @classmethod
    def open(cls, address: str, *, hello: bool, timeout: float = 5.0) -> Connection:
        """Connect to the unix socket ``address`` (a path, 'unix:path=/x' or 'unix:abstract=name'),
        authenticate, and with ``hello`` (a bus daemon is there) say Hello to get a unique name.
        ConnectionError (with the errno) when the socket cannot be reached or the peer refuses us,
        TimeoutError when it does not answer within ``timeout`` seconds."""
        target = socket_address(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except TimeoutError:
            sock.close()
            raise TimeoutError(f"connecting to the D-Bus socket {address} took over {timeout:g} s") from None
        except OSError as exc:
            sock.close()
            raise ConnectionError(exc.errno, f"cannot connect to the D-Bus socket {address}: {exc.strerror}") from exc
        return cls.from_socket(sock, hello=hello, timeout=timeout, address=address)

    @classmethod
    def from_socket(cls, sock: socket.socket, *, hello: bool, timeout: float = 5.0, address: str = "") -> Connection:
        """A connection over ``sock`` (connected to the peer), authenticated as ``open`` does; the
        socket is closed if that fails. ``address`` names the peer in errors."""
        connection = cls(sock, address or "the peer")
        deadline = time.monotonic() + timeout
        try:
            connection._authenticate(deadline, timeout)
            if hello:
                reply = connection.call(
                    BUS_NAME, BUS_PATH, BUS_INTERFACE, "Hello", timeout=max(deadline - time.monotonic(), 0.0)
                )
                if not reply or not isinstance(reply[0], str):
                    raise ValueError(f"the bus at {connection.address} answered Hello with {_shown(reply)}, not a name")
                connection.unique_name = reply[0]
        except BaseException:
            connection.close()
            raise
        return connection

    def _authenticate(self, deadline: float, timeout: float) -> None:
        uid = str(os.geteuid())
        self._send_bytes(b"\0AUTH EXTERNAL " + uid.encode().hex().encode() + b"\r\n", deadline, "AUTH EXTERNAL")
        line = self._read_line(deadline)
        if line is None:
            raise TimeoutError(f"the D-Bus peer at {self.address} did not answer AUTH within {timeout:g} s")
        words = line.split()
        if not words or words[0] != "OK":
            raise ConnectionError(
                f"the D-Bus peer at {self.address} refused to authenticate uid {uid} by EXTERNAL: it answered"
                f" {line!r}; connect as a user it accepts (root for systemd's private socket)"
            )
        self.guid = words[1] if len(words) > 1 else ""
        self._send_bytes(b"BEGIN\r\n", deadline, "BEGIN")

    def _read_line(self, deadline: float) -> str | None:
        """One line of the authentication exchange, without its CR LF; None on the deadline."""
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line.decode("ascii", "backslashreplace")
            if len(self._buffer) > _MAX_AUTH_LINE:
                self.close()
                raise ValueError(
                    f"the D-Bus peer at {self.address} sent an authentication line over {_MAX_AUTH_LINE} bytes"
                )
            if not self._fill(deadline, _RECV_CHUNK):
                return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    # --- sending

    def call(
        self,
        destination: str | None,
        path: str,
        interface: str | None,
        member: str,
        signature: str = "",
        args: Sequence[Any] = (),
        *,
        timeout: float = 25.0,
    ) -> list[Any]:
        """Call a method and return its reply's body. DBusError on an ERROR reply, TimeoutError when no
        reply comes within ``timeout`` seconds, ConnectionError when the peer is gone, ValueError when
        the arguments do not fit ``signature`` (nothing is sent then) or the peer sends malformed data.
        Signals that arrive meanwhile are queued for ``wait_signal``."""
        what = f"{interface}.{member}" if interface else member
        deadline = time.monotonic() + timeout
        request = Message(
            METHOD_CALL,
            path=path,
            interface=interface,
            member=member,
            destination=destination,
            signature=signature,
            body=args,
        )
        serial = self._send(request, deadline, what)
        while True:
            reply = self._receive(deadline)
            if reply is None:
                raise TimeoutError(
                    f"no reply to {what} from {destination or 'the peer'} at {self.address} within {timeout:g} s"
                )
            if reply.type in (METHOD_RETURN, ERROR) and reply.reply_serial == serial:
                if reply.type == ERROR:
                    first = reply.body[0] if reply.body else ""
                    raise DBusError(reply.error_name or "", first if isinstance(first, str) else "")
                return reply.body
            self._dispatch(reply, deadline)

    def send(self, message: Message, *, timeout: float = 25.0) -> int:
        """Send ``message`` (a signal, or a call that expects no reply) under the next serial, which
        this returns."""
        return self._send(message, time.monotonic() + timeout, _TYPE_NAMES.get(message.type, "a message"))

    def _send(self, message: Message, deadline: float, what: str) -> int:
        self._serial = self._serial % 0xFFFFFFFF + 1
        message.serial = self._serial
        self._send_bytes(message.encode(), deadline, what)
        return message.serial

    def _send_bytes(self, data: bytes, deadline: float, what: str) -> None:
        sock = self._socket()
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(data, socket.MSG_NOSIGNAL)
        except TimeoutError:
            self.close()  # part of the message may have gone: the stream is not framed any more
            raise TimeoutError(
                f"sending {what} to the D-Bus peer at {self.address} timed out; the connection is closed"
            ) from None
        except OSError as exc:
            self.close()
            raise ConnectionError(
                exc.errno, f"sending {what} to the D-Bus peer at {self.address} failed: {exc.strerror}"
            ) from exc

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError(f"the D-Bus connection to {self.address} is closed")
        return self._sock

    # --- receiving

    def wait_signal(self, match: Callable[[Message], bool], timeout: float) -> Message | None:
        """The first signal, queued or arriving within ``timeout`` seconds, for which ``match`` is true;
        the signals examined before it are dropped. None when the timeout passes (a timeout of 0 looks
        only at what has been read already)."""
        while self._signals:
            signal = self._signals.popleft()
            if match(signal):
                return signal
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message is None:
                return None
            if message.type == SIGNAL:
                if match(message):
                    return message
            else:
                self._dispatch(message, deadline)

    def _dispatch(self, message: Message, deadline: float) -> None:
        """A message that is not the reply being waited for: a signal is queued (the oldest dropped past
        MAX_QUEUED_SIGNALS), a method call answered UnknownMethod; replies to calls that timed out and
        messages of unknown types are dropped."""
        if message.type == SIGNAL:
            self._signals.append(message)
        elif message.type == METHOD_CALL and not message.flags & NO_REPLY_EXPECTED:
            called = f"{message.interface}.{message.member}" if message.interface else message.member
            refusal = Message(
                ERROR,
                error_name=UNKNOWN_METHOD,
                reply_serial=message.serial,
                destination=message.sender,
                signature="s",
                body=[f"this D-Bus client serves no methods; {called} on {message.path} was called"],
            )
            self._send(refusal, max(deadline, time.monotonic() + 1.0), f"the UnknownMethod reply to {called}")

    def _receive(self, deadline: float) -> Message | None:
        """The next message; None when none has come by the deadline (after it, only what has already
        been read is decoded)."""
        while True:
            buffer = self._buffer
            wanted = _RECV_CHUNK
            if len(buffer) >= FIXED_HEADER:
                try:
                    length = message_length(buffer)
                except ValueError as exc:
                    raise self._malformed(exc) from None
                if len(buffer) >= length:
                    data = bytes(buffer[:length])
                    del buffer[:length]
                    try:
                        return Message.decode(data)
                    except ValueError as exc:
                        raise self._malformed(exc) from None
                wanted = max(wanted, length - len(buffer))
            if not self._fill(deadline, wanted):
                return None

    def _malformed(self, exc: ValueError) -> ValueError:
        self.close()
        return ValueError(f"malformed D-Bus message from {self.address}: {exc}; the connection is closed")

    def _fill(self, deadline: float, wanted: int) -> bool:
        """Read what the peer has sent (up to ``wanted`` bytes) into the buffer, waiting until the
        deadline; False when nothing came."""
        sock = self._socket()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            sock.settimeout(remaining)
            chunk = sock.recv(wanted)
        except TimeoutError:
            return False
        except OSError as exc:
            self.close()
            raise ConnectionError(
                exc.errno, f"reading from the D-Bus peer at {self.address} failed: {exc.strerror}"
            ) from exc
        if not chunk:
            self.close()
            raise ConnectionError(f"the D-Bus peer at {self.address} closed the connection")
        self._buffer += chunk
        return True
