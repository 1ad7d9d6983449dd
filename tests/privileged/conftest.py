"""Shared fixtures for root tests: a busybox rootfs, runc's default spec, a cgroup parent of our own,
and an agent serving a unix socket on the host with a ttrpc client of it (``served``, ``ttrpc_client``).

``busybox_rootfs`` is built once per session from Debian's busybox-static (/bin/busybox plus one
symlink per applet, /proc, /sys, /dev, /tmp); containers must not write into it (tests that need a
writable root copy it or mount a tmpfs). ``cgroup_parent`` is ``/pykata-test-<run>``: tests put
container cgroups below it only, and it is removed (and checked empty) at the end of the session.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.system.paths import HostPaths
from agentctl.client import AgentClient, connect
from tests.conftest import require_root
from tests.helpers.agent_server import RunningAgent, serving_agent
from tests.helpers.bundle import make_rootfs, runc_default_spec
from tests.helpers.cgroups import remove_cgroups

RUN_TAG = f"pykata-test-{os.getpid()}"


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root()
    return make_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def runc_spec() -> dict[str, Any]:
    """runc's own default config.json (terminal off), parsed; copy it before editing."""
    require_root()
    spec = runc_default_spec()
    spec["process"]["terminal"] = False
    return spec


@pytest.fixture(scope="session")
def cgroup_parent() -> Iterator[str]:
    """The cgroupsPath prefix every container of this session goes under."""
    parent = f"/{RUN_TAG}"
    yield parent
    left = remove_cgroups(parent)
    assert not left, f"container cgroups left behind: {left}"


@pytest.fixture
def served() -> Iterator[RunningAgent]:
    """The agent's listener and servicer on the host's own tree; its containers removed at the end."""
    with serving_agent(HostPaths()) as running:
        yield running
        containers = running.services.built().get("containers")
        if containers is not None:
            containers.close()


@pytest.fixture
def ttrpc_client(served: RunningAgent) -> Iterator[AgentClient]:
    with connect(served.address, "ttrpc") as client:
        yield client


def make_spec(base: dict[str, Any], rootfs: Path, args: list[str], cgroups_path: str, **process: Any) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"]["args"] = args
    spec["process"].update(process)
    spec["linux"]["cgroupsPath"] = cgroups_path
    return spec
