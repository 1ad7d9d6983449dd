"""Process attributes a container process sets on itself just before execve, as runc does: the I/O
priority (``process.ioPriority``), the scheduling policy (``process.scheduler``), the CPU affinity
(``process.execCPUAffinity``), the execution domain (``linux.personality``) and the LSM labels
(``process.apparmorProfile``, ``process.selinuxLabel``).

``check_*`` take a config.json value and return it in the form the container process gets, checked:
a bad value is InvalidArgument naming the field, before anything is made. ``apply`` runs in the
container process, before it drops its capabilities (a real-time class or policy needs them).
``apparmor_enabled``/``selinux_enabled`` tell the engine whether the host can honour a label at all.
Nothing imports this module unless a spec or process has one of these fields.
"""

from __future__ import annotations

import errno
import os

from agent.errors import InvalidArgument
from agent.hotplug.cpuset import parse_cpuset

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from agent.system.paths import HostPaths

IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
IOPRIO_LEVELS = range(8)
# sched(7) policies: SCHED_ISO is in the runtime spec but not in Linux
SCHED_POLICIES = {"SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3, "SCHED_IDLE": 5,
                  "SCHED_DEADLINE": 6}  # fmt: skip
SCHED_FLAGS = {"SCHED_FLAG_RESET_ON_FORK": 0x01, "SCHED_FLAG_RECLAIM": 0x02, "SCHED_FLAG_DL_OVERRUN": 0x04,
               "SCHED_FLAG_KEEP_POLICY": 0x08, "SCHED_FLAG_KEEP_PARAMS": 0x10, "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20,
               "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40}  # fmt: skip
REALTIME_PRIORITIES = range(1, 100)  # SCHED_FIFO and SCHED_RR; every other policy takes 0
PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}  # PER_LINUX, PER_LINUX32
# set_mempolicy(2)'s modes and mode flags (linux/mempolicy.h)
MEMORY_POLICY_MODES = {"MPOL_DEFAULT": 0, "MPOL_PREFERRED": 1, "MPOL_BIND": 2, "MPOL_INTERLEAVE": 3, "MPOL_LOCAL": 4,
                       "MPOL_PREFERRED_MANY": 5, "MPOL_WEIGHTED_INTERLEAVE": 6}  # fmt: skip
MEMORY_POLICY_FLAGS = {"MPOL_F_NUMA_BALANCING": 1 << 13, "MPOL_F_RELATIVE_NODES": 1 << 14,
                       "MPOL_F_STATIC_NODES": 1 << 15}  # fmt: skip
MAX_NUMA_NODES = 1024  # the kernel's largest MAX_NUMNODES (NODES_SHIFT 10)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object, not {value!r}")
    return value


def _integer(value: Any, where: str, allowed: range | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where} must be an integer, not {value!r}")
    if allowed is not None and value not in allowed:
        raise InvalidArgument(f"{where} must be from {allowed.start} to {allowed.stop - 1}, got {value}")
    return value


def _name(value: Any, where: str, names: dict[str, int]) -> str:
    if not isinstance(value, str) or value not in names:
        raise InvalidArgument(f"{where} must be one of {', '.join(names)}, got {value!r}")
    return str(value)


def check_io_priority(value: Any, where: str = "process.ioPriority") -> dict[str, Any]:
    entry = _object(value, where)
    kind = _name(entry.get("class"), f"{where}.class", IOPRIO_CLASSES)
    return {"class": kind, "priority": _integer(entry.get("priority", 0), f"{where}.priority", IOPRIO_LEVELS)}


def check_scheduler(value: Any, where: str = "process.scheduler") -> dict[str, Any]:
    """runc's rules: a policy; nice in -20..19; a static priority only for SCHED_FIFO and SCHED_RR (which
    need one, 1..99); runtime, deadline and period only for SCHED_DEADLINE."""
    entry = _object(value, where)
    if not entry.get("policy"):
        raise InvalidArgument(f"{where}.policy is required")
    policy = _name(entry["policy"], f"{where}.policy", SCHED_POLICIES)
    realtime = policy in ("SCHED_FIFO", "SCHED_RR")
    priority = _integer(entry.get("priority", 0), f"{where}.priority")
    if realtime and priority not in REALTIME_PRIORITIES:
        raise InvalidArgument(f"{where}.priority must be from 1 to 99 for {policy}, got {priority}")
    if not realtime and priority:
        raise InvalidArgument(f"{where}.priority can only be given for SCHED_FIFO or SCHED_RR, not {policy}")
    deadline = {
        key: _integer(entry.get(key, 0), f"{where}.{key}", range(2**63)) for key in ("runtime", "deadline", "period")
    }
    if policy != "SCHED_DEADLINE" and any(deadline.values()):
        raise InvalidArgument(f"{where}.runtime, deadline and period can only be given for SCHED_DEADLINE")
    flags = entry.get("flags") or []
    if not isinstance(flags, list):
        raise InvalidArgument(f"{where}.flags must be a list of SCHED_FLAG_* names")
    for index, flag in enumerate(flags):
        _name(flag, f"{where}.flags[{index}]", SCHED_FLAGS)
    return {"policy": policy, "nice": _integer(entry.get("nice", 0), f"{where}.nice", range(-20, 20)),
            "priority": priority, "flags": list(flags), **deadline}  # fmt: skip


def check_cpu_affinity(value: Any, where: str = "process.execCPUAffinity") -> dict[str, str]:
    """``initial`` (the CPUs the process may use until it is in the container's cgroup) and ``final``
    (from then on, through execve), each a list like "0-3,7"."""
    entry = _object(value, where)
    checked = {}
    for key in ("initial", "final"):
        text = entry.get(key)
        if text in (None, ""):
            continue
        if not isinstance(text, str):
            raise InvalidArgument(f"{where}.{key} must be a CPU list like '0-3,7', not {text!r}")
        parse_cpuset(text, what=f"{where}.{key}")
        checked[key] = text.strip()
    return checked


def check_personality(value: Any, where: str = "linux.personality") -> dict[str, Any]:
    entry = _object(value, where)
    domain = _name(entry.get("domain"), f"{where}.domain", PERSONALITY_DOMAINS)
    if entry.get("flags"):
        raise InvalidArgument(f"{where}.flags are not supported (runc sets none either): leave them out")
    return {"domain": domain}


def check_memory_policy(value: Any, where: str = "linux.memoryPolicy") -> dict[str, Any]:
    """linux.memoryPolicy (runtime-spec 1.3): ``mode``, ``nodes`` (a list like "0-3,7") and ``flags``,
    by set_mempolicy(2)'s rules: MPOL_DEFAULT and MPOL_LOCAL take neither nodes nor flags,
    MPOL_PREFERRED may name no node (then: the local one), every other mode needs nodes;
    MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other and need nodes;
    MPOL_F_NUMA_BALANCING goes with MPOL_BIND. Returns the checked form: mode, node numbers, flags."""
    entry = _object(value, where)
    mode = _name(entry.get("mode"), f"{where}.mode", MEMORY_POLICY_MODES)
    flags = entry.get("flags") or []
    if not isinstance(flags, list):
        raise InvalidArgument(f"{where}.flags must be a list of MPOL_F_* names, not {flags!r}")
    for index, flag in enumerate(flags):
        _name(flag, f"{where}.flags[{index}]", MEMORY_POLICY_FLAGS)
    text = entry.get("nodes") or ""
    if not isinstance(text, str):
        raise InvalidArgument(f"{where}.nodes must be a node list like '0-3,7', not {text!r}")
    nodes = sorted(parse_cpuset(text, what=f"{where}.nodes")) if text.strip() else []
    if nodes and nodes[-1] >= MAX_NUMA_NODES:
        raise InvalidArgument(f"{where}.nodes: node {nodes[-1]} is beyond the kernel's {MAX_NUMA_NODES} nodes")
    if mode in ("MPOL_DEFAULT", "MPOL_LOCAL") and (nodes or flags):
        raise InvalidArgument(f"{where}: {mode} takes no nodes and no flags")
    if mode not in ("MPOL_DEFAULT", "MPOL_LOCAL", "MPOL_PREFERRED") and not nodes:
        raise InvalidArgument(f"{where}: {mode} needs nodes")
    if "MPOL_F_STATIC_NODES" in flags and "MPOL_F_RELATIVE_NODES" in flags:
        raise InvalidArgument(f"{where}.flags: MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other")
    if not nodes and {"MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES"} & set(flags):
        raise InvalidArgument(f"{where}.flags: MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES need nodes")
    if "MPOL_F_NUMA_BALANCING" in flags and mode != "MPOL_BIND":
        raise InvalidArgument(f"{where}.flags: MPOL_F_NUMA_BALANCING goes only with MPOL_BIND")
    return {"mode": mode, "nodes": nodes, "flags": sorted(set(flags))}


def _cpus(text: str) -> set[int]:
    return set(parse_cpuset(text, what="CPU affinity"))


def apply_initial_affinity(process: dict[str, Any]) -> None:
    """execCPUAffinity.initial, first thing in the container process (before it joins its cgroup)."""
    initial = (process.get("execCPUAffinity") or {}).get("initial")
    if initial:
        os.sched_setaffinity(0, _cpus(initial))


def apply(
    proc: str, process: dict[str, Any], personality: dict[str, Any] | None, memory_policy: dict[str, Any] | None = None
) -> None:
    """Set every attribute ``process`` (and the container's ``personality`` and ``memory_policy``) asks
    for on this process;
    ``proc`` is where /proc is mounted now. A refusal is init's SetupError naming the attribute. (In the
    container process, which imported this module and init before its root changed: nothing is read
    from disk here.)"""
    from agent.container.init import SetupError
    from agent.system import libc

    steps = []
    if personality:
        steps.append(("linux.personality", lambda: libc.personality(PERSONALITY_DOMAINS[personality["domain"]])))
    if memory_policy:
        mode = MEMORY_POLICY_MODES[memory_policy["mode"]] | sum(MEMORY_POLICY_FLAGS[f] for f in memory_policy["flags"])
        steps.append(("linux.memoryPolicy", lambda: libc.set_mempolicy(mode, memory_policy["nodes"])))
    if process.get("ioPriority"):
        io = process["ioPriority"]
        value = (IOPRIO_CLASSES[io["class"]] << libc.IOPRIO_CLASS_SHIFT) | io["priority"]
        steps.append(("process.ioPriority", lambda: libc.ioprio_set(libc.IOPRIO_WHO_PROCESS, 0, value)))
    if process.get("scheduler"):
        s = process["scheduler"]
        flags = sum(SCHED_FLAGS[name] for name in s["flags"])
        steps.append(("process.scheduler", lambda: libc.sched_setattr(
            SCHED_POLICIES[s["policy"]], flags=flags, nice=s["nice"], priority=s["priority"], runtime=s["runtime"],
            deadline=s["deadline"], period=s["period"])))  # fmt: skip
    final = (process.get("execCPUAffinity") or {}).get("final")
    if final:
        steps.append(("process.execCPUAffinity.final", lambda: os.sched_setaffinity(0, _cpus(final))))
    if process.get("apparmorProfile"):
        steps.append(("process.apparmorProfile", lambda: _apparmor_exec(proc, process["apparmorProfile"])))
    if process.get("selinuxLabel"):
        steps.append(("process.selinuxLabel", lambda: _write_attr(proc, "exec", process["selinuxLabel"])))
    for field, step in steps:
        try:
            step()
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise SetupError(f"{field}: {exc.strerror or exc}{where}{_hint(field, exc, process)}") from exc


def _hint(field: str, exc: OSError, process: dict[str, Any]) -> str:
    """What usually causes a refusal of ``field``, when the errno says it."""
    policy = (process.get("scheduler") or {}).get("policy")
    if field == "process.scheduler" and exc.errno == errno.EPERM and policy in ("SCHED_FIFO", "SCHED_RR"):
        return (
            "; a real-time policy needs real-time runtime in the container's cpu cgroup where the kernel has RT "
            "group scheduling (linux.resources.cpu.realtimeRuntime, and its parents' cpu.rt_runtime_us)"
        )
    if field == "process.execCPUAffinity.final" and exc.errno == errno.EINVAL:
        return "; none of those CPUs is online and in the container's cpuset"
    if field == "linux.memoryPolicy" and exc.errno == errno.EINVAL:
        return "; a node without memory, offline or outside the container's cpuset.mems, or a mode this kernel lacks"
    return ""


def _write_attr(proc: str, name: str, value: str) -> None:
    """Write this thread's LSM attribute ``name`` (attr/<name> under /proc/thread-self)."""
    path = f"{proc}/thread-self/attr/{name}"
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(fd)


def _apparmor_exec(proc: str, profile: str) -> None:
    """aa_change_onexec: the profile takes effect at the next execve (attr/apparmor/exec, or the older
    shared attr/exec)."""
    name = "apparmor/exec" if os.path.exists(f"{proc}/thread-self/attr/apparmor/exec") else "exec"
    _write_attr(proc, name, f"exec {profile}")


def apparmor_enabled(paths: HostPaths) -> bool:
    """Whether this host enforces AppArmor (as runc asks: the securityfs directory, and the module's
    ``enabled`` parameter)."""
    if not os.path.isdir(f"{paths.sys}/kernel/security/apparmor"):
        return False
    try:
        with open(f"{paths.sys}/module/apparmor/parameters/enabled", encoding="ascii") as stream:
            return stream.read(1) == "Y"
    except OSError:
        return False


def selinux_enabled(paths: HostPaths) -> bool:
    """Whether SELinux is on (selinuxfs mounted, with its ``enforce`` file), permissive or enforcing."""
    return os.path.exists(f"{paths.sys}/fs/selinux/enforce")
