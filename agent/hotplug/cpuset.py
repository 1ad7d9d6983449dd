"""CPU lists in the kernel's list format ("0-3,7") and writing them to cpuset cgroups.

``parse_cpuset`` and ``format_cpuset`` are the one parser and formatter of that format in the agent
(cgroup code and hotplug share them). ``propagate_cpuset`` writes a cpu list to every ancestor of some
leaf cgroups, from the hierarchy root down, then to the leaves: a cgroup v1 cpuset must be a subset of
its parent's, so widening has to start at the top. The container engine has its own writer with the
same signature; hotplug uses that one when it exists and this one otherwise.
"""

from __future__ import annotations

import errno
import os

from agent.errors import InvalidArgument, ResourceError
from agent.system import sysfs
from agent.system.paths import HostPaths, normal_path

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    # Writes one attribute: (path, value). Importers take it under TYPE_CHECKING too.
    AttributeWriter = Callable[[str, str], None]

# The kernel's limit is NR_CPUS (at most 8192 in distribution kernels); refusing larger numbers keeps a
# request like "0-4294967295" from building a huge set.
MAX_CPU = 8191


def parse_cpuset(text: str, *, what: str = "cpu list") -> frozenset[int]:
    """The CPU (or memory node) numbers of ``"0-3,7"``. Whitespace and an empty list are accepted."""
    numbers: set[int] = set()
    stripped = text.strip()
    if not stripped:
        return frozenset()
    for part in stripped.split(","):
        item = part.strip()
        first, dash, last = item.partition("-")
        try:
            low = _number(first)
            high = _number(last) if dash else low
        except ValueError:
            raise InvalidArgument(f"invalid {what} {text!r}: {item!r} is not a number or a range N-M") from None
        if high < low:
            raise InvalidArgument(f"invalid {what} {text!r}: range {item!r} runs backwards")
        if high > MAX_CPU:
            raise InvalidArgument(f"invalid {what} {text!r}: {high} is above the kernel's limit of {MAX_CPU}")
        numbers.update(range(low, high + 1))
    return frozenset(numbers)


def _number(text: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit():  # rejects "", "+1", "-1", "1.0", "0x1"
        raise ValueError(text)
    return int(stripped, 10)


def format_cpuset(numbers: Iterable[int]) -> str:
    """The shortest list form: ``{0, 1, 2, 3, 7}`` -> ``"0-3,7"``; the empty set gives ``""``."""
    ordered = sorted(set(numbers))
    if ordered and ordered[0] < 0:
        raise InvalidArgument(f"invalid cpu number {ordered[0]}: cpu numbers are >= 0")
    parts: list[str] = []
    index = 0
    while index < len(ordered):
        start = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == ordered[index] + 1:
            index += 1
        end = ordered[index]
        parts.append(str(start) if start == end else f"{start}-{end}")
        index += 1
    return ",".join(parts)


def is_below(path: str, root: str) -> bool:
    """Whether ``path`` is strictly below ``root`` (both in ``normal_path`` form)."""
    return path.startswith(root if root.endswith("/") else root + "/") and path != root


def ancestors_below(root: str, path: str) -> list[str]:
    """The directories strictly between ``root`` and ``path`` (which is below it), from the top down."""
    parts = path[len(root) :].strip("/").split("/")
    return [f"{root.rstrip('/')}/{'/'.join(parts[:count])}" for count in range(1, len(parts))]


def hierarchy_root(paths: HostPaths, leaf: str | os.PathLike[str]) -> str:
    """The root of the cgroup hierarchy that holds ``leaf``: the v1 cpuset mount when the leaf is under
    it, else the cgroup root (v2)."""
    where = normal_path(leaf)
    v1 = f"{paths.cgroup_root}/cpuset"
    if where == v1 or is_below(where, v1):
        return v1
    if where == paths.cgroup_root or is_below(where, paths.cgroup_root):
        return paths.cgroup_root
    raise InvalidArgument(f"cgroup {where} is not under the cgroup root {paths.cgroup_root}")


def ancestors_then_leaves(rooted_leaves: Iterable[tuple[str, str]]) -> list[str]:
    """For (hierarchy root, leaf) pairs in ``normal_path`` form: every leaf's ancestors strictly below
    its root from the top down, each once, then the leaves (a leaf that is a root, or another leaf's
    ancestor, is not repeated). The order a cpuset widening writes in."""
    ancestors: list[str] = []
    leaves: list[str] = []
    seen: set[str] = set()
    for root, leaf in rooted_leaves:
        if leaf == root:
            continue
        for directory in ancestors_below(root, leaf):
            if directory not in seen:
                seen.add(directory)
                ancestors.append(directory)
        if leaf not in leaves:
            leaves.append(leaf)
    return ancestors + [leaf for leaf in leaves if leaf not in seen]


def propagation_plan(paths: HostPaths, leaf_dirs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The directories to write, in order: each leaf's ancestors below its hierarchy root from the top
    down (each once), then the leaves. The roots themselves are left out: the kernel owns their
    cpusets (v1 keeps the root equal to the online CPUs; v2's root has no cpuset.cpus)."""
    leaves = [normal_path(leaf) for leaf in leaf_dirs]
    return ancestors_then_leaves([(hierarchy_root(paths, leaf), leaf) for leaf in leaves])


def propagate_cpuset(
    paths: HostPaths,
    cpus: str,
    mems: str | None,
    leaf_dirs: Iterable[str | os.PathLike[str]],
    *,
    writer: AttributeWriter | None = None,
) -> list[str]:
    """Write ``cpus`` (and ``mems`` when given) to every directory of ``propagation_plan`` that has a
    ``cpuset.cpus`` file (on v2 only cgroups with the cpuset controller enabled have one). Returns the
    directories written. A failed write raises ResourceError naming the file and the value."""
    parse_cpuset(cpus)  # validate before touching anything
    if mems is not None:
        parse_cpuset(mems, what="memory node list")
    write = writer or _sysfs_write
    written: list[str] = []
    for directory in propagation_plan(paths, leaf_dirs):
        cpus_file = f"{directory}/cpuset.cpus"
        if not os.path.exists(cpus_file):
            continue
        _write(write, cpus_file, cpus)
        if mems is not None and os.path.exists(f"{directory}/cpuset.mems"):
            _write(write, f"{directory}/cpuset.mems", mems)
        written.append(directory)
    return written


def _sysfs_write(path: str, value: str) -> None:
    sysfs.write(path, value)


def _write(write: AttributeWriter, path: str, value: str) -> None:
    try:
        write(path, value)
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise ResourceError(f"cannot write cpuset {value!r} to {path}: {reason} ({exc.strerror})") from exc
