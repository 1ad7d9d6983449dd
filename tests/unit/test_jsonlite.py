"""agent.system.jsonlite parses and writes exactly what the json package does, errors included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.system import jsonlite

DOCUMENTS = [
    "{}",
    "[]",
    ' \n\t{"a": 1, "b": [true, false, null], "c": {"d": "e"}}\r\n ',
    '"caf\\u00e9 \\ud83d\\ude00 \\n\\t\\"quoted\\""',
    "-0",
    "12345678901234567890123",
    "1.5e300",
    "-2.25E-5",
    '{"dup": 1, "dup": 2}',
    "[NaN, Infinity, -Infinity]",
    '{"ociVersion": "1.0.2", "process": {"args": ["sh", "-c", "echo \\u2603"], "terminal": false}}',
]

BAD = [
    "",
    "   ",
    "{",
    '{"a" 1}',
    '{"a": 1,}',
    "[1, 2",
    "tru",
    '"unterminated',
    '"bad escape \\x"',
    '"control \x01 character"',
    "{} extra",
    "[1] [2]",
    "\ufeff{}",
    "01",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_loads_matches_json(text: str) -> None:
    ours, theirs = jsonlite.loads(text), json.loads(text)
    assert repr(ours) == repr(theirs)  # repr: NaN compares unequal to itself
    assert repr(jsonlite.loads(text.encode())) == repr(theirs)


@pytest.mark.parametrize("text", BAD)
def test_errors_match_json(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as ours:
        jsonlite.loads(text)
    assert (ours.value.msg, ours.value.pos) == (theirs.value.msg, theirs.value.pos)


def test_utf8_bytes_with_a_byte_order_mark() -> None:
    assert jsonlite.loads('\ufeff{"a": "é"}'.encode()) == {"a": "é"}


VALUES = [
    {"id": "c1", "pid": 42, "status": "running", "annotations": {"k": "v"}, "bundle": "/tmp/b"},
    [1, 2.5, -3, True, False, None, 'é\n"\\', [], {}],
    {"nested": [{"a": [1, {"b": None}]}], "float": 1e-7, "big": 2**70},
    "plain",
    0,
    float("inf"),
]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("separators", [None, (",", ":")])
def test_dumps_matches_json(value: object, separators: tuple[str, str] | None) -> None:
    assert jsonlite.dumps(value, separators=separators) == json.dumps(value, separators=separators)


INDENTED = [
    *VALUES,
    {},
    [],
    [(1, (2, 3)), float("nan"), float("-inf"), -0.0, 1e300, "\u2603\U0001f600", {"k": {}}],
    {7: "int", 2.5: "float", True: "true", False: "false", None: "null", float("inf"): "inf"},
]


@pytest.mark.parametrize("value", INDENTED)
@pytest.mark.parametrize("indent", [0, 2, "\t", "", " . "])
@pytest.mark.parametrize("separators", [None, (",", ":"), (" ,", " = ")])
def test_dumps_indented_matches_json(value: object, indent: int | str, separators: tuple[str, str] | None) -> None:
    assert repr(jsonlite.dumps(value, indent=indent, separators=separators)) == repr(
        json.dumps(value, indent=indent, separators=separators)
    )


def test_dumps_indented_and_refusals_match_json() -> None:
    value = {"a": [1, {"b": 2}]}
    assert jsonlite.dumps(value, indent="\t") == json.dumps(value, indent="\t")
    shared = [1]
    assert jsonlite.dumps([shared, {"x": shared}], indent=1) == json.dumps([shared, {"x": shared}], indent=1)
    for indent in (None, 2):
        with pytest.raises(TypeError, match=r"^Object of type set is not JSON serializable$"):
            jsonlite.dumps({"a": {1}}, indent=indent)
        loop: list[object] = []
        loop.append(loop)
        with pytest.raises(ValueError, match="Circular reference"):
            jsonlite.dumps(loop, indent=indent)
        cycle: dict[str, object] = {}
        cycle["x"] = [cycle]
        with pytest.raises(ValueError, match="Circular reference"):
            jsonlite.dumps(cycle, indent=indent)
    with pytest.raises(TypeError, match=r"^keys must be str, int, float, bool or None, not tuple$"):
        jsonlite.dumps({(1,): 2}, indent=2)
    with pytest.raises(TypeError, match=r"^keys must be str, int, float, bool or None, not tuple$"):
        json.dumps({(1,): 2}, indent=2)


def test_importing_it_does_not_import_the_json_package() -> None:
    code = (
        "import sys, agent.system.jsonlite as j; j.loads('[1]'); j.dumps({}); j.dumps({'a': [1]}, indent=2); "
        "print(*sys.modules, sep=chr(10))"
    )
    root = Path(__file__).resolve().parents[2]
    loaded = subprocess.run([sys.executable, "-S", "-c", code], cwd=root, capture_output=True, text=True, check=True)
    modules = loaded.stdout.split()
    assert "json" not in modules and "re" not in modules
