"""JSON through the C accelerator ``_json`` alone, for the modules a container start imports.

``import json`` costs a cold command several milliseconds: its pure-Python decoder compiles regular
expressions at import (so it imports ``re``, which imports ``enum``), and the CPython decoder and
encoder classes wrap the same C scanner and encoder this module drives directly. The results are
json's: ``loads`` parses what ``json.loads`` parses (str or UTF-8 bytes) into the same objects and
raises ``json.JSONDecodeError`` (a ValueError) at the same position with the same message; ``dumps``
writes what ``json.dumps`` writes with its defaults (ASCII only, ", " and ": ") or the separators
given. The C encoder does not indent: an indented dump (``pykata-runc state``, ``spec``) is written
here, as json's pure-Python encoder writes it.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, NoReturn

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class _DecoderSettings:
    """The attributes ``_json.make_scanner`` reads from a json.JSONDecoder, with its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)
    memo: dict[str, str] = {}


_scan_once = _json.make_scanner(_DecoderSettings())  # type: ignore[arg-type]  # typeshed: a JSONDecoder


def _fail(message: str, text: str, position: int) -> NoReturn:
    from json import JSONDecodeError  # only on the error path

    raise JSONDecodeError(message, text, position)


def loads(data: str | bytes | bytearray) -> Any:
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8-sig" if data[:3] == b"\xef\xbb\xbf" else "utf-8")
    elif data.startswith("\ufeff"):
        _fail("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    start = len(data) - len(data.lstrip(_WHITESPACE))
    try:
        value, end = _scan_once(data, start)
    except StopIteration as stop:
        _fail("Expecting value", data, stop.value)
    end += len(data) - end - len(data[end:].lstrip(_WHITESPACE))
    if end != len(data):
        _fail("Extra data", data, end)
    return value


def _unserializable(value: Any) -> NoReturn:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


_INFINITY = float("inf")


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _float_text(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")


class _Indenter:
    """json.dumps(value, indent=...) with its other defaults: the same text, the same refusals."""

    def __init__(self, indent: str, item_separator: str, key_separator: str) -> None:
        self.indent, self.item_separator, self.key_separator = indent, item_separator, key_separator
        self.chunks: list[str] = []
        self.markers: set[int] = set()

    def value(self, value: Any, level: int) -> None:
        if isinstance(value, str):
            self.chunks.append(_json.encode_basestring_ascii(value))
        elif value is None:
            self.chunks.append("null")
        elif value is True:
            self.chunks.append("true")
        elif value is False:
            self.chunks.append("false")
        elif isinstance(value, int):
            self.chunks.append(int.__repr__(value))
        elif isinstance(value, float):
            self.chunks.append(_float_text(value))
        elif isinstance(value, (list, tuple, dict)):
            self.container(value, level)
        else:
            _unserializable(value)

    def container(self, value: list[Any] | tuple[Any, ...] | dict[Any, Any], level: int) -> None:
        is_dict = isinstance(value, dict)
        if not value:
            self.chunks.append("{}" if is_dict else "[]")
            return
        if id(value) in self.markers:
            raise ValueError("Circular reference detected")
        self.markers.add(id(value))
        newline = "\n" + self.indent * (level + 1)
        self.chunks.append("{" + newline if is_dict else "[" + newline)
        items = value.items() if isinstance(value, dict) else ((None, item) for item in value)
        for index, (key, item) in enumerate(items):
            if index:
                self.chunks.append(self.item_separator + newline)
            if is_dict:
                self.chunks.append(_json.encode_basestring_ascii(_key_text(key)) + self.key_separator)
            self.value(item, level + 1)
        self.chunks.append("\n" + self.indent * level + ("}" if is_dict else "]"))
        self.markers.discard(id(value))


def dumps(value: Any, *, indent: int | str | None = None, separators: tuple[str, str] | None = None) -> str:
    if indent is not None:
        item, key = separators or (",", ": ")
        indenter = _Indenter(indent if isinstance(indent, str) else " " * indent, item, key)
        indenter.value(value, 0)
        return "".join(indenter.chunks)
    item_separator, key_separator = separators or (", ", ": ")
    encode = _json.make_encoder(
        {}, _unserializable, _json.encode_basestring_ascii, None, key_separator, item_separator, False, False, True
    )
    return "".join(encode(value, 0))
