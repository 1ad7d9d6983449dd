"""Host tap plumbing for ``agentctl boot --netns``: a tap in a namespace the test creates, tc mirred
redirects both ways, and a frame written into the tap as a guest would reaching a peer namespace and
the answer coming back through the tap. Both namespaces are the test's own and are deleted after."""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from agentctl.netns import NetnsError, attach_tap, detach_tap
from tests.conftest import require_root

GUEST_IP = "10.91.0.2"
SERVER_IP = "10.91.0.1"
VNET_HDR_LEN = 10  # struct virtio_net_hdr without mergeable buffers


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """A sandbox namespace with eth0, its veth peer in a server namespace holding SERVER_IP."""
    require_root()
    token = secrets.token_hex(3)
    sandbox, server = f"pykata-test-{token}-sb", f"pykata-test-{token}-srv"
    ip("netns", "add", sandbox)
    ip("netns", "add", server)
    try:
        ip("-n", sandbox, "link", "add", "eth0", "type", "veth", "peer", "name", "srv0", "netns", server)
        ip("-n", sandbox, "addr", "add", f"{GUEST_IP}/24", "dev", "eth0")
        ip("-n", server, "addr", "add", f"{SERVER_IP}/24", "dev", "srv0")
        ip("-n", server, "link", "set", "srv0", "up")
        yield sandbox, server
    finally:
        subprocess.run(["ip", "netns", "del", sandbox], check=False)
        subprocess.run(["ip", "netns", "del", server], check=False)


def arp_request(mac: str, sender: str, target: str) -> bytes:
    hw = bytes.fromhex(mac.replace(":", ""))
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, hw, socket.inet_aton(sender), b"\0" * 6,
                      socket.inet_aton(target))  # fmt: skip
    return b"\xff" * 6 + hw + struct.pack("!H", 0x0806) + arp


def read_arp_reply(fd: int, sender: str, timeout: float = 10.0) -> bytes | None:
    """Frames from the tap until an ARP reply from ``sender`` (other frames, e.g. IPv6 noise, are skipped)."""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        frame = os.read(fd, 65536)[VNET_HDR_LEN:]
        if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02" and frame[28:32] == socket.inet_aton(sender):
            return frame


def test_attach_wires_tap_and_eth0_both_ways(namespaces: tuple[str, str]) -> None:
    sandbox, _server = namespaces
    attachment = attach_tap(sandbox)
    try:
        eth0 = json.loads(ip("-n", sandbox, "-j", "link", "show", "dev", "eth0"))[0]
        assert attachment.mac == eth0["address"]
        assert attachment.addresses == (f"{GUEST_IP}/24",)
        tap = json.loads(ip("-n", sandbox, "-j", "link", "show", "dev", "tap0_kata"))[0]
        assert tap["mtu"] == eth0["mtu"]
        assert "UP" in tap["flags"]
        for source, target in (("eth0", "tap0_kata"), ("tap0_kata", "eth0")):
            filters = subprocess.run(
                ["tc", "-n", sandbox, "filter", "show", "dev", source, "ingress"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            assert f"mirred (Egress Redirect to device {target})" in filters

        fd = attachment.open_fd()
        try:
            assert attachment.qemu_args(fd) == [
                "-netdev", f"tap,id=net0,fd={fd}",
                "-device", f"virtio-net-pci,netdev=net0,mac={attachment.mac}",
            ]  # fmt: skip
            # As the guest: ask who has SERVER_IP; the server namespace answers through eth0 -> tap.
            # Ask again each second, as a guest's ARP would: the veth carrier may take a moment to come up.
            reply = None
            for _attempt in range(10):
                os.write(fd, b"\0" * VNET_HDR_LEN + arp_request(attachment.mac, GUEST_IP, SERVER_IP))
                reply = read_arp_reply(fd, SERVER_IP, timeout=1.0)
                if reply is not None:
                    break
            assert reply is not None, "no ARP reply came back through the tap"
            assert reply[0:6] == bytes.fromhex(attachment.mac.replace(":", ""))
        finally:
            os.close(fd)
    finally:
        detach_tap(sandbox)
    links = {entry["ifname"] for entry in json.loads(ip("-n", sandbox, "-j", "link", "show"))}
    assert "tap0_kata" not in links
    qdiscs = subprocess.run(["tc", "-n", sandbox, "qdisc", "show", "dev", "eth0"], check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    assert "ingress" not in qdiscs
    detach_tap(sandbox)  # idempotent


def test_attach_reports_a_missing_namespace_or_device(namespaces: tuple[str, str]) -> None:
    sandbox, _server = namespaces
    with pytest.raises(NetnsError, match="does not exist"):
        attach_tap("pykata-test-no-such-ns")
    with pytest.raises(NetnsError, match="no device eth9"):
        attach_tap(sandbox, peer="eth9")
    links = {entry["ifname"] for entry in json.loads(ip("-n", sandbox, "-j", "link", "show"))}
    assert "tap0_kata" not in links
