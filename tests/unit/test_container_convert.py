"""Kata's grpc.Spec to the OCI dict the engine takes, and the output buffers of container stdio."""

from __future__ import annotations

import os
import threading

import pytest

from agent.container.spec import parse_spec
from agent.rpc.convert_oci import dict_to_spec, resources_to_dict, spec_to_dict
from agent.rpc.pb import agent_pb2, oci_pb2
from agent.services.streams import StreamBuffer
from tests.conftest import FIXTURES

KATA_CREATE = FIXTURES / "kata-client-requests" / "005-grpc.AgentService.CreateContainer.bin"


def test_kata_create_request_converts_to_an_oci_dict() -> None:
    request = agent_pb2.CreateContainerRequest.FromString(KATA_CREATE.read_bytes())
    spec = spec_to_dict(request.OCI)
    assert spec["ociVersion"] == "1.2.1"
    assert spec["process"]["args"] == ["/bin/sh", "-c", "echo hello; exit 3"]
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["user"]["uid"] == 0
    assert spec["root"] == {"path": "/tmp/peer/bundle/rootfs", "readonly": False}
    assert {"destination": "/proc", "source": "proc", "type": "proc", "options": ["nosuid", "noexec", "nodev"]} in spec[
        "mounts"
    ]
    assert [ns["type"] for ns in spec["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount"]
    assert spec["linux"]["maskedPaths"] == ["/proc/kcore", "/sys/firmware"]
    assert "resources" not in spec["linux"]  # unset message stays unset
    parsed = parse_spec(spec)
    assert parsed.hostname == "kataprobe" and parsed.process is not None


def test_acronym_fields_and_zero_resources() -> None:
    spec = oci_pb2.Spec()
    spec.Linux.UIDMappings.add(ContainerID=0, HostID=1000, Size=10)
    spec.Linux.Resources.Memory.Limit = 1 << 20
    spec.Linux.Resources.CPU.Cpus = "0-1"
    spec.Linux.Resources.Devices.add(Allow=False, Access="rwm", Major=-1, Minor=-1)
    spec.Process.OOMScoreAdj = -500
    converted = spec_to_dict(spec)
    assert converted["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 10}]
    # 0 means unset inside resources; -1 device numbers mean "any"
    assert converted["linux"]["resources"]["memory"] == {"limit": 1 << 20}
    assert converted["linux"]["resources"]["cpu"] == {"cpus": "0-1"}
    assert converted["linux"]["resources"]["devices"] == [{"allow": False, "type": "", "access": "rwm"}]
    assert converted["process"]["oomScoreAdj"] == -500
    assert resources_to_dict(spec.Linux.Resources) == converted["linux"]["resources"]


def test_dict_to_spec_round_trips() -> None:
    data = {
        "ociVersion": "1.0.2",
        "process": {"args": ["a"], "cwd": "/", "user": {"uid": 5, "gid": 6, "additionalGids": [7]}},
        "linux": {"gidMappings": [{"containerID": 0, "hostID": 9, "size": 1}], "sysctl": {"net.x": "1"}},
        "annotations": {"k": "v"},
    }
    spec = dict_to_spec(data)
    assert spec.Process.User.GID == 6 and spec.Linux.GIDMappings[0].HostID == 9
    back = spec_to_dict(spec)
    assert back["process"]["user"]["additionalGids"] == [7]
    assert back["linux"]["sysctl"] == {"net.x": "1"}
    assert back["annotations"] == {"k": "v"}


def _writer(fd: int, total: int, done: threading.Event) -> None:
    chunk = bytes(range(256)) * 256
    written = 0
    while written < total:
        written += os.write(fd, chunk[: total - written])
    os.close(fd)
    done.set()


def test_stream_buffer_is_bounded_and_loses_nothing() -> None:
    r, w = os.pipe()
    limit = 100_000
    total = 1_000_000
    buffer = StreamBuffer(r, limit, "test")
    done = threading.Event()
    writer = threading.Thread(target=_writer, args=(w, total, done))
    writer.start()
    try:
        # nobody reads: the buffer fills to its limit and the writer stays blocked on the full pipe
        assert not done.wait(0.5)
        assert buffer.buffered <= limit
        received = bytearray()
        while (data := buffer.read(70_000, timeout=10)) is not None:
            assert len(data) <= 70_000
            received += data
        assert len(received) == total
        assert bytes(received) == (bytes(range(256)) * 256 * 16)[:total]
        assert buffer.ended
    finally:
        writer.join(10)
        buffer.close()


def test_stream_buffer_read_waits_and_times_out() -> None:
    r, w = os.pipe()
    buffer = StreamBuffer(r, 1024, "test")
    try:
        assert buffer.read(10, timeout=0.05) == b""  # nothing yet, not ended
        os.write(w, b"abc")
        assert buffer.read(10, timeout=10) == b"abc"
        os.close(w)
        assert buffer.read(10, timeout=10) is None
    finally:
        buffer.close()


def test_closing_a_full_buffer_stops_its_reader() -> None:
    r, w = os.pipe()
    buffer = StreamBuffer(r, 10, "test")
    os.write(w, b"x" * 100)
    buffer.close()
    with pytest.raises(OSError):
        os.fstat(r)  # the reader closed its descriptor
    os.close(w)
