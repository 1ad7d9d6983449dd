"""Requests a client should not send: well-formed protobuf messages with arbitrary field values,
random bytes, and Kata's own requests with bytes changed. Seeded, so a failure can be replayed.

``random_message`` fills a message from its descriptor: each field is set or not, strings come
from a pool of values an agent must handle (paths that climb out, NUL bytes, long names, addresses,
words the agent looks for), integers from the edges of their type, nested messages to a depth of
three, repeated fields and maps with up to two entries.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

STRINGS = (
    "", "a", "c1", "..", "../../etc", "/", "/etc/passwd", "/run/kata-containers/x", "/proc/self/root",
    "x" * 300, "\0", "a\0b", "é", "-1", "1000", "eth0", "lo", "ro", "bind", "rbind", "9p", "virtio-fs",
    "local", "ephemeral", "blk", "SIGKILL", "10.0.0.1/24", "10.0.0.1", "fe80::1/64", "::", "0.0.0.0",
    "00:11:22:33:44:55", "0000:00:01.0/01", "mode=0755", "size=1k", "cpu", "memory",
)  # fmt: skip
INTEGERS = (0, 1, -1, 2, 7, 255, 256, 4096, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63))
_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip
MAX_DEPTH = 3


def _scalar(rng: random.Random, field: FieldDescriptor) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS)
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice((0, 1, 8, 64)))
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice((0.0, -1.0, 1e30, float("nan")))
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([value.number for value in field.enum_type.values])
    value = rng.choice(INTEGERS)
    low, high = _BOUNDS.get(kind, (-(2**63), 2**63 - 1))
    return value % (high + 1) if low == 0 else max(low, min(high, value))


def random_message(rng: random.Random, message: Message, depth: int = 0) -> Message:
    """``message`` (an empty instance of the type) with about half of its fields set at random."""
    for field in message.DESCRIPTOR.fields:
        if depth >= MAX_DEPTH or rng.random() < 0.4:
            continue
        target = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            for _ in range(rng.randrange(3)):
                key = _scalar(rng, key_field)
                if value_field.message_type is not None:
                    random_message(rng, target[key], depth + 1)
                else:
                    target[key] = _scalar(rng, value_field)
        elif field.is_repeated:
            for _ in range(rng.randrange(3)):
                if entry is not None:
                    random_message(rng, target.add(), depth + 1)
                else:
                    target.append(_scalar(rng, field))
        elif entry is not None:
            random_message(rng, target, depth + 1)
        else:
            setattr(message, field.name, _scalar(rng, field))
    return message


HOSTILE_STRINGS = ("\0", "a\0b", "x" * 300, "../../etc", "relative", "")
HOSTILE_INTEGERS = (-1, 2**31 - 1, 2**63 - 1)


def hostile_messages(message_class: type[Message]) -> list[tuple[str, Message]]:
    """One message per top-level scalar field and hostile value of its type (NUL bytes, long names,
    climbing paths, edge integers), the other fields unset: a systematic pass where random_message
    samples."""
    made = []
    for field in message_class.DESCRIPTOR.fields:
        if field.message_type is not None:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            values: tuple[Any, ...] = HOSTILE_STRINGS
        elif field.type in _BOUNDS or field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
            low, high = _BOUNDS.get(field.type, (-(2**63), 2**63 - 1))
            values = tuple(v % (high + 1) if low == 0 else max(low, min(high, v)) for v in HOSTILE_INTEGERS)
        else:
            continue
        for value in values:
            message = message_class()
            if field.is_repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)
            made.append((f"{field.name}={value!r:.20}", message))
    return made


def mutated(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a few bytes changed, cut short, or a piece of it repeated."""
    data = bytearray(data)
    how = rng.randrange(3)
    if how == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == 1 and data:
        del data[rng.randrange(len(data)) :]
    elif data:
        start = rng.randrange(len(data))
        data[start:start] = data[start : start + rng.randint(1, 16)]
    return bytes(data)


# What a JSON document's values may be replaced with: every JSON type, edge numbers, hostile strings.
JSON_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**63, -(2**63), 1.5, "", "x", "/", "..", "\0", "a,b", "0-3", "ro", [], [1], ["x"],
    {}, {"a": 1}, {"type": "bind"},
)  # fmt: skip


def _places(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _places(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _places(value, (*path, index))


def mutated_document(rng: random.Random, document: Any, changes: int = 2) -> tuple[Any, list[tuple[Any, ...]]]:
    """A copy of the JSON ``document`` with up to ``changes`` values (at any depth) replaced by one of
    JSON_VALUES; and the paths it changed."""
    copied = copy.deepcopy(document)
    places = [path for path in _places(document) if path]
    changed = []
    for _ in range(rng.randint(1, changes)):
        path = rng.choice(places)
        parent = copied
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = copy.deepcopy(rng.choice(JSON_VALUES))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced what held it
        changed.append(path)
    return copied, changed
