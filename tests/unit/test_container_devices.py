"""CreateContainer's devices: the guest's node for each, and the spec renumbered to it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.errors import InvalidArgument, NotFound, Unsupported
from agent.services import container_devices as cd
from agent.system.paths import HostPaths

NULL = os.stat("/dev/null").st_rdev  # a device node every host has: c 1:3


def _spec() -> dict[str, Any]:
    host = {"path": "/dev/xvda", "type": "b", "major": 8, "minor": 0, "fileMode": 0o660, "uid": 0, "gid": 0}
    return {
        "linux": {
            "devices": [host, {"path": "/dev/other", "type": "b", "major": 8, "minor": 16}],
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "rw"},
                    {"allow": True, "type": "b", "major": 8, "minor": 16, "access": "r"},
                ]
            },
        }
    }


def test_the_device_and_its_cgroup_rule_take_the_guest_numbers() -> None:
    spec = _spec()
    updated = cd.update_spec(spec, "/dev/xvda", "/dev/null")
    first = updated["linux"]["devices"][0]
    assert (first["type"], first["major"], first["minor"]) == ("c", os.major(NULL), os.minor(NULL))
    assert first["fileMode"] == 0o660  # the rest of the entry stays
    assert updated["linux"]["devices"][1] == spec["linux"]["devices"][1]  # another device: untouched
    rules = updated["linux"]["resources"]["devices"]
    assert rules[1] == {"allow": True, "type": "c", "major": os.major(NULL), "minor": os.minor(NULL), "access": "rw"}
    assert rules[0] == {"allow": False, "access": "rwm"} and rules[2]["minor"] == 16
    assert spec == _spec()  # the caller's spec is not changed


def test_a_device_the_spec_does_not_have_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no device at that path"):
        cd.update_spec(_spec(), "/dev/missing", "/dev/null")


def test_each_driver_finds_its_node(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def block_device(driver: str, source: str) -> str:
        asked.append((driver, source))
        return "/dev/vdb"

    paths = HostPaths("/")
    assert cd.guest_node(paths, cd.Device("02/00", "blk"), block_device, 1) == "/dev/vdb"
    assert cd.guest_node(paths, cd.Device("x", "blk", vm_path="/dev/vdc"), block_device, 1) == "/dev/vdb"
    assert cd.guest_node(paths, cd.Device("0:1", "scsi"), block_device, 1) == "/dev/vdb"
    assert asked == [("blk", "02/00"), ("blk", "/dev/vdc"), ("scsi", "0:1")]
    assert cd.guest_node(paths, cd.Device("p0", "nvdimm", vm_path="/dev/null"), block_device, 1) == "/dev/null"
    with pytest.raises(NotFound, match="mmioblk device /dev/vdz did not appear"):
        cd.guest_node(HostPaths(tmp_path), cd.Device("m", "mmioblk", vm_path="/dev/vdz"), block_device, 0.2)
    with pytest.raises(Unsupported, match="device type 'vfio-pci'"):
        cd.guest_node(paths, cd.Device("0000:00:02.0", "vfio-pci"), block_device, 1)
    with pytest.raises(InvalidArgument, match="neither id"):
        cd.guest_node(paths, cd.Device("", "blk"), block_device, 1)


def test_apply_waits_then_renumbers_and_only_waits_without_a_container_path() -> None:
    spec, done = cd.apply(
        HostPaths("/"),
        _spec(),
        [cd.Device("02/00", "blk", container_path="/dev/xvda"), cd.Device("03/00", "blk")],
        lambda driver, source: "/dev/null",
        1,
    )
    assert done == ["/dev/xvda is /dev/null", "/dev/null is there"]
    assert spec["linux"]["devices"][0]["type"] == "c"


def test_get_guest_details_lists_every_driver_handled() -> None:
    from agent.services.guest import DEFAULT_DEVICE_HANDLERS

    assert set(DEFAULT_DEVICE_HANDLERS) == set(cd.DRIVERS)
