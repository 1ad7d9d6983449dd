"""Process attributes of runtime-spec 1.1/1.2 (ioPriority, scheduler, execCPUAffinity, personality,
domainname) and the LSM labels: checked before anything is made, carried to the container process,
refused by name where the host cannot honour them, and written where it can (no root needed: the
host's /sys and /proc are fake trees in tmp_path)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agent.container import procattrs
from agent.container.launch import process_request
from agent.container.rootfs import Mount, plan_rootfs
from agent.container.spec import parse_process, parse_spec
from agent.container.validate import validate_spec
from agent.errors import InvalidArgument, Unsupported
from agent.system.paths import HostPaths

SPEC: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {"args": ["/bin/sh"], "cwd": "/"},
    "root": {"path": "/"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
        {"destination": "/data", "type": "bind", "source": "/host", "options": ["rbind"]},
    ],
    "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    for path, value in changes.items():
        section, _, key = path.rpartition("__")
        (spec[section] if section else spec)[key] = value
    return spec


def test_every_attribute_reaches_the_container_process_in_config_json_form() -> None:
    spec = parse_spec(
        spec_with(
            domainname="example.test",
            linux__personality={"domain": "LINUX32"},
            process__ioPriority={"class": "IOPRIO_CLASS_RT", "priority": 2},
            process__scheduler={
                "policy": "SCHED_DEADLINE",
                "runtime": 10,
                "deadline": 20,
                "period": 30,
                "flags": ["SCHED_FLAG_RESET_ON_FORK"],
            },
            process__execCPUAffinity={"initial": " 0-3 ", "final": "1"},
            process__apparmorProfile="docker-default",
            process__selinuxLabel="system_u:system_r:container_t:s0",
        )
    )
    assert spec.domainname == "example.test"
    assert spec.linux.personality == {"domain": "LINUX32"}
    process = spec.process
    assert process is not None
    sent = process.as_dict()
    assert sent["ioPriority"] == {"class": "IOPRIO_CLASS_RT", "priority": 2}
    assert sent["scheduler"] == {"policy": "SCHED_DEADLINE", "nice": 0, "priority": 0, "runtime": 10,
                                 "deadline": 20, "period": 30, "flags": ["SCHED_FLAG_RESET_ON_FORK"]}  # fmt: skip
    assert sent["execCPUAffinity"] == {"initial": "0-3", "final": "1"}
    assert (sent["apparmorProfile"], sent["selinuxLabel"]) == ("docker-default", "system_u:system_r:container_t:s0")


def test_a_spec_without_them_sends_nothing() -> None:
    process = parse_process({"args": ["/bin/true"]})
    sent = process.as_dict()
    assert sent["ioPriority"] is None and sent["scheduler"] is None and sent["execCPUAffinity"] is None
    assert sent["apparmorProfile"] == sent["selinuxLabel"] == ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ioPriority", {"class": "IOPRIO_CLASS_XX"}, r"ioPriority\.class must be one of IOPRIO_CLASS_RT"),
        ("ioPriority", {"class": "IOPRIO_CLASS_BE", "priority": 8}, r"ioPriority\.priority must be from 0 to 7"),
        ("ioPriority", "IOPRIO_CLASS_BE", r"ioPriority must be an object"),
        ("scheduler", {"nice": 1}, r"scheduler\.policy is required"),
        ("scheduler", {"policy": "SCHED_ISO"}, r"scheduler\.policy must be one of"),
        ("scheduler", {"policy": "SCHED_OTHER", "nice": 20}, r"scheduler\.nice must be from -20 to 19"),
        ("scheduler", {"policy": "SCHED_FIFO"}, r"priority must be from 1 to 99 for SCHED_FIFO"),
        ("scheduler", {"policy": "SCHED_BATCH", "priority": 3}, r"only be given for SCHED_FIFO or SCHED_RR"),
        ("scheduler", {"policy": "SCHED_RR", "priority": 5, "period": 9}, r"only be given for SCHED_DEADLINE"),
        ("scheduler", {"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_FAST"]}, r"flags\[0\] must be one of"),
        ("scheduler", {"policy": "SCHED_OTHER", "flags": "SCHED_FLAG_RECLAIM"}, r"flags must be a list"),
        ("execCPUAffinity", {"final": "1-x"}, r"execCPUAffinity\.final"),
        ("execCPUAffinity", {"initial": 3}, r"execCPUAffinity\.initial must be a CPU list"),
        ("apparmorProfile", "a\nb", r"apparmorProfile must be a string without control characters"),
        ("selinuxLabel", 5, r"selinuxLabel must be a string"),
    ],
)
def test_bad_process_attributes_are_refused_by_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_process({"args": ["/bin/true"], field: value})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"linux__personality": {"domain": "LINUX64"}}, InvalidArgument, r"personality\.domain must be one of"),
        ({"linux__personality": {"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]}}, InvalidArgument,
         r"personality\.flags are not supported"),
        ({"linux__timeOffsets": {"monotonic": {"secs": 5}}}, InvalidArgument,
         r"linux\.timeOffsets sets the clocks of a new time namespace: add one \(type time, no path\)"),
        ({"linux__timeOffsets": {"realtime": {"secs": 5}}}, InvalidArgument,
         r"linux\.timeOffsets: 'realtime' is not a clock a time namespace offsets \(monotonic, boottime\)"),
        ({"linux__timeOffsets": {"boottime": {"secs": 1, "nanosecs": 10**9}}}, InvalidArgument,
         r"linux\.timeOffsets\.boottime\.nanosecs 1000000000 must be from 0 to 999999999"),
        ({"linux__timeOffsets": {"monotonic": {"secs": "5"}}}, InvalidArgument,
         r"linux\.timeOffsets\.monotonic\.secs must be an integer"),
        ({"linux__timeOffsets": {"monotonic": {"secs": 1 << 63}}}, InvalidArgument, r"does not fit in 64 bits"),
        ({"linux__intelRdt": {"closID": "x"}}, Unsupported, r"linux\.intelRdt"),
        ({"linux__netDevices": {"eth1": {}}, "linux__namespaces": [{"type": "mount"}]}, InvalidArgument,
         r"linux\.netDevices moves devices into the container's network namespace: the spec has none"),
        ({"linux__netDevices": {"eth1": {"name": "a/b"}}}, InvalidArgument,
         r"linux\.netDevices\['eth1'\]\.name: 'a/b' is not an interface name"),
        ({"linux__netDevices": {"an-interface-name": {}}}, InvalidArgument,
         r"linux\.netDevices\['an-interface-name'\]: 'an-interface-name' is not an interface name"),
        ({"linux__netDevices": {"eth1": {"name": "net0"}, "eth2": {"name": "net0"}}}, InvalidArgument,
         r"two devices would be named 'net0' in the container"),
        ({"linux__memoryPolicy": {"mode": "MPOL_BIND"}}, InvalidArgument,
         r"linux\.memoryPolicy: MPOL_BIND needs nodes"),
        ({"linux__memoryPolicy": {"mode": "MPOL_FIRST_TOUCH", "nodes": "0"}}, InvalidArgument,
         r"linux\.memoryPolicy\.mode must be one of"),
        ({"linux__memoryPolicy": {"mode": "MPOL_LOCAL", "nodes": "0"}}, InvalidArgument,
         r"MPOL_LOCAL takes no nodes and no flags"),
        ({"linux__memoryPolicy": {"mode": "MPOL_INTERLEAVE", "nodes": "0-x"}}, InvalidArgument,
         r"linux\.memoryPolicy\.nodes"),
        ({"linux__memoryPolicy": {"mode": "MPOL_INTERLEAVE", "nodes": "1024"}}, InvalidArgument,
         r"node 1024 is beyond the kernel's 1024 nodes"),
        ({"linux__memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0",
                                  "flags": ["MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES"]}}, InvalidArgument,
         r"MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other"),
        ({"linux__memoryPolicy": {"mode": "MPOL_PREFERRED", "flags": ["MPOL_F_STATIC_NODES"]}}, InvalidArgument,
         r"need nodes"),
        ({"linux__memoryPolicy": {"mode": "MPOL_INTERLEAVE", "nodes": "0", "flags": ["MPOL_F_NUMA_BALANCING"]}},
         InvalidArgument, r"MPOL_F_NUMA_BALANCING goes only with MPOL_BIND"),
        ({"linux__memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_LAZY"]}}, InvalidArgument,
         r"linux\.memoryPolicy\.flags\[0\] must be one of"),
        ({"mounts": [{"destination": "/data", "type": "bind", "source": "/host", "options": ["rbind"],
                      "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]},
         InvalidArgument, r"mounts\[0\] \(/data\): an idmapped mount needs both uidMappings and gidMappings"),
        ({"mounts": [{"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}]},
         InvalidArgument, r"mounts\[0\] \(/data\): only a bind mount can be idmapped"),
        ({"mounts": [{"destination": "/data", "type": "bind", "source": "/host", "options": ["ridmap"]}]},
         InvalidArgument, r"idmap without the mount's own uidMappings/gidMappings takes the container's, which needs"),
        ({"mounts": [{"destination": "/data", "type": "bind", "source": "/host",
                      "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 0}],
                      "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]},
         InvalidArgument, r"mounts\[0\]\.uidMappings\[0\] needs containerID, hostID >= 0 and size > 0"),
    ],
)  # fmt: skip
def test_bad_or_unsupported_linux_fields_are_refused_by_name(
    changes: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        validate_spec(parse_spec(spec_with(**changes)))


def test_net_devices_keep_their_name_unless_given_one() -> None:
    spec = spec_with(linux__netDevices={"eth1": {}, "dummy0": {"name": "net0"}})
    spec["linux"]["namespaces"].append({"type": "network"})
    parsed = parse_spec(spec)
    validate_spec(parsed)
    assert parsed.linux.net_devices == (("eth1", "eth1"), ("dummy0", "net0"))


def test_memory_policy_is_parsed_to_its_mode_nodes_and_flags() -> None:
    policy = {"mode": "MPOL_BIND", "nodes": "3,0-1", "flags": ["MPOL_F_STATIC_NODES", "MPOL_F_NUMA_BALANCING"]}
    parsed = parse_spec(spec_with(linux__memoryPolicy=policy))
    assert parsed.linux.memory_policy == {
        "mode": "MPOL_BIND",
        "nodes": [0, 1, 3],
        "flags": ["MPOL_F_NUMA_BALANCING", "MPOL_F_STATIC_NODES"],
    }
    preferred_local = parse_spec(spec_with(linux__memoryPolicy={"mode": "MPOL_PREFERRED"}))
    assert preferred_local.linux.memory_policy == {"mode": "MPOL_PREFERRED", "nodes": [], "flags": []}


def test_time_offsets_are_parsed_in_the_kernels_clock_order() -> None:
    spec = spec_with(linux__timeOffsets={"boottime": {"secs": -5}, "monotonic": {"secs": 86400, "nanosecs": 7}})
    spec["linux"]["namespaces"].append({"type": "time"})
    parsed = parse_spec(spec)
    validate_spec(parsed)
    assert parsed.linux.time_offsets == (("monotonic", 86400, 7), ("boottime", -5, 0))
    spec["linux"]["namespaces"][-1]["path"] = "/proc/1/ns/time"  # a joined namespace's clocks are set already
    with pytest.raises(InvalidArgument, match="a new time namespace"):
        validate_spec(parse_spec(spec))


def test_domainname_needs_a_uts_namespace() -> None:
    spec = spec_with(domainname="example.test")
    spec["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}]
    with pytest.raises(InvalidArgument, match="domainname is set but the spec has no uts namespace"):
        validate_spec(parse_spec(spec))


def test_mount_label_goes_to_every_mount_but_binds_proc_sysfs_and_mqueue(tmp_path: Path) -> None:
    spec = parse_spec(spec_with(linux__mountLabel="system_u:object_r:container_file_t:s0"))
    mounts = {op.target: op for op in plan_rootfs(HostPaths(tmp_path), spec, "/r", None, no_pivot=False).operations
              if isinstance(op, Mount)}  # fmt: skip
    assert mounts["/dev"].data == 'mode=755,context="system_u:object_r:container_file_t:s0"'
    assert mounts["/proc"].data == ""
    assert mounts["/dev/mqueue"].data == ""
    assert mounts["/data"].data == ""


class FakeEngine:
    def __init__(self, root: Path, *, ignore_missing_apparmor: bool = False) -> None:
        self.paths = HostPaths(root)
        self.ignore_missing_apparmor = ignore_missing_apparmor


def enable_apparmor(root: Path) -> None:
    (root / "sys/kernel/security/apparmor").mkdir(parents=True)
    (root / "sys/module/apparmor/parameters").mkdir(parents=True)
    (root / "sys/module/apparmor/parameters/enabled").write_text("Y\n")


def test_an_apparmor_profile_where_apparmor_is_off_is_refused_or_dropped_for_the_agent(tmp_path: Path) -> None:
    process = parse_process({"args": ["/bin/true"], "apparmorProfile": "docker-default"})
    with pytest.raises(Unsupported, match=r"process\.apparmorProfile 'docker-default': AppArmor is not enabled"):
        process_request(FakeEngine(tmp_path), process)  # type: ignore[arg-type]
    # the agent: Kata's runtime passes the host's profile to a guest without AppArmor
    sent = process_request(FakeEngine(tmp_path, ignore_missing_apparmor=True), process)  # type: ignore[arg-type]
    assert sent["apparmorProfile"] == ""
    (tmp_path / "sys/module/apparmor/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/apparmor/parameters/enabled").write_text("N\n")  # loaded but disabled: still off
    assert not procattrs.apparmor_enabled(HostPaths(tmp_path))


def test_an_apparmor_profile_is_kept_where_apparmor_is_on(tmp_path: Path) -> None:
    enable_apparmor(tmp_path)
    process = parse_process({"args": ["/bin/true"], "apparmorProfile": "docker-default"})
    assert process_request(FakeEngine(tmp_path), process)["apparmorProfile"] == "docker-default"  # type: ignore[arg-type]


def test_selinux_labels_need_selinux(tmp_path: Path) -> None:
    labelled = parse_process({"args": ["/bin/true"], "selinuxLabel": "system_u:system_r:container_t:s0"})
    with pytest.raises(Unsupported, match=r"process\.selinuxLabel is set, but SELinux is not enabled"):
        process_request(FakeEngine(tmp_path, ignore_missing_apparmor=True), labelled)  # type: ignore[arg-type]
    plain = parse_process({"args": ["/bin/true"]})
    with pytest.raises(Unsupported, match=r"linux\.mountLabel is set, but SELinux is not enabled"):
        process_request(FakeEngine(tmp_path), plain, "system_u:object_r:container_file_t:s0")  # type: ignore[arg-type]
    (tmp_path / "sys/fs/selinux").mkdir(parents=True)
    (tmp_path / "sys/fs/selinux/enforce").write_text("1")
    assert process_request(FakeEngine(tmp_path), labelled)["selinuxLabel"] == "system_u:system_r:container_t:s0"  # type: ignore[arg-type]


def test_labels_are_written_to_the_threads_lsm_attributes(tmp_path: Path) -> None:
    """apply() writes what aa_change_onexec and setexeccon write (a fake /proc: no LSM here)."""
    attr = tmp_path / "thread-self/attr"
    (attr / "apparmor").mkdir(parents=True)
    for name in ("apparmor/exec", "exec"):
        (attr / name).write_text("")
    procattrs.apply(str(tmp_path), {"apparmorProfile": "docker-default"}, None)
    assert (attr / "apparmor/exec").read_text() == "exec docker-default"
    (attr / "apparmor/exec").unlink()  # an older kernel: the shared attr/exec
    procattrs.apply(str(tmp_path), {"apparmorProfile": "p2"}, None)
    assert (attr / "exec").read_text() == "exec p2"
    procattrs.apply(str(tmp_path), {"selinuxLabel": "system_u:system_r:container_t:s0"}, None)
    assert (attr / "exec").read_text() == "system_u:system_r:container_t:s0"


def test_a_refused_attribute_is_named_with_a_hint(tmp_path: Path) -> None:
    from agent.container.init import SetupError

    with pytest.raises(SetupError, match=r"process\.apparmorProfile: No such file or directory \(.*attr/exec\)"):
        procattrs.apply(str(tmp_path), {"apparmorProfile": "p"}, None)  # no attr files at all
    with pytest.raises(SetupError, match=r"execCPUAffinity\.final: Invalid argument; none of those CPUs is online"):
        procattrs.apply(str(tmp_path), {"execCPUAffinity": {"final": "4095"}}, None)
