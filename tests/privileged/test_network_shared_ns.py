"""The sandbox's shared IPC and UTS namespaces: pinned by bind mounts, joinable, and removed cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from agent.storage.mountinfo import read_mountinfo
from agent.system.paths import HostPaths
from agent.system.sharedns import create_shared_namespaces, release_shared_namespaces
from tests.conftest import REPO, require_root

PATHS = HostPaths()

JOIN_SCRIPT = """
import os, socket, sys
from agent.system import libc
for kind, flag in (("uts", libc.CLONE_NEWUTS), ("ipc", libc.CLONE_NEWIPC)):
    fd = os.open(os.path.join(sys.argv[1], kind), os.O_RDONLY)
    libc.setns(fd, flag)
    os.close(fd)
print(socket.gethostname(), os.stat("/proc/self/ns/ipc").st_ino, os.stat("/proc/self/ns/uts").st_ino)
"""


def test_shared_ipc_and_uts_namespaces(tmp_path: Path) -> None:
    require_root()
    host_name = socket.gethostname()
    directory = tmp_path / "ns"
    shared = create_shared_namespaces(PATHS, hostname="pykata-sb", directory=directory)
    try:
        # This process stays where it was.
        assert socket.gethostname() == host_name
        ipc_inode = os.stat(shared.path("ipc")).st_ino
        uts_inode = os.stat(shared.path("uts")).st_ino
        assert ipc_inode != os.stat(f"{PATHS.proc}/self/ns/ipc").st_ino
        assert uts_inode != os.stat(f"{PATHS.proc}/self/ns/uts").st_ino

        # Two "containers" joining see the sandbox hostname and the same namespaces.
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", JOIN_SCRIPT, str(directory)],
                cwd=REPO,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            assert out == ["pykata-sb", str(ipc_inode), str(uts_inode)]
    finally:
        release_shared_namespaces(shared)
    assert not directory.exists()
    assert not [m for m in read_mountinfo(PATHS.mountinfo) if m.mount_point.startswith(str(tmp_path))]
