"""Requests exactly as Kata's Go client encodes them decode with our protos, round-trip, and are served.

Each NNN-<service>.<method>.bin is a ttrpc Request payload captured from Kata's client; the .json beside
it is the same request decoded. Requests for the guest area's methods (Check, Version, GetGuestDetails)
are also sent through the ttrpc server; the others (CreateSandbox, CreateContainer, ...) would mount,
set the hostname or start processes on this host, so their own areas test them on a sandboxed tree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.rpc import methods, registry
from agent.rpc.convert import method_table, to_dict
from agent.rpc.ttrpc import TtrpcClientConnection
from tests.helpers.agent_server import RunningAgent, fake_guest_tree, serving_agent

FIXTURES = Path(__file__).parents[2].parent / "shared/fixtures/kata-client-requests"
CASES = sorted(FIXTURES.glob("*.bin"))
_INTEGER = re.compile(r"-?\d+")


def normalise(value: Any) -> Any:
    """JSON of protobuf spells int64 as strings; compare numbers as numbers on both sides."""
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return value


def full_name(case: Path) -> str:
    service, _, method = case.stem.split("-", 1)[1].rpartition(".")
    return f"{service}/{method}"


def test_fixtures_are_present() -> None:
    assert len(CASES) >= 11, f"expected Kata's request captures in {FIXTURES}"


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_decodes_to_the_same_fields_and_reencodes_to_the_same_bytes(case: Path) -> None:
    info = method_table()[full_name(case)]
    raw = case.read_bytes()
    message = info.request_class.FromString(raw)
    expected = json.loads(case.with_suffix(".json").read_text())
    assert normalise(to_dict(message)) == normalise(expected)
    assert message.SerializeToString() == raw


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    with serving_agent(fake_guest_tree(tmp_path_factory.mktemp("fixtures") / "root")) as running:
        yield running


def _served_here(case: Path) -> bool:
    methods.load_all()
    handler = registry.METHODS.get(full_name(case))
    return handler is not None and handler.__module__ == "agent.rpc.methods.guest"


SERVED = [case for case in CASES if _served_here(case)]


@pytest.mark.parametrize("case", SERVED, ids=[case.stem for case in SERVED])
def test_served_over_ttrpc(agent: RunningAgent, case: Path) -> None:
    info = method_table()[full_name(case)]
    with agent.connect() as sock:
        payload = TtrpcClientConnection(sock).call(info.service, info.name, case.read_bytes(), timeout=10)
    response = info.response_class.FromString(payload)
    assert response.IsInitialized()
    assert response.ByteSize() > 0  # Check, Version and GetGuestDetails all carry an answer
