"""Capabilities of a container process: all five sets (python-prctl, and prctl(2) for ambient).

python-prctl is used through its C module ``_prctl``: the package's Python layer builds a wrapper
for every capability and securebit when imported, about two milliseconds of every cold container
start, for the three calls made here (capbset drop, capset, the constants).
"""

from __future__ import annotations

import os

import _prctl

from agent.system import libc

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

FLAGS = ("CAP_EFFECTIVE", "CAP_INHERITABLE", "CAP_PERMITTED", "CAP_LAST_CAP")  # _prctl names, not capabilities
ALL_CAPS = tuple(range(_prctl.CAP_LAST_CAP + 1))
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


def capability_names() -> list[str]:
    """Every capability this build knows by name (``CAP_CHOWN``...), in the kernel's order."""
    named = {getattr(_prctl, name): name for name in dir(_prctl) if name.startswith("CAP_") and name not in FLAGS}
    return [named[number] for number in sorted(n for n in named if isinstance(n, int))]


def cap_numbers(names: list[str] | None) -> list[int]:
    """Numbers of the named capabilities; names this kernel or library lacks are skipped, as runc does."""
    found = []
    for name in names or []:
        upper = str(name).upper()
        number = getattr(_prctl, upper, None) if upper.startswith("CAP_") and upper not in FLAGS else None
        if isinstance(number, int):
            found.append(number)
    return found


def become_user(user: dict[str, Any], capabilities: dict[str, Any] | None) -> None:
    """Groups, gid, uid, then the capability sets; capabilities survive the uid change (KEEPCAPS).

    The bounding set is cut first (PR_CAPBSET_DROP needs CAP_SETPCAP, which the uid change may take
    away). Effective, permitted and inheritable are then set by one capset(2) (python-prctl's
    set_caps): effective and inheritable hold what they list that permitted also lists, and
    everything else is cleared in all three.
    """
    uid, gid = int(user.get("uid") or 0), int(user.get("gid") or 0)
    caps = capabilities or {}
    bounding = set(cap_numbers(caps.get("bounding")))
    for number in ALL_CAPS:
        if number not in bounding:
            _prctl.prctl(_prctl.PR_CAPBSET_DROP, number)
    libc.prctl(PR_SET_KEEPCAPS, 1)
    groups = [int(g) for g in user.get("additionalGids") or []]
    try:
        os.setgroups(groups)
    except PermissionError:
        # a rootless user namespace has setgroups(2) denied (its gid map needed that): with no groups
        # asked for there is nothing to do, as in runc
        if groups:
            raise
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc.prctl(PR_SET_KEEPCAPS, 0)
    permitted = set(cap_numbers(caps.get("permitted")))
    effective = set(cap_numbers(caps.get("effective"))) & permitted
    inheritable = set(cap_numbers(caps.get("inheritable"))) & permitted
    # capset(2) through python-prctl: the capabilities to set in effective, permitted and
    # inheritable, then those to clear in each
    _prctl.set_caps(sorted(effective), sorted(permitted), sorted(inheritable),
                    [n for n in ALL_CAPS if n not in effective], [n for n in ALL_CAPS if n not in permitted],
                    [n for n in ALL_CAPS if n not in inheritable])  # fmt: skip
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
