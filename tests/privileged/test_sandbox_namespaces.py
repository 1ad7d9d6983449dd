"""A sandbox's containers share its IPC and UTS namespaces and see its resolv.conf (Kata's pod model).

No hostname is sent: this runs on the host, whose own hostname must stay as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.rpc.pb import agent_pb2, oci_pb2
from agentctl.client import AgentClient
from tests.helpers.agent_server import RunningAgent
from tests.privileged.test_container_rpcs import _call, agent, client, kata_create_request, read_all

__all__ = ["agent", "client"]  # fixtures used by name


def _mounts_under(directory: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {directory}/" in line]


def test_containers_share_the_sandbox_ipc_uts_and_resolv_conf(
    agent: RunningAgent, client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    sandbox_dir = agent.services.paths.sandbox_dir
    _call(client, "CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="sb-ns", dns=["nameserver 192.0.2.53"]))
    try:
        pids = []
        for cid in ("ns-a", "ns-b"):
            request = kata_create_request(busybox_rootfs, cgroup_parent, cid)
            request.OCI.Process.Args[:] = ["/bin/sleep", "300"]
            _call(client, "CreateContainer", request)
            _call(client, "StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
            pids.append(agent.services.containers.engine.get(cid).init.pid)  # type: ignore[union-attr]
        for kind in ("ipc", "uts"):
            a, b = (os.readlink(f"/proc/{pid}/ns/{kind}") for pid in pids)
            assert a == b, kind
            assert a != os.readlink(f"/proc/self/ns/{kind}"), kind
        assert os.readlink(f"/proc/{pids[0]}/ns/pid") != os.readlink(f"/proc/{pids[1]}/ns/pid")  # no sandbox_pidns
        process = oci_pb2.Process(Args=["/bin/cat", "/etc/resolv.conf"], Cwd="/")
        _call(client, "ExecProcess", agent_pb2.ExecProcessRequest(container_id="ns-a", exec_id="dns", process=process))
        assert "nameserver 192.0.2.53" in read_all(client, "ns-a", "dns").decode()
    finally:
        _call(client, "DestroySandbox", agent_pb2.DestroySandboxRequest())
    assert agent.services.containers.container_ids() == []
    assert _mounts_under(sandbox_dir) == []


def test_stopping_the_agent_without_destroy_sandbox_unpins_the_namespaces(
    agent: RunningAgent, client: AgentClient
) -> None:
    """SIGTERM stops the agent through close_services: a sandbox nobody destroyed must not leave its
    namespaces pinned by bind mounts (a new agent's CreateSandbox could not pin its own there)."""
    from agent.__main__ import close_services

    sandbox_dir = agent.services.paths.sandbox_dir
    _call(client, "CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="sb-stop"))
    assert _mounts_under(sandbox_dir) != []
    close_services(agent.services)
    assert _mounts_under(sandbox_dir) == []
    assert agent.services.sandbox.sandbox is None
