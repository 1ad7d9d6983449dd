"""OCI ``linux.resources`` -> the cgroup file writes that apply them, as data.

``plan_v1`` and ``plan_v2`` validate the resources (``validate_resources``: ordered small checks, each
naming the field) and return a list of ``Write`` records; nothing here touches the filesystem. One small
function per controller turns its section into writes. The executor in ``manager.py`` carries them out.

Conventions taken from the runtime spec and runc: a zero or missing value means "leave unchanged"
(shares, quota, period, memory limit, reservation, swap); ``-1`` means unlimited for memory values;
``pids.limit`` <= 0 means no limit ("max").
"""

from __future__ import annotations

from _collections_abc import Mapping  # collections.abc's Mapping, without importing collections

from agent.errors import InvalidArgument, Unsupported
from agent.hotplug.cpuset import parse_cpuset
from agent.system.records import Record

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Resources = Mapping[str, Any]

# v2 cpu.max when only a period is given (and the kernel's default period)
DEFAULT_CPU_PERIOD = 100000
# cpu.shares bounds of the kernel (MIN_SHARES, MAX_SHARES); cpu.weight is 1..10000
MIN_SHARES = 2
MAX_SHARES = 262144
MIN_CFS_PERIOD, MAX_CFS_PERIOD = 1000, 1_000_000  # cpu.cfs_period_us (v1) and cpu.max's period (v2), microseconds
# blkio.weight bounds (v1); io.weight is 1..10000
MIN_BLKIO_WEIGHT = 10
MAX_BLKIO_WEIGHT = 1000
PAGE_SIZE_UNITS = ("KB", "MB", "GB")
DEVICE_TYPES = ("a", "b", "c")
UINT32_MAX = 2**32 - 1
# cgroup v2 files the engine manages itself (membership, the tree, freezing): a spec's
# ``linux.resources.unified`` may not write them
ENGINE_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.type", "cgroup.freeze",
                "cgroup.kill")  # fmt: skip


class Write(Record):
    """Write ``value`` to ``file`` in the container's directory of ``controller``.

    ``optional`` writes are skipped when the kernel has no such file (memory.memsw.* without swap
    accounting, memory.swap.max when asking for no swap limit); a missing file is an error otherwise.
    (A Record: a dataclass costs about a millisecond to define, and a NamedTuple imports typing, on
    every container start.)
    """

    __slots__ = _fields = ("controller", "file", "value", "optional")
    controller: str
    file: str
    value: str
    optional: bool

    def __init__(self, controller: str, file: str, value: str, optional: bool = False) -> None:
        self._assign(controller, file, value, optional)

    def __str__(self) -> str:
        return f"{self.file} <- {self.value!r}"


# --- value access with validation


def _section(resources: Resources, name: str) -> Mapping[str, Any]:
    value = resources.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"linux.resources.{name} must be an object, not {type(value).__name__}")
    return value


def _int(section: Mapping[str, Any], key: str, field: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field} must be an integer, not {value!r}")
    return value


def _non_negative(section: Mapping[str, Any], key: str, field: str) -> int | None:
    value = _int(section, key, field)
    if value is not None and value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value}")
    return value


def _memory_value(section: Mapping[str, Any], key: str, field: str) -> int | None:
    """A memory amount: bytes > 0, -1 for unlimited, 0 or missing for unchanged."""
    value = _int(section, key, field)
    if value is not None and value < -1:
        raise InvalidArgument(f"{field} must be a byte count or -1 for unlimited, got {value}")
    return value or None


def _list(resources: Resources, name: str, where: str = "linux.resources") -> list[Mapping[str, Any]]:
    value = resources.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise InvalidArgument(f"{where}.{name} must be a list of objects")
    return value


# --- validation: ordered small checks, run before any write


def _check_cpu(resources: Resources) -> None:
    cpu = _section(resources, "cpu")
    shares = _non_negative(cpu, "shares", "linux.resources.cpu.shares")
    if shares and not MIN_SHARES <= shares <= MAX_SHARES:
        raise InvalidArgument(f"linux.resources.cpu.shares must be in {MIN_SHARES}..{MAX_SHARES}, got {shares}")
    quota = _int(cpu, "quota", "linux.resources.cpu.quota")
    if quota is not None and quota < -1:
        raise InvalidArgument(f"linux.resources.cpu.quota must be > 0, or -1 for unlimited, got {quota}")
    period = _non_negative(cpu, "period", "linux.resources.cpu.period")
    if period and not MIN_CFS_PERIOD <= period <= MAX_CFS_PERIOD:
        raise InvalidArgument(
            f"linux.resources.cpu.period {period} is outside {MIN_CFS_PERIOD}..{MAX_CFS_PERIOD} microseconds"
        )
    _non_negative(cpu, "realtimePeriod", "linux.resources.cpu.realtimePeriod")
    _int(cpu, "realtimeRuntime", "linux.resources.cpu.realtimeRuntime")
    _int(cpu, "idle", "linux.resources.cpu.idle")
    for key, what in (("cpus", "cpu list"), ("mems", "memory node list")):
        text = cpu.get(key)
        if text is None or text == "":  # unset (Kata's protobuf sends "")
            continue
        if not isinstance(text, str):
            raise InvalidArgument(f"linux.resources.cpu.{key} must be a string like '0-3,7', not {text!r}")
        if not is_cpu_list(text):
            raise InvalidArgument(f"linux.resources.cpu.{key} {text!r} is not a {what} like 0-3,7")
        parse_cpuset(text, what=f"linux.resources.cpu.{key} ({what})")


def is_cpu_list(text: str) -> bool:
    """Whether ``text`` is a list like "0-3,7" as the kernel's cpuset files take it: numbers and
    ranges split by commas, with white space allowed around the commas and at the ends (not inside
    a range). Digits and white space are Unicode's, as str.isdecimal and str.strip see them."""
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        if not first.isdecimal() or (dash and not last.isdecimal()):
            return False
    return True


def _check_memory(resources: Resources) -> None:
    memory = _section(resources, "memory")
    limit = _memory_value(memory, "limit", "linux.resources.memory.limit")
    _memory_value(memory, "reservation", "linux.resources.memory.reservation")
    swap = _memory_value(memory, "swap", "linux.resources.memory.swap")
    _memory_value(memory, "kernel", "linux.resources.memory.kernel")
    _memory_value(memory, "kernelTCP", "linux.resources.memory.kernelTCP")
    swappiness = _int(memory, "swappiness", "linux.resources.memory.swappiness")
    if swappiness is not None and not 0 <= swappiness <= 100:
        raise InvalidArgument(f"linux.resources.memory.swappiness must be in 0..100, got {swappiness}")
    if swap is not None and swap > 0:
        if limit is None or limit == -1:
            raise InvalidArgument("linux.resources.memory.swap needs linux.resources.memory.limit (swap is mem+swap)")
        if swap < limit:
            raise InvalidArgument(
                f"linux.resources.memory.swap ({swap}) is memory+swap and must be >= "
                f"linux.resources.memory.limit ({limit})"
            )
    oom = memory.get("disableOOMKiller")
    if oom is not None and not isinstance(oom, bool):
        raise InvalidArgument(f"linux.resources.memory.disableOOMKiller must be true or false, not {oom!r}")


def _check_pids(resources: Resources) -> None:
    _int(_section(resources, "pids"), "limit", "linux.resources.pids.limit")


def _check_weight(value: int | None, field: str) -> None:
    if value and not MIN_BLKIO_WEIGHT <= value <= MAX_BLKIO_WEIGHT:
        raise InvalidArgument(f"{field} must be in {MIN_BLKIO_WEIGHT}..{MAX_BLKIO_WEIGHT}, got {value}")


def _check_block_io(resources: Resources) -> None:
    block = _section(resources, "blockIO")
    _check_weight(_non_negative(block, "weight", "linux.resources.blockIO.weight"), "linux.resources.blockIO.weight")
    _check_weight(
        _non_negative(block, "leafWeight", "linux.resources.blockIO.leafWeight"), "linux.resources.blockIO.leafWeight"
    )
    for key in ("weightDevice", *THROTTLE_V1):
        for index, entry in enumerate(_list(block, key, "linux.resources.blockIO")):
            field = f"linux.resources.blockIO.{key}[{index}]"
            _non_negative(entry, "major", f"{field}.major")
            _non_negative(entry, "minor", f"{field}.minor")
            if "major" not in entry or "minor" not in entry:
                raise InvalidArgument(f"{field} needs major and minor device numbers")
            if key == "weightDevice":
                _check_weight(_non_negative(entry, "weight", f"{field}.weight"), f"{field}.weight")
                _check_weight(_non_negative(entry, "leafWeight", f"{field}.leafWeight"), f"{field}.leafWeight")
            elif _non_negative(entry, "rate", f"{field}.rate") is None:
                raise InvalidArgument(f"{field} needs a rate")


def _is_page_size(text: str) -> bool:
    """Whether ``text`` reads like "2MB": ASCII digits, then KB, MB or GB (a final newline is let through,
    as the regular expression ^[0-9]+[KMG]B$ this replaces did)."""
    if text.endswith("\n"):
        text = text[:-1]
    number, unit = text[:-2], text[-2:]
    return unit in PAGE_SIZE_UNITS and number.isascii() and number.isdigit()


def _check_hugepages(resources: Resources) -> None:
    for index, entry in enumerate(_list(resources, "hugepageLimits")):
        field = f"linux.resources.hugepageLimits[{index}]"
        size = entry.get("pageSize")
        if not isinstance(size, str) or not _is_page_size(size):
            raise InvalidArgument(f"{field}.pageSize must look like '2MB' or '1GB', got {size!r}")
        if _non_negative(entry, "limit", f"{field}.limit") is None:
            raise InvalidArgument(f"{field} needs a limit")


def _check_devices(resources: Resources) -> None:
    for index, rule in enumerate(_list(resources, "devices")):
        field = f"linux.resources.devices[{index}]"
        if not isinstance(rule.get("allow"), bool):
            raise InvalidArgument(f"{field}.allow must be true or false")
        kind = rule.get("type", "a") or "a"
        if kind not in DEVICE_TYPES:
            raise InvalidArgument(f"{field}.type must be one of a, b, c, got {kind!r}")
        for key in ("major", "minor"):
            number = _int(rule, key, f"{field}.{key}")
            if number is not None and number < -1:
                raise InvalidArgument(f"{field}.{key} must be a device number or -1 for any, got {number}")
        access = rule.get("access", "rwm") or "rwm"
        if not isinstance(access, str) or not set(access) <= set("rwm"):
            raise InvalidArgument(f"{field}.access must be letters of 'rwm', got {access!r}")


def _check_network(resources: Resources) -> None:
    network = _section(resources, "network")
    class_id = _non_negative(network, "classID", "linux.resources.network.classID")
    if class_id is not None and class_id > UINT32_MAX:
        raise InvalidArgument(f"linux.resources.network.classID must fit in 32 bits, got {class_id}")
    for index, entry in enumerate(_list(network, "priorities", "linux.resources.network")):
        field = f"linux.resources.network.priorities[{index}]"
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name or any(c.isspace() for c in name):
            raise InvalidArgument(f"{field}.name must be a network interface name, got {name!r}")
        priority = _non_negative(entry, "priority", f"{field}.priority")
        if priority is None or priority > UINT32_MAX:
            raise InvalidArgument(f"{field}.priority must be a number from 0 to {UINT32_MAX}, got {priority!r}")


def _check_rdma(resources: Resources) -> None:
    rdma = _section(resources, "rdma")
    for device, limits in rdma.items():
        field = f"linux.resources.rdma[{device!r}]"
        if not isinstance(device, str) or not device or "/" in device or any(c.isspace() for c in device):
            raise InvalidArgument(f"{field}: the key must be an RDMA device name, as mlx5_0")
        if not isinstance(limits, Mapping):
            raise InvalidArgument(f"{field} must be an object with hcaHandles and/or hcaObjects")
        handles = _non_negative(limits, "hcaHandles", f"{field}.hcaHandles")
        objects = _non_negative(limits, "hcaObjects", f"{field}.hcaObjects")
        if handles is None and objects is None:
            raise InvalidArgument(f"{field} sets neither hcaHandles nor hcaObjects")


def _check_unified(resources: Resources) -> None:
    unified = resources.get("unified")
    if unified is None:
        return
    if not isinstance(unified, Mapping):
        raise InvalidArgument("linux.resources.unified must be an object of cgroup v2 file names and values")
    for key, value in unified.items():
        field = f"linux.resources.unified[{key!r}]"
        if not isinstance(key, str) or "/" in key or "\0" in key:
            raise InvalidArgument(f"{field}: the key must be a file name (no slashes)")
        controller, dot, parameter = key.partition(".")
        if not (controller and dot and parameter):
            raise InvalidArgument(f"{field}: the key must be CONTROLLER.PARAMETER, as memory.high")
        if key in ENGINE_FILES:
            raise InvalidArgument(f"{field}: {key} is the runtime's to write, not the spec's")
        if not isinstance(value, str):
            raise InvalidArgument(f"{field} must be a string, not {value!r}")


CHECKS: tuple[Callable[[Resources], None], ...] = (
    _check_cpu,
    _check_memory,
    _check_pids,
    _check_block_io,
    _check_hugepages,
    _check_devices,
    _check_network,
    _check_rdma,
    _check_unified,
)


def validate_resources(resources: Resources) -> None:
    """Run every check in order; the first problem raises InvalidArgument naming the field."""
    if not isinstance(resources, Mapping):
        raise InvalidArgument(f"linux.resources must be an object, not {type(resources).__name__}")
    for check in CHECKS:
        check(resources)


# --- conversions shared with runc


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) -> cpu.weight (1..10000), runc's linear map."""
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) -> io.weight (1..10000), runc's linear map."""
    return 1 + ((weight - 10) * 9999) // 990


def swap_v2(swap: int | None, limit: int | None) -> str | None:
    """OCI swap is memory+swap; v2's memory.swap.max is swap alone. None means leave unchanged."""
    if swap is None:
        return None
    if swap == -1:
        return "max"
    assert limit is not None and limit > 0  # validate_resources guarantees it
    return str(swap - limit)


def _limit(value: int) -> str:
    return "max" if value == -1 else str(value)


# --- per controller: v1


def cpu_v1(resources: Resources) -> list[Write]:
    cpu = _section(resources, "cpu")
    writes: list[Write] = []
    if shares := cpu.get("shares"):
        writes.append(Write("cpu", "cpu.shares", str(shares)))
    # the period first: a quota is checked against the period in force
    if period := cpu.get("period"):
        writes.append(Write("cpu", "cpu.cfs_period_us", str(period)))
    if quota := cpu.get("quota"):
        writes.append(Write("cpu", "cpu.cfs_quota_us", str(quota)))
    if rt_period := cpu.get("realtimePeriod"):
        writes.append(Write("cpu", "cpu.rt_period_us", str(rt_period)))
    if rt_runtime := cpu.get("realtimeRuntime"):
        writes.append(Write("cpu", "cpu.rt_runtime_us", str(rt_runtime)))
    if cpu.get("idle") is not None:
        writes.append(Write("cpu", "cpu.idle", str(cpu["idle"])))
    return writes


def cpuset(resources: Resources) -> list[Write]:
    """Same files on v1 and v2."""
    cpu = _section(resources, "cpu")
    writes: list[Write] = []
    if cpus := (cpu.get("cpus") or "").strip():
        writes.append(Write("cpuset", "cpuset.cpus", cpus))
    if mems := (cpu.get("mems") or "").strip():
        writes.append(Write("cpuset", "cpuset.mems", mems))
    return writes


def memory_v1(resources: Resources, current_limit: int | None = None) -> list[Write]:
    """``current_limit`` (bytes, None when unlimited) decides the order of the limit and memory+swap
    writes: the kernel wants memory.limit_in_bytes <= memory.memsw.limit_in_bytes at every step, so
    memsw goes first only when the new memsw is above the limit in force (runc's rule)."""
    memory = _section(resources, "memory")
    limit = _memory_value(memory, "limit", "linux.resources.memory.limit")
    swap = _memory_value(memory, "swap", "linux.resources.memory.swap")
    if limit == -1 and swap is None:
        swap = -1  # an unlimited memory needs an unlimited memory+swap
    writes: list[Write] = []
    limit_write = Write("memory", "memory.limit_in_bytes", str(limit)) if limit is not None else None
    swap_write = Write("memory", "memory.memsw.limit_in_bytes", str(swap), optional=True) if swap is not None else None
    swap_first = swap is not None and (swap == -1 or (current_limit is not None and current_limit < swap))
    ordered = [swap_write, limit_write] if swap_first else [limit_write, swap_write]
    writes.extend(w for w in ordered if w is not None)
    if reservation := _memory_value(memory, "reservation", "linux.resources.memory.reservation"):
        writes.append(Write("memory", "memory.soft_limit_in_bytes", str(reservation)))
    if memory.get("swappiness") is not None:
        writes.append(Write("memory", "memory.swappiness", str(memory["swappiness"])))
    if memory.get("disableOOMKiller"):
        writes.append(Write("memory", "memory.oom_control", "1"))
    return writes


def pids(resources: Resources) -> list[Write]:
    """Same file on v1 and v2."""
    section = _section(resources, "pids")
    if "limit" not in section or section["limit"] is None:
        return []
    limit = int(section["limit"])
    return [Write("pids", "pids.max", str(limit) if limit > 0 else "max")]


THROTTLE_V1 = {
    "throttleReadBpsDevice": "blkio.throttle.read_bps_device",
    "throttleWriteBpsDevice": "blkio.throttle.write_bps_device",
    "throttleReadIOPSDevice": "blkio.throttle.read_iops_device",
    "throttleWriteIOPSDevice": "blkio.throttle.write_iops_device",
}
THROTTLE_V2 = {
    "throttleReadBpsDevice": "rbps",
    "throttleWriteBpsDevice": "wbps",
    "throttleReadIOPSDevice": "riops",
    "throttleWriteIOPSDevice": "wiops",
}


def blkio_v1(resources: Resources) -> list[Write]:
    block = _section(resources, "blockIO")
    writes: list[Write] = []
    if weight := block.get("weight"):
        writes.append(Write("blkio", "blkio.weight", str(weight)))
    if leaf := block.get("leafWeight"):
        writes.append(Write("blkio", "blkio.leaf_weight", str(leaf)))
    for entry in _list(block, "weightDevice"):
        device = f"{entry['major']}:{entry['minor']}"
        if entry.get("weight"):
            writes.append(Write("blkio", "blkio.weight_device", f"{device} {entry['weight']}"))
        if entry.get("leafWeight"):
            writes.append(Write("blkio", "blkio.leaf_weight_device", f"{device} {entry['leafWeight']}"))
    for key, file in THROTTLE_V1.items():
        for entry in _list(block, key):
            writes.append(Write("blkio", file, f"{entry['major']}:{entry['minor']} {entry['rate']}"))
    return writes


def hugetlb_v1(resources: Resources) -> list[Write]:
    return [
        Write("hugetlb", f"hugetlb.{entry['pageSize']}.limit_in_bytes", str(entry["limit"]))
        for entry in _list(resources, "hugepageLimits")
    ]


def _device_number(value: int | None) -> str:
    return "*" if value is None or value == -1 else str(value)


def devices_v1(resources: Resources) -> list[Write]:
    writes: list[Write] = []
    for rule in _list(resources, "devices"):
        kind = rule.get("type") or "a"
        access = rule.get("access") or "rwm"
        line = f"{kind} {_device_number(rule.get('major'))}:{_device_number(rule.get('minor'))} {access}"
        writes.append(Write("devices", "devices.allow" if rule["allow"] else "devices.deny", line))
    return writes


def network_v1(resources: Resources) -> list[Write]:
    """net_cls and net_prio: v1 only. A classID of 0 is the kernel's "none" (and what an unset field
    decodes to from Kata's protobuf): nothing to write."""
    network = _section(resources, "network")
    writes: list[Write] = []
    if class_id := network.get("classID"):
        writes.append(Write("net_cls", "net_cls.classid", str(class_id)))
    for entry in _list(network, "priorities", "linux.resources.network"):
        writes.append(Write("net_prio", "net_prio.ifpriomap", f"{entry['name']} {entry['priority']}"))
    return writes


def rdma(resources: Resources) -> list[Write]:
    """Same file on v1 and v2: one line per device, with the limits it sets (the others stay)."""
    writes: list[Write] = []
    for device, limits in _section(resources, "rdma").items():
        line = [device]
        if limits.get("hcaHandles") is not None:
            line.append(f"hca_handle={limits['hcaHandles']}")
        if limits.get("hcaObjects") is not None:
            line.append(f"hca_object={limits['hcaObjects']}")
        writes.append(Write("rdma", "rdma.max", " ".join(line)))
    return writes


def plan_v1(resources: Resources, *, current_memory_limit: int | None = None) -> list[Write]:
    """Every write for cgroup v1, validated first. Devices come last: a deny-all written before the
    other controllers could not lock the container out of anything they need, but it reads best last."""
    validate_resources(resources)
    if resources.get("unified"):
        raise InvalidArgument(
            "linux.resources.unified sets cgroup v2 files, and this host's container cgroups are cgroup v1: "
            "use the v1 fields (memory, cpu, pids...) instead"
        )
    return [
        *cpu_v1(resources),
        *cpuset(resources),
        *memory_v1(resources, current_memory_limit),
        *pids(resources),
        *blkio_v1(resources),
        *hugetlb_v1(resources),
        *network_v1(resources),
        *rdma(resources),
        *devices_v1(resources),
    ]


# --- per controller: v2


def cpu_v2(resources: Resources) -> list[Write]:
    cpu = _section(resources, "cpu")
    writes: list[Write] = []
    if shares := cpu.get("shares"):
        writes.append(Write("cpu", "cpu.weight", str(shares_to_weight(shares))))
    quota = cpu.get("quota") or 0
    period = cpu.get("period") or 0
    if quota or period:
        writes.append(Write("cpu", "cpu.max", f"{quota if quota > 0 else 'max'} {period or DEFAULT_CPU_PERIOD}"))
    if cpu.get("idle") is not None:
        writes.append(Write("cpu", "cpu.idle", str(cpu["idle"])))
    if cpu.get("realtimePeriod") or cpu.get("realtimeRuntime"):
        raise InvalidArgument(
            "linux.resources.cpu.realtimePeriod/realtimeRuntime: cgroup v2 has no realtime cpu limits"
        )
    return writes


def memory_v2(resources: Resources) -> list[Write]:
    memory = _section(resources, "memory")
    limit = _memory_value(memory, "limit", "linux.resources.memory.limit")
    swap = _memory_value(memory, "swap", "linux.resources.memory.swap")
    writes: list[Write] = []
    swap_max = swap_v2(swap, limit)
    if swap_max is not None:
        # without swap accounting there is no memory.swap.max; asking for "no limit" then is fine
        writes.append(Write("memory", "memory.swap.max", swap_max, optional=swap_max == "max"))
    if limit is not None:
        writes.append(Write("memory", "memory.max", _limit(limit)))
    if reservation := _memory_value(memory, "reservation", "linux.resources.memory.reservation"):
        writes.append(Write("memory", "memory.low", _limit(reservation)))
    # disableOOMKiller has no v2 file (v2 cannot turn the OOM killer off): it is ignored, as runc does
    return writes


def io_v2(resources: Resources) -> list[Write]:
    block = _section(resources, "blockIO")
    writes: list[Write] = []
    if weight := block.get("weight"):
        writes.append(Write("io", "io.weight", f"default {blkio_weight_to_io_weight(weight)}"))
    for entry in _list(block, "weightDevice"):
        if entry.get("weight"):
            value = blkio_weight_to_io_weight(entry["weight"])
            writes.append(Write("io", "io.weight", f"{entry['major']}:{entry['minor']} {value}"))
    for key, name in THROTTLE_V2.items():
        for entry in _list(block, key):
            writes.append(Write("io", "io.max", f"{entry['major']}:{entry['minor']} {name}={entry['rate']}"))
    return writes


def hugetlb_v2(resources: Resources) -> list[Write]:
    return [
        Write("hugetlb", f"hugetlb.{entry['pageSize']}.max", str(entry["limit"]))
        for entry in _list(resources, "hugepageLimits")
    ]


def unified_v2(resources: Resources) -> list[Write]:
    """``linux.resources.unified``: each key is a file of the container's v2 cgroup, written as given,
    after the typed fields (so a unified key wins over the field it overlaps, as in runc)."""
    return [Write(key.partition(".")[0], key, value) for key, value in (resources.get("unified") or {}).items()]


def plan_v2(resources: Resources) -> list[Write]:
    """Every write for cgroup v2, validated first. Device rules are not here: v2 controls device access
    with an eBPF program (devices_v2.py), which the manager attaches after these writes."""
    validate_resources(resources)
    if network_v1(resources):
        raise Unsupported(
            "linux.resources.network: cgroup v2 has no net_cls or net_prio controller; match the "
            "container's traffic by its cgroup path instead (nftables: socket cgroupv2)"
        )
    return [
        *cpu_v2(resources),
        *cpuset(resources),
        *memory_v2(resources),
        *pids(resources),
        *io_v2(resources),
        *hugetlb_v2(resources),
        *rdma(resources),
        *unified_v2(resources),
    ]


def device_rules(resources: Resources) -> list[Mapping[str, Any]]:
    """The OCI device rules (for v2's device program)."""
    return _list(resources, "devices")


def memory_limit(resources: Resources) -> int | None:
    """The requested memory limit in bytes (None when unchanged or unlimited)."""
    value = _memory_value(_section(resources, "memory"), "limit", "linux.resources.memory.limit")
    return value if value and value > 0 else None
