"""Every filesystem location the agent touches on the host, derived from one root.

Production uses ``HostPaths()`` (root "/"); tests pass a temporary directory holding a fake tree.
No other module spells /sys, /proc, /dev or /run literally. Every location is a ``str`` (the root
joined with a relative path): the container engine's start path imports no pathlib.
"""

from __future__ import annotations

import os

# Where Kata's runtime puts container bundles shared from the host.
KATA_SHARED_SUBDIR = "run/kata-containers/shared/containers"


def normal_path(path: str | os.PathLike[str]) -> str:
    """``path`` as pathlib spells it (``str(PurePosixPath(path))``), without pathlib: repeated slashes
    and "." components dropped, no trailing slash, ".." kept, "" as "."; a leading "//", and only
    exactly two, is kept, as POSIX allows."""
    text = os.fspath(path)
    if text and "//" not in text and "/." not in text and not text.endswith("/") and not text.startswith("./"):
        return text  # already plain: the common case, with no list built
    parts = [part for part in text.split("/") if part and part != "."]
    if not text.startswith("/"):
        anchor = ""
    elif text.startswith("//") and not text.startswith("///"):
        anchor = "//"
    else:
        anchor = "/"
    return anchor + "/".join(parts) if anchor or parts else "."


class HostPaths:
    """Immutable, compared and hashed by ``root`` (a plain class: this module is imported by every
    container start, and a dataclass costs about a millisecond to define)."""

    __slots__ = ("_prefix", "root")
    root: str
    _prefix: str  # root with exactly one trailing slash, what every location starts with

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        given = os.fspath(root)
        # "/" (or "//") stays "/"; "" means the current directory, as pathlib's Path("") does
        text = given.rstrip("/") or ("/" if given else ".")
        object.__setattr__(self, "root", text)
        object.__setattr__(self, "_prefix", text if text.endswith("/") else text + "/")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"HostPaths is immutable: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        return self.root == other.root if isinstance(other, HostPaths) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"HostPaths(root={self.root!r})"

    def __reduce__(self) -> tuple[type[HostPaths], tuple[str]]:  # copy and pickle go through __init__
        return HostPaths, (self.root,)

    def _at(self, relative: str) -> str:
        return self._prefix + relative

    # --- procfs
    @property
    def proc(self) -> str:
        return self._at("proc")

    @property
    def cmdline(self) -> str:
        return self._at("proc/cmdline")

    @property
    def meminfo(self) -> str:
        return self._at("proc/meminfo")

    @property
    def loadavg(self) -> str:
        return self._at("proc/loadavg")

    @property
    def mountinfo(self) -> str:
        return self._at("proc/self/mountinfo")

    def proc_pid(self, pid: int) -> str:
        return self._at(f"proc/{pid}")

    # --- sysfs
    @property
    def sys(self) -> str:
        return self._at("sys")

    @property
    def cpu_dir(self) -> str:
        return self._at("sys/devices/system/cpu")

    @property
    def memory_dir(self) -> str:
        return self._at("sys/devices/system/memory")

    @property
    def memory_block_size(self) -> str:
        return self._at("sys/devices/system/memory/block_size_bytes")

    @property
    def memory_probe(self) -> str:
        return self._at("sys/devices/system/memory/probe")

    @property
    def cgroup_root(self) -> str:
        return self._at("sys/fs/cgroup")

    @property
    def net_class(self) -> str:
        return self._at("sys/class/net")

    @property
    def pci_devices(self) -> str:
        return self._at("sys/bus/pci/devices")

    @property
    def block_class(self) -> str:
        return self._at("sys/class/block")

    @property
    def scsi_devices(self) -> str:
        return self._at("sys/bus/scsi/devices")

    @property
    def scsi_host_class(self) -> str:
        return self._at("sys/class/scsi_host")

    # --- memory management (the mem-agent)
    @property
    def lru_gen_enabled(self) -> str:
        """MGLRU's switch (CONFIG_LRU_GEN)."""
        return self._at("sys/kernel/mm/lru_gen/enabled")

    @property
    def debugfs(self) -> str:
        return self._at("sys/kernel/debug")

    @property
    def lru_gen(self) -> str:
        """MGLRU's debugfs file: generations per memcg and node; aging and eviction commands."""
        return self._at("sys/kernel/debug/lru_gen")

    @property
    def pressure_dir(self) -> str:
        """System-wide PSI (CONFIG_PSI): memory, io, cpu."""
        return self._at("proc/pressure")

    @property
    def compact_memory(self) -> str:
        return self._at("proc/sys/vm/compact_memory")

    @property
    def pagetypeinfo(self) -> str:
        return self._at("proc/pagetypeinfo")

    @property
    def buddyinfo(self) -> str:
        return self._at("proc/buddyinfo")

    # --- devices
    @property
    def dev(self) -> str:
        return self._at("dev")

    @property
    def random_device(self) -> str:
        return self._at("dev/random")

    # --- run and configuration
    @property
    def run(self) -> str:
        return self._at("run")

    @property
    def agent_run(self) -> str:
        """Agent-private runtime state (container state, sockets)."""
        return self._at("run/pykata")

    @property
    def shared_containers(self) -> str:
        """Where CopyFile may write: Kata's shared containers directory."""
        return self._at(KATA_SHARED_SUBDIR)

    @property
    def sandbox_dir(self) -> str:
        return self._at("run/kata-containers/sandbox")

    @property
    def modules_dir(self) -> str:
        return self._at("lib/modules")

    @property
    def modules_load_list(self) -> str:
        """The initrd's list of kernel modules to load at boot, in dependency order."""
        return self._at("etc/pykata/modules.load")

    @property
    def modules_root_load_list(self) -> str:
        """The initrd's further modules (an ext4 root's), loaded on demand, in dependency order."""
        return self._at("etc/pykata/modules-root.load")

    @property
    def proc_filesystems(self) -> str:
        return self._at("proc/filesystems")

    @property
    def hostname_file(self) -> str:
        return self._at("proc/sys/kernel/hostname")

    @property
    def thread_netns(self) -> str:
        """The calling thread's network namespace (setns back to it after working in another)."""
        return self._at("proc/thread-self/ns/net")

    def thread_ns(self, kind: str) -> str:
        """The calling thread's namespace of ``kind`` ("ipc", "uts", "pid", ...)."""
        return self._at(f"proc/thread-self/ns/{kind}")

    def named_netns(self, name: str) -> str:
        """A namespace made by ``ip netns add NAME``."""
        return self._at(f"run/netns/{name}")

    @property
    def tun_device(self) -> str:
        return self._at("dev/net/tun")

    def inside(self, absolute: str | os.PathLike[str]) -> str:
        """Map an absolute guest path (as a client names it) under this root."""
        relative = os.fspath(absolute).lstrip("/")
        return self._at(relative) if relative else self.root
