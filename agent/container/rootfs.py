"""The container's root filesystem: first a plan (a list of operations that can be printed and
tested without root), then its execution inside the container's fresh mount namespace.

Destinations are container paths; each is resolved under the rootfs at execution time with
``secure_join`` (symlinks in the image are followed as if the rootfs were "/", so a hostile image
cannot make a mount land outside it). Sources of bind mounts are host paths, resolved before the
root changes.
"""

from __future__ import annotations

import errno
import os
import stat

from agent.container.spec import Mount as SpecMount
from agent.container.spec import Spec, id_map_text
from agent.system import libc
from agent.system.mountopts import IDMAP_WORDS, PROPAGATION_WORDS, parse_mount_options
from agent.system.paths import HostPaths, normal_path
from agent.system.records import Record

DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))  # fmt: skip
# flags that only a bind remount can apply
_BIND_REMOUNT_FLAGS = (libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_NOATIME
                       | libc.MS_NOSYMFOLLOW)  # fmt: skip


class Mkdir(Record):
    _fields = ("path",)
    __slots__ = _fields
    path: str  # container path

    def __init__(self, path: str) -> None:
        self._assign(path)

    def describe(self) -> str:
        return f"mkdir -p {self.path}"


class Mount(Record):
    _fields = ("source", "target", "fstype", "flags", "data", "host_source", "copy_up")
    __slots__ = _fields
    source: str
    target: str  # container path
    fstype: str
    flags: int
    data: str
    host_source: bool  # source is a host path that must exist (bind mounts)
    copy_up: bool  # tmpcopyup: the new (tmpfs) mount starts with a copy of what the target held

    def __init__(
        self,
        source: str,
        target: str,
        fstype: str,
        flags: int = 0,
        data: str = "",
        host_source: bool = False,
        copy_up: bool = False,
    ) -> None:
        self._assign(source, target, fstype, flags, data, host_source, copy_up)

    def describe(self) -> str:
        copy_up = " (copy up)" if self.copy_up else ""
        return (f"mount -t {self.fstype or 'none'} {self.source} {self.target} flags={self.flags:#x} "
                f"data={self.data!r}{copy_up}")  # fmt: skip


class Remount(Record):
    _fields = ("target", "flags")
    __slots__ = _fields
    target: str
    flags: int

    def __init__(self, target: str, flags: int) -> None:
        self._assign(target, flags)

    def describe(self) -> str:
        return f"mount -o remount,bind {self.target} flags={self.flags:#x}"


class SetAttr(Record):
    """mount_setattr(2) with AT_RECURSIVE: the recursive mount options (rro, rnosuid...)."""

    _fields = ("target", "attr_set", "attr_clr")
    __slots__ = _fields
    target: str
    attr_set: int
    attr_clr: int

    def __init__(self, target: str, attr_set: int, attr_clr: int) -> None:
        self._assign(target, attr_set, attr_clr)

    def describe(self) -> str:
        return f"mount_setattr -R {self.target} set={self.attr_set:#x} clear={self.attr_clr:#x}"


class Propagate(Record):
    _fields = ("target", "flags")
    __slots__ = _fields
    target: str
    flags: int

    def __init__(self, target: str, flags: int) -> None:
        self._assign(target, flags)

    def describe(self) -> str:
        return f"mount --make {self.flags:#x} {self.target}"


class Symlink(Record):
    _fields = ("link", "points_to")
    __slots__ = _fields
    link: str
    points_to: str

    def __init__(self, link: str, points_to: str) -> None:
        self._assign(link, points_to)

    def describe(self) -> str:
        return f"ln -s {self.points_to} {self.link}"


class BindDevice(Record):
    _fields = ("host_path", "target")
    __slots__ = _fields
    host_path: str
    target: str

    def __init__(self, host_path: str, target: str) -> None:
        self._assign(host_path, target)

    def describe(self) -> str:
        return f"bind device {self.host_path} -> {self.target}"


class Mknod(Record):
    _fields = ("target", "kind", "major", "minor", "mode", "uid", "gid")
    __slots__ = _fields
    target: str
    kind: str  # "c", "b" or "p", as linux.devices[].type says ("u" means "c")
    major: int
    minor: int
    mode: int
    uid: int
    gid: int

    def __init__(
        self, target: str, kind: str, major: int, minor: int, mode: int = 0o666, uid: int = 0, gid: int = 0
    ) -> None:
        self._assign(target, kind, major, minor, mode, uid, gid)

    def describe(self) -> str:
        return f"mknod -m {self.mode:o} {self.target} {self.kind} {self.major} {self.minor} ({self.uid}:{self.gid})"


class IdmappedBind(Record):
    """A bind mount whose files' owners are seen through ``uid_map``/``gid_map`` (runtime-spec 1.2's
    idmapped mount; the maps in /proc/<pid>/uid_map's form, "on-disk id, id seen, count" per line).
    The tree is made by detach_idmapped before the process leaves the runtime's user namespace
    (making one takes privilege over the source's file system), and put in place by execute."""

    _fields = ("source", "target", "recursive", "idmap_recursive", "uid_map", "gid_map")
    __slots__ = _fields
    source: str
    target: str  # container path
    recursive: bool  # rbind: the mounts below the source come along
    idmap_recursive: bool  # ridmap: they are idmapped too
    uid_map: str
    gid_map: str

    def __init__(
        self, source: str, target: str, recursive: bool, idmap_recursive: bool, uid_map: str, gid_map: str
    ) -> None:
        self._assign(source, target, recursive, idmap_recursive, uid_map, gid_map)

    def describe(self) -> str:
        maps = f"uids {self.uid_map.strip()!r} gids {self.gid_map.strip()!r}".replace("\\n", "; ")
        kind = "rbind" if self.recursive else "bind"
        return f"idmapped {kind} {self.source} {self.target} ({'r' if self.idmap_recursive else ''}idmap {maps})"


Operation = Mkdir | Mount | Remount | SetAttr | Propagate | Symlink | BindDevice | Mknod | IdmappedBind


class RootfsPlan:
    """Every mount step for one container, in order, and what follows the root change."""

    def __init__(
        self,
        rootfs: str,
        operations: list[Operation] | None = None,
        masked_paths: tuple[str, ...] = (),
        readonly_paths: tuple[str, ...] = (),
        readonly_root: bool = False,
        no_pivot: bool = False,
        propagation: int = libc.MS_SLAVE | libc.MS_REC,
    ) -> None:
        self.rootfs = rootfs
        self.operations: list[Operation] = [] if operations is None else operations
        self.masked_paths = masked_paths
        self.readonly_paths = readonly_paths
        self.readonly_root = readonly_root
        self.no_pivot = no_pivot
        self.propagation = propagation

    def describe(self) -> list[str]:
        return [op.describe() for op in self.operations]


# The host's cgroup hierarchies as a container mounts them: (kind, name, link target) per entry,
# kept per cgroup root and refreshed when the root directory changes (an entry added or removed).
_cgroup_layouts: dict[str, tuple[tuple[int, int], tuple[tuple[str, str, str], ...]]] = {}


def _cgroup_layout(root: str) -> tuple[tuple[str, str, str], ...]:
    """("v2", "", "") for a cgroup2 root; else ("link", name, target) and ("v1", name, "") entries."""
    try:
        st = os.stat(root)
        key = (st.st_ino, st.st_mtime_ns)
    except OSError:
        key = (0, 0)
    cached = _cgroup_layouts.get(root)
    if cached is not None and cached[0] == key and key != (0, 0):
        return cached[1]
    entries: list[tuple[str, str, str]] = []
    if os.path.exists(f"{root}/cgroup.controllers"):
        entries.append(("v2", "", ""))
    else:
        try:
            with os.scandir(root) as listing:
                children = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            children = []
        for entry in children:
            if entry.is_symlink():
                entries.append(("link", entry.name, os.readlink(entry.path)))
            elif entry.is_dir() and entry.name != "unified" and os.path.exists(f"{entry.path}/cgroup.procs"):
                entries.append(("v1", entry.name, ""))
    layout = tuple(entries)
    _cgroup_layouts[root] = (key, layout)
    return layout


def needs_cgroup_binds(paths: HostPaths, in_user_ns: bool, cgroup_ns: bool) -> bool:
    """Whether the spec's cgroup mount shows the container its own cgroups through bind mounts
    (``cgroup_binds``) rather than cgroup file systems mounted afresh, as runc decides: in a user
    namespace (which may not mount a cgroup file system), and on cgroup v1 without a cgroup namespace
    (a fresh v1 mount there would show the whole hierarchy; runc binds the container's own cgroup in
    each). cgroup v2 without a cgroup namespace is a fresh cgroup2 mount, as with runc."""
    if in_user_ns:
        return True
    return not cgroup_ns and _cgroup_layout(os.fspath(paths.cgroup_root)) != (("v2", "", ""),)


def _cgroup_mount_ops(
    paths: HostPaths, target: str, flags: int, binds: dict[str, str] | None = None
) -> list[Operation]:
    """The spec's cgroup mount. ``binds`` (hierarchy name, "" for cgroup2 -> the host directory to show
    there; see needs_cgroup_binds) makes it bind mounts of those directories, read-only when the spec's
    mount is, as with runc; without, cgroup file systems are mounted."""
    layout = _cgroup_layout(os.fspath(paths.cgroup_root))
    hardened = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    bind_ro = (flags & libc.MS_RDONLY) | hardened
    if layout == (("v2", "", ""),):
        if binds is None:
            return [Mkdir(target), Mount("cgroup", target, "cgroup2", flags)]
        return [Mkdir(target), Mount(binds[""], target, "", libc.MS_BIND | libc.MS_REC, "", host_source=True),
                Remount(target, bind_ro)]  # fmt: skip
    ops: list[Operation] = [Mkdir(target), Mount("tmpfs", target, "tmpfs", hardened, "mode=755")]
    for kind, name, points_to in layout:
        if kind == "link":
            ops.append(Symlink(f"{target}/{name}", points_to))
        elif binds is None:
            sub = f"{target}/{name}"
            data = name if name != "systemd" else "none,name=systemd"
            ops += [Mkdir(sub), Mount("cgroup", sub, "cgroup", flags, data)]
        elif name in binds:
            sub = f"{target}/{name}"
            ops += [Mkdir(sub), Mount(binds[name], sub, "", libc.MS_BIND | libc.MS_REC, "", host_source=True),
                    Remount(sub, bind_ro)]  # fmt: skip
    if flags & libc.MS_RDONLY:
        ops.append(Remount(target, libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC))
    return ops


def cgroup_binds(paths: HostPaths, directories: dict[str, str] | None) -> dict[str, str]:
    """What the container's cgroup mount shows of each hierarchy (keyed as _cgroup_mount_ops takes
    them; see needs_cgroup_binds): ``directories`` (controller, or a named hierarchy such as
    "name=systemd" -> the container's cgroup: its manager's ``hierarchy_directories()``), and for a
    hierarchy it does not name (or all, when None: a rootless container without a cgroup of its own)
    the cgroup this process is in, which the container's process inherits there."""
    root = os.fspath(paths.cgroup_root)
    own: dict[frozenset[str], str] | None = None  # read when a hierarchy needs it
    binds: dict[str, str] = {}
    for kind, name, _points_to in _cgroup_layout(root):
        if kind == "link":
            continue
        names = [] if kind == "v2" else (["name=systemd"] if name == "systemd" else name.split(","))
        source = None
        if directories is not None:
            source = next((directories[c] for c in (names or ["cgroup"]) if c in directories), None)
        if source is None:
            own = _own_cgroups(paths) if own is None else own
            found = own.get(frozenset(names))
            source = None if found is None else normal_path(f"{root}/{name}{found}")
        if source is not None:
            binds["" if kind == "v2" else name] = source
    return binds


def _own_cgroups(paths: HostPaths) -> dict[frozenset[str], str]:
    """This process's cgroup in each hierarchy (/proc/self/cgroup), by the hierarchy's controller names
    (an empty set for cgroup2)."""
    own: dict[frozenset[str], str] = {}
    with open(f"{paths.proc}/self/cgroup", encoding="utf-8") as stream:
        for line in stream.read().splitlines():
            _number, controllers, where = line.split(":", 2)
            own[frozenset(controllers.split(",")) if controllers else frozenset()] = where
    return own


# File systems that take no SELinux context= option from linux.mountLabel (runc labels every other
# mount it makes but binds)
UNLABELLED_TYPES = ("proc", "sysfs", "mqueue", "cgroup", "cgroup2")


def plan_rootfs(
    paths: HostPaths,
    spec: Spec,
    rootfs: str | os.PathLike[str],
    bundle: str | os.PathLike[str] | None,
    *,
    no_pivot: bool,
    cgroup_binds: dict[str, str] | None = None,
) -> RootfsPlan:
    """Every mount step for ``spec``, in order: the spec's mounts, then default devices and /dev links.
    A relative bind source is taken under ``bundle``; ``cgroup_binds`` (see there) makes the spec's
    cgroup mount read-only binds, for a container in a user namespace."""
    bundle_dir = None if bundle is None else os.fspath(bundle)
    ops: list[Operation] = []
    dev_mounted = False
    for mount in spec.mounts:
        options = parse_mount_options(mount.options)
        flags, propagation = options.flags, options.propagation
        target = mount.destination
        if mount.type == "cgroup" or mount.type == "cgroup2":
            ops += _cgroup_mount_ops(paths, target, flags, cgroup_binds)
        elif flags & libc.MS_BIND or mount.type == "bind":
            source = mount.source
            if not source.startswith("/") and bundle_dir is not None:
                source = normal_path(os.path.join(bundle_dir, source))
            if mount.uid_mappings or options.idmap:
                ops.append(_idmapped_bind(spec, mount, source, bool(flags & libc.MS_REC), options.idmap))
            else:
                ops.append(Mount(source, target, "", (flags & libc.MS_REC) | libc.MS_BIND, "", host_source=True))
            if flags & _BIND_REMOUNT_FLAGS:
                ops.append(Remount(target, flags & _BIND_REMOUNT_FLAGS))
        else:
            ops.append(Mkdir(target))
            # tmpcopyup is for a tmpfs (as runc has it); on another filesystem it is dropped
            copy_up = options.copy_up and mount.type == "tmpfs"
            data = options.data_text
            if spec.linux.mount_label and mount.type not in UNLABELLED_TYPES:
                # SELinux: files of the new file system get the container's mount label (runc's rule)
                data = ",".join(part for part in (data, f'context="{spec.linux.mount_label}"') if part)
            ops.append(Mount(mount.source or mount.type, target, mount.type, flags, data, copy_up=copy_up))
        if options.attr_set or options.attr_clr:
            ops.append(SetAttr(target, options.attr_set, options.attr_clr))
        if propagation and mount.type not in ("cgroup", "cgroup2"):
            ops.append(Propagate(target, propagation))
        if target == "/dev":
            dev_mounted = True
    if dev_mounted:
        for name in DEFAULT_DEVICES:
            ops.append(BindDevice(f"{paths.dev}/{name}", f"/dev/{name}"))
        for name, points_to in DEV_SYMLINKS:
            ops.append(Symlink(f"/dev/{name}", points_to))
        ops.append(Symlink("/dev/core", "/proc/kcore"))
    for device in spec.linux.devices:
        ops.append(
            Mknod(
                target=str(device.get("path", "")),
                kind="c" if device.get("type") == "u" else str(device.get("type", "c")),
                major=int(device.get("major") or 0),
                minor=int(device.get("minor") or 0),
                mode=int(device["fileMode"]) & 0o7777 if device.get("fileMode") is not None else 0o666,
                uid=int(device.get("uid") or 0),
                gid=int(device.get("gid") or 0),
            )
        )
    propagation = PROPAGATION_WORDS.get(spec.linux.rootfs_propagation, libc.MS_SLAVE | libc.MS_REC)
    return RootfsPlan(
        rootfs=os.fspath(rootfs),
        operations=ops,
        masked_paths=spec.linux.masked_paths,
        readonly_paths=spec.linux.readonly_paths,
        readonly_root=spec.root_readonly,
        no_pivot=no_pivot,
        propagation=propagation,
    )


# --- execution (runs in the container process, in its own mount namespace)


def _idmapped_bind(spec: Spec, mount: SpecMount, source: str, recursive: bool, idmap: int) -> IdmappedBind:
    """The mount's own maps, or (idmap/ridmap alone) the container's user namespace's (validate checks
    one of them is there)."""
    return IdmappedBind(source, mount.destination, recursive, idmap == IDMAP_WORDS["ridmap"],
                        id_map_text(mount.uid_mappings or spec.linux.uid_mappings),
                        id_map_text(mount.gid_mappings or spec.linux.gid_mappings))  # fmt: skip


def detach_idmapped(operations: list[IdmappedBind], proc: str) -> list[int]:
    """The detached, idmapped trees for ``operations``, in their order (descriptors, close-on-exec):
    made here, in the runtime's user and mount namespaces, before the container process leaves them."""
    namespaces: dict[tuple[str, str], int] = {}
    trees: list[int] = []
    try:
        for op in operations:
            key = (op.uid_map, op.gid_map)
            if key not in namespaces:
                namespaces[key] = _mapping_namespace(op.uid_map, op.gid_map, proc)
            tree = libc.open_tree(op.source, recursive=op.recursive)
            trees.append(tree)
            try:
                libc.mount_setattr(op.source, libc.MOUNT_ATTR_IDMAP, 0, recursive=op.idmap_recursive, tree_fd=tree,
                                   userns_fd=namespaces[key])  # fmt: skip
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EPERM):
                    why = f"{exc.strerror} (its file system may not support idmapped mounts, or it is idmapped already)"
                    raise OSError(exc.errno, why, op.source) from None
                raise
    except BaseException:
        for tree in trees:
            os.close(tree)
        raise
    finally:
        for fd in namespaces.values():
            os.close(fd)
    return trees


def _mapping_namespace(uid_map: str, gid_map: str, proc: str) -> int:
    """A user namespace with these maps, for MOUNT_ATTR_IDMAP: a forked child unshares it and stays
    until we have opened it (a namespace needs a process to be made in)."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(report_r)
            os.close(hold_w)
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(report_w, os.readlink(f"{proc}/self").encode())  # our pid as that /proc names it
            os.read(hold_r, 1)  # until the parent is done (EOF)
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(hold_r)
    try:
        pid = os.read(report_r, 32).decode()
        if not pid:
            raise OSError(errno.EPERM, "could not make a user namespace for an idmapped mount", f"{proc}/self")
        for kind, text in (("uid", uid_map), ("gid", gid_map)):
            with open(f"{proc}/{pid}/{kind}_map", "w") as f:
                f.write(text)
        return os.open(f"{proc}/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(report_r)
        os.close(hold_w)
        os.waitpid(child, 0)


def secure_join(root: str, path: str, *, depth: int = 0) -> str:
    """``path`` under ``root``, following symlinks as if ``root`` were "/"."""
    if depth > 40:
        raise OSError(40, "too many levels of symbolic links", path)
    current = root
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for index, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            if not current.startswith(root):
                current = root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            rest = "/".join(parts[index + 1 :])
            base = "" if target.startswith("/") else current[len(root) :]
            return secure_join(root, f"{base}/{target}/{rest}", depth=depth + 1)
        current = candidate
    return current


def _make_dirs(path: str) -> None:
    """``mkdir -p``: one mkdir when the parent exists (the common case), makedirs otherwise."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def _make_target(target: str, like: str | None) -> None:
    """Create a mount point: a file when the source is a file, else a directory."""
    if like is not None and not stat.S_ISDIR(os.stat(like).st_mode):
        _make_dirs(os.path.dirname(target))
        # an empty file to mount on (an existing one is kept; a symlink there is refused)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        return
    _make_dirs(target)


class _Resolver:
    """secure_join for one plan's execution, remembering what it resolved: a path's parent is looked
    up once for all its children. What a mount or a new link changes is forgotten (``changed``)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._known: dict[str, str] = {}
        self.made: set[str] = set()  # directories made (or found) by this plan's Mkdir steps

    def __call__(self, path: str) -> str:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            return self.root
        if ".." in parts:
            return secure_join(self.root, path)
        key = "/".join(parts)
        known = self._known.get(key)
        if known is not None:
            return known
        parent = self("/".join(parts[:-1])) if len(parts) > 1 else self.root
        candidate = f"{parent}/{parts[-1]}"
        if os.path.islink(candidate):
            candidate = secure_join(self.root, path)  # the walk from the root follows the link
        self._known[key] = candidate
        return candidate

    def changed(self, path: str) -> None:
        """Something new sits at container path ``path`` (a mount, a link): forget every path that
        resolved to it or below it, whatever the name it was looked up by."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            self._known.clear()
            self.made.clear()
            return
        key = "/".join(parts)
        host = self._known.get(key)
        if host is None:  # where the path led before the change: its parent has not changed
            host = f"{self('/'.join(parts[:-1])) if len(parts) > 1 else self.root}/{parts[-1]}"
        key_below, host_below = key + "/", host + "/"
        stale = [k for k, v in self._known.items()
                 if k == key or k.startswith(key_below) or v == host or v.startswith(host_below)]  # fmt: skip
        for known in stale:
            del self._known[known]
        self.made = {made for made in self.made if made != host and not made.startswith(host_below)}


def execute(plan: RootfsPlan, detached: list[int] | None = None) -> None:
    """Mount everything under the rootfs (still before the root changes); ``detached``: the trees
    detach_idmapped made for the plan's IdmappedBind steps, in order (each is closed once placed)."""
    trees = iter(detached or ())
    rootfs = plan.rootfs
    libc.mount(None, "/", None, plan.propagation)
    libc.mount(rootfs, rootfs, None, libc.MS_BIND | libc.MS_REC)
    resolve = _Resolver(rootfs)
    for op in plan.operations:
        if isinstance(op, Mkdir):
            made = resolve(op.path)
            _make_dirs(made)
            resolve.made.add(made)
        elif isinstance(op, Mount):
            target = resolve(op.target)
            if op.host_source:
                _make_target(target, op.source)
            elif target not in resolve.made and not os.path.isdir(target):  # unless a Mkdir made it
                os.makedirs(target, exist_ok=True)
            if op.copy_up:
                _mount_copied_up(op, target)
            else:
                libc.mount(op.source, target, op.fstype or None, op.flags, op.data or None)
            resolve.changed(op.target)
        elif isinstance(op, IdmappedBind):
            target = resolve(op.target)
            _make_target(target, op.source)
            tree = next(trees)
            libc.move_mount(tree, target)
            os.close(tree)
            resolve.changed(op.target)
        elif isinstance(op, Remount):
            bind_remount(resolve(op.target), op.flags)
        elif isinstance(op, SetAttr):
            target = resolve(op.target)
            try:
                libc.mount_setattr(target, op.attr_set, op.attr_clr)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    raise OSError(exc.errno, "recursive mount options (rro, rnosuid...) need mount_setattr(2), "
                                  "Linux 5.12 or later", op.target) from None  # fmt: skip
                raise
        elif isinstance(op, Propagate):
            libc.mount(None, resolve(op.target), None, op.flags)
        elif isinstance(op, Symlink):
            link = resolve(os.path.dirname(op.link)) + "/" + os.path.basename(op.link)
            if not os.path.lexists(link):
                os.symlink(op.points_to, link)
                resolve.changed(op.link)
        elif isinstance(op, Mknod):
            target = resolve(op.target)
            _make_dirs(os.path.dirname(target))
            if os.path.lexists(target):
                os.unlink(target)
            kind = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[op.kind]
            os.mknod(target, kind | op.mode, os.makedev(op.major, op.minor))
            os.chmod(target, op.mode)  # mknod's mode passes through the umask
            os.chown(target, op.uid, op.gid)
            resolve.changed(op.target)
        elif isinstance(op, BindDevice):
            target = resolve(op.target)
            if os.path.lexists(target) and not os.path.isfile(target):
                os.unlink(target)
            _make_target(target, op.host_path)
            libc.mount(op.host_path, target, None, libc.MS_BIND)
            resolve.changed(op.target)


def _mount_copied_up(op: Mount, target: str) -> None:
    """tmpcopyup: mount the tmpfs on ``target`` with a copy of what ``target`` held (its files, links,
    device nodes and subdirectories, with their modes, owners and times), as runc does. The directory
    stays reachable through a descriptor opened before the mount covers it. A read-only tmpfs (``ro``)
    cannot take the copy: the mount is then made writable for it and remounted read-only after."""
    below = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        libc.mount(op.source, target, op.fstype or None, op.flags & ~libc.MS_RDONLY, op.data or None)
        _copy_tree(below, target)  # into the tmpfs, whose own mode is its options' (mode=...)
        if op.flags & libc.MS_RDONLY:
            libc.mount(None, target, None, libc.MS_REMOUNT | op.flags, op.data or None)
    finally:
        os.close(below)


def _copy_tree(source_dir: int, destination: str) -> None:
    """Copy the entries of the directory open as ``source_dir`` into the directory ``destination``."""
    with os.scandir(source_dir) as entries:
        listed = list(entries)
    for entry in listed:
        info = entry.stat(follow_symlinks=False)
        mode = info.st_mode
        target = f"{destination}/{entry.name}"
        if stat.S_ISDIR(mode):
            os.mkdir(target, 0o700)
            inner = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_dir)
            try:
                _copy_tree(inner, target)
            finally:
                os.close(inner)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(entry.name, dir_fd=source_dir), target)
        elif stat.S_ISREG(mode):
            _copy_file(source_dir, entry.name, target, info.st_size)
        else:  # device nodes, fifos, sockets
            os.mknod(target, mode, info.st_rdev)
        os.chown(target, info.st_uid, info.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(target, stat.S_IMODE(mode))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _copy_file(source_dir: int, name: str, target: str, size: int) -> None:
    reader = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_dir)
    try:
        writer = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            left = size
            while left > 0:
                copied = os.sendfile(writer, reader, None, left)
                if copied == 0:  # the file shrank meanwhile
                    break
                left -= copied
        finally:
            os.close(writer)
    finally:
        os.close(reader)


def bind_console(plan: RootfsPlan, slave_path: str) -> None:
    target = secure_join(plan.rootfs, "/dev/console")
    _make_target(target, slave_path)
    libc.mount(slave_path, target, None, libc.MS_BIND)


def enter_root(plan: RootfsPlan) -> None:
    """Make the rootfs "/": pivot_root, or MS_MOVE + chroot where pivot_root cannot work (an
    initramfs root, which the kernel never lets pivot)."""
    os.chdir(plan.rootfs)
    if plan.no_pivot:
        libc.mount(plan.rootfs, "/", None, libc.MS_MOVE)
        os.chroot(".")
    else:
        # pivot_root(".", ".") puts the old root on top of the new one; detaching "." drops it.
        libc.pivot_root(".", ".")
        libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def finish(plan: RootfsPlan) -> None:
    """After the root changed: masked paths, read-only paths, read-only root."""
    for path in plan.masked_paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY)
            else:
                libc.mount("/dev/null", path, None, libc.MS_BIND)
        except FileNotFoundError:
            continue
    for path in plan.readonly_paths:
        try:
            libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
            bind_remount(path, libc.MS_RDONLY | libc.MS_REC)
        except FileNotFoundError:
            continue
    if plan.readonly_root:
        bind_remount("/", libc.MS_RDONLY)


# The flags a mount made in a more privileged mount namespace keeps locked in a user namespace's copy.
LOCKED_FLAGS = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC  # (statvfs's ST_ bits are the same)


def bind_remount(path: str, flags: int) -> None:
    """Remount the bind mount at ``path`` with ``flags`` (MS_RDONLY, MS_NOSUID...). In a user namespace
    (a rootless container) the kernel refuses a remount that would drop a flag it locked on a mount
    copied from a more privileged namespace (a rootfs under a nosuid,nodev /run, say): EPERM. As runc
    does then, the remount is tried again keeping the flags the mount has of those (the least it may
    have); any other refusal stands."""
    try:
        libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | flags)
    except PermissionError:
        kept = os.statvfs(path).f_flag & LOCKED_FLAGS
        if not kept & ~flags:
            raise
        libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | flags | kept)


def root_is_initramfs(paths: HostPaths) -> bool:
    """True when "/" is the kernel's rootfs (ramfs/tmpfs initramfs): pivot_root cannot work there."""
    try:
        with open(paths.mountinfo) as stream:
            text = stream.read()
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            after = fields[fields.index("-") + 1 :] if "-" in fields else []
            # the kernel's own root shows as fstype "rootfs" (a ramfs or tmpfs underneath)
            return bool(after) and after[0] in ("rootfs", "ramfs")
    return False
