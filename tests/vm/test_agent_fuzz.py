"""The agent as PID 1 of a booted guest, given requests no client should send: every AgentService
method gets well-formed messages with arbitrary values and random bytes, over ttrpc and gRPC, and
Kata's own requests (the fixtures) get bytes changed. Each must be answered in time with a status
that names the problem, never INTERNAL or UNKNOWN (an error the agent did not expect), and the agent
keeps serving: Check answers after every method. Seeded: a failure names its method, seed and
request, and replays.

Two methods are left out: DestroySandbox (it powers the guest off) and GetOOMEvent (it waits for an
event by design). The guest is this module's own: what the requests change in it (its clock, its
routes, its hostname) touches nothing else.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.rpc.pb import agent_pb2, health_pb2
from agent.rpc.status import Code
from agentctl import vm
from agentctl.client import AgentCallError, AgentClient, connect
from tests.conftest import FIXTURES
from tests.helpers.fuzz import hostile_messages, mutated, random_message
from tests.vm.conftest import agent_guest_config, booted

SERVICE = "grpc.AgentService"
LEFT_OUT = ("DestroySandbox", "GetOOMEvent")
REQUESTS_PER_METHOD = 12  # of each kind (well-formed, random bytes), per protocol
MUTATIONS_PER_FIXTURE = 25
# every call is answered sooner: onlining CPUs or memory that never come gives up after 2 s here
# (agent.cpu_online_timeout and mem_online_timeout below; the default is 60 s)
CALL_TIMEOUT = 20.0
UNEXPECTED = (Code.INTERNAL, Code.UNKNOWN)


def phase(message: str) -> None:
    print(f"[fuzz {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module")
def guest(guest_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.Guest]:
    config = agent_guest_config(
        guest_files,
        name="fuzz",
        share=tmp_path_factory.mktemp("share"),
        cmdline="agent.log=debug agent.cpu_online_timeout=2 agent.mem_online_timeout=2",
        run_dir=tmp_path_factory.mktemp("vm"),
        cpus=1,
        max_cpus=2,
        memory="512M",
        max_memory="1G",
    )
    with booted(config, phase) as guest:
        yield guest


def _raw_call(agent: AgentClient, method: str, payload: bytes) -> tuple[int, str]:
    """(status code, message) of ``method`` given ``payload`` as its request's bytes."""
    try:
        agent.call_raw(f"{SERVICE}/{method}", payload, CALL_TIMEOUT)
    except AgentCallError as exc:
        return exc.code, exc.message
    return Code.OK, ""


def _check(agent: AgentClient, after: str, failures: list[str] | None = None) -> None:
    """Check answers; if not, the failure names the calls that failed before it (the first one that
    got UNAVAILABLE is where the agent or the guest went away)."""
    try:
        agent.call("grpc.Health/Check", health_pb2.CheckRequest(), timeout=CALL_TIMEOUT)
    except AgentCallError as exc:
        before = "\n".join((failures or [])[:8]) or "(none)"
        pytest.fail(f"the agent stopped answering Check after {after}: {exc}\nfailed calls before it:\n{before}")


def _failures(agent: AgentClient, method: str, payloads: list[tuple[str, bytes]]) -> list[str]:
    failures = []
    for what, payload in payloads:
        started = time.monotonic()
        code, message = _raw_call(agent, method, payload)
        took = time.monotonic() - started
        if code in UNEXPECTED or code == Code.UNAVAILABLE or (code == Code.DEADLINE_EXCEEDED and took >= CALL_TIMEOUT):
            failures.append(
                f"{method} ({what}, {payload.hex()[:120]}): code {code} in {took:.2f} s at "
                f"{time.strftime('%H:%M:%S')}: {message[:300]}"
            )
    return failures


@pytest.mark.parametrize("protocol", ["ttrpc", "grpc"])
def test_arbitrary_requests_get_named_errors(guest: vm.Guest, protocol: str) -> None:
    agent = connect(guest.address, protocol, timeout=CALL_TIMEOUT)
    failures: list[str] = []
    started = time.monotonic()
    calls = 0
    try:
        for method in agent_pb2.DESCRIPTOR.services_by_name["AgentService"].methods:
            if method.name in LEFT_OUT:
                continue
            seed = f"{protocol}/{method.name}"
            rng = random.Random(seed)
            request_class = method.input_type._concrete_class
            payloads = []
            for index in range(REQUESTS_PER_METHOD):
                payloads.append(
                    (f"seed {seed} message {index}", random_message(rng, request_class()).SerializeToString())
                )
                payloads.append((f"seed {seed} bytes {index}", rng.randbytes(rng.choice((1, 5, 40, 200)))))
            failures += _failures(agent, method.name, payloads)
            calls += len(payloads)
            _check(agent, method.name, failures)
    finally:
        agent.close()
    phase(f"{protocol}: {calls} requests in {time.monotonic() - started:.1f} s")
    assert not failures, "\n".join(failures)


def test_each_field_gets_hostile_values(guest: vm.Guest) -> None:
    """Systematic where the test above samples: each top-level field of each request alone, set to
    a NUL byte, a name too long, a climbing or relative path, an empty string, edge integers."""
    agent = connect(guest.address, "ttrpc", timeout=CALL_TIMEOUT)
    failures: list[str] = []
    try:
        for method in agent_pb2.DESCRIPTOR.services_by_name["AgentService"].methods:
            if method.name in LEFT_OUT:
                continue
            payloads = [
                (what, message.SerializeToString())
                for what, message in hostile_messages(method.input_type._concrete_class)
            ]
            failures += _failures(agent, method.name, payloads)
            _check(agent, method.name, failures)
    finally:
        agent.close()
    assert not failures, "\n".join(failures)


def test_kata_requests_with_bytes_changed(guest: vm.Guest) -> None:
    agent = connect(guest.address, "ttrpc", timeout=CALL_TIMEOUT)
    failures: list[str] = []
    try:
        for fixture in sorted((FIXTURES / "kata-client-requests").glob("*AgentService*.bin")):
            method = fixture.stem.rsplit(".", 1)[1]
            if method in LEFT_OUT:
                continue
            rng = random.Random(fixture.name)
            original = fixture.read_bytes()
            payloads = [
                (f"seed {fixture.name} {index}", mutated(rng, original)) for index in range(MUTATIONS_PER_FIXTURE)
            ]
            failures += _failures(agent, method, payloads)
            _check(agent, fixture.name, failures)
    finally:
        agent.close()
    assert not failures, "\n".join(failures)
