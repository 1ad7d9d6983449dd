"""The container RPCs through a real agent listener on a unix socket, as root on the host.

The CreateContainer request is Kata's own (tests' fixture 005, encoded by Kata's Go client) with
only the rootfs path and the cgroups path changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.rpc.pb import agent_pb2
from agent.system.paths import HostPaths
from agentctl.client import AgentCallError, AgentClient, connect
from tests.conftest import FIXTURES
from tests.helpers.agent_server import RunningAgent, serving_agent

KATA_CREATE = FIXTURES / "kata-client-requests" / "005-grpc.AgentService.CreateContainer.bin"


@pytest.fixture
def agent() -> Iterator[RunningAgent]:
    with serving_agent(HostPaths()) as running:
        yield running
        containers = running.services.built().get("containers")
        if containers is not None:
            containers.close()


@pytest.fixture
def client(agent: RunningAgent) -> Iterator[AgentClient]:
    with connect(agent.address) as c:
        yield c


def kata_create_request(
    rootfs: Path, cgroup_parent: str, container_id: str | None = None
) -> agent_pb2.CreateContainerRequest:
    request = agent_pb2.CreateContainerRequest.FromString(KATA_CREATE.read_bytes())
    if container_id:
        request.container_id = container_id
        request.exec_id = container_id
    request.OCI.Root.Path = str(rootfs)
    request.OCI.Linux.CgroupsPath = f"{cgroup_parent}/{request.container_id}"
    return request


def read_all(client: AgentClient, container_id: str, exec_id: str = "", method: str = "ReadStdout") -> bytes:
    out = b""
    while True:
        try:
            reply = client.call(
                method, agent_pb2.ReadStreamRequest(container_id=container_id, exec_id=exec_id, len=4096)
            )
        except AgentCallError as exc:
            assert "EOF" in str(exc)
            return out
        assert isinstance(reply, agent_pb2.ReadStreamResponse)
        out += reply.data


def test_kata_fixture_lifecycle(client: AgentClient, busybox_rootfs: Path, cgroup_parent: str) -> None:
    request = kata_create_request(busybox_rootfs, cgroup_parent)
    cid = request.container_id
    client.call("CreateContainer", request)
    client.call("StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    assert read_all(client, cid) == b"hello\n"
    status = client.call("WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid))
    assert isinstance(status, agent_pb2.WaitProcessResponse) and status.status == 3
    client.call("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid))
    with pytest.raises(AgentCallError) as info:
        client.call("StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    assert info.value.code_name == "NOT_FOUND"
