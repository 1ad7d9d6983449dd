"""The floor of a cold Python container run: the kernel work of ``runc run`` for one bundle, and nothing else.

bench/container_start.py runs this as its "python floor" way (the leading underscore keeps ``python3 -m bench``
from running it as a benchmark of its own), cold, like the pykata-runc launcher (a
``python -S`` that imports its code from the .pyc files): ``python -S -c "import sys; sys.path[0:1] =
['.../bench']; import _python_floor; _python_floor.floor(sys.argv[1:])" BUNDLE``. (Run as a script,
``python -S bench/_python_floor.py BUNDLE``, it works the same but the interpreter compiles it first: about
9 ms here.) It is what any runtime written in Python pays at the least: the interpreter's start, loading
the C modules it needs, and the system calls of the run.
It is straight-line, imports nothing of pykata and nothing from the standard library that is not built
into the interpreter or already loaded by ``python -S`` (``posix``, ``sys``, ``time``), besides two C
modules: ``_json`` (its C scanner parses config.json, without ``json``, which pulls in ``re``) and
``_ctypes`` (mount, umount2, unshare, pivot_root, sethostname, prctl, capset, setrlimit: ``os`` has no
mount in 3.11; ``_ctypes`` is the core of ``ctypes`` without its Python layer and ``struct``).

The work, as runc does it for runc's default spec (the benchmark's bundle):
- parent: parse config.json; make the container's cgroup (spec ``linux.cgroupsPath``) in every cgroup
  hierarchy /proc/self/mountinfo lists (cgroup v1 and v2; cpuset.cpus/mems copied down where it creates
  a cpuset level); v1 devices rules: deny all, then runc's default allow list; fork, wait, rmdir the
  container's cgroups, exit with the container's status (128+signal when killed).
- child: join the cgroups (its pid to each cgroup.procs); unshare the spec's namespaces; with a pid
  namespace, fork again (the grandchild is pid 1 there) and pass its exit status up.
- pid 1: make / recursively slave; bind the rootfs; the spec's mounts (a ``cgroup`` mount as runc does
  on v1: a tmpfs with a read-only bind of the container's cgroup per v1 hierarchy); runc's default device
  nodes (mknod), /dev/ptmx and the /dev/fd, stdin, stdout, stderr links; pivot_root and detach the old
  root; the masked paths (/dev/null or a read-only tmpfs bound over them) and the read-only paths; a
  read-only root when the spec asks; hostname; rlimits; the bounding set, user and capabilities; no new
  privileges; umask 022; cwd; exec of the spec's args with its env.

Skipped, compared with runc: state files (``run`` needs none), the console (the spec asks for none),
seccomp, AppArmor/SELinux and sysctls (the spec has none), ambient capabilities (the spec gives no
inheritable set, so the kernel would refuse them; runc ignores that error), securejoin's symlink checks on
mount targets, the symlinks for co-mounted v1 controllers (none on this host), v2 device rules (eBPF) and
the sync pipes and pdeathsig between runc and its init. It ends with ``posix._exit`` (no interpreter
finalisation), everything it wrote having been written with ``posix.write``.

``PYKATA_FLOOR_TRACE=1`` makes each of its processes print one line to stderr: ``t0=`` (the absolute
``time.perf_counter`` at the top of this module, the same clock in every process on Linux) and its marks,
in ms since ``t0``. With ``PYKATA_FLOOR_SPAWNED`` set (the spawner's ``time.perf_counter`` before it
started this interpreter) the parent's line begins with ``spawned``, a negative mark: the interpreter's
start-up.
"""

import time

_T0 = time.perf_counter()  # the first thing this module does: what comes before is the interpreter

# posix and sys are built in and already loaded (os would import stat, posixpath, _collections_abc...)
import _ctypes  # noqa: E402
import _json  # noqa: E402
import posix  # noqa: E402
import sys  # noqa: E402

_T_IMPORTS = time.perf_counter()

CLONE_FLAGS = {"mount": 0x20000, "uts": 0x4000000, "ipc": 0x8000000, "user": 0x10000000,
               "pid": 0x20000000, "network": 0x40000000, "cgroup": 0x2000000}  # fmt: skip
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE, MS_SLAVE, MS_SHARED, MS_UNBINDABLE = 1 << 18, 1 << 19, 1 << 20, 1 << 17
MNT_DETACH = 2
# option: (flags to set, flags to clear); anything else goes to the file system's data string
MOUNT_OPTIONS = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY), "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV), "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (16, 0), "async": (0, 16), "dirsync": (128, 0), "remount": (MS_REMOUNT, 0), "mand": (64, 0),
    "nomand": (0, 64), "noatime": (1024, 0), "atime": (0, 1024), "nodiratime": (2048, 0),
    "diratime": (0, 2048), "relatime": (1 << 21, 0), "norelatime": (0, 1 << 21),
    "strictatime": (1 << 24, 0), "nostrictatime": (0, 1 << 24), "bind": (MS_BIND, 0),
    "rbind": (MS_BIND | MS_REC, 0),
}  # fmt: skip
PROPAGATION = {"private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "slave": MS_SLAVE,
               "rslave": MS_SLAVE | MS_REC, "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
               "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC}  # fmt: skip
# runc's default devices (libcontainer/specconv AllowedDevices): nodes made in /dev, and cgroup v1 rules
DEVICE_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm", "c 1:5 rwm",
                "c 1:9 rwm", "c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm")  # fmt: skip
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
                "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
                "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
                "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
                "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
                "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")  # fmt: skip
RLIMITS = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS",
           "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME")  # fmt: skip
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, CAPABILITY_VERSION_3 = 38, 24, 0x20080522


class _Int(_ctypes._SimpleCData):
    _type_ = "i"


class _Function(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _Libc:
    _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]  # the interpreter's symbols, libc's among them


def _libc(name: str) -> _Function:
    return _Function((name, _Libc))  # type: ignore[arg-type]  # what CFuncPtr reads of a CDLL: _handle


_mount, _umount2, _unshare, _syscall = _libc("mount"), _libc("umount2"), _libc("unshare"), _libc("syscall")
_sethostname, _prctl, _capset, _setrlimit = _libc("sethostname"), _libc("prctl"), _libc("capset"), _libc("setrlimit")

_MARKS: list[tuple[str, float]] = []
_TRACE = posix.environ.get(b"PYKATA_FLOOR_TRACE", b"") not in (b"", b"0")


def _mark(name: str) -> None:
    if _TRACE:
        _MARKS.append((name, time.perf_counter()))


def _trace(role: str) -> None:
    if _TRACE:
        marks = " ".join(f"{name}={(at - _T0) * 1000:.3f}" for name, at in _MARKS)
        posix.write(2, f"python_floor {role} pid={posix.getpid()} t0={_T0:.6f} {marks}\n".encode())
        _MARKS.clear()


def _check(result: int, what: str, path: str = "") -> int:
    if result < 0:
        errno = _ctypes.get_errno()
        raise OSError(errno, f"{what}: {posix.strerror(errno)}", path)
    return result


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            flags,
            None if data is None else data.encode(),
        ),
        "mount",
        target,
    )


def read(path: str) -> bytes:
    fd = posix.open(path, posix.O_RDONLY)
    try:
        chunks = []
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        posix.close(fd)


def write(path: str, data: str) -> None:
    fd = posix.open(path, posix.O_WRONLY)
    try:
        posix.write(fd, data.encode())
    finally:
        posix.close(fd)


def makedirs(path: str) -> list[str]:
    """mkdir -p; returns the directories it made, outermost first."""
    made: list[str] = []
    prefix = ""
    for part in path.split("/"):
        if not part:
            continue
        prefix += "/" + part
        try:
            posix.mkdir(prefix, 0o755)
        except FileExistsError:
            continue
        made.append(prefix)
    return made


class _Scanner:
    """The context _json's C scanner reads: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


def cgroup_mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every cgroup hierarchy this mount namespace sees."""
    found = []
    for line in read("/proc/self/mountinfo").decode().splitlines():
        before, _, after = line.partition(" - ")
        fstype = after.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            found.append((before.split(" ")[4], fstype))
    return found


def mount_flags(options: list[str]) -> tuple[int, int, str]:
    flags = propagation = 0
    data = []
    for option in options:
        if option in MOUNT_OPTIONS:
            set_bits, clear_bits = MOUNT_OPTIONS[option]
            flags = (flags | set_bits) & ~clear_bits
        elif option in PROPAGATION:
            propagation |= PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


def mount_spec_entry(entry: dict, rootfs: str, hierarchies: list[tuple[str, str]], cgroups_path: str) -> None:
    target = rootfs + entry["destination"]
    fstype = entry.get("type", "")
    flags, propagation, data = mount_flags(entry.get("options", []))
    makedirs(target)
    if fstype == "cgroup":  # as runc: the container's own cgroups, read-only
        v1 = [point for point, kind in hierarchies if kind == "cgroup"]
        if v1:
            mount("tmpfs", target, "tmpfs", flags & ~MS_RDONLY, "mode=755")
            for point in v1:
                inner = target + point[point.rfind("/") :]
                posix.mkdir(inner, 0o755)
                mount(point + cgroups_path, inner, None, MS_BIND | MS_REC)
                mount(None, inner, None, MS_BIND | MS_REMOUNT | MS_RDONLY | (flags & ~MS_RDONLY))
        else:
            for point, _kind in hierarchies:
                mount(point + cgroups_path, target, None, MS_BIND | MS_REC)
                mount(None, target, None, MS_BIND | MS_REMOUNT | flags)
    elif flags & MS_BIND or fstype == "bind":
        source = entry["source"]
        mount(source, target, None, flags | MS_BIND)
        if flags & ~(MS_BIND | MS_REC):
            mount(None, target, None, flags | MS_BIND | MS_REMOUNT)
    else:
        mount(entry.get("source", fstype), target, fstype, flags, data or None)
    if propagation:
        mount(None, target, None, propagation)


def container_init(spec: dict, rootfs: str, hierarchies: list[tuple[str, str]], cgroups_path: str) -> None:
    """pid 1 of the container: its mount tree, pivot_root, its process settings, exec. Does not return."""
    process = spec["process"]
    linux = spec.get("linux", {})
    _MARKS.clear()  # the parent's, copied by fork
    _mark("init")
    posix.umask(0)
    propagation = PROPAGATION.get(linux.get("rootfsPropagation", ""), MS_SLAVE | MS_REC)
    mount(None, "/", None, propagation)
    mount(rootfs, rootfs, "bind", MS_BIND | MS_REC)
    for entry in spec.get("mounts", []):
        mount_spec_entry(entry, rootfs, hierarchies, cgroups_path)
    for name, major, minor in DEVICE_NODES:
        posix.mknod(f"{rootfs}/dev/{name}", 0o20666, posix.makedev(major, minor))
    for link, destination in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        posix.symlink(destination, f"{rootfs}/dev/{link}")
    _mark("mounts")

    old_root = posix.open("/", posix.O_DIRECTORY | posix.O_RDONLY)
    new_root = posix.open(rootfs, posix.O_DIRECTORY | posix.O_RDONLY)
    posix.fchdir(new_root)
    _check(_syscall(SYS_PIVOT_ROOT[posix.uname().machine], b".", b"."), "pivot_root", rootfs)
    posix.fchdir(old_root)
    mount(None, ".", None, MS_SLAVE | MS_REC)
    _check(_umount2(b".", MNT_DETACH), "umount2", "old root")
    posix.chdir("/")
    posix.close(old_root)
    posix.close(new_root)
    _mark("pivot_root")

    for path in linux.get("maskedPaths", []):
        try:
            directory = posix.stat(path).st_mode & 0o170000 == 0o040000
            if directory:
                mount("tmpfs", path, "tmpfs", MS_RDONLY)
            else:
                mount("/dev/null", path, None, MS_BIND)
        except FileNotFoundError:
            continue
    for path in linux.get("readonlyPaths", []):
        try:
            mount(path, path, None, MS_BIND | MS_REC)
        except FileNotFoundError:
            continue
        mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    if spec.get("root", {}).get("readonly"):
        mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    if "hostname" in spec:
        hostname = spec["hostname"].encode()
        _check(_sethostname(hostname, len(hostname)), "sethostname")
    _mark("paths")

    for rlimit in process.get("rlimits", []):
        limits = rlimit["soft"].to_bytes(8, sys.byteorder) + rlimit["hard"].to_bytes(8, sys.byteorder)
        _check(_setrlimit(RLIMITS.index(rlimit["type"][len("RLIMIT_") :]), limits), "setrlimit")
    capabilities = process.get("capabilities")
    if capabilities is not None:
        keep = {CAPABILITIES.index(name[len("CAP_") :]) for name in capabilities.get("bounding", [])}
        last = int(read("/proc/sys/kernel/cap_last_cap"))
        for number in range(last + 1):
            if number not in keep:
                _check(_prctl(PR_CAPBSET_DROP, number, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
    user = process.get("user", {})
    posix.setgroups(user.get("additionalGids", []))
    posix.setgid(user.get("gid", 0))
    posix.setuid(user.get("uid", 0))
    if capabilities is not None:
        sets = [0, 0, 0]  # effective, permitted, inheritable: 64 bits each, in two 32-bit words
        for index, key in enumerate(("effective", "permitted", "inheritable")):
            for name in capabilities.get(key, []):
                sets[index] |= 1 << CAPABILITIES.index(name[len("CAP_") :])
        header = CAPABILITY_VERSION_3.to_bytes(4, sys.byteorder) + bytes(4)
        data = b"".join(
            word.to_bytes(4, sys.byteorder) for half in (0, 32) for word in ((s >> half) & 0xFFFFFFFF for s in sets)
        )
        _check(_capset(header, data), "capset")
    if process.get("noNewPrivileges"):
        _check(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    posix.umask(0o022)
    posix.chdir(process.get("cwd", "/"))
    environment = dict(item.split("=", 1) for item in process.get("env", []))
    program = process["args"][0]
    if "/" not in program:
        for directory in environment.get("PATH", "/usr/bin:/bin").split(":"):
            if posix.access(f"{directory}/{program}", posix.X_OK):
                program = f"{directory}/{program}"
                break
    _mark("process")
    _trace("init")
    try:
        posix.execve(program, process["args"], environment)
    except OSError as exc:
        posix.write(2, f"python_floor: exec {program}: {exc.strerror}\n".encode())
        posix._exit(127)


def run(bundle: str) -> int:
    """Run the container of ``bundle`` to its end; returns its exit status."""
    scanner = _json.make_scanner(_Scanner())  # type: ignore[arg-type]  # reads json.JSONDecoder's attributes
    spec, _ = scanner(read(f"{bundle}/config.json").decode().strip(), 0)
    root = spec["root"]["path"]
    rootfs = root if root.startswith("/") else f"{bundle}/{root}"
    linux = spec.get("linux", {})
    cgroups_path = "/" + linux.get("cgroupsPath", "").strip("/")
    _mark("config")

    hierarchies = cgroup_mounts()
    cgroups = []
    for point, _kind in hierarchies:
        path = point + cgroups_path
        made = makedirs(path)
        if point.endswith("/cpuset"):
            for directory in made:  # a new cpuset has no cpus or mems until given its parent's
                parent = directory[: directory.rfind("/")]
                for name in ("cpuset.cpus", "cpuset.mems"):
                    write(f"{directory}/{name}", read(f"{parent}/{name}").decode())
        if point.endswith("/devices"):
            write(f"{path}/devices.deny", "a *:* rwm")
            for rule in DEVICE_RULES:
                write(f"{path}/devices.allow", rule)
        cgroups.append(path)
    _mark("cgroups")

    child = posix.fork()
    if child == 0:
        _MARKS.clear()  # the parent's, copied by fork
        try:
            pid = str(posix.getpid())
            for path in cgroups:
                write(f"{path}/cgroup.procs", pid)
            _mark("joined")
            flags = 0
            for namespace in linux.get("namespaces", []):
                if "path" in namespace:
                    raise NotImplementedError("joining a namespace by path")
                flags |= CLONE_FLAGS[namespace["type"]]
            _check(_unshare(flags), "unshare")
            _mark("unshared")
            if flags & CLONE_FLAGS["pid"]:
                init = posix.fork()
                if init == 0:
                    container_init(spec, rootfs, hierarchies, cgroups_path)
                _mark("fork2")
                _trace("child")
                _, status = posix.waitpid(init, 0)
                code = posix.waitstatus_to_exitcode(status)
                posix._exit(code if code >= 0 else 128 - code)
            _trace("child")
            container_init(spec, rootfs, hierarchies, cgroups_path)
        except BaseException as exc:  # the child must never return into the parent's code
            posix.write(2, f"python_floor: {type(exc).__name__}: {exc}\n".encode())
            posix._exit(126)
    _mark("forked")
    _, status = posix.waitpid(child, 0)
    _mark("waited")
    for path in reversed(cgroups):
        posix.rmdir(path)
    _mark("removed")
    code = posix.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def floor(argv: list[str]) -> None:
    """``python -S -c "import _python_floor; _python_floor.floor(sys.argv[1:])" BUNDLE``: exits with the
    container's status."""
    if _TRACE:
        _MARKS.append(("imports", _T_IMPORTS))
        spawned = posix.environ.get(b"PYKATA_FLOOR_SPAWNED")
        if spawned:
            _MARKS.insert(0, ("spawned", float(spawned)))
    try:
        code = run(argv[0])
    except Exception as exc:
        posix.write(2, f"python_floor: {type(exc).__name__}: {exc}\n".encode())
        code = 125
    _trace("parent")
    posix._exit(code)


if __name__ == "__main__":
    floor(sys.argv[1:])
