"""Host side of ``agentctl boot --netns NAME``: wire the guest's virtio-net NIC into a network namespace
the way Kata's runtime does with its "tcfilter" model.

Inside the namespace a tap device (``tap0_kata``) is created next to the namespace's ``eth0``; an
ingress qdisc on each gets a u32 filter that matches every packet and a ``mirred egress redirect`` to
the other. Whatever arrives on eth0 leaves through the tap to the guest, and whatever the guest sends
leaves through eth0. QEMU gets the tap as an open file descriptor (opened inside the namespace), so
QEMU itself stays in the host's namespace.

Use from the VM launcher::

    attachment = attach_tap("ns1")
    fd = attachment.open_fd()
    argv += attachment.qemu_args(fd)              # -netdev tap,fd=N -device virtio-net-pci,mac=...
    subprocess.Popen(argv, pass_fds=[fd])
    ...
    detach_tap("ns1")                             # after QEMU exits

The guest NIC carries eth0's MAC, so ``UpdateInterface`` in the guest finds it by ``hwAddr`` and gives
it eth0's addresses (``attachment.addresses``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from agent.system import libc
from agent.system.paths import HostPaths
from agent.system.run import CommandError, run

DEFAULT_TAP = "tap0_kata"
DEFAULT_PEER = "eth0"

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16

# The ingress qdisc's handle; filters attach to it.
INGRESS_PARENT = "ffff:"


class NetnsError(RuntimeError):
    """Wiring the namespace failed; the message says which step and how to fix it."""


@dataclass(frozen=True)
class TapAttachment:
    netns: str
    tap: str
    peer: str
    mac: str  # the peer's MAC: give it to the guest NIC
    mtu: int
    addresses: tuple[str, ...]  # the peer's addresses, "10.0.0.2/24", for the guest's UpdateInterface

    def open_fd(self, vnet_hdr: bool = True, paths: HostPaths | None = None) -> int:
        return open_tap_fd(self.netns, self.tap, vnet_hdr=vnet_hdr, paths=paths)

    def qemu_args(self, fd: int, netdev_id: str = "net0", pci_addr: str = "") -> list[str]:
        """QEMU options for a virtio-net NIC on the tap opened as ``fd`` (pass it with pass_fds)."""
        device = f"virtio-net-pci,netdev={netdev_id},mac={self.mac}"
        if pci_addr:
            device += f",addr={pci_addr}"
        return ["-netdev", f"tap,id={netdev_id},fd={fd}", "-device", device]


def _ip(netns: str, *args: str) -> str:
    return run(["ip", "-n", netns, *args], package="iproute2").stdout.decode()


def _tc(netns: str, *args: str) -> None:
    run(["tc", "-n", netns, *args], package="iproute2")


def _link_info(netns: str, name: str) -> dict[str, object]:
    try:
        entries = json.loads(_ip(netns, "-j", "addr", "show", "dev", name) or "[]")
    except CommandError as exc:
        raise NetnsError(f"namespace {netns}: no device {name} ({exc}); create the veth pair first") from exc
    if not entries:
        raise NetnsError(f"namespace {netns}: no device {name}")
    entry: dict[str, object] = entries[0]
    return entry


def redirect_commands(netns: str, source: str, target: str) -> list[list[str]]:
    """The tc commands that send every packet arriving on ``source`` out of ``target``."""
    return [
        ["tc", "-n", netns, "qdisc", "add", "dev", source, "ingress"],
        [
            "tc", "-n", netns, "filter", "add", "dev", source, "parent", INGRESS_PARENT, "protocol", "all",
            "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", target,
        ],
    ]  # fmt: skip


def attach_tap(netns: str, tap: str = DEFAULT_TAP, peer: str = DEFAULT_PEER) -> TapAttachment:
    """Create ``tap`` in ``netns`` and redirect traffic between it and ``peer`` both ways.

    The namespace and its ``peer`` device must exist. On failure, what was set up is removed again.
    """
    if not os.path.exists(HostPaths().named_netns(netns)):
        raise NetnsError(f"network namespace {netns!r} does not exist (ip netns add {netns})")
    info = _link_info(netns, peer)
    mac = str(info.get("address", ""))
    mtu = int(str(info.get("mtu", 1500)))
    addr_info = info.get("addr_info", [])
    addresses = tuple(
        f"{a['local']}/{a['prefixlen']}"
        for a in (addr_info if isinstance(addr_info, list) else [])
        if not (a.get("family") == "inet6" and str(a.get("local", "")).startswith("fe80:"))
    )
    try:
        _ip(netns, "tuntap", "add", "dev", tap, "mode", "tap")
        _ip(netns, "link", "set", "dev", tap, "mtu", str(mtu))
        _ip(netns, "link", "set", "dev", tap, "up")
        _ip(netns, "link", "set", "dev", peer, "up")
        for argv in redirect_commands(netns, peer, tap) + redirect_commands(netns, tap, peer):
            run(argv, package="iproute2")
    except CommandError as exc:
        detach_tap(netns, tap, peer)
        raise NetnsError(f"wiring {tap} to {peer} in {netns}: {exc}") from exc
    return TapAttachment(netns, tap, peer, mac, mtu, addresses)


def detach_tap(netns: str, tap: str = DEFAULT_TAP, peer: str = DEFAULT_PEER) -> None:
    """Undo ``attach_tap``: remove the peer's ingress qdisc (and its filter) and the tap. Missing
    pieces are fine, so this is safe to call after a partial attach or twice."""
    if not os.path.exists(HostPaths().named_netns(netns)):
        return
    with contextlib.suppress(CommandError):
        _tc(netns, "qdisc", "del", "dev", peer, "ingress")
    with contextlib.suppress(CommandError):
        _ip(netns, "link", "del", "dev", tap)


@contextlib.contextmanager
def inside_netns(netns: str, paths: HostPaths | None = None) -> Iterator[None]:
    """Run the block with the calling thread in ``netns``; only this thread moves."""
    paths = paths or HostPaths()
    home = os.open(paths.thread_netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(paths.named_netns(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(target, libc.CLONE_NEWNET, str(paths.named_netns(netns)))
        finally:
            os.close(target)
        try:
            yield
        finally:
            libc.setns(home, libc.CLONE_NEWNET, "the original network namespace")
    finally:
        os.close(home)


def open_tap_fd(netns: str, tap: str = DEFAULT_TAP, vnet_hdr: bool = True, paths: HostPaths | None = None) -> int:
    """Open the persistent tap ``tap`` of ``netns`` and return its queue fd (close-on-exec; pass it to
    QEMU with ``pass_fds``). With ``vnet_hdr`` each frame carries a virtio-net header, as QEMU expects."""
    paths = paths or HostPaths()
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    request = struct.pack(f"{IFNAMSIZ}sH", tap.encode(), flags)
    with inside_netns(netns, paths):
        fd = os.open(paths.tun_device, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            raise NetnsError(f"attaching to tap {tap} in {netns}: {exc.strerror}") from exc
    return fd
