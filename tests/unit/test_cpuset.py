"""CPU list parsing and formatting, and writing cpusets from the top of the hierarchy down."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.errors import InvalidArgument, ResourceError
from agent.hotplug.cpuset import (
    ancestors_then_leaves,
    format_cpuset,
    parse_cpuset,
    propagate_cpuset,
    propagation_plan,
)
from agent.system.paths import HostPaths


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


def _cgroup(directory: Path, cpus: str = "0") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpuset.cpus").write_text(cpus + "\n")
    (directory / "cpuset.mems").write_text("0\n")
    return directory


def test_plan_v1_writes_each_ancestor_once_from_the_top(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    base = Path(paths.cgroup_root) / "cpuset"
    leaves = [base / "kata" / "sandbox" / "c1", base / "kata" / "sandbox" / "c2", base / "other"]
    expected = [
        base / "kata",
        base / "kata" / "sandbox",
        base / "kata" / "sandbox" / "c1",
        base / "kata" / "sandbox" / "c2",
        base / "other",
    ]
    assert propagation_plan(paths, leaves) == [str(path) for path in expected]
    assert propagation_plan(paths, [str(leaf) for leaf in leaves]) == [str(path) for path in expected]


def test_ancestors_then_leaves_names_each_directory_once() -> None:
    """A root given as a leaf is left out; a leaf given twice, or that is another leaf's ancestor,
    comes once, in its place among the ancestors."""
    rooted = [("/r", "/r"), ("/r", "/r/a/b"), ("/r", "/r/a"), ("/r", "/r/a/b"), ("/s", "/s/x")]
    assert ancestors_then_leaves(rooted) == ["/r/a", "/r/a/b", "/s/x"]
    assert ancestors_then_leaves([]) == []


def test_plan_v2_and_a_leaf_outside_the_root(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    leaf = Path(paths.cgroup_root) / "kata" / "c1"
    assert propagation_plan(paths, [leaf]) == [f"{paths.cgroup_root}/kata", str(leaf)]
    with pytest.raises(InvalidArgument, match="is not under the cgroup root"):
        propagation_plan(paths, [tmp_path / "elsewhere"])


def test_propagate_v1_widens_parents_before_children(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    base = Path(paths.cgroup_root) / "cpuset"
    _cgroup(base, "0-3")  # the root: the kernel's, never written
    kata = _cgroup(base / "kata")
    c1 = _cgroup(kata / "c1")
    c2 = _cgroup(kata / "c2")
    order: list[tuple[str, str]] = []

    def writer(path: str, value: str) -> None:
        order.append((os.path.relpath(path, base), value))
        Path(path).write_text(value)

    written = propagate_cpuset(paths, "0-3", "0", [c1, c2], writer=writer)
    assert written == [str(kata), str(c1), str(c2)]
    assert order == [
        ("kata/cpuset.cpus", "0-3"),
        ("kata/cpuset.mems", "0"),
        ("kata/c1/cpuset.cpus", "0-3"),
        ("kata/c1/cpuset.mems", "0"),
        ("kata/c2/cpuset.cpus", "0-3"),
        ("kata/c2/cpuset.mems", "0"),
    ]
    assert (base / "cpuset.cpus").read_text() == "0-3\n"


def test_propagate_v2_skips_cgroups_without_a_cpuset_file(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    middle = Path(paths.cgroup_root) / "kata"
    middle.mkdir(parents=True)  # cpuset controller not enabled here
    leaf = _cgroup(middle / "c1")
    assert propagate_cpuset(paths, "0-1", None, [leaf]) == [str(leaf)]
    assert (leaf / "cpuset.cpus").read_text() == "0-1"
    assert (leaf / "cpuset.mems").read_text() == "0\n"  # mems None: untouched
    assert not (middle / "cpuset.cpus").exists()


def test_propagate_validates_before_writing(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    leaf = _cgroup(Path(paths.cgroup_root) / "cpuset" / "c1")
    with pytest.raises(InvalidArgument, match="'0-x'"):
        propagate_cpuset(paths, "0-x", None, [leaf])
    assert (leaf / "cpuset.cpus").read_text() == "0\n"


def test_propagate_failure_names_file_and_value(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    leaf = _cgroup(Path(paths.cgroup_root) / "cpuset" / "c1")

    def writer(path: str, value: str) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))

    with pytest.raises(ResourceError) as caught:
        propagate_cpuset(paths, "0-7", None, [leaf], writer=writer)
    assert str(caught.value) == f"cannot write cpuset '0-7' to {leaf / 'cpuset.cpus'}: EINVAL (Invalid argument)"
