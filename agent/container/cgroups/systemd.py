"""The systemd cgroup driver: a container's cgroup as a transient scope unit that systemd makes and knows.

Where systemd runs (the guest booted from the rootfs image, a host with ``pykata-runc --systemd-cgroup``),
a cgroup made behind its back is one it may tidy away or change on its next reload. As runc's and
Kata's agent's systemd drivers do, the engine asks systemd instead, over its private D-Bus socket
(``/run/systemd/private``: root only, peer to peer, no bus daemon needed; agent/system/dbus.py):

- ``linux.cgroupsPath`` is ``slice:prefix:name``: the unit is ``prefix-name.scope`` (``name.scope`` for an
  empty prefix) in ``slice`` (``system.slice`` when empty; ``-`` is the root slice). A slice's name
  says where it sits: ``a-b.slice`` is ``a.slice/a-b.slice``.
- A scope needs a process when it is made: ``create()`` makes nothing, and the engine moves the
  container's first process by pid (``add_pid``), which starts the unit with ``StartTransientUnit``:
  ``PIDs`` that process, ``Delegate`` yes (the subtree below the scope is the container's), no default
  dependencies, and the resource limits as unit properties; the call returns once systemd's job is
  done (its ``JobRemoved`` signal) and the process is found in the scope's cgroup.
- Limits: systemd writes the files it knows from unit properties (and writes them again on every
  reload), so each limit goes both ways, as runc does: the properties that systemd has (``CPUWeight``,
  ``CPUQuotaPerSecUSec``, ``CPUQuotaPeriodUSec``, ``AllowedCPUs``, ``AllowedMemoryNodes``, ``MemoryMin``,
  ``MemoryLow``, ``MemoryHigh``, ``MemoryMax``, ``MemorySwapMax``, ``TasksMax``, ``IOWeight``), taken from
  the same planned writes as the cgroupfs driver's, and then those writes themselves (which also cover
  what systemd has no property for: hugetlb, io.max, cpu.idle). On v1 the device rules are
  ``DevicePolicy`` and ``DeviceAllow`` too (``device_properties``), besides the engine's devices.allow
  and deny writes: systemd rewrites the devices controller of its units on reload. On v2 the engine's
  eBPF program is the one enforcement (systemd leaves it alone on reload: the unit has no device
  policy of its own). An update sets the properties (``SetUnitProperties``, runtime) and writes the
  files.
- Later processes (exec) join the scope's cgroup as they join any cgroup; stats, freeze and thaw read
  and write its files. ``destroy()`` refuses while processes remain (as the cgroupfs driver), then stops
  the unit (``StopUnit``; a scope whose processes have all ended is gone already) and clears a failed
  state (``ResetFailedUnit``).

On cgroup v1 (systemd's legacy or hybrid layout) the properties are systemd's v1 ones (``CPUShares``,
``MemoryLimit``, ``TasksMax``, ``BlockIOWeight``, ``CPUQuotaPerSecUSec``); systemd makes the scope only in
the hierarchies of the controllers it manages, and the engine makes and joins the same path in the
others (cpuset, freezer, hugetlb, net_cls...), as runc's v1 driver does. A ``name`` ending in ``.slice``
(runc makes a slice unit then) is refused.

An OOM kill of one of the container's processes leaves the scope and the container's other processes
running, as with the cgroupfs driver (tests/vm/test_systemd_cgroup.py, with the image's systemd 252).

For a user other than root (a rootless ``pykata-runc --systemd-cgroup``, runc's "rootless systemd") the
scope is asked of that user's own systemd (``systemd --user``, user@UID.service), over its private socket
(``$XDG_RUNTIME_DIR/systemd/private``, else ``/run/user/UID/systemd/private``): the one way an
unprivileged user gets a cgroup of its own where systemd runs, in the subtree systemd delegates to the
user's manager (cgroup v2 only: a user manager is delegated nothing on v1, so it is refused there).
The slice is below the manager's own cgroup (its ``ControlGroup`` property, typically
``/user.slice/user-UID.slice/user@UID.service``), ``user.slice`` when the path names none, as runc's.
Such a container's device rules are not set (cgroups.CgroupManager.skip_devices).
"""

from __future__ import annotations

import os

from agent.errors import AlreadyExists, InvalidArgument, ResourceError, Unsupported

from .layout import Layout, is_systemd_path, slice_path, systemd_units
from .manager import CgroupManager, V1Manager, V2Manager

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from agent.system.dbus import Connection, Message
    from agent.system.paths import HostPaths

    from .plan import Write

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
JOB_TIMEOUT = 30.0  # seconds for systemd to start or stop a scope
CALL_TIMEOUT = 25.0
INFINITY = 2**64 - 1  # systemd's "no limit" for every uint64 property
DEFAULT_PREFIX = "pykata"


def systemd_running(paths: HostPaths) -> bool:
    """Whether systemd is this system's init (sd_booted: /run/systemd/system exists)."""
    return os.path.isdir(f"{paths.run}/systemd/system")


def private_bus(paths: HostPaths, uid: int = 0) -> str:
    """The private socket of the system's systemd (``uid`` 0), or of user ``uid``'s own manager: in
    ``$XDG_RUNTIME_DIR`` (where ``systemctl --user`` finds it), else in ``/run/user/<uid>``."""
    if uid == 0:
        return f"{paths.run}/systemd/private"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"{paths.run}/user/{uid}"
    return f"{runtime_dir}/systemd/private"


def parse_systemd_path(cgroups_path: str, container_id: str, default_slice: str = "system.slice") -> tuple[str, str]:
    """(slice unit, scope unit) for ``slice:prefix:name`` (layout.systemd_units); an empty slice is
    ``default_slice``, an empty path ``<default_slice>:pykata:<id>`` (runc's default, with our prefix)."""
    if not cgroups_path:
        cgroups_path = f":{DEFAULT_PREFIX}:{container_id}"
    if not is_systemd_path(cgroups_path):
        raise InvalidArgument(
            f"linux.cgroupsPath {cgroups_path!r}: the systemd cgroup driver takes slice:prefix:name "
            f"(for example {default_slice}:pykata:c1), not a path"
        )
    if cgroups_path.startswith(":"):
        cgroups_path = default_slice + cgroups_path
    return systemd_units(cgroups_path)


def prime(bus: Connection, timeout: float = CALL_TIMEOUT) -> None:
    """Ask systemd for its job signals on the new connection ``bus`` (Subscribe: a job's end comes as
    JobRemoved), and make sure it reads what is sent there. systemd's D-Bus server can leave a message
    that came in one read with the end of the authentication (BEGIN) unprocessed until more data
    arrives (seen with systemd 252: the first call on a new private connection waited forever, about
    one time in two). So this first call is sent again after a short wait for as long as no answer
    comes (it may be repeated: subscribing twice is no error): each new one wakes the server, which
    then answers what it holds, and replies to the earlier ones are dropped as stale."""
    import time

    from agent.system.dbus import DBusError

    deadline = time.monotonic() + timeout
    wait = 0.02
    while True:
        try:
            bus.call(SYSTEMD, MANAGER_PATH, MANAGER, "Subscribe", timeout=wait)
            return
        except DBusError as exc:
            if exc.name == "org.freedesktop.systemd1.AlreadySubscribed":
                return
            raise ResourceError(f"systemd at {bus.address} refused Subscribe: {exc}") from exc
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise ResourceError(f"systemd at {bus.address} did not answer within {timeout:g} s") from None
            wait = min(wait * 2, 1.0)
        except (OSError, ValueError) as exc:
            raise ResourceError(f"systemd at {bus.address} did not answer: {exc}") from exc


# --- limits as unit properties


def cpu_mask(text: str) -> bytes:
    """A cpuset list ("0-3,8") as systemd's AllowedCPUs/AllowedMemoryNodes bytes: bit n%8 of byte n//8."""
    from agent.hotplug.cpuset import parse_cpuset

    numbers = parse_cpuset(text, what="cpuset")
    if not numbers:
        return b""
    mask = bytearray(max(numbers) // 8 + 1)
    for n in numbers:
        mask[n // 8] |= 1 << (n % 8)
    return bytes(mask)


def _uint(value: str) -> int:
    return INFINITY if value == "max" else int(value)


def _cpu_max(value: str) -> list[tuple[str, Any]]:
    """cpu.max "QUOTA PERIOD" -> CPUQuotaPerSecUSec (rounded up to systemd's 10 ms step, as runc does, so
    the unit never allows less than the spec) and CPUQuotaPeriodUSec."""
    quota, _, period_text = value.partition(" ")
    period = int(period_text or 100000)
    props: list[tuple[str, Any]] = [("CPUQuotaPeriodUSec", ("t", period))]
    if quota == "max":
        return [("CPUQuotaPerSecUSec", ("t", INFINITY)), *props]
    per_sec = int(quota) * 1_000_000 // period
    if per_sec % 10000:
        per_sec = (per_sec // 10000 + 1) * 10000
    return [("CPUQuotaPerSecUSec", ("t", per_sec)), *props]


def _io_weight(value: str) -> list[tuple[str, Any]]:
    """io.weight "default N" -> IOWeight (a per-device weight has no unit property: its file is written)."""
    key, _, weight = value.partition(" ")
    return [("IOWeight", ("t", int(weight)))] if key == "default" and weight else []


# v2 file -> the unit properties systemd writes it from
_SIMPLE = {
    "cpu.weight": "CPUWeight",
    "memory.min": "MemoryMin",
    "memory.low": "MemoryLow",
    "memory.high": "MemoryHigh",
    "memory.max": "MemoryMax",
    "memory.swap.max": "MemorySwapMax",
    "pids.max": "TasksMax",
}
_MASKS = {"cpuset.cpus": "AllowedCPUs", "cpuset.mems": "AllowedMemoryNodes"}


def unit_properties(writes: list[Write]) -> list[tuple[str, Any]]:
    """The unit properties for the planned cgroup v2 ``writes``, as (name, (signature, value)) pairs in
    the writes' order (a later write of the same file, a ``unified`` key, wins there as here)."""
    found: dict[str, tuple[str, Any]] = {}
    for write in writes:
        if write.file in _SIMPLE:
            found[_SIMPLE[write.file]] = ("t", _uint(write.value.strip()))
        elif write.file in _MASKS:
            found[_MASKS[write.file]] = ("ay", cpu_mask(write.value.strip()))
        elif write.file == "cpu.max":
            found.update(_cpu_max(write.value.strip()))
        elif write.file == "io.weight":
            found.update(_io_weight(write.value.strip()))
    return list(found.items())


# cgroup v1 file -> the unit property systemd writes it from (systemd's v1 names)
_SIMPLE_V1 = {
    "cpu.shares": "CPUShares",
    "memory.limit_in_bytes": "MemoryLimit",
    "pids.max": "TasksMax",
    "blkio.weight": "BlockIOWeight",
}


def unit_properties_v1(writes: list[Write]) -> list[tuple[str, Any]]:
    """unit_properties for cgroup v1 ``writes``: CPUShares, MemoryLimit, TasksMax, BlockIOWeight and the
    CFS quota (from cpu.cfs_quota_us and cpu.cfs_period_us together) as CPUQuotaPerSecUSec. systemd
    manages no cpuset, hugetlb, freezer or net_cls on v1: those are the files' alone."""
    found: dict[str, tuple[str, Any]] = {}
    cfs: dict[str, str] = {}
    for write in writes:
        value = write.value.strip()
        if write.file in _SIMPLE_V1:
            found[_SIMPLE_V1[write.file]] = ("t", INFINITY if value in ("max", "-1") else int(value))
        elif write.file in ("cpu.cfs_quota_us", "cpu.cfs_period_us"):
            cfs[write.file] = value
    if "cpu.cfs_quota_us" in cfs:
        quota = cfs["cpu.cfs_quota_us"]
        period = cfs.get("cpu.cfs_period_us", "100000")
        quota_per_sec = _cpu_max(f"{'max' if quota == '-1' else quota} {period}")[0]
        found[quota_per_sec[0]] = quota_per_sec[1]
    return list(found.items())


def _number(value: Any) -> int | None:
    return None if value is None or value == -1 else int(value)


def device_properties(rules: list[Mapping[str, Any]], proc_devices: str = "/proc/devices") -> list[tuple[str, Any]]:
    """The device rules (linux.resources.devices with the engine's default allows, in order) as
    systemd's DevicePolicy and DeviceAllow, so that systemd, which writes a unit's device access itself
    (v1's devices controller, or its own eBPF program on v2) whenever it reloads, allows what the rules
    allow. The rules are followed as the kernel follows them: a rule for all devices sets what the
    unmatched ones get, the others add or take away access to a device or a major. systemd lists only
    what is allowed: a list that ends allowing by default (a blacklist) cannot be said to it, and is
    left to the engine's own enforcement (DevicePolicy=auto, no DeviceAllow), as runc does. Wildcard
    minors are systemd's ``char-NAME``/``block-NAME`` (the major's driver name in /proc/devices; a
    major that is not there cannot be named and is left out of systemd's list); others
    ``/dev/char/MAJ:MIN``."""
    if not rules:
        return []
    default_allow = True
    allowed: dict[tuple[str, int | None, int | None], set[str]] = {}
    for rule in rules:
        kind = rule.get("type") or "a"
        major, minor = _number(rule.get("major")), _number(rule.get("minor"))
        access = set(rule.get("access") or "rwm")
        if kind == "a" and major is None and minor is None and access >= set("rwm"):
            default_allow = bool(rule.get("allow"))
            allowed.clear()
            continue
        kinds = ("c", "b") if kind == "a" else (kind,)
        for one in kinds:
            key = (one, major, minor)
            if rule.get("allow"):
                allowed.setdefault(key, set()).update(access)
            elif key in allowed:
                allowed[key] -= access
    if default_allow:
        return [("DevicePolicy", ("s", "auto")), ("DeviceAllow", ("a(ss)", []))]
    names = _driver_names(proc_devices)
    entries: list[tuple[str, str]] = []
    for (kind, major, minor), access in allowed.items():
        if not access:
            continue
        perms = "".join(c for c in "rwm" if c in access)
        group = "char" if kind == "c" else "block"
        if major is not None and minor is not None:
            entries.append((f"/dev/{group}/{major}:{minor}", perms))
        elif major is None:
            entries += [(f"{group}-{name}", perms) for name in sorted(set(names[kind].values()))]
        elif major in names[kind]:
            entries.append((f"{group}-{names[kind][major]}", perms))
    return [("DevicePolicy", ("s", "strict")), ("DeviceAllow", ("a(ss)", entries))]


def _driver_names(proc_devices: str) -> dict[str, dict[int, str]]:
    """/proc/devices: {"c": {major: driver name}, "b": {...}}."""
    names: dict[str, dict[int, str]] = {"c": {}, "b": {}}
    kind = ""
    try:
        with open(proc_devices, encoding="utf-8") as file:
            for line in file:
                if line.startswith("Character"):
                    kind = "c"
                elif line.startswith("Block"):
                    kind = "b"
                elif kind and line.split():
                    number, _, name = line.strip().partition(" ")
                    if number.isdigit():
                        names[kind][int(number)] = name.strip()
    except OSError:
        pass
    return names


def _variants(props: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    from agent.system.dbus import Variant

    return [(name, Variant(signature, value)) for name, (signature, value) in props]


def connect(paths: HostPaths, uid: int, what: str) -> Connection:
    """A connection to the systemd that makes scopes for ``uid`` (``private_bus``), ready for calls
    and subscribed to job signals (``prime``); ResourceError naming ``what`` and the socket when no
    systemd answers there."""
    from agent.system.dbus import Connection

    address = private_bus(paths, uid)
    try:
        bus = Connection.open(address, hello=False)
    except OSError as exc:
        if uid:
            raise ResourceError(
                f"{what}: cannot reach the systemd of user {uid} at {address} ({exc}); a user other than root "
                f"gets a cgroup from its own systemd (user@{uid}.service: log in, or `loginctl enable-linger`), "
                "or goes without one: leave the systemd cgroup option out"
            ) from exc
        raise ResourceError(
            f"{what}: cannot reach systemd at {address} ({exc}); the systemd cgroup driver needs "
            "systemd as init and root: use a cgroupfs path (/a/b) for linux.cgroupsPath instead"
        ) from exc
    try:
        prime(bus)
    except BaseException:
        bus.close()
        raise
    return bus


def manager_cgroup(paths: HostPaths, uid: int, what: str) -> str:
    """The cgroup of user ``uid``'s systemd (its manager's ``ControlGroup`` property, without the
    leading slash): the root of what that manager makes."""
    from agent.system.dbus import DBusError, Variant

    with connect(paths, uid, what) as bus:
        try:
            (value,) = bus.call(SYSTEMD, MANAGER_PATH, PROPERTIES, "Get", "ss", [MANAGER, "ControlGroup"],
                                timeout=CALL_TIMEOUT)  # fmt: skip
        except (DBusError, OSError, ValueError) as exc:
            raise ResourceError(f"{what}: cannot read the ControlGroup of the systemd at {bus.address}: {exc}") from exc
    if not (isinstance(value, Variant) and value.signature == "s" and value.value.startswith("/")):
        raise ResourceError(f"{what}: the systemd at {private_bus(paths, uid)} gave {value!r} as its ControlGroup")
    return str(value.value).strip("/")


class _Scope(CgroupManager):
    """What the v1 and v2 drivers share: the scope's unit, started with the first process, its limits as
    properties and files, stopped on removal. A version provides ``_unit_properties`` (its writes ->
    properties) and ``_joined(pid)`` (what is left once systemd has put the process in the scope)."""

    slice: str
    unit: str
    description: str
    uid: int  # whose systemd makes the scope: 0 the system's, else that user's own manager
    _pending: Mapping[str, Any] | None  # limits given before the scope exists

    def _name(self, slice_name: str, unit: str, description: str, uid: int) -> None:
        self.slice = slice_name
        self.unit = unit
        self.description = description or f"pykata container {unit}"
        self.uid = uid
        self._pending = None

    def _unit_properties(self, writes: list[Write]) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def _properties(self, resources: Mapping[str, Any], writes: list[Write]) -> list[tuple[str, Any]]:
        """The unit properties for ``resources``: the limits (of their planned ``writes``) and, on v1,
        the device rules (device_properties). On v2 the engine's eBPF program alone enforces them:
        systemd attaches a device program of its own only to a unit with a device policy, and would
        then refuse ours (it attaches its programs as several may be; ours is attached alone)."""
        from . import plan as planner

        rules = planner.device_rules(resources) if self.version == 1 and not self.skip_devices else []
        devices = device_properties(rules, f"{self.paths.proc}/devices") if rules else []
        return self._unit_properties(writes) + devices

    def _joined(self, pid: int) -> None:
        raise NotImplementedError

    # --- systemd
    def _bus(self) -> Connection:
        """A connection to systemd's manager, ready for calls and subscribed to job signals (``prime``)."""
        return connect(self.paths, self.uid, self.unit)

    def _manager_call(
        self, bus: Connection, member: str, signature: str = "", args: list[Any] | None = None, *, harmless: str = ""
    ) -> list[Any]:
        """A call of systemd's manager; its refusal (a D-Bus error other than ``harmless``, whose
        refusal gives []) or a broken conversation is a ResourceError naming the unit."""
        from agent.system.dbus import DBusError

        try:
            return bus.call(SYSTEMD, MANAGER_PATH, MANAGER, member, signature, args or [], timeout=CALL_TIMEOUT)
        except DBusError as exc:
            if exc.name == harmless:
                return []
            if exc.name == "org.freedesktop.systemd1.UnitExists":
                raise AlreadyExists(f"systemd unit {self.unit} exists already: {exc.message}") from exc
            raise ResourceError(f"systemd refused {member} for {self.unit}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise ResourceError(f"systemd's {member} for {self.unit} failed: {exc}") from exc

    def _run_job(self, bus: Connection, member: str, signature: str, args: list[Any]) -> None:
        """Call a manager method that queues a job and wait for the job's end; ResourceError unless "done"."""
        (job,) = self._manager_call(bus, member, signature, args)  # its end: JobRemoved (see prime)

        def finished(message: Message) -> bool:
            return message.member == "JobRemoved" and len(message.body) == 4 and message.body[1] == job

        try:
            removed = bus.wait_signal(finished, JOB_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise ResourceError(f"waiting for systemd's {member} job for {self.unit} failed: {exc}") from exc
        if removed is None:
            raise ResourceError(f"systemd's {member} job {job} for {self.unit} did not end within {JOB_TIMEOUT} s")
        result = removed.body[3]
        if result != "done":
            user = " --user" if self.uid else ""
            why = (
                # the user's manager may move a process only inside its own subtree; one from outside
                # (a login session's) it has the system's manager move, over the system bus
                "; a user's systemd needs the system's D-Bus to move a process from outside its own cgroup"
                if self.uid and member == "StartTransientUnit"
                else ""
            )
            raise ResourceError(
                f"systemd's {member} job for {self.unit} ended {result!r}: see `systemctl{user} status {self.unit}` "
                f"and `journalctl{user} -u {self.unit}`{why}"
            )

    def _start(self, pid: int) -> None:
        props = [
            ("Description", ("s", self.description)),
            ("Slice", ("s", "-.slice" if slice_path(self.slice) == "" else self.slice)),
            ("Delegate", ("b", True)),
            ("DefaultDependencies", ("b", False)),
            ("MemoryAccounting", ("b", True)),
            ("CPUAccounting", ("b", True)),
            ("IOAccounting", ("b", True)),
            ("TasksAccounting", ("b", True)),
            ("PIDs", ("au", [pid])),
        ]
        if self._pending:
            props += self._properties(self._pending, self.plan(self._pending))
        with self._bus() as bus:
            args = [self.unit, "fail", _variants(props), []]
            try:
                self._run_job(bus, "StartTransientUnit", "ssa(sv)a(sa(sv))", args)
            except AlreadyExists:
                # a scope of this name that failed before stays loaded until its failure is cleared (a
                # runtime that died before it could remove it): clear that and try once more; a scope
                # that still runs is not cleared, and the second try says it exists
                self._manager_call(bus, "ResetFailedUnit", "s", [self.unit], harmless=NO_SUCH_UNIT)
                self._run_job(bus, "StartTransientUnit", "ssa(sv)a(sa(sv))", args)
        where = self._cgroup_of(pid)
        if where is not None and where != f"/{self.relative}":
            raise ResourceError(f"systemd put process {pid} in {where}, not in /{self.relative} ({self.unit})")
        self._joined(pid)
        if self._pending:
            pending, self._pending = self._pending, None
            super().apply(pending)

    def _cgroup_of(self, pid: int) -> str | None:
        """The cgroup systemd keeps ``pid`` in as /proc shows it (v2's line, or v1's name=systemd line),
        None when the process has ended."""
        wanted = "" if self.version == 2 else "name=systemd"
        try:
            with open(f"{self.paths.proc_pid(pid)}/cgroup", encoding="utf-8") as file:
                for line in file:
                    _number, controllers, where = line.rstrip("\n").split(":", 2)
                    if controllers == wanted:
                        return where
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None

    # --- the manager's interface
    def create(self) -> None:
        """Nothing: a scope is made with its first process (add_pid)."""

    def self_attach_files(self, sub: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """Once the scope exists a process may join it as any cgroup; before, it is moved by pid."""
        return super().self_attach_files(sub) if self.exists() else []

    def add_pid(self, pid: int, sub: Mapping[str, str] | None = None) -> None:
        if self.exists():
            super().add_pid(pid, sub)
            return
        if sub:
            raise InvalidArgument(f"sub-cgroups need the scope {self.unit} made first (by the container's process)")
        self._start(pid)

    def apply(self, resources: Mapping[str, Any]) -> None:
        writes = self.plan(resources)  # validated, whether the scope exists yet or not
        if not self.exists():
            self._pending = resources  # the scope is started with them (add_pid)
            return
        props = self._properties(resources, writes)
        if props:
            with self._bus() as bus:
                self._manager_call(bus, "SetUnitProperties", "sba(sv)", [self.unit, True, _variants(props)])
        super().apply(resources)

    def destroy(self) -> None:
        remaining = self.pids()
        if remaining:
            raise ResourceError(f"cgroup {self.relative} still has processes {remaining}; stop them before removing it")
        from agent.system.dbus import DBusError

        with self._bus() as bus:
            try:
                self._run_job(bus, "StopUnit", "ss", [self.unit, "replace"])
            except ResourceError as exc:
                cause = exc.__cause__
                if not (isinstance(cause, DBusError) and cause.name == NO_SUCH_UNIT):
                    raise
            # a scope whose process failed stays loaded as failed: clear it (none is no error)
            self._manager_call(bus, "ResetFailedUnit", "s", [self.unit], harmless=NO_SUCH_UNIT)
        super().destroy()  # what systemd left (sub-cgroups the container made), bottom-up


class SystemdManager(_Scope, V2Manager):
    """A container's cgroup v2 as systemd's transient scope ``unit`` in ``slice_name``; see the module.
    ``uid``: whose systemd makes it (0, the system's), whose own cgroup is ``manager_root``."""

    def __init__(
        self,
        paths: HostPaths,
        layout: Layout,
        slice_name: str,
        unit: str,
        *,
        description: str = "",
        uid: int = 0,
        manager_root: str = "",
    ) -> None:
        relative = "/".join(part for part in (manager_root, slice_path(slice_name), unit) if part)
        V2Manager.__init__(self, paths, layout, relative, manage_root=False)
        self._name(slice_name, unit, description, uid)

    def _unit_properties(self, writes: list[Write]) -> list[tuple[str, Any]]:
        return unit_properties(writes)

    def _joined(self, pid: int) -> None:
        """Nothing: the scope's one cgroup holds every controller."""

    def _directory_of(self, writes: list[Write]) -> Mapping[str, str]:
        """systemd enables the controllers above a delegated scope; a key for one it has not enabled
        fails with the file named (the cgroupfs driver enables it in the levels above instead)."""
        return {**{w.controller: self.path for w in writes}, **self.directories()}


class SystemdV1Manager(_Scope, V1Manager):
    """The same on cgroup v1 (systemd's legacy or hybrid layout): systemd makes the scope in the
    hierarchies of the controllers it manages (cpu, memory, pids, blkio, devices...); the others
    (cpuset, freezer, hugetlb, net_cls...) get the same path made and joined here, as the cgroupfs
    driver does (cpuset's cpus and mems copied down), once the scope holds the process."""

    def __init__(self, paths: HostPaths, layout: Layout, slice_name: str, unit: str, *, description: str = "") -> None:
        relative = "/".join(part for part in (slice_path(slice_name), unit) if part)
        V1Manager.__init__(self, paths, layout, relative)
        self._name(slice_name, unit, description, 0)

    def _unit_properties(self, writes: list[Write]) -> list[tuple[str, Any]]:
        return unit_properties_v1(writes)

    def _joined(self, pid: int) -> None:
        V1Manager.create(self)
        V1Manager.add_pid(self, pid)

    def hierarchy_directories(self) -> dict[str, str]:
        """The scope's directory in systemd's own hierarchy too (name=systemd, where systemd put it)."""
        return {**self.directories(), "name=systemd": f"{self.layout.root}/systemd/{self.relative}"}


def manager(paths: HostPaths, layout: Layout, cgroups_path: str, container_id: str, uid: int | None = None) -> _Scope:
    """The systemd driver's manager for ``linux.cgroupsPath`` (see ``parse_systemd_path``), made by the
    systemd of ``uid`` (this process's effective user when None): the system's for root, else the
    user's own manager, which is asked where its cgroup is (so an unreachable one is named here,
    before anything is made)."""
    uid = os.geteuid() if uid is None else uid
    description = f"pykata container {container_id}"
    if uid == 0:
        slice_name, unit = parse_systemd_path(cgroups_path, container_id)
        kind = SystemdManager if layout.version == 2 else SystemdV1Manager
        return kind(paths, layout, slice_name, unit, description=description)
    slice_name, unit = parse_systemd_path(cgroups_path, container_id, default_slice="user.slice")
    if layout.version != 2:
        raise Unsupported(
            f"the systemd cgroup driver for a user other than root (uid {uid}) needs cgroup v2: on cgroup v1 "
            "systemd delegates no controller to a user's manager; leave the systemd cgroup option out"
        )
    root = manager_cgroup(paths, uid, f"cgroup {unit}")
    return SystemdManager(paths, layout, slice_name, unit, description=description, uid=uid, manager_root=root)
