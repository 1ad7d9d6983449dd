"""CreateContainer's devices, as root on the host: a block device named by the host's numbers reaches
the container under the guest's (a loop device stands in for the hot-plugged disk)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.rpc.pb import agent_pb2, oci_pb2
from agentctl.client import AgentCallError, AgentClient
from tests.helpers.agent_server import RunningAgent
from tests.privileged.test_container_rpcs import kata_create_request
from tests.privileged.test_storage_mounts import detach_loop


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    image = tmp_path / "disk.img"
    image.write_bytes(b"pykata-disk" + bytes(1024 * 1024 - 11))
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True)
    node = device.stdout.strip()
    try:
        yield node
    finally:
        detach_loop(node, image)


def _request(rootfs: Path, parent: str, cid: str, script: str) -> agent_pb2.CreateContainerRequest:
    request = kata_create_request(rootfs, parent, cid)
    request.OCI.Process.Args[:] = ["/bin/sh", "-c", script]
    # the runtime's view: the disk is the host's 8:0, at /dev/xvda in the container, and the cgroup allows it
    request.OCI.Linux.Devices.append(oci_pb2.LinuxDevice(Path="/dev/xvda", Type="b", Major=8, Minor=0, FileMode=0o660))
    request.OCI.Linux.Resources.Devices.extend(
        [oci_pb2.LinuxDeviceCgroup(Allow=False, Access="rwm"),
         oci_pb2.LinuxDeviceCgroup(Allow=True, Type="b", Major=8, Minor=0, Access="rwm")]
    )  # fmt: skip
    return request


def test_a_block_device_reaches_the_container_under_the_guests_numbers(
    ttrpc_client: AgentClient, busybox_rootfs: Path, cgroup_parent: str, loop_device: str
) -> None:
    request = _request(busybox_rootfs, cgroup_parent, "dev-blk", "head -c 11 /dev/xvda; ls -l /dev/xvda")
    request.devices.append(agent_pb2.Device(id="loop", type="blk", vm_path=loop_device, container_path="/dev/xvda"))
    ttrpc_client.call("CreateContainer", request)
    ttrpc_client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="dev-blk"))
    out = ttrpc_client.read_to_end("dev-blk", "")
    assert out.startswith(b"pykata-disk"), out
    major, minor = divmod(Path(loop_device).stat().st_rdev, 256)  # loop devices: minors below 256 here
    assert f"{major},".encode() in out and f" {minor} ".encode() in out, out


def test_a_device_the_guest_never_gets_fails_the_create(
    ttrpc_client: AgentClient, served: RunningAgent, busybox_rootfs: Path, cgroup_parent: str
) -> None:
    request = _request(busybox_rootfs, cgroup_parent, "dev-missing", "true")
    request.devices.append(
        agent_pb2.Device(id="m", type="mmioblk", vm_path="/dev/pykata-none", container_path="/dev/xvda")
    )
    with pytest.raises(AgentCallError) as info:
        ttrpc_client.call("CreateContainer", request)
    assert (
        info.value.code_name == "NOT_FOUND" and "mmioblk device /dev/pykata-none did not appear" in info.value.message
    )
    with pytest.raises(AgentCallError) as info:
        ttrpc_client.call("StartContainer", agent_pb2.StartContainerRequest(container_id="dev-missing"))
    assert info.value.code_name == "NOT_FOUND"
