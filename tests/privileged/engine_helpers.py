"""Helpers for the engine's root tests: make a spec, run a container to its end, read its output."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from agent.container.engine import Container, Engine

ALL_NAMESPACES = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]


def spec_for(
    base: dict[str, Any], rootfs: Path, args: list[str], cgroup_parent: str, name: str, **process: Any
) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"]["args"] = args
    spec["process"].update(process)
    spec["linux"]["cgroupsPath"] = f"{cgroup_parent}/{name}"
    return spec


def read_to_end(fd: int | None) -> bytes:
    assert fd is not None
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def run(engine: Engine, container_id: str, spec: dict[str, Any]) -> tuple[int, bytes, bytes]:
    """Create, start, collect stdout/stderr to EOF, wait, remove; (exit code, stdout, stderr)."""
    container = engine.create(container_id, spec)
    try:
        assert container.init is not None
        container.start()
        out = read_to_end(container.init.io.stdout)
        err = read_to_end(container.init.io.stderr)
        return container.wait(timeout=30), out, err
    finally:
        engine.remove(container_id, timeout=10)


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, name) of every process now."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            found.append((int(entry.name), int(stat[stat.rindex(")") + 2 :].split()[1]), name))
    return found


def ns_inode(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def started(engine: Engine, container_id: str, spec: dict[str, Any]) -> Container:
    container = engine.create(container_id, spec)
    container.start()
    return container
