"""CreateContainer's shared_mounts, as root on the host: a sidecar's tmpfs reaches another container of
the sandbox, through a real agent listener and real containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.rpc.pb import agent_pb2, oci_pb2
from agentctl.client import AgentCallError, AgentClient
from tests.helpers.agent_server import RunningAgent
from tests.privileged.test_container_rpcs import kata_create_request

NAME = "io.kubernetes.cri.container-name"


def _container(
    ttrpc_client: AgentClient, rootfs: Path, parent: str, cid: str, name: str, script: str, **request_fields: object
) -> agent_pb2.CreateContainerRequest:
    request = kata_create_request(rootfs, parent, cid)
    request.OCI.Annotations[NAME] = name
    request.OCI.Process.Args[:] = ["/bin/sh", "-c", script]
    for field, value in request_fields.items():
        if field == "mounts":
            request.OCI.Mounts.extend(value)  # type: ignore[arg-type]
        else:
            getattr(request, field).extend(value)  # type: ignore[attr-defined]
    ttrpc_client.call("CreateContainer", request)
    return request


def _shared(src_path: str, dst_path: str, src_ctr: str = "sidecar") -> agent_pb2.SharedMount:
    return agent_pb2.SharedMount(name="data", src_ctr=src_ctr, src_path=src_path, dst_ctr="app", dst_path=dst_path)


def _tmpfs(destination: str) -> oci_pb2.Mount:
    return oci_pb2.Mount(destination=destination, source="tmpfs", type="tmpfs", options=["nosuid", "nodev"])


def test_a_sidecars_mount_reaches_the_other_container(
    ttrpc_client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    script = "echo from-sidecar > /shared/first; read go; echo later > /shared/second; sleep 60"
    _container(ttrpc_client, busybox_rootfs, cgroup_parent, "sm-src", "sidecar", script, mounts=[_tmpfs("/shared")])
    ttrpc_client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="sm-src"))
    script = "cat /from-sidecar/first; read go; sleep 0.5; cat /from-sidecar/second; grep from-sidecar /proc/mounts"
    _container(
        ttrpc_client, busybox_rootfs, cgroup_parent, "sm-dst", "app", script,
        shared_mounts=[_shared("/shared", "/from-sidecar")],
    )  # fmt: skip
    ttrpc_client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="sm-dst"))
    # the source wrote its first file before the copy; the second after: one filesystem on both sides
    ttrpc_client.call("WriteStdin", agent_pb2.WriteStreamRequest(container_id="sm-src", data=b"go\n"))
    ttrpc_client.call("WriteStdin", agent_pb2.WriteStreamRequest(container_id="sm-dst", data=b"go\n"))
    out = ttrpc_client.read_to_end("sm-dst", "")
    lines = out.decode().splitlines()
    assert lines[:2] == ["from-sidecar", "later"], out
    assert lines[2].split()[1:3] == ["/from-sidecar", "tmpfs"], out
    for cid in ("sm-dst", "sm-src"):
        ttrpc_client.call("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid, timeout=10))


def test_a_source_the_sandbox_does_not_have_is_passed_over(
    ttrpc_client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    _container(
        ttrpc_client, busybox_rootfs, cgroup_parent, "sm-alone", "app", "ls /from-nowhere 2>&1; true",
        shared_mounts=[_shared("/shared", "/from-nowhere", src_ctr="not-here")],
    )  # fmt: skip
    ttrpc_client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="sm-alone"))
    assert b"No such file or directory" in ttrpc_client.read_to_end("sm-alone", "")


def test_bad_paths_are_refused_before_anything_is_made(
    ttrpc_client: AgentClient, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    with pytest.raises(AgentCallError) as info:
        _container(
            ttrpc_client, busybox_rootfs, cgroup_parent, "sm-bad", "app", "true",
            shared_mounts=[_shared("relative/path", "/x")],
        )  # fmt: skip
    assert info.value.code_name == "INVALID_ARGUMENT" and "src_path 'relative/path'" in info.value.message
    with pytest.raises(AgentCallError) as info:
        ttrpc_client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="sm-bad"))
    assert info.value.code_name == "NOT_FOUND"


def test_a_mount_that_cannot_be_attached_fails_the_create_and_leaves_nothing(
    ttrpc_client: AgentClient, served: RunningAgent, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    _container(
        ttrpc_client, busybox_rootfs, cgroup_parent, "sm-src2", "sidecar", "sleep 60", mounts=[_tmpfs("/shared")]
    )
    ttrpc_client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="sm-src2"))
    request = kata_create_request(busybox_rootfs, cgroup_parent, "sm-ro")
    request.OCI.Annotations[NAME] = "app"
    request.OCI.Root.Readonly = True  # the mount point cannot be made
    request.shared_mounts.append(_shared("/shared", "/new-dir"))
    with pytest.raises(AgentCallError) as info:
        ttrpc_client.call("CreateContainer", request)
    assert info.value.code_name == "RESOURCE_EXHAUSTED"
    assert "sidecar:/shared -> /new-dir" in info.value.message and "Read-only file system" in info.value.message
    assert [c.id for c in served.services.containers.engine.list()] == ["sm-src2"]
    ttrpc_client.call("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id="sm-src2", timeout=10))
