"""Host tap plumbing commands and QEMU arguments, without touching any namespace."""

from __future__ import annotations

import pytest

from agentctl.netns import NetnsError, TapAttachment, attach_tap, redirect_commands


def test_redirect_is_an_ingress_qdisc_and_a_match_all_mirred_filter() -> None:
    assert redirect_commands("ns1", "eth0", "tap0_kata") == [
        ["tc", "-n", "ns1", "qdisc", "add", "dev", "eth0", "ingress"],
        ["tc", "-n", "ns1", "filter", "add", "dev", "eth0", "parent", "ffff:", "protocol", "all", "u32",
         "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", "tap0_kata"],
    ]  # fmt: skip


def test_qemu_args_carry_the_fd_and_the_peer_mac() -> None:
    attachment = TapAttachment("ns1", "tap0_kata", "eth0", "02:00:00:00:00:05", 1500, ("10.0.0.2/24",))
    assert attachment.qemu_args(7, netdev_id="n1", pci_addr="0x5") == [
        "-netdev", "tap,id=n1,fd=7",
        "-device", "virtio-net-pci,netdev=n1,mac=02:00:00:00:00:05,addr=0x5",
    ]  # fmt: skip


def test_missing_namespace_is_named() -> None:
    with pytest.raises(NetnsError, match="ip netns add pykata-unit-no-such-ns"):
        attach_tap("pykata-unit-no-such-ns")
