"""Every RPC this area implements, over ttrpc and over gRPC, against an in-process agent on a fake tree."""

from __future__ import annotations

import errno
import importlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import __version__, errors
from agent.rpc import registry
from agent.rpc.methods.guest import API_VERSION
from agent.rpc.pb import agent_pb2, health_pb2
from agent.rpc.status import ERROR_CODES, Code, status_for
from agent.services.guest import DEFAULT_STORAGE_HANDLERS
from agent.system import libc
from agentctl.client import AgentCallError, AgentClient, connect
from tests.helpers.agent_server import RunningAgent, fake_guest_tree, serving_agent

SHARED = "/run/kata-containers/shared/containers"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    root = tmp_path_factory.mktemp("guest") / "root"
    with serving_agent(fake_guest_tree(root)) as running:
        yield running


@pytest.fixture(params=["ttrpc", "grpc"])
def client(request: pytest.FixtureRequest, agent: RunningAgent) -> Iterator[AgentClient]:
    with connect(agent.address, request.param, timeout=10) as opened:
        yield opened


def test_check(client: AgentClient) -> None:
    response = client.call("grpc.Health/Check", health_pb2.CheckRequest())
    assert response == health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_version(client: AgentClient) -> None:
    response = client.call("grpc.Health/Version", health_pb2.CheckRequest())
    assert response == health_pb2.VersionCheckResponse(grpc_version=API_VERSION, agent_version=__version__)


def test_guest_details_reads_the_tree(client: AgentClient) -> None:
    request = agent_pb2.GuestDetailsRequest(mem_block_size=True, mem_hotplug_probe=True)
    response = client.call("GetGuestDetails", request)
    assert isinstance(response, agent_pb2.GuestDetailsResponse)
    assert response.mem_block_size_bytes == 128 * 1024 * 1024
    assert response.support_mem_hotplug_probe is True
    details = response.agent_details
    assert details.version == __version__
    assert details.init_daemon is False
    published = getattr(importlib.import_module("agent.storage"), "STORAGE_HANDLERS", DEFAULT_STORAGE_HANDLERS)
    assert tuple(details.storage_handlers) == tuple(published)
    assert {"9p", "virtio-fs", "blk"} <= set(details.storage_handlers)
    assert details.supports_seccomp is True  # the fake status has a Seccomp: line


def test_guest_details_only_answers_what_was_asked(client: AgentClient, agent: RunningAgent) -> None:
    response = client.call("GetGuestDetails", agent_pb2.GuestDetailsRequest())
    assert response.mem_block_size_bytes == 0  # type: ignore[attr-defined]
    assert response.support_mem_hotplug_probe is False  # type: ignore[attr-defined]


def test_set_guest_date_time(client: AgentClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(libc, "settimeofday", lambda sec, usec: calls.append((sec, usec)))
    client.call("SetGuestDateTime", agent_pb2.SetGuestDateTimeRequest(Sec=1_800_000_000, Usec=250))
    assert calls == [(1_800_000_000, 250)]
    with pytest.raises(AgentCallError) as failure:
        client.call("SetGuestDateTime", agent_pb2.SetGuestDateTimeRequest(Sec=1, Usec=1_000_000))
    assert failure.value.code == Code.INVALID_ARGUMENT
    assert calls == [(1_800_000_000, 250)]


def test_a_time_the_kernel_refuses_is_an_invalid_argument(client: AgentClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """settimeofday's EINVAL (a time past what the kernel keeps) was RESOURCE_EXHAUSTED; it is the
    request's fault."""

    def refuse(sec: int, usec: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(libc, "settimeofday", refuse)
    with pytest.raises(AgentCallError) as failure:
        client.call("SetGuestDateTime", agent_pb2.SetGuestDateTimeRequest(Sec=2**62, Usec=0))
    assert failure.value.code == Code.INVALID_ARGUMENT
    assert "the kernel refuses the time sec=4611686018427387904" in failure.value.message


def test_reseed_random_dev_writes_the_data(client: AgentClient, agent: RunningAgent) -> None:
    device = Path(agent.paths.random_device)
    device.write_bytes(b"")
    client.call("ReseedRandomDev", agent_pb2.ReseedRandomDevRequest(data=b"\x01\x02entropy"))
    assert device.read_bytes() == b"\x01\x02entropy"
    client.call("ReseedRandomDev", agent_pb2.ReseedRandomDevRequest(data=b""))
    assert device.read_bytes() == b"\x01\x02entropy"


def test_copy_file_in_chunks(client: AgentClient, agent: RunningAgent) -> None:
    data = bytes(range(256)) * 40
    path = f"{SHARED}/sandbox-1/config-{id(client)}.json"
    destination = Path(agent.paths.inside(path))
    common = {"path": path, "file_size": len(data), "file_mode": stat.S_IFREG | 0o640, "dir_mode": 0o750}
    common.update(uid=-1, gid=-1)
    client.call("CopyFile", agent_pb2.CopyFileRequest(offset=0, data=data[:4000], **common))
    assert not destination.exists()  # never partially visible
    client.call("CopyFile", agent_pb2.CopyFileRequest(offset=4000, data=data[4000:], **common))
    assert destination.read_bytes() == data
    assert stat.S_IMODE(destination.stat().st_mode) == 0o640
    assert stat.S_IMODE(destination.parent.stat().st_mode) == 0o750


def test_copy_file_escape_is_invalid_argument(client: AgentClient) -> None:
    request = agent_pb2.CopyFileRequest(path=f"{SHARED}/../../../etc/passwd", file_size=1, data=b"x", offset=0)
    with pytest.raises(AgentCallError) as failure:
        client.call("CopyFile", request)
    assert failure.value.code == Code.INVALID_ARGUMENT
    assert "'..'" in failure.value.message


def test_get_metrics(client: AgentClient) -> None:
    response = client.call("GetMetrics", agent_pb2.GetMetricsRequest())
    text = response.metrics  # type: ignore[attr-defined]
    lines = text.splitlines()
    assert "# TYPE kata_agent_process_resident_memory_bytes gauge" in lines
    assert f"kata_agent_process_resident_memory_bytes {20480 * 1024}" in lines
    assert "kata_agent_threads 7" in lines
    assert "kata_agent_open_fds 5" in lines
    assert 'kata_guest_load{item="load15"} 1.75' in lines
    assert 'kata_guest_meminfo_bytes{item="MemTotal"} ' + str(2048000 * 1024) in lines
    assert 'kata_guest_meminfo_bytes{item="HugePages_Total"} 0' in lines
    helped = {line.split()[2] for line in lines if line.startswith("# HELP")}
    typed = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    sampled = {line.split("{")[0].split()[0] for line in lines if not line.startswith("#")}
    assert helped == typed == sampled


def test_method_in_the_proto_without_a_handler_is_unimplemented(
    client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(registry.METHODS, "grpc.AgentService/AddSwap", raising=False)
    with pytest.raises(AgentCallError) as failure:
        client.call("AddSwap", agent_pb2.AddSwapRequest())
    assert failure.value.code == Code.UNIMPLEMENTED
    assert failure.value.message == "grpc.AgentService/AddSwap is not implemented"


@pytest.mark.parametrize(
    ("error", "code"),
    [(cls("it broke"), code) for cls, code in ERROR_CODES.items()] + [(KeyError("surprise"), Code.INTERNAL)],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.name,
)
def test_errors_map_to_codes_and_the_agent_keeps_serving(
    client: AgentClient, monkeypatch: pytest.MonkeyPatch, error: Exception, code: Code
) -> None:
    def failing(services: object, request: object, ctx: registry.CallContext) -> object:
        raise error

    monkeypatch.setitem(registry.METHODS, "grpc.AgentService/AddSwap", failing)
    with pytest.raises(AgentCallError) as failure:
        client.call("AddSwap", agent_pb2.AddSwapRequest())
    assert failure.value.code == code
    assert ("it broke" if code != Code.INTERNAL else "surprise") in failure.value.message
    assert client.call("grpc.Health/Check").status == 1  # type: ignore[attr-defined]


def test_status_table_covers_every_domain_error() -> None:
    domain = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.AgentError)}
    assert domain - {errors.AgentError} == set(ERROR_CODES)
    assert status_for(errors.ResourceError("ENOSPC on /run")) == (Code.RESOURCE_EXHAUSTED, "ENOSPC on /run")


def test_undecodable_request_is_invalid_argument(agent: RunningAgent) -> None:
    from agent.rpc.ttrpc import TtrpcCallError, TtrpcClientConnection

    with agent.connect() as sock, pytest.raises(TtrpcCallError) as failure:
        TtrpcClientConnection(sock).call("grpc.AgentService", "CopyFile", b"\x0a\xff\xff\xff\x0f")
    assert failure.value.code == Code.INVALID_ARGUMENT
    assert "CopyFileRequest" in failure.value.message


def test_handlers_exist_for_every_method_of_this_area() -> None:
    from agent.rpc import methods

    methods.load_all()
    for name in (
        "grpc.Health/Check",
        "grpc.Health/Version",
        "grpc.AgentService/GetGuestDetails",
        "grpc.AgentService/SetGuestDateTime",
        "grpc.AgentService/ReseedRandomDev",
        "grpc.AgentService/CopyFile",
        "grpc.AgentService/GetMetrics",
    ):
        assert registry.METHODS[name].__module__ == "agent.rpc.methods.guest"


def test_background_load_serves_check_at_once_and_other_methods_after_loading(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.rpc.servicer import Servicer
    from agent.services import Services

    servicer = Servicer(Services(AgentConfig(), fake_guest_tree(tmp_path / "root")), background_load=True)
    ctx = registry.CallContext("ttrpc")
    code, _, payload = servicer.call("grpc.Health", "Check", b"", ctx)
    assert code == Code.OK and health_pb2.HealthCheckResponse.FromString(payload).status == 1
    request = agent_pb2.GuestDetailsRequest(mem_block_size=True).SerializeToString()
    code, _, payload = servicer.call("grpc.AgentService", "GetGuestDetails", request, ctx)
    assert code == Code.OK
    assert servicer.wait_loaded(30)
    code, message, _ = servicer.call("grpc.AgentService", "NoSuchMethod", b"", ctx)
    assert code == Code.UNIMPLEMENTED and "NoSuchMethod" in message


@pytest.mark.parametrize("protocol", ["ttrpc", "grpc"])
def test_deadline_and_metadata_reach_the_handler(
    agent: RunningAgent, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    import time

    seen: list[registry.CallContext] = []

    def record(services: object, request: object, ctx: registry.CallContext) -> object:
        seen.append(ctx)
        return agent_pb2.GuestDetailsResponse()

    monkeypatch.setitem(registry.METHODS, "grpc.AgentService/GetGuestDetails", record)
    before = time.monotonic()
    if protocol == "ttrpc":
        from agent.rpc.ttrpc import TtrpcClientConnection

        with agent.connect() as sock:
            connection = TtrpcClientConnection(sock)
            connection.call("grpc.AgentService", "GetGuestDetails", b"", timeout=30, metadata={"trace-id": "abc"})
            connection.close()
    else:
        import grpc

        with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
            channel.unary_unary("/grpc.AgentService/GetGuestDetails")(b"", timeout=30, metadata=(("trace-id", "abc"),))
    (ctx,) = seen
    assert ctx.protocol == protocol
    after = time.monotonic()
    # From the 30 s timeout. gRPC's client sends what is left of it as a grpc-timeout header, which it
    # rounds up to a coarser unit when the exact value needs too many digits ("30S" for 29.9998 s), so
    # over gRPC the deadline may be a little past the client's own: allow it a second.
    slack = 1.0 if protocol == "grpc" else 0.0
    assert ctx.deadline is not None and after < ctx.deadline <= after + 30 + slack
    assert ctx.deadline > before
    assert ctx.metadata["trace-id"] == "abc"
