"""The container process parks a reference to its mount namespace with its shim, so the namespace
is not torn down by the process's exit (before the shim can report it) but when the shim lets go."""

from __future__ import annotations

import os
import socket

from agent.container import init
from agent.system import libc


def test_the_mount_namespace_outlives_the_process_until_the_shim_lets_go() -> None:
    keeper, keeper_child = init.namespace_keeper()
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(keeper)
            libc.unshare(libc.CLONE_NEWNS)
            os.write(report_w, os.readlink("/proc/self/ns/mnt").encode())
            init._park_mount_namespace(keeper_child, "/proc")
            code = 0
        finally:
            os._exit(code)
    os.close(keeper_child)
    os.close(report_w)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
    namespace = os.read(report_r, 100).decode()
    os.close(report_r)
    assert namespace != os.readlink("/proc/self/ns/mnt")  # the child's own, new one
    # the process is gone; its namespace is still there, in flight on the keeper
    shim_end = socket.socket(fileno=keeper)
    shim_end.settimeout(5)
    try:
        _, fds, _, _ = socket.recv_fds(shim_end, 16, 1)
        assert len(fds) == 1
        assert os.readlink(f"/proc/self/fd/{fds[0]}") == namespace
        os.close(fds[0])
    finally:
        shim_end.close()
