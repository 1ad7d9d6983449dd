"""Which cgroup hierarchies the kernel has mounted (from mountinfo), and where a container's cgroup goes."""

from __future__ import annotations

from agent.errors import InvalidArgument, Unsupported
from agent.system.paths import HostPaths, normal_path
from agent.system.records import Record

# Controllers a v1 "cgroup" mount can carry (its super options name them); named hierarchies such as
# name=systemd carry none and are left alone.
V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)


class Layout(Record):
    """``version`` 2: one unified hierarchy at ``root``. ``version`` 1: ``controllers`` maps each v1
    controller to its mount point (read only; the default is shared). ``hybrid`` is v1 plus a cgroup2
    at ``unified`` (treated as v1). A Record, not a dataclass or NamedTuple, which would cost a
    millisecond or more (typing's import) on every container start."""

    __slots__ = _fields = ("version", "root", "controllers", "hybrid", "unified")
    version: int
    root: str
    controllers: dict[str, str]
    hybrid: bool
    unified: str | None

    def __init__(self, version: int, root: str, controllers: dict[str, str] | None = None, hybrid: bool = False,
                 unified: str | None = None) -> None:  # fmt: skip
        self._assign(version, root, {} if controllers is None else controllers, hybrid, unified)

    def controller_root(self, controller: str) -> str | None:
        if self.version == 2:
            return self.root
        return self.controllers.get(controller)


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out: list[str] = []
    index = 0
    while index < len(text):
        digits = text[index + 1 : index + 4]
        if text[index] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            index += 4
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of each line of /proc/self/mountinfo."""
    mounts: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 7:
            continue
        separator = fields.index("-")
        if len(fields) < separator + 4:
            continue
        mounts.append((_unescape(fields[4]), fields[separator + 1], fields[separator + 3]))
    return mounts


def detect(paths: HostPaths) -> Layout:
    """The cgroup layout under ``paths.cgroup_root``, from ``paths.mountinfo``. Mount points in that
    file are read as paths inside ``paths.root``; a later mount hides the earlier ones on its point and
    below it (a tmpfs over /sys/fs/cgroup hides the hierarchies mounted there before)."""
    try:
        with open(paths.mountinfo) as stream:
            text = stream.read()
    except OSError as exc:
        raise Unsupported(f"cannot read {paths.mountinfo} to find the cgroup mounts: {exc.strerror}") from exc
    root = paths.cgroup_root
    below = root + "/"
    by_point: dict[str, tuple[str, str]] = {}
    for point, fstype, options in parse_mountinfo(text):
        where = normal_path(paths.inside(point))
        if where == "/" or root.startswith(where + "/"):
            by_point.clear()  # mounted over an ancestor of the root: everything under it is hidden
        elif where == root or where.startswith(below):
            for earlier in [p for p in by_point if p == where or p.startswith(where + "/")]:
                del by_point[earlier]  # hidden by this mount (mountinfo lists mounts in mount order)
            by_point[where] = (fstype, options)
    if by_point.get(root, ("", ""))[0] == "cgroup2":
        return Layout(version=2, root=root)
    controllers: dict[str, str] = {}
    unified: str | None = None
    for where, (fstype, options) in by_point.items():
        if fstype == "cgroup2":
            unified = where
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in V1_CONTROLLERS:
                    controllers[option] = where
    if controllers:
        return Layout(version=1, root=root, controllers=controllers, hybrid=unified is not None, unified=unified)
    if unified is not None:
        # a lone cgroup2 below the root (systemd's "unified" without v1 controllers): use it as v2
        return Layout(version=2, root=unified)
    raise Unsupported(f"no cgroup filesystem is mounted at or under {root} (see {paths.mountinfo})")


# characters systemd allows in a unit name
UNIT_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.\\@-")


def is_systemd_path(cgroups_path: str) -> bool:
    """``slice:prefix:name``: systemd's form of linux.cgroupsPath."""
    return "/" not in cgroups_path and cgroups_path.count(":") == 2


def _unit_name(name: str) -> bool:
    return bool(name) and len(name) <= 255 and UNIT_CHARACTERS.issuperset(name)


def slice_path(slice_name: str) -> str:
    """The cgroup path of a systemd slice below the root, as systemd places it: ``a-b.slice`` is
    ``a.slice/a-b.slice``; the root slice (``-``, ``-.slice``; ``.`` too) is ``""``. InvalidArgument for
    a name systemd would not take as a slice."""
    if slice_name in ("-", "-.slice", "."):
        return ""
    stem = slice_name.removesuffix(".slice")
    if stem == slice_name or not stem or not _unit_name(slice_name) or "--" in stem or "-" in (stem[0], stem[-1]):
        raise InvalidArgument(
            f"linux.cgroupsPath slice {slice_name!r}: a slice is NAME.slice, dashes marking sub-slices "
            "(user-1000.slice is below user.slice), or - for the root slice"
        )
    parts = stem.split("-")
    return "/".join("-".join(parts[: n + 1]) + ".slice" for n in range(len(parts)))


def systemd_units(cgroups_path: str) -> tuple[str, str]:
    """(slice, scope unit) for ``slice:prefix:name``, as runc names them: ``prefix-name.scope``
    (``name.scope`` for an empty prefix) in ``slice`` (``system.slice`` when empty). A name ending in
    ``.slice`` (runc makes the container a slice then) is refused: Unsupported."""
    slice_name, prefix, name = cgroups_path.split(":")
    if not name:
        raise InvalidArgument(f"linux.cgroupsPath {cgroups_path!r}: systemd form slice:prefix:name needs a name")
    if name.endswith(".slice"):
        raise Unsupported(
            f"linux.cgroupsPath {cgroups_path!r}: a .slice name makes the container a slice unit, which is not "
            "done here; give a name for a scope"
        )
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    if not _unit_name(unit):
        raise InvalidArgument(
            f"linux.cgroupsPath {cgroups_path!r}: {unit!r} is not a unit name systemd accepts "
            "(letters, digits and :_.\\@- only, at most 255 characters)"
        )
    slice_name = slice_name or "system.slice"
    slice_path(slice_name)  # checked here, before anything is made
    return slice_name, unit


def container_cgroup(cgroups_path: str, container_id: str) -> str:
    """The relative cgroup path for OCI ``linux.cgroupsPath``, without a leading slash.

    - empty: ``pykata/<container_id>``;
    - ``/a/b`` or ``a/b``: ``a/b`` (both are taken from the hierarchy root: the agent runs at the root);
    - systemd style ``slice:prefix:name`` (no ``/``): where systemd would put that scope
      (``systemd_units``, ``slice_path``): ``a-b.slice:p:n`` is ``a.slice/a-b.slice/p-n.scope``. The
      systemd driver (systemd.py) has systemd make it; otherwise it is made directly in cgroupfs.
    """
    if "\0" in cgroups_path:
        raise InvalidArgument("linux.cgroupsPath must not contain a NUL byte")
    if not cgroups_path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise InvalidArgument(f"container id {container_id!r} cannot name a cgroup")
        return f"pykata/{container_id}"
    if is_systemd_path(cgroups_path):
        slice_name, unit = systemd_units(cgroups_path)
        return "/".join(part for part in (slice_path(slice_name), unit) if part)
    parts = [part for part in cgroups_path.split("/") if part and part != "."]
    if any(part == ".." for part in parts):
        raise InvalidArgument(f"linux.cgroupsPath {cgroups_path!r} must not contain '..'")
    if not parts:
        raise InvalidArgument(f"linux.cgroupsPath {cgroups_path!r} names the cgroup root; give a cgroup below it")
    return "/".join(parts)
