"""agent/system/dbus.py without a bus: marshalling against hand-computed bytes, malformed data, message
framing in both byte orders, and connections against a fake peer played by a thread on a socketpair."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.system import dbus
from agent.system.dbus import (
    ERROR,
    METHOD_CALL,
    METHOD_RETURN,
    NO_REPLY_EXPECTED,
    SIGNAL,
    Connection,
    DBusError,
    Message,
    Variant,
    marshal,
    unmarshal,
)

# --- marshalling

ROUND_TRIPS: list[tuple[str, list[Any]]] = [
    ("y", [0]),
    ("y", [255]),
    ("b", [True]),
    ("b", [False]),
    ("n", [-32768]),
    ("q", [65535]),
    ("i", [-(2**31)]),
    ("u", [2**32 - 1]),
    ("x", [-(2**63)]),
    ("t", [2**64 - 1]),
    ("d", [1.5]),
    ("d", [-1e300]),
    ("h", [3]),
    ("s", [""]),
    ("s", ["héllo ✓ wörld"]),
    ("o", ["/"]),
    ("o", ["/org/freedesktop/systemd1/unit/pykata_2dabc_2escope"]),
    ("g", [""]),
    ("g", ["a{sv}(iia(ss))"]),
    ("v", [Variant("s", "x")]),
    ("v", [Variant("v", Variant("ay", [1, 2]))]),
    ("ay", [[1, 2, 3]]),
    ("at", [[]]),
    ("at", [[1, 2**64 - 1]]),
    ("an", [[-1, 2, -3]]),
    ("ad", [[0.5, -2.25]]),
    ("ab", [[True, False, True]]),
    ("as", [["a", "", "bc"]]),
    ("ao", [["/a", "/b/c"]]),
    ("aas", [[["a"], [], ["b", "c"]]]),
    ("aat", [[[], [1], []]]),
    ("a(yt)", [[(1, 2), (3, 4)]]),
    ("a(sa(iv))", [[("x", [(1, Variant("b", True)), (-2, Variant("(st)", ("y", 9)))]), ("z", [])]]),
    ("a{sv}", [{"a": Variant("u", 1), "b": Variant("as", ["x"]), "c": Variant("a{sv}", {})}]),
    ("a{ya{st}}", [{1: {"a": 2}, 2: {}}]),
    ("(ybnqiuxtdsogv)", [(1, True, -2, 3, -4, 5, -6, 7, 8.5, "s", "/o", "a(s)", Variant("y", 1))]),
    ("((y)(t(s)))", [((1,), (2, ("x",)))]),
    ("yyyyyyyyt", [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (
        "ssa(sv)a(sa(sv))",
        [
            "pykata-abc.scope",
            "fail",
            [("Delegate", Variant("b", True)), ("PIDs", Variant("au", [123])), ("MemoryMax", Variant("t", 2**30))],
            [],
        ],
    ),
]


@pytest.mark.parametrize(("signature", "values"), ROUND_TRIPS, ids=[sig for sig, _ in ROUND_TRIPS])
@pytest.mark.parametrize("offset", [0, 1, 3, 4, 6])
def test_round_trip(signature: str, values: list[Any], offset: int) -> None:
    data = marshal(signature, values, offset)
    assert unmarshal(signature, data, offset) == values


def test_round_trip_big_endian_of_the_same_values() -> None:
    # the big-endian bytes of ("q", "u", "as", "(td)") built by hand
    data = struct.pack(">H2xI", 7, 8) + struct.pack(">I", 6) + struct.pack(">I", 1) + b"a\0"
    data += b"\0" * (-len(data) % 8) + struct.pack(">Qd", 10, 0.5)
    assert unmarshal("quas(td)", data, big_endian=True) == [7, 8, ["a"], (10, 0.5)]


@pytest.mark.parametrize(
    ("signature", "values", "offset", "expected"),
    [
        ("yu", [1, 2], 0, b"\x01\x00\x00\x00\x02\x00\x00\x00"),
        ("u", [1], 1, b"\x00\x00\x00\x01\x00\x00\x00"),
        ("u", [1], 4, b"\x01\x00\x00\x00"),
        ("yn", [1, -2], 0, b"\x01\x00\xfe\xff"),
        ("b", [True], 0, b"\x01\x00\x00\x00"),
        ("t", [1], 2, b"\x00" * 6 + b"\x01" + b"\x00" * 7),
        ("s", ["ab"], 0, b"\x02\x00\x00\x00ab\x00"),
        ("ys", [1, "ab"], 0, b"\x01\x00\x00\x00\x02\x00\x00\x00ab\x00"),
        ("o", ["/"], 0, b"\x01\x00\x00\x00/\x00"),
        ("g", ["as"], 0, b"\x02as\x00"),
        ("v", [Variant("u", 7)], 0, b"\x01u\x00\x00\x07\x00\x00\x00"),
        # an empty array of 8-aligned elements still pads to 8 after its length
        ("at", [[]], 0, b"\x00" * 8),
        ("at", [[]], 4, b"\x00" * 4),
        ("yat", [1, []], 0, b"\x01\x00\x00\x00" + b"\x00" * 4),
        ("au", [[]], 0, b"\x00" * 4),
        ("ay", [b"\x05\x06"], 0, b"\x02\x00\x00\x00\x05\x06"),
        ("(yt)", [(1, 2)], 0, b"\x01" + b"\x00" * 7 + b"\x02" + b"\x00" * 7),
        ("(yt)", [[1, 2]], 8, b"\x01" + b"\x00" * 7 + b"\x02" + b"\x00" * 7),
        (
            "a{sv}",
            [{"a": Variant("y", 5)}],
            0,
            b"\x0a\x00\x00\x00" + b"\x00" * 4 + b"\x01\x00\x00\x00a\x00" + b"\x01y\x00\x05",
        ),
        (
            "a{sv}",
            [[("a", Variant("y", 5))]],
            4,
            b"\x0a\x00\x00\x00" + b"\x01\x00\x00\x00a\x00" + b"\x01y\x00\x05",
        ),
    ],
)
def test_exact_bytes(signature: str, values: list[Any], offset: int, expected: bytes) -> None:
    assert marshal(signature, values, offset) == expected
    decoded = unmarshal(signature, expected, offset)
    assert marshal(signature, decoded, offset) == expected


def test_what_unmarshal_gives_for_other_python_shapes() -> None:
    assert unmarshal("a{sv}", marshal("a{sv}", [[("k", Variant("s", "v"))]])) == [{"k": Variant("s", "v")}]
    assert unmarshal("(ii)", marshal("(ii)", [[1, 2]])) == [(1, 2)]
    assert unmarshal("ay", marshal("ay", [bytearray(b"ab")])) == [[97, 98]]
    assert unmarshal("b", marshal("b", [1])) == [True]
    assert unmarshal("d", marshal("d", [3])) == [3.0]


@pytest.mark.parametrize(
    ("signature", "data", "problem"),
    [
        ("y", b"", "truncated"),
        ("u", b"\x01\x00", "truncated"),
        ("t", b"\x01" * 7, "truncated"),
        ("b", b"\x02\x00\x00\x00", "is 2, not 0 or 1"),
        ("s", b"\x02\x00\x00\x00abX", "does not end with a NUL"),
        ("s", b"\x02\x00\x00\x00ab", "truncated"),
        ("s", b"\xff\xff\xff\xff", "truncated"),
        ("s", b"\x02\x00\x00\x00\xff\xfe\x00", "not UTF-8"),
        ("s", b"\x03\x00\x00\x00a\x00b\x00", "holds a NUL"),
        ("o", b"\x03\x00\x00\x00/a/\x00", "not a valid object path"),
        ("g", b"\x01z\x00", "invalid D-Bus signature"),
        ("g", b"\x05a\x00", "truncated"),
        ("ay", b"\x10\x00\x00\x00ab", "runs past the end"),
        ("ay", struct.pack("<I", dbus.MAX_ARRAY + 1) + b"\x00" * 16, f"over the {dbus.MAX_ARRAY} allowed"),
        ("au", b"\x03\x00\x00\x00abc", "has 3 bytes"),
        ("as", b"\x04\x00\x00\x00" + b"\x02\x00\x00\x00ab\x00", "overrun"),
        ("at", b"\x00\x00\x00\x00", "padding"),
        ("a(yy)", b"\x01\x00\x00\x00\x00\x00\x00\x00\x01\x02", "overrun"),
        ("v", b"\x02uu\x00" + b"\x01\x00\x00\x00" * 2, "one complete type"),
        ("v", b"\x01z\x00", "invalid D-Bus signature"),
        ("v", b"\x00\x00", "one complete type"),
        ("u", b"\x01\x00\x00\x00\x00", "left over"),
        ("a", b"", "no element type"),
        ("(", b"", "not closed"),
    ],
)
def test_malformed_data_raises_value_error(signature: str, data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        unmarshal(signature, data)


def test_truncations_and_corruptions_give_value_errors_only() -> None:
    signature = "ssa(sv)a(sa(sv))a{sv}"
    values = [*ROUND_TRIPS[-1][1], {"x": Variant("a(td)", [(1, 2.0)]), "y": Variant("v", Variant("g", "as"))}]
    data = marshal(signature, values)
    for end in range(len(data)):
        with pytest.raises(ValueError):
            unmarshal(signature, data[:end])
    rng = random.Random(7)
    for _ in range(3000):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(len(corrupt))] = rng.choice([0, 1, 2, 0x7F, 0xFF, rng.randrange(256)])
        with contextlib.suppress(ValueError):
            unmarshal(signature, bytes(corrupt))


def nested_variants(depth: int) -> Variant:
    value = Variant("u", 1)
    for _ in range(depth - 1):
        value = Variant("v", value)
    return value


def test_variants_nest_64_deep_and_no_deeper() -> None:
    data = marshal("v", [nested_variants(64)])
    assert unmarshal("v", data) == [nested_variants(64)]
    with pytest.raises(ValueError, match="nest over 64 deep"):
        marshal("v", [nested_variants(65)])
    with pytest.raises(ValueError, match="nest over 64 deep"):
        unmarshal("v", b"\x01v\x00" * 65 + b"\x01y\x00\x07")
    value = unmarshal("v", b"\x01v\x00" * 63 + b"\x01y\x00\x07")[0]
    depth = 0
    while isinstance(value, Variant):
        value = value.value
        depth += 1
    assert (depth, value) == (64, 7)


def test_arrays_and_structs_nest_32_deep() -> None:
    value: Any = [7]
    for _ in range(31):
        value = [value]
    assert unmarshal("a" * 32 + "y", marshal("a" * 32 + "y", [value])) == [value]
    record: Any = (7,)
    for _ in range(31):
        record = (record,)
    deep_struct = "(" * 32 + "y" + ")" * 32
    assert unmarshal(deep_struct, marshal(deep_struct, [record])) == [record]


@pytest.mark.parametrize(
    ("signature", "problem"),
    [
        ("a", "no element type"),
        ("aa", "no element type"),
        ("(", "not closed"),
        ("(i", "not closed"),
        ("()", "holds no types"),
        (")", r"unexpected '\)'"),
        ("}", "unexpected '}'"),
        ("z", "unexpected 'z'"),
        ("{ss}", "only allowed as an array's element"),
        ("(s{ss})", "only allowed as an array's element"),
        ("a{vs}", "basic type as its key"),
        ("a{(s)s}", "basic type as its key"),
        ("a{s}", "no value type"),
        ("a{sss}", "exactly a key and a value"),
        ("a{ss", "exactly a key and a value"),
        ("a" * 33 + "y", "arrays nest over 32"),
        ("(" * 33 + "y" + ")" * 33, "structs nest over 32"),
        ("a{s" * 33 + "y" + "}" * 33, "nest over 32"),
        ("y" * 256, "over 255"),
        ("é", "not ASCII"),
    ],
)
def test_bad_signatures(signature: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as marshalled:
        marshal(signature, [])
    assert repr(signature[:20]).rstrip("'") in str(marshalled.value)
    with pytest.raises(ValueError, match=problem):
        unmarshal(signature, b"")


@pytest.mark.parametrize(
    ("signature", "value", "problem"),
    [
        ("y", 256, "out of the range 0..255"),
        ("y", -1, "out of the range 0..255"),
        ("n", 32768, "out of the range -32768..32767"),
        ("q", -1, "out of the range 0..65535"),
        ("i", 2**31, "out of the range"),
        ("u", 2**32, "out of the range 0..4294967295"),
        ("u", -1, "out of the range"),
        ("x", 2**63, "out of the range"),
        ("t", -1, "out of the range"),
        ("t", 2**64, "out of the range"),
        ("h", -1, "out of the range"),
        ("u", "1", "an int"),
        ("u", True, "an int"),
        ("u", 1.0, "an int"),
        ("u", None, "an int"),
        ("b", 2, "a bool"),
        ("b", "yes", "a bool"),
        ("d", "1.0", "a float"),
        ("d", 10**400, "too large for a double"),
        ("s", b"x", "a str"),
        ("s", "a\0b", "cannot hold a NUL"),
        ("s", "\udcff", "UTF-8"),
        ("o", "", "not a valid object path"),
        ("o", "/a/", "not a valid object path"),
        ("o", "a/b", "not a valid object path"),
        ("o", "//", "not a valid object path"),
        ("o", "/a-b", "not a valid object path"),
        ("g", "a", "invalid D-Bus signature"),
        ("g", 5, "a str"),
        ("as", "abc", "a list"),
        ("as", {"a"}, "a list"),
        ("au", b"ab", "a list"),
        ("as", [1], "a str"),
        ("a{sv}", [("a",)], "a tuple or list of 2 values"),
        ("a{sv}", "x", "a dict"),
        ("a{sv}", {"a": 1}, "from a Variant"),
        ("a{us}", {"a": "b"}, "an int"),
        ("(ii)", (1,), "a tuple or list of 2 values"),
        ("(ii)", (1, 2, 3), "a tuple or list of 2 values"),
        ("(ii)", {1: 2}, "a tuple or list"),
        ("v", 1, "from a Variant"),
        ("v", Variant("uu", [1, 2]), "one complete type"),
        ("v", Variant(["u"], 1), "a str"),
        ("v", Variant("u", "x"), "an int"),
    ],
)
def test_values_that_do_not_fit(signature: str, value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        marshal(signature, [value])
    message = str(caught.value)
    assert f"as {signature!r}" in message and "does not fit" in message
    if signature in "ynqiuxthdbsog":
        assert f"{repr(value)[:20]}" in message and f"does not fit {signature!r}" in message


def test_marshal_value_count_and_shape() -> None:
    with pytest.raises(ValueError, match="has 2 values, 1 were given"):
        marshal("uu", [1])
    with pytest.raises(ValueError, match="a list or a tuple"):
        marshal("u", 5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("signature", "value", "size"),
    [
        ("ay", bytes(dbus.MAX_ARRAY + 1), dbus.MAX_ARRAY + 1),
        ("at", [0] * (dbus.MAX_ARRAY // 8 + 1), dbus.MAX_ARRAY + 8),
        ("as", ["x" * 4091] * (dbus.MAX_ARRAY // 4096 + 1), dbus.MAX_ARRAY + 4096),  # 4096 bytes each
    ],
    ids=["bytes", "uint64", "strings"],
)
def test_arrays_over_64_mib_are_refused(signature: str, value: Any, size: int) -> None:
    with pytest.raises(ValueError, match=f"{size} bytes of elements, over the {dbus.MAX_ARRAY}"):
        marshal(signature, [value])


def test_arrays_of_integers_are_range_checked_one_by_one() -> None:
    assert marshal("au", [[1, 2]]) == marshal("au", [(1, 2)]) == b"\x08\0\0\0\x01\0\0\0\x02\0\0\0"
    with pytest.raises(ValueError, match="-1 does not fit 'u'"):
        marshal("au", [[1, -1]])
    with pytest.raises(ValueError, match="True does not fit 'u'"):
        marshal("au", [[1, True]])
    with pytest.raises(ValueError, match="256 does not fit 'y'"):
        marshal("ay", [[1, 256]])


# --- messages


def hand_built_signal(order: str) -> bytes:
    """SIGNAL serial 5, path /a, interface x.y, member M, signature su, body ("hi", 7), built byte by
    byte in the byte order ``order`` ('<' or '>')."""
    fields = b""
    fields += b"\x01" + b"\x01o\x00" + struct.pack(order + "I", 2) + b"/a\x00"  # 16 .. 27
    fields += b"\x00" * 5 + b"\x02" + b"\x01s\x00" + struct.pack(order + "I", 3) + b"x.y\x00"  # 27 .. 44
    fields += b"\x00" * 4 + b"\x03" + b"\x01s\x00" + struct.pack(order + "I", 1) + b"M\x00"  # 44 .. 58
    fields += b"\x00" * 6 + b"\x08" + b"\x01g\x00" + b"\x02su\x00"  # 58 .. 72
    assert len(fields) == 56
    body = struct.pack(order + "I", 2) + b"hi\x00" + b"\x00" + struct.pack(order + "I", 7)
    head = (b"l" if order == "<" else b"B") + bytes([SIGNAL, 0, 1])
    return head + struct.pack(order + "III", len(body), 5, len(fields)) + fields + body


def test_message_encodes_to_the_hand_built_bytes() -> None:
    message = Message(SIGNAL, serial=5, path="/a", interface="x.y", member="M", signature="su", body=["hi", 7])
    assert message.encode() == hand_built_signal("<")


@pytest.mark.parametrize("order", ["<", ">"])
def test_message_decodes_in_both_byte_orders(order: str) -> None:
    data = hand_built_signal(order)
    assert dbus.message_length(data[:16]) == len(data) == 84
    message = Message.decode(data)
    assert (message.type, message.flags, message.serial) == (SIGNAL, 0, 5)
    assert (message.path, message.interface, message.member, message.signature) == ("/a", "x.y", "M", "su")
    assert (message.error_name, message.reply_serial, message.destination, message.sender) == (None,) * 4
    assert message.body == ["hi", 7]


def test_message_round_trip_with_every_field() -> None:
    message = Message(
        ERROR,
        flags=NO_REPLY_EXPECTED,
        serial=0xFFFFFFFF,
        error_name="org.freedesktop.systemd1.NoSuchUnit",
        reply_serial=3,
        destination=":1.7",
        sender="org.freedesktop.systemd1",
        signature="sa{sv}",
        body=["gone", {"a": Variant("as", [])}],
    )
    data = message.encode()
    assert dbus.message_length(data) == len(data)
    back = Message.decode(data)
    for name in Message.__slots__:
        assert getattr(back, name) == getattr(message, name), name
    assert "NoSuchUnit" in repr(back) and "reply_serial=3" in repr(back)


def test_header_without_body_is_padded_to_8() -> None:
    data = Message(METHOD_CALL, serial=1, path="/", member="Ping").encode()
    assert len(data) % 8 == 0 and Message.decode(data).body == []


def test_unknown_header_fields_are_ignored() -> None:
    data = bytearray(hand_built_signal("<"))
    data[64] = 200  # the SIGNATURE field's code becomes one no version defines: the body has no signature
    data = data[:72]  # so it must go, and its length with it
    data[4:8] = struct.pack("<I", 0)
    message = Message.decode(bytes(data))
    assert (message.member, message.signature, message.body) == ("M", "", [])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.__setitem__(0, ord("x")), "'l' or 'B'"),
        (lambda d: d.__setitem__(3, 2), "protocol version 2"),
        (lambda d: d.__setitem__(1, 0), "type 0"),
        (lambda d: d.__setitem__(slice(8, 12), b"\x00" * 4), "serial 0"),
        (lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 13)), "header says 85 bytes"),
        (lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", dbus.MAX_MESSAGE)), "over the 134217728"),
        (lambda d: d.__setitem__(slice(12, 16), struct.pack("<I", dbus.MAX_ARRAY + 1)), "header fields take"),
        (lambda d: d.__setitem__(18, ord("s")), r"header field 1 \(path\) is of type 's'"),
        (lambda d: d.__setitem__(48, 9), r"header field 9 \(unix_fds\) is of type 's', not 'u'"),
        (lambda d: d.__setitem__(48, 7), "lacks the header fields member"),
        (lambda d: d.__setitem__(78, ord("x")), "does not end with a NUL"),
        (lambda d: d.__setitem__(slice(72, 76), struct.pack("<I", 9)), "truncated"),
    ],
)
def test_malformed_messages(change: Callable[[bytearray], None], problem: str) -> None:
    data = bytearray(hand_built_signal("<"))
    change(data)
    with pytest.raises(ValueError, match=problem):
        Message.decode(bytes(data))


def test_message_length_needs_16_bytes() -> None:
    with pytest.raises(ValueError, match="starts with 16 bytes"):
        dbus.message_length(b"l\x01\x00\x01")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"type": METHOD_CALL, "path": "/"}, "needs member"),
        ({"type": SIGNAL, "path": "/", "member": "M"}, "needs interface"),
        ({"type": ERROR, "reply_serial": 1}, "needs error_name"),
        ({"type": METHOD_RETURN}, "needs reply_serial"),
        ({"type": 9}, "a known message type"),
        ({"type": METHOD_CALL, "path": "/", "member": "M", "serial": 0}, "a serial is 1"),
        ({"type": METHOD_CALL, "path": "/", "member": "1M"}, "not a valid D-Bus member"),
        ({"type": METHOD_CALL, "path": "/", "member": "M", "interface": "noDots"}, "not a valid D-Bus interface"),
        ({"type": METHOD_CALL, "path": "/", "member": "M", "destination": "a..b"}, "not a valid D-Bus destination"),
        ({"type": METHOD_CALL, "path": "x", "member": "M"}, "not a valid object path"),
        ({"type": METHOD_CALL, "path": "/", "member": "M", "signature": "u", "body": ["x"]}, "an int"),
    ],
)
def test_messages_that_cannot_be_encoded(fields: dict[str, Any], problem: str) -> None:
    fields.setdefault("serial", 1)
    with pytest.raises(ValueError, match=problem):
        Message(fields.pop("type"), **fields).encode()


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        (":1.42", True),
        ("org.freedesktop.systemd1", True),
        ("a-b.c_d", True),
        (":1.1x", True),
        (":1", False),
        ("org", False),
        ("org.1x", False),
        ("a..b", False),
        ("", False),
        ("a." * 128 + "b", False),
    ],
)
def test_bus_names(name: str, valid: bool) -> None:
    assert dbus.valid_bus_name(name) is valid


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("/run/systemd/private", "/run/systemd/private"),
        ("relative/bus", "relative/bus"),
        ("unix:path=/run/x,guid=0123", "/run/x"),
        ("unix:abstract=name", "\0name"),
        ("tcp:host=localhost,port=1;unix:path=/a%20b", "/a b"),
        ("unix:guid=1,path=/p", "/p"),
    ],
)
def test_socket_addresses(address: str, target: str) -> None:
    assert dbus.socket_address(address) == target


@pytest.mark.parametrize(
    "address",
    ["", "tcp:host=localhost,port=1", "unix:tmpdir=/tmp", "unix:path=/a%zz", "unix:path=/a%2", "unix:path=/a%+1"],
)
def test_socket_addresses_refused(address: str) -> None:
    with pytest.raises(ValueError, match=r"D-Bus address|escape"):
        dbus.socket_address(address)


def test_dbus_error() -> None:
    exc = DBusError("org.freedesktop.systemd1.NoSuchUnit", "Unit x.scope not loaded.")
    assert (exc.name, exc.message) == ("org.freedesktop.systemd1.NoSuchUnit", "Unit x.scope not loaded.")
    assert str(exc) == "org.freedesktop.systemd1.NoSuchUnit: Unit x.scope not loaded."
    assert str(DBusError("a.B", "")) == "a.B"
    again = pickle.loads(pickle.dumps(exc))
    assert (again.name, again.message, str(again)) == (exc.name, exc.message, str(exc))


# --- connections against a fake peer

UID_HEX = str(os.geteuid()).encode().hex().encode()
GUID = "0123456789abcdef0123456789abcdef"


class FakePeer:
    """The server end of a socket: reads what the client sends, answers what the test scripts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.serial = 100

    def fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the client closed the connection")
        self.buffer += chunk

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self.fill()
        end = self.buffer.index(b"\r\n")
        return self.take(end + 2)[:-2]

    def read_auth(self) -> None:
        assert self.take(1) == b"\0", "the client starts with a NUL byte"
        assert self.line() == b"AUTH EXTERNAL " + UID_HEX

    def accept(self) -> None:
        self.read_auth()
        self.sock.sendall(f"OK {GUID}\r\n".encode())
        assert self.line() == b"BEGIN"

    def read_message(self) -> Message:
        while len(self.buffer) < 16:
            self.fill()
        return Message.decode(self.take(dbus.message_length(self.buffer)))

    def send(self, message: Message) -> None:
        if not message.serial:
            self.serial += 1
            message.serial = self.serial
        self.sock.sendall(message.encode())

    def reply(self, call: Message, signature: str = "", body: list[Any] | None = None) -> None:
        self.send(Message(METHOD_RETURN, reply_serial=call.serial, signature=signature, body=body or []))

    def signal(self, member: str, signature: str = "", body: list[Any] | None = None) -> None:
        self.send(
            Message(
                SIGNAL,
                path="/org/pykata",
                interface="org.pykata.Test",
                member=member,
                signature=signature,
                body=body or [],
            )
        )

    def wait_closed(self) -> None:
        with contextlib.suppress(EOFError):
            while True:
                self.fill()


@contextlib.contextmanager
def fake_peer(script: Callable[[FakePeer], None]) -> Iterator[socket.socket]:
    """The client end of a socketpair whose other end ``script`` plays in a thread; its failures fail
    the test."""
    client, server = socket.socketpair()
    server.settimeout(10)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            script(FakePeer(server))
        except BaseException as exc:
            failures.append(exc)
        finally:
            server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield client
    finally:
        client.close()
        thread.join(15)
    assert not thread.is_alive(), "the fake peer did not finish"
    if failures:
        raise failures[0]


def test_auth_and_a_method_return() -> None:
    calls: list[Message] = []

    def script(peer: FakePeer) -> None:
        peer.accept()
        call = peer.read_message()
        calls.append(call)
        peer.reply(call, "as", [["a", "b"]])
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False, timeout=5) as conn:
        assert (conn.unique_name, conn.guid) == ("", GUID)
        result = conn.call(
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            ROUND_TRIPS[-1][1],
        )
        assert result == [["a", "b"]]
    [call] = calls
    assert (call.type, call.serial, call.flags) == (METHOD_CALL, 1, 0)
    assert call.destination == "org.freedesktop.systemd1" and call.path == "/org/freedesktop/systemd1"
    assert (call.interface, call.member, call.signature) == (
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
    )
    assert call.body == ROUND_TRIPS[-1][1]
    assert conn.closed


def test_serials_count_up() -> None:
    serials: list[int] = []

    def script(peer: FakePeer) -> None:
        peer.accept()
        for _ in range(3):
            call = peer.read_message()
            serials.append(call.serial)
            peer.reply(call)
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        for _ in range(3):
            assert conn.call(None, "/", None, "Ping") == []
    assert serials == [1, 2, 3]


def test_hello() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        call = peer.read_message()
        assert (call.destination, call.path, call.interface, call.member) == (
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "Hello",
        )
        peer.reply(call, "s", [":1.7"])
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=True) as conn:
        assert conn.unique_name == ":1.7"


@pytest.mark.parametrize(
    ("body_signature", "body", "message"),
    [("s", ["Unit x.scope not loaded."], "Unit x.scope not loaded."), ("", [], ""), ("u", [3], "")],
)
def test_error_reply(body_signature: str, body: list[Any], message: str) -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        call = peer.read_message()
        peer.send(
            Message(
                ERROR,
                error_name="org.freedesktop.systemd1.NoSuchUnit",
                reply_serial=call.serial,
                signature=body_signature,
                body=body,
            )
        )
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        with pytest.raises(DBusError) as caught:
            conn.call(None, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "GetUnit", "s", ["x"])
        assert (caught.value.name, caught.value.message) == ("org.freedesktop.systemd1.NoSuchUnit", message)
        assert not conn.closed


def test_signals_before_the_reply_are_queued_and_other_replies_skipped() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        call = peer.read_message()
        peer.signal("JobNew", "uos", [1, "/job/1", "a.scope"])
        peer.send(Message(METHOD_RETURN, reply_serial=call.serial + 50, signature="s", body=["not ours"]))
        peer.signal("JobRemoved", "uoss", [1, "/job/1", "a.scope", "done"])
        peer.signal("Other")
        peer.reply(call, "o", ["/job/1"])
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        assert conn.call(None, "/", "org.pykata.Test", "Start") == ["/job/1"]
        removed = conn.wait_signal(lambda m: m.member == "JobRemoved", 0)
        assert removed is not None and removed.body == [1, "/job/1", "a.scope", "done"]
        assert (removed.type, removed.path, removed.interface) == (SIGNAL, "/org/pykata", "org.pykata.Test")
        # JobNew was examined and dropped; Other is still queued
        other = conn.wait_signal(lambda m: True, 0)
        assert other is not None and other.member == "Other"
        assert conn.wait_signal(lambda m: True, 0) is None


def test_a_signal_that_arrives_while_waiting() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        time.sleep(0.2)
        peer.signal("Unrelated")
        peer.signal("JobRemoved", "u", [9])
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        started = time.monotonic()
        found = conn.wait_signal(lambda m: m.member == "JobRemoved", 5)
        assert found is not None and found.body == [9]
        assert time.monotonic() - started < 4
        assert conn.wait_signal(lambda m: True, 0) is None  # Unrelated was dropped


def test_wait_signal_times_out() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        peer.signal("Unrelated")
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        started = time.monotonic()
        assert conn.wait_signal(lambda m: m.member == "JobRemoved", 0.3) is None
        assert 0.25 < time.monotonic() - started < 3


def test_the_signal_queue_keeps_the_newest_1024() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        call = peer.read_message()
        for number in range(1030):
            peer.signal("Tick", "u", [number])
        peer.reply(call)
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        conn.call(None, "/", None, "Ping")
        seen = []
        while (signal := conn.wait_signal(lambda m: True, 0)) is not None:
            seen.append(signal.body[0])
        assert seen == list(range(6, 1030))


def test_calls_from_the_peer_are_answered_unknown_method() -> None:
    answers: list[Message] = []

    def script(peer: FakePeer) -> None:
        peer.accept()
        call = peer.read_message()
        peer.send(Message(METHOD_CALL, flags=NO_REPLY_EXPECTED, path="/x", interface="a.B", member="Quiet"))
        peer.send(Message(METHOD_CALL, path="/x", interface="a.B", member="Loud", sender=":1.9"))
        answers.append(peer.read_message())
        peer.reply(call, "u", [5])
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        assert conn.call(None, "/", None, "Get") == [5]
    [answer] = answers
    assert (answer.type, answer.error_name, answer.reply_serial) == (ERROR, dbus.UNKNOWN_METHOD, 102)
    assert answer.destination == ":1.9" and answer.serial == 2
    assert "a.B.Loud" in answer.body[0]


def test_rejected() -> None:
    def script(peer: FakePeer) -> None:
        peer.read_auth()
        peer.sock.sendall(b"REJECTED EXTERNAL DBUS_COOKIE_SHA1\r\n")
        peer.wait_closed()

    with fake_peer(script) as sock:
        with pytest.raises(ConnectionError, match="REJECTED EXTERNAL") as caught:
            Connection.from_socket(sock, hello=False, address="/run/test.sock")
        assert "/run/test.sock" in str(caught.value)
        assert sock.fileno() == -1, "the socket is closed when authentication fails"


def test_a_peer_that_never_answers_auth() -> None:
    def script(peer: FakePeer) -> None:
        peer.read_auth()
        peer.wait_closed()

    with fake_peer(script) as sock:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer AUTH"):
            Connection.from_socket(sock, hello=False, timeout=0.3)
        assert 0.25 < time.monotonic() - started < 3


def test_a_call_that_is_never_answered() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        peer.read_message()
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no reply to org\.pykata\.Test\.Slow"):
            conn.call(None, "/", "org.pykata.Test", "Slow", timeout=0.3)
        assert 0.25 < time.monotonic() - started < 3


def test_a_peer_that_closes_during_auth() -> None:
    def script(peer: FakePeer) -> None:
        peer.read_auth()

    with fake_peer(script) as sock, pytest.raises(ConnectionError, match="closed the connection"):
        Connection.from_socket(sock, hello=False)


def test_a_peer_that_closes_during_a_call() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        peer.read_message()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        with pytest.raises(ConnectionError, match="closed the connection"):
            conn.call(None, "/", None, "Ping")
        assert conn.closed
        with pytest.raises(ConnectionError, match="is closed"):
            conn.call(None, "/", None, "Ping")
        conn.close()  # again: nothing happens


def test_malformed_data_from_the_peer_closes_the_connection() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        peer.read_message()
        peer.sock.sendall(b"X" * 16)
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        with pytest.raises(ValueError, match=r"malformed D-Bus message .*'l' or 'B'"):
            conn.call(None, "/", None, "Ping")
        assert conn.closed


def test_bad_arguments_send_nothing() -> None:
    def script(peer: FakePeer) -> None:
        peer.accept()
        call = peer.read_message()
        assert call.member == "Good"
        peer.reply(call)
        peer.wait_closed()

    with fake_peer(script) as sock, Connection.from_socket(sock, hello=False) as conn:
        with pytest.raises(ValueError, match="out of the range"):
            conn.call(None, "/", None, "Bad", "u", [-1])
        assert conn.call(None, "/", None, "Good") == []


def test_open_a_missing_socket(tmp_path: Path) -> None:
    missing = tmp_path / "private"
    with pytest.raises(ConnectionError) as caught:
        Connection.open(str(missing), hello=False)
    assert caught.value.errno == errno.ENOENT and str(missing) in str(caught.value)


def test_open_a_socket_nobody_listens_on(tmp_path: Path) -> None:
    path = tmp_path / "private"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    with pytest.raises(ConnectionError) as caught:
        Connection.open(f"unix:path={path}", hello=False)
    assert caught.value.errno == errno.ECONNREFUSED and str(path) in str(caught.value)


@pytest.mark.parametrize("form", ["path", "unix:path", "unix:abstract"])
def test_open_by_address(tmp_path: Path, form: str) -> None:
    path = str(tmp_path / "private")
    abstract = f"pykata-test-{os.getpid()}-{threading.get_ident()}"
    address = {"path": path, "unix:path": f"unix:path={path},guid={GUID}", "unix:abstract": f"unix:abstract={abstract}"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + abstract if form == "unix:abstract" else path)
        listener.listen(1)
        listener.settimeout(10)

        def script(_: FakePeer) -> None:
            accepted, _addr = listener.accept()
            with accepted:
                accepted.settimeout(10)
                peer = FakePeer(accepted)
                peer.accept()
                call = peer.read_message()
                peer.reply(call, "s", ["pong"])
                peer.wait_closed()

        with fake_peer(script), Connection.open(address[form], hello=False, timeout=5) as conn:
            assert conn.call(None, "/", None, "Ping") == ["pong"]
            assert conn.address == address[form]
