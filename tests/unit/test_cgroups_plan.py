"""Resource plans: OCI linux.resources -> cgroup file writes, v1 and v2, and the validation before them."""

from __future__ import annotations

from typing import Any

import pytest

from agent.container.cgroups import Write, plan_v1, plan_v2, validate_resources
from agent.container.cgroups.plan import blkio_weight_to_io_weight, shares_to_weight, swap_v2
from agent.errors import InvalidArgument, Unsupported


def files(writes: list[Write]) -> list[tuple[str, str]]:
    return [(w.file, w.value) for w in writes]


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(2, 1), (1024, 39), (262144, 10000), (512, 20), (100, 4)],
)
def test_shares_to_weight_matches_runc(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


def test_blkio_weight_to_io_weight_ends() -> None:
    assert blkio_weight_to_io_weight(10) == 1
    assert blkio_weight_to_io_weight(1000) == 10000
    assert blkio_weight_to_io_weight(500) == 1 + (490 * 9999) // 990


def test_v2_cpu_weight_and_max() -> None:
    writes = plan_v2({"cpu": {"shares": 1024, "quota": 50000, "period": 100000}})
    assert files(writes) == [("cpu.weight", "39"), ("cpu.max", "50000 100000")]
    assert {w.controller for w in writes} == {"cpu"}


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        ({"quota": -1, "period": 50000}, "max 50000"),
        ({"period": 200000}, "max 200000"),
        ({"quota": 20000}, "20000 100000"),
    ],
)
def test_v2_cpu_max_forms(cpu: dict[str, int], expected: str) -> None:
    assert files(plan_v2({"cpu": cpu})) == [("cpu.max", expected)]


def test_v2_memory_conversions() -> None:
    writes = plan_v2({"memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 96 << 20}})
    assert files(writes) == [
        ("memory.swap.max", str(32 << 20)),
        ("memory.max", str(64 << 20)),
        ("memory.low", str(32 << 20)),
    ]
    assert not writes[0].optional  # a real swap limit must not be dropped silently


def test_v2_unlimited_memory_and_swap() -> None:
    writes = plan_v2({"memory": {"limit": -1, "swap": -1}})
    assert files(writes) == [("memory.swap.max", "max"), ("memory.max", "max")]
    assert writes[0].optional


def test_swap_v2() -> None:
    assert swap_v2(None, 10) is None
    assert swap_v2(-1, 10) == "max"
    assert swap_v2(30, 10) == "20"
    assert swap_v2(10, 10) == "0"


@pytest.mark.parametrize(("limit", "value"), [(100, "100"), (0, "max"), (-1, "max")])
def test_pids_limit(limit: int, value: str) -> None:
    assert files(plan_v2({"pids": {"limit": limit}})) == [("pids.max", value)]
    assert files(plan_v1({"pids": {"limit": limit}})) == [("pids.max", value)]


def test_cpuset_both_versions() -> None:
    resources = {"cpu": {"cpus": "0-1", "mems": "0"}}
    assert files(plan_v2(resources)) == [("cpuset.cpus", "0-1"), ("cpuset.mems", "0")]
    assert files(plan_v1(resources)) == [("cpuset.cpus", "0-1"), ("cpuset.mems", "0")]


def test_v1_cpu_period_before_quota() -> None:
    writes = plan_v1({"cpu": {"shares": 512, "quota": 25000, "period": 50000}})
    assert files(writes) == [("cpu.shares", "512"), ("cpu.cfs_period_us", "50000"), ("cpu.cfs_quota_us", "25000")]


def test_v1_memory_raise_writes_memsw_first() -> None:
    writes = plan_v1({"memory": {"limit": 64 << 20, "swap": 128 << 20}}, current_memory_limit=32 << 20)
    assert files(writes) == [
        ("memory.memsw.limit_in_bytes", str(128 << 20)),
        ("memory.limit_in_bytes", str(64 << 20)),
    ]
    assert writes[0].optional and not writes[1].optional


def test_v1_memory_on_a_fresh_cgroup_writes_limit_first() -> None:
    # memsw is unlimited and so is the limit: a memsw below it would be refused
    writes = plan_v1({"memory": {"limit": 64 << 20, "swap": 128 << 20}}, current_memory_limit=None)
    assert [w.file for w in writes] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


def test_v1_memory_cut_writes_limit_first() -> None:
    writes = plan_v1({"memory": {"limit": 16 << 20, "swap": 32 << 20}}, current_memory_limit=64 << 20)
    assert [w.file for w in writes] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


def test_v1_memory_unlimited_also_unlimits_memsw() -> None:
    writes = plan_v1({"memory": {"limit": -1}}, current_memory_limit=64 << 20)
    assert files(writes) == [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1")]


def test_v1_memory_other_fields() -> None:
    writes = plan_v1({"memory": {"reservation": 1 << 20, "swappiness": 10, "disableOOMKiller": True}})
    assert files(writes) == [
        ("memory.soft_limit_in_bytes", str(1 << 20)),
        ("memory.swappiness", "10"),
        ("memory.oom_control", "1"),
    ]


def test_v1_devices_rules_in_order() -> None:
    writes = plan_v1(
        {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                {"allow": True, "type": "b", "major": 8, "minor": -1},
            ]
        }
    )
    assert files(writes) == [
        ("devices.deny", "a *:* rwm"),
        ("devices.allow", "c 1:3 rw"),
        ("devices.allow", "b 8:* rwm"),
    ]


def test_v2_has_no_device_writes() -> None:
    assert plan_v2({"devices": [{"allow": False, "access": "rwm"}]}) == []


def test_block_io_v1_and_v2() -> None:
    resources = {
        "blockIO": {
            "weight": 500,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}],
        }
    }
    assert files(plan_v1(resources)) == [
        ("blkio.weight", "500"),
        ("blkio.weight_device", "8:0 100"),
        ("blkio.throttle.read_bps_device", "8:0 1048576"),
        ("blkio.throttle.write_iops_device", "8:16 100"),
    ]
    assert files(plan_v2(resources)) == [
        ("io.weight", f"default {blkio_weight_to_io_weight(500)}"),
        ("io.weight", f"8:0 {blkio_weight_to_io_weight(100)}"),
        ("io.max", "8:0 rbps=1048576"),
        ("io.max", "8:16 wiops=100"),
    ]


def test_hugepages() -> None:
    resources = {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]}
    assert files(plan_v1(resources)) == [("hugetlb.2MB.limit_in_bytes", str(4 << 20))]
    assert files(plan_v2(resources)) == [("hugetlb.2MB.max", str(4 << 20))]


@pytest.mark.parametrize("size", ["2MB", "64KB", "1GB", "1048576KB", "2MB\n"])
def test_page_sizes_accepted(size: str) -> None:
    validate_resources({"hugepageLimits": [{"pageSize": size, "limit": 1}]})


@pytest.mark.parametrize(
    "size", ["", "MB", "2", "2M", "2mb", "2TB", "2 MB", " 2MB", "2MB ", "2MB\n\n", "x2MB", "\u00b2MB", 2]
)
def test_page_sizes_refused_with_the_value(size: object) -> None:
    with pytest.raises(InvalidArgument, match=r"hugepageLimits\[0\]\.pageSize must look like '2MB' or '1GB', got "):
        validate_resources({"hugepageLimits": [{"pageSize": size, "limit": 1}]})


def test_zero_values_change_nothing() -> None:
    resources = {"cpu": {"shares": 0, "quota": 0, "period": 0}, "memory": {"limit": 0, "reservation": 0}}
    assert plan_v1(resources) == []
    assert plan_v2(resources) == []


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"cpu": {"shares": -5}}, "linux.resources.cpu.shares"),
        ({"cpu": {"shares": 1}}, "linux.resources.cpu.shares"),
        ({"cpu": {"shares": 300000}}, "linux.resources.cpu.shares"),
        ({"cpu": {"quota": -2}}, "linux.resources.cpu.quota"),
        ({"cpu": {"period": -1}}, "linux.resources.cpu.period"),
        ({"cpu": {"cpus": "0-x"}}, "linux.resources.cpu.cpus"),
        ({"cpu": {"cpus": "3-1"}}, "linux.resources.cpu.cpus"),
        ({"cpu": {"mems": 0}}, "linux.resources.cpu.mems"),
        ({"memory": {"limit": -7}}, "linux.resources.memory.limit"),
        ({"memory": {"limit": "64M"}}, "linux.resources.memory.limit"),
        ({"memory": {"limit": True}}, "linux.resources.memory.limit"),
        ({"memory": {"reservation": -2}}, "linux.resources.memory.reservation"),
        ({"memory": {"limit": 100, "swap": 50}}, "linux.resources.memory.swap"),
        ({"memory": {"swap": 50}}, "linux.resources.memory.swap"),
        ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness"),
        ({"pids": {"limit": "10"}}, "linux.resources.pids.limit"),
        ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight"),
        ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}}, "throttleReadBpsDevice[0]"),
        ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "hugepageLimits[0].pageSize"),
        ({"devices": [{"allow": True, "type": "x"}]}, "linux.resources.devices[0].type"),
        ({"devices": [{"allow": True, "access": "rwx"}]}, "linux.resources.devices[0].access"),
        ({"devices": [{"access": "r"}]}, "linux.resources.devices[0].allow"),
        ({"cpu": 5}, "linux.resources.cpu"),
    ],
)
def test_invalid_values_name_the_field(resources: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        validate_resources(resources)
    with pytest.raises(InvalidArgument):
        plan_v1(resources)
    with pytest.raises(InvalidArgument):
        plan_v2(resources)


def test_v2_refuses_realtime() -> None:
    with pytest.raises(InvalidArgument, match="realtime"):
        plan_v2({"cpu": {"realtimeRuntime": 950000}})
    assert files(plan_v1({"cpu": {"realtimeRuntime": 950000}})) == [("cpu.rt_runtime_us", "950000")]


def test_write_prints_as_file_and_value() -> None:
    assert str(Write("pids", "pids.max", "10")) == "pids.max <- '10'"


# --- network (v1), rdma (both), unified (v2)


def test_v1_network_writes_classid_and_one_ifpriomap_line_per_interface() -> None:
    writes = plan_v1({"network": {"classID": 0x100001, "priorities": [{"name": "eth0", "priority": 5},
                                                                      {"name": "lo", "priority": 0}]}})  # fmt: skip
    assert [(w.controller, w.file, w.value) for w in writes] == [
        ("net_cls", "net_cls.classid", str(0x100001)),
        ("net_prio", "net_prio.ifpriomap", "eth0 5"),
        ("net_prio", "net_prio.ifpriomap", "lo 0"),
    ]


def test_an_empty_network_section_writes_nothing_on_either_version() -> None:
    # what an unset LinuxNetwork decodes to from Kata's protobuf: classID 0, no priorities
    assert plan_v1({"network": {"classID": 0, "priorities": []}}) == []
    assert plan_v2({"network": {"classID": 0, "priorities": []}}) == []


def test_v2_refuses_network_limits_instead_of_dropping_them() -> None:
    with pytest.raises(Unsupported, match=r"linux\.resources\.network: cgroup v2 has no net_cls"):
        plan_v2({"network": {"classID": 7}})
    with pytest.raises(Unsupported, match="net_prio"):
        plan_v2({"network": {"priorities": [{"name": "eth0", "priority": 1}]}})


def test_rdma_lines_carry_only_the_limits_given() -> None:
    resources = {"rdma": {"mlx5_0": {"hcaHandles": 3, "hcaObjects": 1000}, "mlx4_1": {"hcaObjects": 0}}}
    expected = [
        ("rdma", "rdma.max", "mlx5_0 hca_handle=3 hca_object=1000"),
        ("rdma", "rdma.max", "mlx4_1 hca_object=0"),
    ]
    for plan in (plan_v1, plan_v2):
        assert [(w.controller, w.file, w.value) for w in plan(resources)] == expected


def test_v2_unified_keys_are_written_last_in_their_controllers() -> None:
    writes = plan_v2({"memory": {"limit": 64 << 20}, "unified": {"memory.max": "32M", "cgroup.max.depth": "2"}})
    assert [(w.controller, w.file, w.value) for w in writes] == [
        ("memory", "memory.max", str(64 << 20)),
        ("memory", "memory.max", "32M"),  # after the typed field: the unified key wins, as in runc
        ("cgroup", "cgroup.max.depth", "2"),
    ]


def test_v1_refuses_unified() -> None:
    with pytest.raises(InvalidArgument, match=r"linux\.resources\.unified sets cgroup v2 files.*cgroup v1"):
        plan_v1({"unified": {"memory.high": "1G"}})
    assert plan_v1({"unified": {}}) == []  # nothing asked: nothing refused


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"unified": ["memory.high"]}, r"unified must be an object"),
        ({"unified": {"memory/../x.max": "1"}}, r"unified\['memory/\.\./x\.max'\]: the key must be a file name"),
        ({"unified": {"memory": "1"}}, r"must be CONTROLLER\.PARAMETER"),
        ({"unified": {".max": "1"}}, r"must be CONTROLLER\.PARAMETER"),
        ({"unified": {"memory.": "1"}}, r"must be CONTROLLER\.PARAMETER"),
        ({"unified": {"cgroup.procs": "1"}}, r"cgroup\.procs is the runtime's to write"),
        ({"unified": {"cgroup.kill": "1"}}, r"cgroup\.kill is the runtime's to write"),
        ({"unified": {"memory.high": 1 << 30}}, r"unified\['memory\.high'\] must be a string"),
        ({"network": {"classID": -1}}, r"network\.classID must not be negative"),
        ({"network": {"classID": 1 << 32}}, r"network\.classID must fit in 32 bits"),
        ({"network": {"classID": "1"}}, r"network\.classID must be an integer"),
        ({"network": {"priorities": {"eth0": 1}}}, r"linux\.resources\.network\.priorities must be a list"),
        ({"network": {"priorities": [{"name": "eth 0", "priority": 1}]}}, r"priorities\[0\]\.name must be"),
        ({"network": {"priorities": [{"name": "", "priority": 1}]}}, r"priorities\[0\]\.name must be"),
        ({"network": {"priorities": [{"name": "eth0"}]}}, r"priorities\[0\]\.priority must be a number"),
        ({"rdma": []}, r"linux\.resources\.rdma must be an object"),
        ({"rdma": {"mlx5_0": 3}}, r"rdma\['mlx5_0'\] must be an object"),
        ({"rdma": {"mlx5_0": {}}}, r"rdma\['mlx5_0'\] sets neither hcaHandles nor hcaObjects"),
        ({"rdma": {"mlx5_0": {"hcaHandles": -2}}}, r"hcaHandles must not be negative"),
        ({"rdma": {"mlx 5": {"hcaHandles": 1}}}, r"the key must be an RDMA device name"),
    ],
)
def test_network_rdma_and_unified_are_validated_by_field(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_resources(resources)
