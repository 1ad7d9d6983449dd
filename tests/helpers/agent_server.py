"""An agent serving a unix socket inside the test process, on a fake guest tree.

``fake_guest_tree(root)`` writes the few /proc and /sys files the guest RPCs read; ``serving_agent()``
starts the real listener (sniffing, ttrpc, the HTTP/2 gRPC server) with the real servicer on it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.address import parse_address
from agent.config import AgentConfig
from agent.rpc.server import AgentServer
from agent.rpc.servicer import Servicer
from agent.services import Services
from agent.system.paths import HostPaths

BLOCK_SIZE_HEX = "8000000"  # 128 MiB, as the kernel prints it
MEMINFO = "MemTotal:        2048000 kB\nMemFree:         1024000 kB\nHugePages_Total:       0\n"
LOADAVG = "0.25 0.50 1.75 1/123 4567\n"
STATUS = "Name:\tpython3\nThreads:\t7\nVmRSS:\t   20480 kB\nSeccomp:\t0\n"
# pid (comm) state ppid ... utime=field 14 (250 ticks), stime=field 15 (50 ticks)
STAT = "42 (python3 (agent)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 100 0 0\n"


def fake_guest_tree(root: Path) -> HostPaths:
    paths = HostPaths(root)
    Path(paths.memory_dir).mkdir(parents=True)
    Path(paths.memory_block_size).write_text(BLOCK_SIZE_HEX + "\n")
    Path(paths.memory_probe).write_text("")
    self_dir = Path(paths.proc) / "self"
    (self_dir / "fd").mkdir(parents=True)
    for fd in range(5):
        (self_dir / "fd" / str(fd)).write_text("")
    (self_dir / "status").write_text(STATUS)
    (self_dir / "stat").write_text(STAT)
    Path(paths.meminfo).write_text(MEMINFO)
    Path(paths.loadavg).write_text(LOADAVG)
    Path(paths.dev).mkdir(parents=True)
    Path(paths.random_device).write_bytes(b"")
    Path(paths.shared_containers).mkdir(parents=True)
    return paths


@dataclass
class RunningAgent:
    address: str
    socket_path: str
    server: AgentServer
    services: Services
    paths: HostPaths

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.socket_path)
        return sock


@contextlib.contextmanager
def serving_agent(paths: HostPaths, **server_options: Any) -> Iterator[RunningAgent]:
    # unix socket paths are limited to 108 bytes, so the socket lives in a short temp dir of its own
    short_dir = Path(tempfile.mkdtemp(prefix="pk-", dir="/tmp"))
    path = str(short_dir / "agent.sock")
    address = f"unix://{path}"
    services = Services(AgentConfig(server_addr=address), paths)
    server = AgentServer(parse_address(address), Servicer(services), run_dir=short_dir, **server_options)
    server.start()
    try:
        yield RunningAgent(address, path, server, services, paths)
    finally:
        server.shutdown()
        shutil.rmtree(short_dir, ignore_errors=True)


def ttrpc_frame(
    stream_id: int, payload: bytes, frame_type: int = 1, flags: int = 0, length: int | None = None
) -> bytes:
    return struct.pack(">IIBB", len(payload) if length is None else length, stream_id, frame_type, flags) + payload
