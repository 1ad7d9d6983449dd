"""What goes into a guest: packages, kernel modules, Python dependencies, import lists, command lines.

Change the guest here; the builders only read these tables.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

DEBIAN_RELEASE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"

# ---- kernel
# The generic flavour: the -cloud- one has no 9p. The meta package names the current ABI.
KERNEL_META_PACKAGE = "linux-image-amd64"
# Modules the guest carries; their dependencies are resolved from each module's .modinfo.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "vmw_vsock_virtio_transport",
    "9pnet_virtio",  # before 9p: loading "9p" on demand loads what its list has before it, transport included
    "9p",
    "virtiofs",
    "overlay",
)
# Loaded before the agent answers anything but its first Check: vsock, and the device drivers, since
# nothing in the guest could load a driver on demand and Kata's runtime sets up the NIC as soon as the
# agent answers. The agent loads SERVE_MODULES (vsock) itself before it serves (modules.load); the
# drivers (modules-drivers.load, about 100 ms under TCG) are loaded by /init's low-priority child right
# after it has unpacked the initrd's deferred files and before it says they are there: every other
# call waits for the RPC handlers, whose imports wait for those files. The filesystems (9p, virtiofs,
# overlay: about 400 ms) load after that, and a mount that finds its filesystem missing loads it on
# demand (modules-root.load), so they cost the first Check nothing.
BOOT_MODULES = ("virtio_pci", "vmw_vsock_virtio_transport", "virtio_net", "virtio_blk", "virtio_console")
SERVE_MODULES = ("virtio_pci", "vmw_vsock_virtio_transport")
# Extra modules for the image's "rootfs mode" initrd boot: mount root=/dev/vda1 (ext4) and switch to it.
ROOT_MODULES = ("virtio_blk", "ext4", "crc32c_generic")
# Kernel parameters per module, written after the path in modules.load.
MODULE_PARAMS: dict[str, str] = {}

# ---- rootfs (mkosi)
ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "python3",
    "libcap2",
    "kmod",
    "busybox-static",
)
# Units the agent does not need: masked in the image (linked to /dev/null).
MASKED_UNITS = (
    "getty.target",
    "console-getty.service",
    "serial-getty@.service",
    "getty@.service",
    "systemd-timesyncd.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "cron.service",
    # Session, login and first-boot machinery: the agent needs none of it, and under TCG each unit
    # costs boot time before the agent's unit starts.
    "systemd-logind.service",
    "dbus.service",
    "dbus.socket",
    "systemd-user-sessions.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-ask-password-wall.path",
    "systemd-ask-password-console.path",
    "systemd-firstboot.service",
    "systemd-sysusers.service",
    "systemd-random-seed.service",
    "systemd-journal-flush.service",
    "systemd-machine-id-commit.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "systemd-pstore.service",
    "systemd-repart.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-networkd.socket",
    "systemd-network-generator.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "ldconfig.service",
    "e2scrub_reap.service",
    "remote-fs.target",
    "modprobe@.service",
)
GUEST_PYTHON = "usr/bin/python3.11"
PYTHON_VERSION = "3.11"
STDLIB_DIR = f"usr/lib/python{PYTHON_VERSION}"
# The agent and its Python dependencies live in one directory on the guest's sys.path.
AGENT_LIB_DIR = "usr/lib/pykata"
AGENT_LAUNCHER = "usr/bin/pykata-agent"
AGENT_UNIT = "pykata-agent.service"
# Kernel command line for booting the disk image (kernel and initrd given to QEMU directly).
IMAGE_CMDLINE = "root=/dev/vda1 rootfstype=ext4 rw init=/lib/systemd/systemd console=ttyS0 quiet"
# Free space in the image beyond its content: a fraction and a floor.
IMAGE_HEADROOM_FRACTION = 0.25
IMAGE_HEADROOM_MIN_MIB = 64

# ---- Python dependencies
# pyproject.toml's dependencies the guest does without: the agent serves gRPC with its own HTTP/2 code
# (agent/rpc/h2grpc.py), and grpcio (with its 17 MB cygrpc library and typing_extensions) is for host-side
# clients and tests only; click is for the host's command lines (osbuilder, agentctl).
HOST_ONLY_REQUIREMENTS = ("grpcio", "click")
# Packages without a wheel on PyPI: built on the host with `pip wheel`, with the Debian packages they need.
BUILD_FROM_SOURCE = {"python-prctl": ("libcap-dev",)}

# ---- initrd
# Modules the agent imports lazily (inside functions) that a traced session may not reach.
LAZY_IMPORTS = (
    "agent",
    "encodings.idna",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "encodings.aliases",
    "json",
    "json.decoder",
    "json.encoder",
    "json.scanner",
    "ctypes",
    "ctypes.util",
    "concurrent.futures",
    "concurrent.futures.thread",
    "selectors",
    "socket",
    "signal",
    "subprocess",
    "tomllib",
    "shlex",
    "pty",
    "tty",
    "termios",
    "fcntl",
    "resource",
    "google.protobuf",
    "google.protobuf.json_format",
    "google.protobuf.empty_pb2",
    "google.protobuf.any_pb2",
    "psutil",
    "psutil._pslinux",
    "psutil._psposix",
    "pyroute2",
    "pyroute2.iproute",
    "pyroute2.iproute.linux",
    "pyroute2.netlink.rtnl",
    "pyroute2.netlink.rtnl.ifinfmsg",
    "pyroute2.netlink.rtnl.ifaddrmsg",
    "pyroute2.netlink.rtnl.rtmsg",
    "pyroute2.netlink.rtnl.ndmsg",
    "pyroute2.netns",
    "prctl",
    "_prctl",
)
# The initrd is two archives in one (osbuilder/initrd.py): the boot archive holds what the agent needs
# to answer its first Check (traced: tracing.trace_start), and a deferred one, stored inside it already
# compressed, holds the rest, which /init unpacks in the background once the agent serves; an import
# of a deferred module waits for it. Under TCG every MiB the kernel does not inflate before /init saves
# about 70 ms. The start trace runs the agent as a plain process; these are what PID 1 and the
# interpreter's own start import on top of it.
START_IMPORTS = (
    "agent.init",
    "agent.system.children",
    "agent.system.netdev",
    "zlib",  # the child that unpacks the deferred archive
    "encodings.utf_8",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.aliases",
)
# Imported by the stdlib inside try/except ImportError (asyncio -> ssl, shutil -> bz2/lzma, hashlib ->
# _hashlib) and never used by the agent: leaving them out drops libssl, libcrypto, libbz2 and liblzma.
# pyroute2 imports ssl unconditionally for a probe the agent never sends, and sqlite3 for NDB, which the
# agent never uses: agent.network.netlink's import_pyroute2 lets it import without them (no libsqlite3).
EXCLUDE_MODULES = ("ssl", "_ssl", "bz2", "_bz2", "lzma", "_lzma", "_hashlib", "sqlite3", "_sqlite3")
# Whole packages copied in full when any module of theirs is imported: their lazy imports are many and
# name-driven, so module-level pruning would break them.
WHOLE_PACKAGES = ("agent", "pyroute2")
# Parts of packages the agent never uses.
DROP_FROM_PACKAGES = ("google/protobuf/internal/testdata",)
# Stdlib modules nobody imports at run time but Python itself needs to find its prefix.
PYTHON_LANDMARKS = ("os",)
# Keep .py sources for these (something reads their source at run time); the rest ship as .pyc only.
KEEP_SOURCES: tuple[str, ...] = ()


def python_requirements(pyproject: Path) -> list[str]:
    """The guest's pinned Python dependencies (``name==version``): pyproject.toml's, less the host-only ones."""
    data = tomllib.loads(pyproject.read_text())
    requirements = []
    for requirement in data["project"]["dependencies"]:
        if "==" not in requirement:
            raise ValueError(f"{pyproject}: dependency {requirement!r} is not pinned; the guest needs exact versions")
        name = requirement.split("==", 1)[0].strip()
        if name.lower().replace("_", "-") not in HOST_ONLY_REQUIREMENTS:
            requirements.append(requirement)
    return requirements
