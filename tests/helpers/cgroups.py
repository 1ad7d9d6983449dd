"""The cgroups a test made under a parent of its own (a cgroupsPath prefix such as "/pykata-test-123"),
in every hierarchy of the host: listed, and removed the deepest first."""

from __future__ import annotations

from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


def _tops(parent: str) -> list[Path]:
    """``parent`` in each hierarchy where it exists (a co-mounted controller's symlink is skipped)."""
    return [
        h / parent.strip("/")
        for h in sorted(CGROUP_FS.iterdir())
        if not h.is_symlink() and (h / parent.strip("/")).is_dir()
    ]


def cgroups_below(parent: str) -> list[Path]:
    """Every cgroup directory below ``parent``, in every hierarchy, the deepest first."""
    found = [path for top in _tops(parent) for path in top.rglob("*") if path.is_dir()]
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def remove_cgroups(parent: str) -> list[Path]:
    """Remove every cgroup below ``parent``, then ``parent``, in every hierarchy; returns the ones that
    were below it (a test left them behind). A cgroup that still holds a process stays."""
    tops = _tops(parent)
    left = cgroups_below(parent)
    for path in [*left, *tops]:
        try:
            path.rmdir()
        except OSError:
            pass
    return left
