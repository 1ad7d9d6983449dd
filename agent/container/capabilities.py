"""Capabilities of a container process: all five sets (python-prctl, and prctl(2) for ambient)."""

from __future__ import annotations

import os
from typing import Any

import prctl

from agent.system import libc

PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


def cap_numbers(names: list[str] | None) -> list[int]:
    """Numbers of the named capabilities; names this kernel or library lacks are skipped, as runc does."""
    found = []
    for name in names or []:
        number = getattr(prctl, str(name).upper(), None)
        if isinstance(number, int):
            found.append(number)
    return found


def become_user(user: dict[str, Any], capabilities: dict[str, Any] | None) -> None:
    """Groups, gid, uid, then the capability sets; capabilities survive the uid change (KEEPCAPS)."""
    uid, gid = int(user.get("uid") or 0), int(user.get("gid") or 0)
    caps = capabilities or {}
    # the bounding set needs CAP_SETPCAP, which the uid change below may take away
    prctl.capbset.limit(*cap_numbers(caps.get("bounding")))
    libc.prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([int(g) for g in user.get("additionalGids") or []])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc.prctl(PR_SET_KEEPCAPS, 0)
    # raise what each set lists (a non-root uid starts with an empty effective set), then drop
    # the rest; permitted goes last because the other sets must stay within it
    for capset, kind in ((prctl.cap_inheritable, "inheritable"), (prctl.cap_effective, "effective")):
        names = [n for n in caps.get(kind) or [] if n in (caps.get("permitted") or [])]
        for name in names:
            short = str(name).lower().removeprefix("cap_")
            if short in prctl.ALL_CAP_NAMES:
                setattr(capset, short, True)
        capset.limit(*cap_numbers(caps.get(kind)))
    prctl.cap_permitted.limit(*cap_numbers(caps.get("permitted")))
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for number in cap_numbers(caps.get("ambient")):
        try:
            libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number)
        except PermissionError:
            # the kernel allows an ambient capability only when it is also permitted and
            # inheritable; runc's default spec lists ambient ones that are not inheritable,
            # and runc goes on without them too
            continue


def set_no_new_privs() -> None:
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
