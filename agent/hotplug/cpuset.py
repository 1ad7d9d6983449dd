"""CPU lists in the kernel's list format ("0-3,7"), and the order cpusets are widened in.

``parse_cpuset`` and ``format_cpuset`` are the one parser and formatter of that format in the agent
(cgroup code and hotplug share them). ``ancestors_then_leaves`` is the order a cpu list is written
in after CPU hotplug: a cgroup v1 cpuset must be a subset of its parent's, so widening starts at the
top. The writing itself is the container engine's (agent.container.cgroups.propagate_cpuset), which
finds the cpuset hierarchy from the host's cgroup mounts.
"""

from __future__ import annotations

from agent.errors import InvalidArgument

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
