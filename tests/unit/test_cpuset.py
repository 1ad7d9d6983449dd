"""CPU list parsing and formatting, and the order cpusets are widened in (the writing itself is the
container engine's: tests/unit/test_cgroups_manager.py)."""

from __future__ import annotations

import pytest

from agent.errors import InvalidArgument
from agent.hotplug.cpuset import ancestors_then_leaves, format_cpuset, parse_cpuset


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("0-3,7", {0, 1, 2, 3, 7}),
        (" 1 , 3-4 \n", {1, 3, 4}),
        ("5", {5}),
        ("", set()),
        ("\n", set()),
        ("2-2", {2}),
        ("0-1,1-2", {0, 1, 2}),
    ],
)
def test_parse(text: str, numbers: set[int]) -> None:
    assert parse_cpuset(text) == frozenset(numbers)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3-1", "invalid cpu list '3-1': range '3-1' runs backwards"),
        ("0,a", "invalid cpu list '0,a': 'a' is not a number or a range N-M"),
        ("1-", "invalid cpu list '1-': '1-' is not a number or a range N-M"),
        ("-1", "invalid cpu list '-1': '-1' is not a number or a range N-M"),
        ("0,,1", "invalid cpu list '0,,1': '' is not a number or a range N-M"),
        ("0x1", "invalid cpu list '0x1': '0x1' is not a number or a range N-M"),
        ("0-99999", "invalid cpu list '0-99999': 99999 is above the kernel's limit of 8191"),
    ],
)
def test_parse_errors_name_the_bad_text(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_cpuset(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("numbers", "text"),
    [({0, 1, 2, 3, 7}, "0-3,7"), (set(), ""), ({5}, "5"), ({1, 3}, "1,3"), ({0, 1, 4, 5, 6, 9}, "0-1,4-6,9")],
)
def test_format(numbers: set[int], text: str) -> None:
    assert format_cpuset(numbers) == text
    assert parse_cpuset(text) == frozenset(numbers)


def test_format_rejects_negative_numbers() -> None:
    with pytest.raises(InvalidArgument, match="invalid cpu number -1"):
        format_cpuset([-1, 2])


def test_ancestors_then_leaves_names_each_directory_once() -> None:
    """A root given as a leaf is left out; a leaf given twice, or that is another leaf's ancestor,
    comes once, in its place among the ancestors."""
    rooted = [("/r", "/r"), ("/r", "/r/a/b"), ("/r", "/r/a"), ("/r", "/r/a/b"), ("/s", "/s/x")]
    assert ancestors_then_leaves(rooted) == ["/r/a", "/r/a/b", "/s/x"]
    assert ancestors_then_leaves([]) == []
