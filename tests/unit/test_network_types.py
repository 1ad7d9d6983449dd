"""Network conversions, route arguments, resolv.conf and error mapping, without netlink."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import AlreadyExists, InvalidArgument, NotFound, ResourceError, Unsupported
from agent.network.netlink import _route_args, netlink_error
from agent.network.resolv import format_resolv_conf
from agent.network.types import NUD_PERMANENT, RT_SCOPE_LINK, Interface, IPAddress, Route
from agent.rpc.methods.network import (
    interface_from_pb,
    interface_to_pb,
    neighbor_from_pb,
    route_from_pb,
    route_to_pb,
)
from agent.rpc.pb import types_pb2
from agent.services.network import NetworkService
from agent.system.paths import HostPaths
from tests.conftest import REPO


def test_ip_address_parse() -> None:
    assert IPAddress.parse("10.0.0.2", "24") == IPAddress("10.0.0.2", 24, 4)
    assert IPAddress.parse("fd00::0002", "") == IPAddress("fd00::2", 128, 6)
    with pytest.raises(InvalidArgument, match="not an IP address"):
        IPAddress.parse("10.0.0.300", "24")
    with pytest.raises(InvalidArgument, match="out of range"):
        IPAddress.parse("10.0.0.2", "33")


def test_interface_round_trip() -> None:
    pb = types_pb2.Interface(
        device="eth0",
        name="eth0",
        hwAddr="02:AA:00:00:00:01",
        mtu=1500,
        devicePath="02/01",
        IPAddresses=[
            types_pb2.IPAddress(family=types_pb2.v4, address="10.0.0.2", mask="24"),
            types_pb2.IPAddress(family=types_pb2.v6, address="fd00::2", mask="64"),
        ],
    )
    iface = interface_from_pb(pb)
    assert iface.hw_addr == "02:aa:00:00:00:01"
    assert iface.addresses == (IPAddress("10.0.0.2", 24, 4), IPAddress("fd00::2", 64, 6))
    back = interface_to_pb(iface)
    assert [(a.family, a.address, a.mask) for a in back.IPAddresses] == [
        (types_pb2.v4, "10.0.0.2", "24"),
        (types_pb2.v6, "fd00::2", "64"),
    ]


def test_route_and_neighbor_conversion() -> None:
    pb = types_pb2.Route(dest="fd00:1::/64", gateway="fd00::1", device="eth0", family=types_pb2.v6, scope=0)
    route = route_from_pb(pb)
    assert route == Route("fd00:1::/64", "fd00::1", "eth0", family=6)
    assert route_to_pb(route) == pb
    neighbor = neighbor_from_pb(
        types_pb2.ARPNeighbor(toIPAddress=types_pb2.IPAddress(address="10.0.0.1"), device="eth0", lladdr="02:00::01")
    )
    assert (neighbor.address, neighbor.state) == ("10.0.0.1", NUD_PERMANENT)


def test_route_args_follow_iproute2_defaults() -> None:
    names = {"eth0": 2}
    link = _route_args(Route(dest="10.0.0.0/24", device="eth0"), names)
    assert link == {"family": socket.AF_INET, "table": 254, "dst": "10.0.0.0/24", "oif": 2, "scope": RT_SCOPE_LINK}
    default = _route_args(Route(gateway="fd00::1", device="eth0", family=4), names)
    assert (default["family"], default["dst"], default["scope"]) == (socket.AF_INET6, "default", 0)
    assert _route_args(Route(dest="10.0.0.9/24"), {})["dst"] == "10.0.0.0/24"
    with pytest.raises(InvalidArgument, match="not a network"):
        _route_args(Route(dest="10.0.0.0/99", gateway="10.0.0.1"), names)


def test_netlink_errors_become_domain_errors() -> None:
    class FakeNetlinkError(Exception):
        def __init__(self, code: int, message: str) -> None:
            super().__init__(code, message)
            self.code = code

    cases = {
        errno.EEXIST: AlreadyExists,
        errno.ENODEV: NotFound,
        errno.ENETUNREACH: InvalidArgument,
        errno.EPERM: ResourceError,
    }
    for code, kind in cases.items():
        error = netlink_error(FakeNetlinkError(code, "kernel says no"), "add route x")
        assert isinstance(error, kind)
        assert str(error) == "add route x: kernel says no"


def test_resolv_conf_lines() -> None:
    text = format_resolv_conf(["nameserver 10.0.0.1", "8.8.8.8", "search svc.local", "", "options ndots:5"])
    assert text == "nameserver 10.0.0.1\nnameserver 8.8.8.8\nsearch svc.local\noptions ndots:5\n"
    with pytest.raises(InvalidArgument, match="more than one line"):
        format_resolv_conf(["nameserver 1.1.1.1\nnameserver 2.2.2.2"])
    with pytest.raises(InvalidArgument, match="starts with neither"):
        format_resolv_conf(["rm -rf /"])


def test_write_resolv_conf_keeps_the_inode(tmp_path: Path) -> None:
    service = NetworkService(AgentConfig(), HostPaths(tmp_path))
    path = service.write_resolv_conf(["nameserver 10.0.0.1"])
    assert path == str(tmp_path / "run/kata-containers/sandbox/resolv.conf")
    inode = os.stat(path).st_ino
    service.write_resolv_conf(["nameserver 10.0.0.2"])
    assert Path(path).read_text() == "nameserver 10.0.0.2\n"
    assert os.stat(path).st_ino == inode


def test_hostname_is_validated_before_the_syscall(tmp_path: Path) -> None:
    service = NetworkService(AgentConfig(), HostPaths(tmp_path))
    for bad in ("-lead", "a" * 65, "has space", "semi;colon"):
        with pytest.raises(InvalidArgument, match="hostname"):
            service.set_hostname(bad)


def test_iptables_missing_is_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    service = NetworkService(AgentConfig(), HostPaths(tmp_path))
    with pytest.raises(Unsupported, match="ip6tables-save is not in this guest image"):
        service.get_iptables(True)
    with pytest.raises(Unsupported, match="iptables-restore"):
        service.set_iptables(False, b"*filter\nCOMMIT\n")


def test_update_interface_by_missing_pci_device_times_out(tmp_path: Path) -> None:
    service = NetworkService(AgentConfig(hotplug_timeout=0.0), HostPaths(tmp_path), open_socket=lambda: None)
    with pytest.raises(NotFound, match="PCI path 03"):
        service.update_interface(Interface(name="eth0", device_path="03"))


def test_network_and_storage_modules_do_not_import_pyroute2_or_grpc() -> None:
    code = (
        "import sys, agent.services.network, agent.services.storage, agent.storage.table;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'grpc') or m.startswith('agent.rpc')];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
