"""``agent.hotplug_uevents``: on by default, the resource service subscribes to the agent's uevent
listener; off, it never asks for the listener and its loop runs on sysfs re-scans alone."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import build_config
from agent.hotplug.testing import FakeSysfs
from agent.hotplug.uevent import UeventListener
from agent.services import resources
from agent.services.resources import ResourceService
from agent.system.paths import HostPaths


class RootServices:
    """What ``from_services`` reads, on the real root (the only root that gets kernel uevents)."""

    def __init__(self, cmdline: str) -> None:
        self.paths = HostPaths(Path("/"))
        self.config = build_config(cmdline)

    def built(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def listener_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[UeventListener]]:
    """Replaces the shared netlink listener with one on a socketpair and records each request for it."""
    kernel_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener = UeventListener(agent_end).start()
    calls: list[UeventListener] = []

    def fake_shared_listener() -> UeventListener:
        calls.append(listener)
        return listener

    monkeypatch.setattr(resources, "shared_listener", fake_shared_listener)
    try:
        yield calls
    finally:
        listener.stop()
        kernel_end.close()


def test_default_subscribes_to_uevents(listener_calls: list[UeventListener]) -> None:
    service = ResourceService.from_services(RootServices("quiet"))  # type: ignore[arg-type]
    try:
        assert len(listener_calls) == 1
        assert service._subscription is not None
    finally:
        service.close()


def test_off_never_asks_for_the_listener(listener_calls: list[UeventListener]) -> None:
    service = ResourceService.from_services(RootServices("agent.hotplug_uevents=false"))  # type: ignore[arg-type]
    try:
        assert listener_calls == []
        assert service._subscription is None
    finally:
        service.close()


def test_off_still_onlines_by_rescanning(tmp_path: Path) -> None:
    """Without uevents a CPU that appears while the loop waits is found by the interval re-scan."""
    fake = FakeSysfs(tmp_path)
    fake.add_cpu(0, online=None)
    config = build_config("agent.hotplug_uevents=false agent.cpu_online_interval_ms=10")
    service = ResourceService(fake.paths, config, listener=None, writer=fake.write)
    adder = threading.Timer(0.05, fake.add_cpu, args=(1,))
    adder.start()
    try:
        service.online_cpu_mem(2, wait=True, cpu_only=True)
        assert (Path(fake.paths.cpu_dir) / "cpu1" / "online").read_text().strip() == "1"
    finally:
        adder.join()
        service.close()
