"""JSON through the C accelerator ``_json`` alone, for the modules a container start imports.

``import json`` costs a cold command several milliseconds: its pure-Python decoder compiles regular
expressions at import (so it imports ``re``, which imports ``enum``), and the CPython decoder and
encoder classes wrap the same C scanner and encoder this module drives directly. The results are
json's: ``loads`` parses what ``json.loads`` parses (str or UTF-8 bytes) into the same objects and
raises ``json.JSONDecodeError`` (a ValueError) at the same position with the same message; ``dumps``
writes what ``json.dumps`` writes with its defaults (ASCII only, ", " and ": ") or the separators
given. An indented dump goes through the json package (the C encoder does not indent).
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


def dumps(value: Any, *, indent: int | str | None = None, separators: tuple[str, str] | None = None) -> str:
    if indent is not None:
        import json

        return json.dumps(value, indent=indent, separators=separators)
    item_separator, key_separator = separators or (", ", ": ")
    encode = _json.make_encoder(
        {}, _unserializable, _json.encode_basestring_ascii, None, key_separator, item_separator, False, False, True
    )
    return "".join(encode(value, 0))
