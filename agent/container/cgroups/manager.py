"""One container's cgroup: create, apply limits, add processes, stats, freeze, remove (v1 and v2).

The manager holds no state beyond where the cgroup is, so a new manager for the same path (after an
agent restart, or from another command of the runtime CLI) can update, freeze and destroy it. The
limits planner (plan.py) and the v2 device program (devices_v2.py) are imported by the methods that
write limits: finding a cgroup again to list its processes or remove it (``pykata-runc delete``) needs
neither.
"""

from __future__ import annotations

import errno
import os
import time

from agent.errors import IncorrectState, InvalidArgument, NotFound, ResourceError, Unsupported
from agent.system import sysfs
from agent.system.paths import HostPaths, normal_path

from .layout import Layout, container_cgroup, detect, is_systemd_path

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from .plan import Write
    from .stats import CgroupStats

# v2 controllers enabled for containers when the parent offers them.
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids", "hugetlb")
FREEZE_TIMEOUT = 5.0
RMDIR_TIMEOUT = 2.0


_REAL_PATHS: dict[str, str] = {}


def _real_path(path: str) -> str:
    """os.path.realpath of ``path``, remembered (hierarchy roots do not move while the agent runs)."""
    real = _REAL_PATHS.get(path)
    if real is None:
        if len(_REAL_PATHS) >= 64:
            _REAL_PATHS.clear()
        real = _REAL_PATHS[path] = os.path.realpath(path)
    return real


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _pause(attempt: int) -> None:
    time.sleep(min(0.001 * (2**attempt), 0.05))


def execute(writes: Iterable[Write], directory_of: Mapping[str, str | os.PathLike[str]]) -> None:
    """Carry out ``writes`` through sysfs.write, each in its controller's directory. Never creates a
    file: a missing one is Unsupported naming the controller and the file (unless the write is
    optional); a refused write is ResourceError naming the file, the value and the errno."""
    for write in writes:
        directory = directory_of.get(write.controller)
        if directory is None:
            raise Unsupported(f"no {write.controller} cgroup controller is available here, needed for {write.file}")
        target = os.path.join(directory, write.file)
        if not os.path.exists(target):
            if write.optional:
                import logging  # not at the top: logging is not on the path of a container start

                logging.getLogger(__name__).debug("skipping %s: the kernel has no %s", write, target)
                continue
            if write.controller == "cgroup":  # a core file: no controller to enable
                raise Unsupported(f"the kernel has no cgroup file {write.file} in {directory}")
            raise Unsupported(
                f"cgroup controller {write.controller} has no file {write.file} in {directory} "
                "(is the controller enabled for this cgroup?)"
            )
        try:
            sysfs.write(target, write.value)
        except OSError as exc:
            raise ResourceError(
                f"cannot write {write.value!r} to {target} ({write.controller} controller): "
                f"{_errno_name(exc)} ({exc.strerror})"
            ) from exc


def _procs(directory: str) -> list[int]:
    """PIDs in ``directory`` and every cgroup below it."""
    found: list[int] = []
    if not os.path.isdir(directory):
        return found
    for current, _dirs, _files in os.walk(directory):
        try:
            with open(os.path.join(current, "cgroup.procs")) as stream:
                text = stream.read()
        except FileNotFoundError:
            continue
        found.extend(int(line) for line in text.split())
    return sorted(set(found))


def _remove_tree(directory: str) -> None:
    """rmdir ``directory`` and the cgroups below it, bottom-up. A cgroup whose last process has just
    exited can be busy for a moment, so EBUSY is retried for up to RMDIR_TIMEOUT.

    A container's cgroup is usually a leaf with no process left: one rmdir does it, with no walk."""
    try:
        os.rmdir(directory)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        # cgroupfs answers EBUSY for child cgroups and for processes; a plain directory, ENOTEMPTY
        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise ResourceError(f"cannot remove cgroup {directory}: {_errno_name(exc)} ({exc.strerror})") from exc
    for current, _dirs, _files in os.walk(directory, topdown=False):
        deadline = time.monotonic() + RMDIR_TIMEOUT
        attempt = 0
        while True:
            try:
                os.rmdir(current)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise ResourceError(f"cannot remove cgroup {current}: {_errno_name(exc)} ({exc.strerror})") from exc
                _pause(attempt)
                attempt += 1


class CgroupManager:
    """The common part of the v1 and v2 managers. ``relative`` is the cgroup path below each root
    ("pykata/c1": no leading slash)."""

    version = 0
    # A rootless container's cgroup (a delegated subtree; a user's systemd scope): its device rules are
    # not set, as runc's rootless containers. An unprivileged user may neither write devices.allow nor
    # attach a device program, and in its user namespace the container can make no device node.
    skip_devices = False

    def __init__(self, paths: HostPaths, layout: Layout, relative: str) -> None:
        self.paths = paths
        self.layout = layout
        self.relative = relative

    # --- to be provided by each version
    def directories(self) -> dict[str, str]:
        """controller -> the container's directory for it."""
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def hierarchy_directories(self) -> dict[str, str]:
        """directories(), with the named hierarchies (v1 "name=systemd") the container has a cgroup in
        of its own: what a container's cgroup mount shows it (rootfs.cgroup_binds)."""
        return self.directories()

    def plan(self, resources: Mapping[str, Any]) -> list[Write]:
        raise NotImplementedError

    def _usage_file(self) -> str | None:
        raise NotImplementedError

    def stats(self) -> CgroupStats:
        raise NotImplementedError

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        raise NotImplementedError

    def _procs_dir(self) -> str:
        raise NotImplementedError

    def memory_dir(self) -> str | None:
        raise NotImplementedError

    # --- shared
    def apply(self, resources: Mapping[str, Any]) -> None:
        """Validate ``resources`` (OCI linux.resources), then write them."""
        writes = self.plan(resources)
        self._check_memory_usage(resources)
        execute(writes, self._directory_of(writes))

    def _directory_of(self, writes: list[Write]) -> Mapping[str, str]:
        """controller -> directory for ``writes`` (directories(), unless a version knows better)."""
        return self.directories()

    def update(self, resources: Mapping[str, Any]) -> None:
        """Change limits of a live cgroup; fields that are absent stay as they are."""
        self._require_exists()
        self.apply(resources)

    def _require_exists(self) -> None:
        if not os.path.isdir(self._procs_dir()):
            raise NotFound(f"cgroup {self.relative} does not exist (was it created?)")

    def _check_memory_usage(self, resources: Mapping[str, Any]) -> None:
        from . import plan as planner

        limit = planner.memory_limit(resources)
        usage_file = self._usage_file()
        if limit is None or usage_file is None or not os.path.exists(usage_file):
            return
        usage = sysfs.read_int(usage_file)
        if limit < usage:
            raise InvalidArgument(
                f"linux.resources.memory.limit {limit} is below the memory the container uses now ({usage} bytes)"
            )

    def directories_below(self, sub: Mapping[str, str] | None) -> dict[str, str]:
        """directories(), each taken down to the sub-cgroup ``sub`` names for its controller (key "":
        every controller; ``pykata-runc exec --cgroup``, as runc's). Those must exist already: NotFound
        names a missing one; InvalidArgument a path that is not relative and plain."""
        directories = self.directories()
        if not sub:
            return directories
        for controller, below in sub.items():
            if not below or below.startswith("/") or normal_path(below) != below or ".." in below.split("/"):
                raise InvalidArgument(f"sub-cgroup {below!r}: give a relative path below the container's cgroup")
            if controller and controller not in directories:
                raise InvalidArgument(f"sub-cgroup {controller}:{below}: no {controller} controller here")
        out = {}
        for controller, directory in directories.items():
            wanted = sub.get(controller) or sub.get("")
            out[controller] = f"{directory}/{wanted}" if wanted else directory
        for directory in sorted(set(out.values()) - set(directories.values())):
            if not os.path.isdir(directory):
                raise NotFound(f"sub-cgroup {directory} does not exist: make it (mkdir) before moving a process there")
        return out

    def add_pid(self, pid: int, sub: Mapping[str, str] | None = None) -> None:
        """Move ``pid`` (a process, with all its threads) into the cgroup (or its sub-cgroups ``sub``:
        directories_below), in every hierarchy."""
        seen: set[str] = set()
        for controller, directory in self.directories_below(sub).items():
            if directory in seen:
                continue
            seen.add(directory)
            try:
                sysfs.write(f"{directory}/cgroup.procs", str(pid))
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise NotFound(f"process {pid} does not exist; cannot add it to cgroup {self.relative}") from exc
                raise ResourceError(
                    f"cannot add process {pid} to {directory} ({controller}): {_errno_name(exc)} ({exc.strerror})"
                ) from exc

    def self_attach_files(self, sub: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """(hierarchy root, file below it) pairs a new process writes "0" to, to move itself into the
        cgroup (or its sub-cgroups ``sub``: directories_below) before it does anything else. The root
        exists before the cgroup does: the process's parent opens it early, the process opens the file
        relative to it once the cgroup is made."""
        return []

    def pids(self) -> list[int]:
        """Every process in the cgroup and the cgroups below it."""
        return _procs(self._procs_dir())

    def freeze(self, timeout: float = FREEZE_TIMEOUT) -> None:
        self._require_exists()
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = FREEZE_TIMEOUT) -> None:
        self._require_exists()
        self._set_frozen(False, timeout)

    def exists(self) -> bool:
        return os.path.isdir(self._procs_dir())

    def destroy(self) -> None:
        """Remove the cgroup (and any below it) in every hierarchy. Processes are not killed: if any
        remain this raises ResourceError naming them and removes nothing."""
        remaining = self.pids()
        if remaining:
            raise ResourceError(f"cgroup {self.relative} still has processes {remaining}; stop them before removing it")
        for directory in sorted(set(self.directories().values())):
            _remove_tree(directory)

    def cpuset_dir(self) -> str:
        directory = self.directories().get("cpuset")
        if directory is None:
            raise Unsupported("no cpuset cgroup controller is available here")
        return directory

    def set_cpuset(self, cpus: str, mems: str | None = None) -> None:
        """Write the container's cpus (and memory nodes). The parent must already allow them: use
        ``propagate_cpuset`` to widen ancestors after CPU hotplug."""
        from . import plan as planner

        writes = planner.cpuset({"cpu": {"cpus": cpus, "mems": mems}})
        from agent.hotplug.cpuset import parse_cpuset

        parse_cpuset(cpus, what="cpuset cpus")
        if mems is not None:
            parse_cpuset(mems, what="cpuset mems")
        execute(writes, {"cpuset": self.cpuset_dir()})


class V1Manager(CgroupManager):
    version = 1

    def directories(self) -> dict[str, str]:
        return {name: f"{root}/{self.relative}" for name, root in sorted(self.layout.controllers.items())}

    def self_attach_files(self, sub: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """Each hierarchy's ``tasks`` file. A single-threaded process that writes "0" there moves itself
        without the kernel's global cgroup_threadgroup_rwsem, whose write side waits for an RCU grace
        period (~10 ms on an idle host) each time a cgroup.procs write finds it cold; container
        processes are single-threaded until they exec, so this moves the whole process."""
        below = self.directories_below(sub)
        files: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, root in sorted(self.layout.controllers.items()):
            real = _real_path(root)  # cpu and cpuacct are often one hierarchy under two names
            if real not in seen:
                seen.add(real)
                files.append((root, f"{below[name][len(root) + 1 :]}/tasks"))
        return files

    def memory_dir(self) -> str | None:
        return self.directories().get("memory")

    def _procs_dir(self) -> str:
        dirs = self.directories()
        for name in ("freezer", "pids", "memory", "cpu"):
            if name in dirs:
                return dirs[name]
        return next(iter(dirs.values()))

    def _usage_file(self) -> str | None:
        memory = self.memory_dir()
        return None if memory is None else f"{memory}/memory.usage_in_bytes"

    def create(self) -> None:
        """mkdir the path in every hierarchy. A new v1 cpuset cgroup has no cpus and no mems (no task
        could join it), so each empty level gets its parent's values, from the top down."""
        from . import plan as planner

        for directory in dict.fromkeys(self.directories().values()):
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise ResourceError(f"cannot create cgroup {directory}: {_errno_name(exc)} ({exc.strerror})") from exc
        cpuset_root = self.layout.controllers.get("cpuset")
        if cpuset_root is not None:
            parent = cpuset_root
            for part in self.relative.split("/"):
                child = f"{parent}/{part}"
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if not sysfs.read_text(f"{child}/{name}"):
                        execute([planner.Write("cpuset", name, sysfs.read_text(f"{parent}/{name}"))], {"cpuset": child})
                parent = child

    def plan(self, resources: Mapping[str, Any]) -> list[Write]:
        from . import plan as planner

        current: int | None = None
        memory = self.memory_dir()
        if memory is not None and os.path.exists(f"{memory}/memory.limit_in_bytes"):
            value = sysfs.read_int(f"{memory}/memory.limit_in_bytes")
            current = value if value < 2**62 else None  # the kernel's "unlimited" is near 2**63
        writes = planner.plan_v1(resources, current_memory_limit=current)
        if self.skip_devices or "devices" not in self.layout.controllers:
            writes = [w for w in writes if w.controller != "devices"]
        return writes

    def stats(self) -> CgroupStats:
        self._require_exists()
        from . import stats as reader  # stats parsing is for StatsContainer, not the start path

        return reader.read_v1(self.directories())

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        from . import plan as planner

        directory = self.directories().get("freezer")
        if directory is None:
            raise Unsupported("no freezer cgroup controller is mounted: pausing needs one")
        wanted = "FROZEN" if frozen else "THAWED"
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            # FREEZING can stall on a task in an uninterruptible sleep; writing again retries it
            execute([planner.Write("freezer", "freezer.state", wanted)], {"freezer": directory})
            state = sysfs.read_text(f"{directory}/freezer.state")
            if state == wanted:
                return
            if time.monotonic() >= deadline:
                raise ResourceError(f"cgroup {directory} is still {state} after {timeout} s (asked for {wanted})")
            _pause(attempt)
            attempt += 1


class V2Manager(CgroupManager):
    version = 2

    def __init__(self, paths: HostPaths, layout: Layout, relative: str, *, manage_root: bool = True) -> None:
        super().__init__(paths, layout, relative)
        self.manage_root = manage_root

    @property
    def path(self) -> str:
        return f"{self.layout.root}/{self.relative}"

    def directories(self) -> dict[str, str]:
        return {name: self.path for name in ("cgroup", *V2_CONTROLLERS)}

    def self_attach_files(self, sub: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """cgroup.procs: "0" moves the writer. This takes cgroup_threadgroup_rwsem like any move (the
        guest mounts cgroup2 with favordynmods, so that is cheap), but needs no round trip of the pid."""
        directory = self.directories_below(sub)["cgroup"]
        return [(self.layout.root, f"{directory[len(self.layout.root) + 1 :]}/cgroup.procs")]

    def directories_below(self, sub: Mapping[str, str] | None) -> dict[str, str]:
        if sub and set(sub) - {""}:
            named = ", ".join(f"{c}:{p}" for c, p in sorted(sub.items()) if c)
            raise InvalidArgument(f"sub-cgroup {named}: cgroup v2 has one hierarchy; give a path without controller")
        return super().directories_below(sub)

    def memory_dir(self) -> str | None:
        return self.path

    def _procs_dir(self) -> str:
        return self.path

    def _usage_file(self) -> str | None:
        return f"{self.path}/memory.current"

    def create(self) -> None:
        """mkdir the path, then enable the controllers containers use in each level's
        cgroup.subtree_control from the top: the root (only when ``manage_root``: the agent as the
        guest's init owns it) and every level below it down to the container's parent."""
        for directory in self._levels()[1:]:
            if not os.path.isdir(directory):
                try:
                    os.mkdir(directory)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise ResourceError(
                        f"cannot create cgroup {directory}: {_errno_name(exc)} ({exc.strerror})"
                    ) from exc
        self._enable_above(V2_CONTROLLERS)

    def _levels(self) -> list[str]:
        """The root, then each directory down to the container's."""
        levels = [self.layout.root]
        for part in self.relative.split("/"):
            levels.append(f"{levels[-1]}/{part}")
        return levels

    def _enable_above(self, controllers: Iterable[str]) -> None:
        """Enable ``controllers`` (those offered) in the subtree_control of every level above the
        container's: the root's only when ``manage_root``."""
        for level in self._levels()[:-1]:
            if level == self.layout.root and not self.manage_root:
                continue
            self.enable_controllers(level, controllers)

    @staticmethod
    def enable_controllers(directory: str | os.PathLike[str], wanted: Iterable[str]) -> list[str]:
        """Enable those of ``wanted`` that ``directory`` offers (cgroup.controllers) and has not
        enabled yet; returns the ones written."""
        control = os.path.join(directory, "cgroup.subtree_control")
        offered = set(sysfs.read_text(os.path.join(directory, "cgroup.controllers")).split())
        enabled = set(sysfs.read_text(control).split())
        missing = [name for name in wanted if name in offered and name not in enabled]
        for name in missing:
            try:
                sysfs.write(control, f"+{name}")
            except OSError as exc:
                raise ResourceError(
                    f"cannot enable the {name} controller in {control}: {_errno_name(exc)} ({exc.strerror})"
                ) from exc
        return missing

    def plan(self, resources: Mapping[str, Any]) -> list[Write]:
        from . import plan as planner

        return planner.plan_v2(resources)

    def _directory_of(self, writes: list[Write]) -> Mapping[str, str]:
        """One directory holds every controller's files. A write for a controller create() does not
        enable (a ``unified`` key may name any the parent offers, as misc.max; rdma) enables it first."""
        others = [w.controller for w in writes if w.controller not in ("cgroup", *V2_CONTROLLERS)]
        if others:
            self._enable_above(dict.fromkeys(others))
        return {**{w.controller: self.path for w in writes}, **self.directories()}

    def apply(self, resources: Mapping[str, Any]) -> None:
        """The writes of ``plan``, then the device rules as an eBPF program attached to the cgroup."""
        from . import plan as planner

        super().apply(resources)
        rules = [] if self.skip_devices else planner.device_rules(resources)
        if rules:
            from . import devices_v2

            devices_v2.attach(self.path, devices_v2.device_program(rules))

    def stats(self) -> CgroupStats:
        self._require_exists()
        from . import stats as reader

        return reader.read_v2(self.path)

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        from . import plan as planner

        if not os.path.exists(f"{self.path}/cgroup.freeze"):
            raise Unsupported(f"{self.path} has no cgroup.freeze (the kernel is older than 5.2)")
        execute([planner.Write("cgroup", "cgroup.freeze", "1" if frozen else "0")], {"cgroup": self.path})
        wanted = 1 if frozen else 0
        deadline = time.monotonic() + timeout
        attempt = 0
        from .stats import flat_keyed

        while flat_keyed(f"{self.path}/cgroup.events").get("frozen", -1) != wanted:
            if time.monotonic() >= deadline:
                what = "freeze" if frozen else "thaw"
                raise ResourceError(f"cgroup {self.path} did not {what} within {timeout} s (see cgroup.events)")
            _pause(attempt)
            attempt += 1


class NoCgroup(CgroupManager):
    """A rootless container's stand-in for a cgroup. An unprivileged user may make none (runc's
    rootless containers without a delegated cgroup), so the container's processes stay in the cgroup
    of whoever started them: limits are refused by name, pause and stats say they need a cgroup, and
    the container's processes are found by its pid namespace (its init's, given by the first
    ``add_pid`` or ``init_pid``)."""

    version = 0

    def __init__(self, paths: HostPaths, init_pid: int = 0) -> None:
        super().__init__(paths, Layout(version=0, root=""), "")
        self.init_pid = init_pid

    def directories(self) -> dict[str, str]:
        return {}

    def create(self) -> None:
        pass

    def plan(self, resources: Mapping[str, Any]) -> list[Write]:
        # device rules need no cgroup here: a user namespace can make no device node, and the only ones
        # bound in are the default ones (runc ignores them for rootless containers too)
        asked = sorted(key for key, value in resources.items() if value and key != "devices")
        if asked:
            raise Unsupported(
                f"linux.resources.{', '.join(asked)}: this container has no cgroup of its own to set limits in "
                "(made by a user other than root, who may not make one): leave linux.resources out"
            )
        return []

    def apply(self, resources: Mapping[str, Any]) -> None:
        self.plan(resources)

    def _usage_file(self) -> str | None:
        return None

    def stats(self) -> CgroupStats:
        raise Unsupported("statistics come from a cgroup, and this rootless container has none")

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        raise Unsupported("pausing freezes a cgroup, and this rootless container has none")

    def _require_exists(self) -> None:
        pass

    def directories_below(self, sub: Mapping[str, str] | None) -> dict[str, str]:
        if sub:
            raise Unsupported("this rootless container has no cgroup, and so no sub-cgroups to run a process in")
        return {}

    def self_attach_files(self, sub: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        return []

    def add_pid(self, pid: int, sub: Mapping[str, str] | None = None) -> None:
        self.directories_below(sub)
        if not self.init_pid:
            self.init_pid = pid  # the first process of the container is its init

    def pids(self) -> list[int]:
        """The processes in the init's pid namespace (every container that may lack a cgroup has one of
        its own: a user namespace owns it)."""
        if not self.init_pid:
            return []
        try:
            namespace = os.stat(f"{self.paths.proc_pid(self.init_pid)}/ns/pid").st_ino
        except OSError:
            return []
        found = []
        for entry in os.listdir(self.paths.proc):
            if entry.isdigit():
                try:
                    if os.stat(f"{self.paths.proc_pid(int(entry))}/ns/pid").st_ino == namespace:
                        found.append(int(entry))
                except OSError:
                    continue
        return sorted(found)

    def exists(self) -> bool:
        return True

    def destroy(self) -> None:
        pass


def manager_for(
    paths: HostPaths,
    cgroups_path: str,
    container_id: str,
    *,
    layout: Layout | None = None,
    manage_root: bool = True,
    systemd: bool | None = False,
) -> CgroupManager:
    """The manager of the cgroup for OCI ``linux.cgroupsPath`` (see ``container_cgroup``). Nothing is
    created until ``create()``. ``manage_root`` (v2) lets create() enable controllers in the root's
    cgroup.subtree_control; turn it off where the root belongs to someone else.

    ``systemd``: True, the systemd driver (systemd.SystemdManager: a transient scope; Unsupported where
    systemd is not init); None, that driver when the path is in systemd form (slice:prefix:name) and
    systemd is init, as Kata's agent chooses, else cgroupfs; False, cgroupfs."""
    if systemd or (systemd is None and is_systemd_path(cgroups_path)):
        from . import systemd as driver

        running = driver.systemd_running(paths)
        if systemd and not running:
            raise Unsupported(
                f"the systemd cgroup driver was asked for, but systemd is not this system's init "
                f"({paths.run}/systemd/system is missing): leave the systemd cgroup option out"
            )
        if running:
            return driver.manager(paths, layout or detect(paths), cgroups_path, container_id)
    relative = container_cgroup(cgroups_path, container_id)
    found = layout or detect(paths)
    if found.version == 2:
        return V2Manager(paths, found, relative, manage_root=manage_root)
    if not found.controllers:
        raise IncorrectState(f"cgroup v1 layout under {found.root} has no controllers")
    return V1Manager(paths, found, relative)
