"""Namespace kinds: the spec's names, the clone flags and the /proc/<pid>/ns names."""

from __future__ import annotations

import os

from agent.errors import InvalidArgument
from agent.system import libc

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

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


# The setuid helpers (Debian's uidmap package) that write an unprivileged user's id maps with the
# ranges /etc/subuid and /etc/subgid grant it, as runc's rootless containers use them.
MAPPING_TOOLS = {"uid": "newuidmap", "gid": "newgidmap"}


def mapping_tool(
    kind: str, mappings: list[tuple[Any, Any, Any]], own: int, search_path: str | None = None
) -> str | None:
    """How a user other than root gets the ``kind`` ("uid" or "gid") map of a new user namespace
    written: None when the kernel lets the user write it itself (one mapping of its own id, size 1),
    else the path of ``newuidmap``/``newgidmap`` on ``search_path`` (default $PATH), which maps
    ranges /etc/subuid (/etc/subgid) grants the user. ``mappings``: (containerID, hostID, size), as the spec gives them.
    Raises InvalidArgument, naming the field, when there is no mapping or no tool to write it."""
    field = f"linux.{kind}Mappings"
    if not mappings:
        raise InvalidArgument(f"{field}: a rootless container's user namespace needs at least one mapping")
    if len(mappings) == 1 and mappings[0][1] == own and mappings[0][2] == 1:
        return None
    tool = MAPPING_TOOLS[kind]
    for directory in (search_path if search_path is not None else os.environ.get("PATH", "")).split(":"):
        candidate = os.path.join(directory, tool)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InvalidArgument(
        f"{field} maps {kind}s other than the user's own ({own}): writing that map takes {tool} "
        f"(Debian's uidmap package), which is not on PATH, and ranges for the user in /etc/sub{kind}"
    )
