"""MemAgentMemcgSet and MemAgentCompactSet over ttrpc and gRPC against an in-process agent on a fake
tree, the answer of an agent booted without the mem-agent, GetMetrics, and a clean stop."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.address import parse_address
from agent.config import AgentConfig
from agent.errors import IncorrectState
from agent.memagent import CompactConfig, MemcgConfig, MemcgUpdate
from agent.rpc.pb import agent_pb2
from agent.rpc.server import AgentServer
from agent.rpc.servicer import Servicer
from agent.rpc.status import Code
from agent.services import Services
from agent.services.memagent import MemAgentService
from agent.system.paths import HostPaths
from agentctl.client import AgentCallError, connect
from tests.conftest import REPO
from tests.helpers.agent_server import fake_guest_tree
from tests.helpers.memagent import fake_mm_tree

PROTOCOLS = ("ttrpc", "grpc")


@contextlib.contextmanager
def serving(paths: HostPaths, **settings: Any) -> Iterator[tuple[str, Services]]:
    short_dir = Path(tempfile.mkdtemp(prefix="pk-", dir="/tmp"))
    address = f"unix://{short_dir}/agent.sock"
    services = Services(AgentConfig(server_addr=address, **settings), paths)
    server = AgentServer(parse_address(address), Servicer(services), run_dir=short_dir)
    server.start()
    try:
        yield address, services
    finally:
        server.shutdown()
        for service in services.built().values():
            close = getattr(service, "close", None)
            if close is not None:
                close()
        shutil.rmtree(short_dir, ignore_errors=True)


def guest_tree(root: Path) -> HostPaths:
    paths = fake_mm_tree(root)
    # the few files GetMetrics reads besides the mem-agent's
    other = fake_guest_tree(root / "other")
    for relative in ("proc/self", "proc/loadavg"):
        source = Path(other.root) / relative
        target = Path(paths.root) / relative
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    return paths


@pytest.fixture
def agent_with_mem_agent(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    paths = guest_tree(tmp_path / "root")
    with serving(
        paths,
        mem_agent_enable=True,
        mem_agent_memcg_period_secs=3600,
        mem_agent_compact_disable=True,
        mem_agent_compact_period_secs=7200,
    ) as (address, services):
        services.memagent.start()  # as agent/__main__.py does at boot
        agent = services.memagent._agent
        assert agent is not None
        # memcg reclaim is on: its first period runs at once (nothing to do on this tree)
        assert agent.memcg.wait_for(lambda s: s.periods == 1 and not s.busy, timeout=30)
        assert agent.compact.wait_for(lambda s: s.available is not None, timeout=30)
        yield address, services


def configs(services: Services) -> tuple[MemcgConfig, CompactConfig]:
    status = services.memagent.status()
    assert status is not None
    return status.memcg.config, status.compact.config


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_without_mem_agent_enable_both_calls_fail_naming_the_option(tmp_path: Path, protocol: str) -> None:
    with serving(fake_mm_tree(tmp_path / "root")) as (address, services), connect(address, protocol, 10) as client:
        for method, request in (
            ("MemAgentMemcgSet", agent_pb2.MemAgentMemcgConfig(period_secs=5)),
            ("MemAgentCompactSet", agent_pb2.MemAgentCompactConfig(disabled=True)),
        ):
            with pytest.raises(AgentCallError) as raised:
                client.call(method, request)
            assert raised.value.code == Code.FAILED_PRECONDITION
            assert "agent.mem_agent_enable" in raised.value.message
        assert services.memagent.status() is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_only_the_fields_a_request_sets_change(agent_with_mem_agent: tuple[str, Services], protocol: str) -> None:
    address, services = agent_with_mem_agent
    memcg_before, compact_before = configs(services)
    with connect(address, protocol, 10) as client:
        client.call("MemAgentMemcgSet", agent_pb2.MemAgentMemcgConfig(period_secs=5, swap=True))
        # an explicit zero is a value, not "unset"
        client.call("MemAgentCompactSet", agent_pb2.MemAgentCompactConfig(compact_force_times=0, compact_order=3))
    memcg, compact = configs(services)
    assert memcg == MemcgConfig(**{**vars(memcg_before), "period_secs": 5, "swap": True})
    assert compact == CompactConfig(**{**vars(compact_before), "compact_force_times": 0, "compact_order": 3})
    assert memcg_before.period_secs == 3600 and compact_before.disabled is True


MEMCG = agent_pb2.MemAgentMemcgConfig
COMPACT = agent_pb2.MemAgentCompactConfig


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        ("MemAgentMemcgSet", MEMCG(period_psi_percent_limit=101, period_secs=5), "period_psi_percent_limit"),
        ("MemAgentMemcgSet", MEMCG(swappiness_max=201), "swappiness_max"),
        ("MemAgentMemcgSet", MEMCG(period_secs=0), "period_secs"),
        ("MemAgentCompactSet", COMPACT(compact_order=11, period_secs=5), "compact_order"),
        ("MemAgentCompactSet", COMPACT(compact_psi_percent_limit=101), "compact_psi_percent_limit"),
        ("MemAgentCompactSet", COMPACT(compact_sec_max=-1), "compact_sec_max"),
    ],
)
def test_a_bad_value_is_invalid_argument_and_changes_nothing(
    agent_with_mem_agent: tuple[str, Services], method: str, request_message: Any, field: str
) -> None:
    address, services = agent_with_mem_agent
    before = configs(services)
    with connect(address, "ttrpc", 10) as client, pytest.raises(AgentCallError) as raised:
        client.call(method, request_message)
    assert raised.value.code == Code.INVALID_ARGUMENT
    assert field in raised.value.message
    assert configs(services) == before


def test_get_metrics_shows_the_mem_agent(agent_with_mem_agent: tuple[str, Services]) -> None:
    address, _ = agent_with_mem_agent
    with connect(address, "ttrpc", 10) as client:
        text = client.call("GetMetrics", agent_pb2.GetMetricsRequest()).metrics  # type: ignore[attr-defined]
    assert 'kata_agent_mem_agent_available{part="memcg"} 1' in text
    assert 'kata_agent_mem_agent_enabled{part="compact"} 0' in text
    assert 'kata_agent_mem_agent_memcg_total{item="periods"} 1' in text  # the first period runs at once
    assert 'kata_agent_mem_agent_compact_total{item="compactions"} 0' in text


def test_closing_the_service_stops_its_threads(tmp_path: Path) -> None:
    paths = fake_mm_tree(tmp_path / "root")
    service = MemAgentService(AgentConfig(mem_agent_enable=True, mem_agent_compact_disable=True), paths)
    service.start()
    agent = service._agent
    assert agent is not None
    threads = [part._thread for part in (agent.memcg, agent.compact)]
    service.close()
    assert all(thread is not None and not thread.is_alive() for thread in threads)
    with pytest.raises(IncorrectState, match="stopping"):
        service.memcg_set(MemcgUpdate(period_secs=5))


def test_the_agent_imports_no_mem_agent_without_the_option() -> None:
    code = (
        "import sys\n"
        "import agent.__main__, agent.services, agent.services.guest\n"
        "from agent.rpc.methods import load_all\n"
        "load_all()\n"
        "print(sorted(name for name in sys.modules if 'memagent' in name))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['agent.rpc.methods.memagent']"
