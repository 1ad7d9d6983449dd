"""The generated code in agent/rpc/pb is exactly what protos/generate.py makes from protos/*.proto,
and the protos keep Kata's wire names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agent.rpc.convert import method_table
from agent.rpc.pb import agent_pb2

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "agent" / "rpc" / "pb"


def _generate_into(out_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("pykata_protos_generate", REPO / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out_dir)


def test_regenerating_gives_identical_files(tmp_path: Path) -> None:
    _generate_into(tmp_path)
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"agent/rpc/pb is out of date for {stale}; run `make proto`"


def test_services_and_field_numbers_follow_kata() -> None:
    table = method_table()
    assert {"grpc.Health/Check", "grpc.Health/Version", "grpc.AgentService/CreateContainer"} <= set(table)
    kata_methods = [
        "CreateSandbox",
        "DestroySandbox",
        "CreateContainer",
        "StartContainer",
        "RemoveContainer",
        "ExecProcess",
        "SignalProcess",
        "WaitProcess",
        "ReadStdout",
        "ReadStderr",
        "WriteStdin",
        "CloseStdin",
        "TtyWinResize",
        "UpdateContainer",
        "StatsContainer",
        "PauseContainer",
        "ResumeContainer",
        "UpdateInterface",
        "UpdateRoutes",
        "ListInterfaces",
        "ListRoutes",
        "AddARPNeighbors",
        "OnlineCPUMem",
        "ReseedRandomDev",
        "GetGuestDetails",
        "MemHotplugByProbe",
        "SetGuestDateTime",
        "CopyFile",
        "GetOOMEvent",
        "GetMetrics",
        "AddSwap",
        "GetVolumeStats",
        "ResizeVolume",
        "GetIPTables",
        "SetIPTables",
        "SetPolicy",
        "MemAgentMemcgSet",
        "MemAgentCompactSet",
    ]
    assert {f"grpc.AgentService/{name}" for name in kata_methods} <= set(table)
    copy = agent_pb2.CopyFileRequest.DESCRIPTOR.fields_by_name
    numbers = {name: copy[name].number for name in ("path", "file_size", "file_mode", "dir_mode", "uid", "gid")}
    assert numbers == {"path": 1, "file_size": 2, "file_mode": 3, "dir_mode": 4, "uid": 5, "gid": 6}
    assert copy["offset"].number == 7 and copy["data"].number == 8


def _numbers(message: type) -> dict[str, int]:
    return {field.name: field.number for field in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_newer_kata_fields_have_kata_numbers() -> None:
    """The passfd stream ports, AgentDetails.extra_features and the memory agent's messages, as Kata's
    agent.proto numbers them (its optional fields keep presence: unset is not zero)."""
    create, exec_ = _numbers(agent_pb2.CreateContainerRequest), _numbers(agent_pb2.ExecProcessRequest)
    assert {name: create[name] for name in ("stdin_port", "stdout_port", "stderr_port")} == {
        "stdin_port": 9, "stdout_port": 10, "stderr_port": 11,
    }  # fmt: skip
    assert {name: exec_[name] for name in ("stdin_port", "stdout_port", "stderr_port")} == {
        "stdin_port": 5, "stdout_port": 6, "stderr_port": 7,
    }  # fmt: skip
    assert _numbers(agent_pb2.AgentDetails)["extra_features"] == 6
    assert _numbers(agent_pb2.MemAgentMemcgConfig) == {
        "disabled": 1, "swap": 2, "swappiness_max": 3, "period_secs": 4, "period_psi_percent_limit": 5,
        "eviction_psi_percent_limit": 6, "eviction_run_aging_count_min": 7,
    }  # fmt: skip
    assert _numbers(agent_pb2.MemAgentCompactConfig) == {
        "disabled": 1, "period_secs": 2, "period_psi_percent_limit": 3, "compact_psi_percent_limit": 4,
        "compact_sec_max": 5, "compact_order": 6, "compact_threshold": 7, "compact_force_times": 8,
    }  # fmt: skip
    config = agent_pb2.MemAgentMemcgConfig.FromString(bytes([0x20, 0]))  # period_secs = 0, on the wire
    assert config.HasField("period_secs") and not config.HasField("swap")
