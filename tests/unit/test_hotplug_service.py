"""The online loop with real threads and time: one loop at a time, merging, deadlines, uevent wake-ups;
and OnlineCPUMem / MemHotplugByProbe through the RPC dispatch."""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import build_config
from agent.errors import DeadlineExceeded, ResourceError
from agent.hotplug.budget import RealClock
from agent.hotplug.testing import FakeSysfs
from agent.hotplug.uevent import UeventListener
from agent.rpc.pb import agent_pb2
from agent.rpc.registry import CallContext
from agent.rpc.servicer import Servicer
from agent.rpc.status import Code
from agent.services import Services
from agent.services.resources import ResourceService


class GatedWriter:
    """The fake kernel's writer, held at a gate, counting how many writes run at once."""

    def __init__(self, fake: FakeSysfs) -> None:
        self.fake = fake
        self.gate = threading.Event()
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self.active = 0
        self.most_active = 0

    def __call__(self, path: str, value: str) -> None:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.entered.set()
        try:
            assert self.gate.wait(30), "test gate never opened"
            self.fake.write(path, value)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    # Services built from a Services object write with sysfs.write, which keeps no cpu/online list.
    fake = FakeSysfs(tmp_path, cpu_mask=False)
    fake.add_cpu(0, online=None)
    fake.add_cpu(1, online=True)
    return fake


@pytest.fixture
def services_to_close() -> Iterator[list[ResourceService]]:
    made: list[ResourceService] = []
    yield made
    for service in made:
        service.coordinator.wait_idle(30)
        service.close()


def make_service(fake: FakeSysfs, made: list[ResourceService], writer: Any, **options: Any) -> ResourceService:
    service = ResourceService(fake.paths, build_config(overrides=options), writer=writer)
    made.append(service)
    return service


def test_a_second_request_joins_the_running_loop(fake: FakeSysfs, services_to_close: list[ResourceService]) -> None:
    writer = GatedWriter(fake)
    service = make_service(fake, services_to_close, writer, cpu_online_interval_ms=10)
    for number in (2, 3, 4):
        fake.add_cpu(number)
    service.online_cpu_mem(3, wait=False, cpu_only=True)
    assert writer.entered.wait(30)
    service.online_cpu_mem(4, wait=False, cpu_only=True)  # merged: raises the running loop's target
    assert service.coordinator.runs == 1
    writer.gate.set()
    assert service.coordinator.wait_idle(30)
    assert [(Path(fake.paths.cpu_dir) / f"cpu{n}" / "online").read_text().strip() for n in (2, 3, 4)] == ["1", "1", "0"]
    assert writer.most_active == 1
    service.online_cpu_mem(4, wait=True, cpu_only=True)  # nothing kept: the merged loop succeeded


def test_concurrent_waiting_callers_share_one_loop(fake: FakeSysfs, services_to_close: list[ResourceService]) -> None:
    writer = GatedWriter(fake)
    service = make_service(fake, services_to_close, writer, cpu_online_interval_ms=10)
    fake.add_cpu(2)
    fake.add_cpu(3)
    outcomes: list[str] = []

    def call(nb: int) -> None:
        try:
            service.online_cpu_mem(nb, wait=True, cpu_only=True)
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(repr(exc))

    first = threading.Thread(target=call, args=(3,))
    first.start()
    assert writer.entered.wait(30)
    second = threading.Thread(target=call, args=(4,))
    second.start()
    deadline = time.monotonic() + 30
    while service.coordinator.waiting_callers < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert service.coordinator.waiting_callers == 2
    writer.gate.set()
    first.join(30)
    second.join(30)
    assert outcomes == ["ok", "ok"]
    assert service.coordinator.runs == 1
    assert writer.most_active == 1


def test_deadline_then_the_outcome_goes_to_the_next_call(
    fake: FakeSysfs, services_to_close: list[ResourceService]
) -> None:
    writer = GatedWriter(fake)
    service = make_service(fake, services_to_close, writer, cpu_online_timeout=0.2, cpu_online_interval_ms=20)
    fake.add_cpu(2)
    with pytest.raises(DeadlineExceeded) as caught:
        service.online_cpu_mem(4, wait=True, cpu_only=True, deadline=time.monotonic() + 0.05)
    assert str(caught.value).startswith(
        "OnlineCPUMem(nb_cpus=4, cpu_only=True) did not finish within the call's deadline"
    )
    assert str(caught.value).endswith(
        "onlining goes on in the background and its outcome is reported to the next OnlineCPUMem"
    )
    writer.gate.set()
    assert service.coordinator.wait_idle(30)
    with pytest.raises(ResourceError) as kept:
        service.online_cpu_mem(2, wait=True, cpu_only=True)
    assert re.match(
        r"an earlier OnlineCPUMem\(nb_cpus=4, cpu_only=True\) that returned before it finished failed: "
        r"wanted 4 CPUs online but only 3 are online after waiting \d+\.\d s \(\d+ re-scans; "
        r"1 not present in sysfs yet\); raise the budget with agent\.cpu_online_timeout=SECONDS \(now 0\.2,",
        str(kept.value),
    ), str(kept.value)
    service.online_cpu_mem(2, wait=True, cpu_only=True)


def test_a_caller_that_joins_after_another_gave_up_hears_the_outcome_once(
    fake: FakeSysfs, services_to_close: list[ResourceService]
) -> None:
    writer = GatedWriter(fake)
    service = make_service(fake, services_to_close, writer, cpu_online_timeout=0.2, cpu_online_interval_ms=20)
    fake.add_cpu(2)
    with pytest.raises(DeadlineExceeded):
        service.online_cpu_mem(4, wait=True, cpu_only=True, deadline=time.monotonic() + 0.05)
    outcome: list[BaseException] = []

    def join() -> None:
        try:
            service.online_cpu_mem(4, wait=True, cpu_only=True)
        except BaseException as exc:
            outcome.append(exc)

    joiner = threading.Thread(target=join)
    joiner.start()
    deadline = time.monotonic() + 30
    while service.coordinator.waiting_callers < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert service.coordinator.runs == 1
    writer.gate.set()
    joiner.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ResourceError)
    assert str(outcome[0]).startswith("wanted 4 CPUs online but only 3 are online")
    service.online_cpu_mem(3, wait=True, cpu_only=True)  # heard once: nothing kept for this call


class CountingClock(RealClock):
    def __init__(self) -> None:
        self.woken = 0
        self.waiting = threading.Event()

    def wait(self, wake: threading.Event, timeout: float) -> bool:
        self.waiting.set()
        woken = super().wait(wake, timeout)
        self.woken += woken
        return woken


def test_a_uevent_wakes_a_loop_that_would_otherwise_sleep_a_minute(
    fake: FakeSysfs, services_to_close: list[ResourceService]
) -> None:
    listener = UeventListener(None)
    clock = CountingClock()
    # A re-scan only every 60 s: without the uevent this call would end with the 30 s timeout error.
    options = build_config(overrides={"cpu_online_timeout": 30, "cpu_online_interval_ms": 60000})
    service = ResourceService(fake.paths, options, listener=listener, clock=clock, writer=fake.write)
    services_to_close.append(service)

    def hot_add() -> None:
        assert clock.waiting.wait(30)  # the loop scanned, found nothing and sleeps
        fake.add_cpu(2)
        listener.inject(fake.cpu_added(2))
        listener.inject(fake.memory_added(7))  # any hotplug add wakes the loop; it is harmless here

    adder = threading.Thread(target=hot_add)
    adder.start()
    service.online_cpu_mem(3, wait=True, cpu_only=True)
    adder.join(30)
    assert (Path(fake.paths.cpu_dir) / "cpu2" / "online").read_text().strip() == "1"
    assert clock.woken >= 1
    service.close()
    assert listener.subscribe(lambda event: True) is not None  # the listener itself lives on


# --- through the RPC dispatch


@pytest.fixture
def servicer(fake: FakeSysfs) -> Iterator[Servicer]:
    config = build_config(overrides={"cpu_online_timeout": 0.2, "cpu_online_interval_ms": 20})
    services = Services(config, fake.paths)
    yield Servicer(services)
    if "resources" in services.built():
        services.resources.coordinator.wait_idle(30)


def call(servicer: Servicer, method: str, message: Any) -> tuple[Code, str]:
    code, text, _ = servicer.call("grpc.AgentService", method, message.SerializeToString(), CallContext("ttrpc"))
    return code, text


def test_rpc_online_cpu_mem(servicer: Servicer, fake: FakeSysfs) -> None:
    fake.add_cpu(2)
    fake.add_cpu(3)
    request = agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=4, cpu_only=True)
    assert call(servicer, "OnlineCPUMem", request) == (Code.OK, "")
    assert [(Path(fake.paths.cpu_dir) / f"cpu{n}" / "online").read_text().strip() for n in (2, 3)] == ["1", "1"]


def test_rpc_budget_error_and_wait_false(servicer: Servicer, fake: FakeSysfs) -> None:
    code, text = call(servicer, "OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=3, cpu_only=True))
    assert code == Code.RESOURCE_EXHAUSTED
    assert re.match(r"wanted 3 CPUs online but only 2 are online after waiting \d+\.\d s \(", text), text
    assert "agent.cpu_online_timeout=SECONDS (now 0.2" in text
    background = agent_pb2.OnlineCPUMemRequest(wait=False, nb_cpus=3, cpu_only=True)
    assert call(servicer, "OnlineCPUMem", background) == (Code.OK, "")
    servicer.services.resources.coordinator.wait_idle(30)
    code, text = call(servicer, "OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=1, cpu_only=True))
    assert code == Code.RESOURCE_EXHAUSTED
    assert text.startswith("an earlier OnlineCPUMem(nb_cpus=3, cpu_only=True) that returned before it finished")
    assert call(servicer, "OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=1)) == (Code.OK, "")


def test_rpc_invalid_request_and_missing_probe(servicer: Servicer, fake: FakeSysfs) -> None:
    fake.set_possible("0-1")
    code, text = call(servicer, "OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=8))
    assert (code, text) == (
        Code.INVALID_ARGUMENT,
        "OnlineCPUMem asked for 8 online CPUs but this guest can have at most 2 (cpu/possible is '0-1')",
    )
    code, text = call(servicer, "MemHotplugByProbe", agent_pb2.MemHotplugByProbeRequest(memHotplugProbeAddr=[1 << 32]))
    assert code == Code.UNIMPLEMENTED
    assert "no memory probe interface" in text


def test_rpc_probe_write_failure(servicer: Servicer, fake: FakeSysfs) -> None:
    fake.set_block_size(0x8000000)
    fake.enable_probe()
    os.unlink(fake.paths.memory_probe)
    os.mkdir(fake.paths.memory_probe)  # writing to a directory fails like a refused probe
    code, text = call(servicer, "MemHotplugByProbe", agent_pb2.MemHotplugByProbeRequest(memHotplugProbeAddr=[1 << 32]))
    assert code == Code.RESOURCE_EXHAUSTED
    assert text.startswith(f"writing 0x100000000 to {fake.paths.memory_probe} failed: {errno.errorcode[errno.EISDIR]}")


# --- wiring: the container service's targets and the engine's cpuset writer


class StubContainers:
    def __init__(self, leaves: list[Path]) -> None:
        self.leaves = leaves

    def cpuset_targets(self) -> list[Path]:
        return self.leaves


class StubServices:
    def __init__(self, fake: FakeSysfs, built: dict[str, Any]) -> None:
        self.paths = fake.paths
        self.config = build_config()
        self._built = built

    def built(self) -> dict[str, Any]:
        return dict(self._built)


def test_from_services_finds_container_targets_only_when_containers_exist(
    fake: FakeSysfs, services_to_close: list[ResourceService], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    calls: list[tuple[str, str | None, list[str]]] = []
    engine = types.ModuleType("agent.container.cgroups")

    def propagate_cpuset(paths: Any, cpus: str, mems: str | None, leaf_dirs: list[str]) -> None:
        calls.append((cpus, mems, leaf_dirs))

    engine.propagate_cpuset = propagate_cpuset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent.container.cgroups", engine)
    leaf = Path(fake.paths.cgroup_root) / "cpuset" / "kata" / "c1"

    without = ResourceService.from_services(StubServices(fake, {}))  # type: ignore[arg-type]
    services_to_close.append(without)
    fake.add_cpu(2)
    without.online_cpu_mem(3, wait=True, cpu_only=True)
    assert calls == []  # no container service built: no containers to update

    with_containers = ResourceService.from_services(
        StubServices(fake, {"containers": StubContainers([leaf])})  # type: ignore[arg-type]
    )
    services_to_close.append(with_containers)
    fake.add_cpu(3)
    with_containers.online_cpu_mem(4, wait=True, cpu_only=True)
    assert calls == [("0-3", None, [str(leaf)])]
