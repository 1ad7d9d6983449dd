"""Namespace kinds: the spec's names, the clone flags and the /proc/<pid>/ns names."""

from __future__ import annotations

from agent.system import libc

CLONE_FLAGS: dict[str, int] = {
    "user": libc.CLONE_NEWUSER,
    "pid": libc.CLONE_NEWPID,
    "mount": libc.CLONE_NEWNS,
    "network": libc.CLONE_NEWNET,
    "ipc": libc.CLONE_NEWIPC,
    "uts": libc.CLONE_NEWUTS,
    "cgroup": libc.CLONE_NEWCGROUP,
    "time": libc.CLONE_NEWTIME,
}
PROC_NAMES: dict[str, str] = {
    "user": "user", "pid": "pid", "mount": "mnt", "network": "net",
    "ipc": "ipc", "uts": "uts", "cgroup": "cgroup", "time": "time",
}  # fmt: skip
# setns order for joining a running container: user first (it grants the rest), mount last
JOIN_ORDER = ("user", "cgroup", "ipc", "uts", "network", "pid", "time", "mount")


def format_id_map(mappings: list[tuple[int, int, int]]) -> str:
    """/proc/<pid>/uid_map text: one "inside outside count" line per mapping."""
    return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in mappings)
