"""Guest network operations in a namespace each test creates (a veth pair inside it), checked
against ``ip -j``. Nothing touches the host's own links, routes or iptables."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.errors import InvalidArgument, NotFound
from agent.network.types import Interface, IPAddress, Neighbor, Route
from agent.rpc.methods.network import list_routes, update_interface
from agent.rpc.pb import agent_pb2, types_pb2
from agent.rpc.registry import CallContext
from agent.services import Services
from agent.services.network import NetworkService
from agent.system.paths import HostPaths
from tests.conftest import REPO, require_root

MAC = "02:00:00:7a:00:02"
PEER_MAC = "02:00:00:7a:00:01"


@dataclass
class Namespace:
    name: str
    services: list[NetworkService] = field(default_factory=list)

    def ip(self, *args: str) -> Any:
        out = subprocess.run(["ip", "-n", self.name, "-j", *args], check=True, capture_output=True, text=True)
        return json.loads(out.stdout or "[]")

    def run(self, *argv: str) -> None:
        subprocess.run(["ip", "-n", self.name, *argv], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Namespace]:
    require_root()
    ns = Namespace(f"pykata-test-{secrets.token_hex(4)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        ns.run("link", "add", "peer0", "address", PEER_MAC, "type", "veth", "peer", "name", "eth0", "address", MAC)
        ns.run("link", "set", "peer0", "up")
        yield ns
    finally:
        for service in ns.services:
            service.close()
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


def service_in(ns: Namespace, root: Path | None = None) -> NetworkService:
    from pyroute2 import IPRoute

    paths = HostPaths(root) if root else HostPaths()
    service = NetworkService(AgentConfig(hotplug_timeout=1.0), paths, open_socket=lambda: IPRoute(netns=ns.name))
    ns.services.append(service)
    return service


def link(ns: Namespace, name: str) -> dict[str, Any]:
    return ns.ip("addr", "show", "dev", name)[0]


def addresses(entry: dict[str, Any], family: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for a in entry["addr_info"] if a["family"] == family}


def test_update_interface_by_mac_renames_sets_mtu_and_replaces_addresses(netns: Namespace) -> None:
    netns.run("addr", "add", "192.0.2.9/24", "dev", "eth0")
    service = service_in(netns)
    wanted = Interface(
        name="pkt0",
        hw_addr=MAC.upper(),
        mtu=1400,
        addresses=(IPAddress("10.77.0.2", 24), IPAddress("fd00:77::2", 64, 6)),
    )
    result = service.update_interface(wanted)

    entry = link(netns, "pkt0")
    assert entry["address"] == MAC
    assert entry["mtu"] == 1400
    assert "UP" in entry["flags"]
    assert addresses(entry, "inet") == {"10.77.0.2/24"}
    assert "fd00:77::2/64" in addresses(entry, "inet6")
    assert result.name == "pkt0" and result.mtu == 1400
    assert {str(a) for a in result.addresses} >= {"10.77.0.2/24", "fd00:77::2/64"}
    assert not any(e["ifname"] == "eth0" for e in netns.ip("link"))


def test_update_interface_by_pci_path(netns: Namespace, tmp_path: Path) -> None:
    # The sysfs side is a fake tree naming the real link; netlink works on the real namespace.
    (tmp_path / "sys/bus/pci/devices/0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    (tmp_path / "sys/bus/pci/devices/0000:01:01.0/virtio2/net/eth0").mkdir(parents=True)
    service = service_in(netns, tmp_path)
    service.update_interface(Interface(name="eth0", device_path="02/01", addresses=(IPAddress("10.78.0.2", 16),)))
    assert addresses(link(netns, "eth0"), "inet") == {"10.78.0.2/16"}
    with pytest.raises(NotFound, match="PCI path 02/02"):
        service.update_interface(Interface(name="eth0", device_path="02/02"))


def test_update_interface_errors_name_the_problem(netns: Namespace) -> None:
    service = service_in(netns)
    with pytest.raises(NotFound, match="02:00:00:00:00:99"):
        service.update_interface(Interface(name="x", hw_addr="02:00:00:00:00:99"))
    with pytest.raises(InvalidArgument, match="neither hwAddr nor devicePath"):
        service.update_interface(Interface(name="x"))


def test_update_routes_orders_link_routes_first_and_replaces_the_table(netns: Namespace) -> None:
    service = service_in(netns)
    service.update_interface(Interface(name="eth0", hw_addr=MAC, addresses=(IPAddress("10.79.0.2", 24),)))
    # Gateway routes first on purpose: the service must add 10.79.1.0/24 before the default via 10.79.1.1.
    routes = [
        Route(dest="", gateway="10.79.1.1", device="eth0"),
        Route(dest="192.168.79.0/24", gateway="10.79.0.254", device="eth0"),
        Route(dest="10.79.1.0/24", device="eth0"),
    ]
    service.update_routes(routes)
    table = {(r["dst"], r.get("gateway", "")) for r in netns.ip("route", "show")}
    assert table == {
        ("default", "10.79.1.1"),
        ("192.168.79.0/24", "10.79.0.254"),
        ("10.79.1.0/24", ""),
        ("10.79.0.0/24", ""),  # the kernel's own route for the address stays
    }
    listed = {(r.dest, r.gateway, r.device) for r in service.list_routes() if r.family == 4}
    assert ("", "10.79.1.1", "eth0") in listed and ("10.79.1.0/24", "", "eth0") in listed

    service.update_routes([Route(dest="172.16.79.0/24", gateway="10.79.0.1", device="eth0")])
    table = {(r["dst"], r.get("gateway", "")) for r in netns.ip("route", "show")}
    assert table == {("172.16.79.0/24", "10.79.0.1"), ("10.79.0.0/24", "")}

    kept = {("172.16.79.0/24", "10.79.0.1"), ("10.79.0.0/24", "")}
    with pytest.raises(NotFound, match="nosuchdev"):
        service.update_routes([Route(dest="10.1.0.0/16", device="nosuchdev")])
    # the kernel refuses the second route after the first went in: the table is put back as it was
    with pytest.raises(InvalidArgument, match="unreachable"):
        service.update_routes([Route(dest="10.3.0.0/16", gateway="10.79.0.7", device="eth0"),
                               Route(dest="10.2.0.0/16", gateway="10.200.0.1", device="eth0")])  # fmt: skip
    assert {(r["dst"], r.get("gateway", "")) for r in netns.ip("route", "show")} == kept
    # fields that are not addresses are refused before the table is touched (they were INTERNAL errors)
    for bad, message in (
        (Route(dest="bind", device="eth0"), r"destination 'bind' is not a network"),
        (Route(dest="10.4.0.0/16", gateway="a", device="eth0"), r"gateway 'a' is not an IP address"),
        (Route(dest="10.4.0.0/16", source="SIGKILL", device="eth0"), r"source 'SIGKILL' is not an IP address"),
        (Route(dest="fd00::/64", gateway="10.79.0.1", device="eth0"), r"the destination is IPv6, the route IPv4"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            service.update_routes([Route(dest="10.5.0.0/16", device="eth0"), bad])
        assert {(r["dst"], r.get("gateway", "")) for r in netns.ip("route", "show")} == kept


def test_list_interfaces_matches_ip_link(netns: Namespace) -> None:
    service = service_in(netns)
    listed = {i.name: i for i in service.list_interfaces()}
    for entry in netns.ip("link"):
        assert listed[entry["ifname"]].mtu == entry["mtu"]
        assert listed[entry["ifname"]].hw_addr == entry["address"]
    assert listed["eth0"].link_type == "veth"


def test_arp_neighbors_and_loopback(netns: Namespace) -> None:
    service = service_in(netns)
    service.update_interface(Interface(name="eth0", hw_addr=MAC, addresses=(IPAddress("10.80.0.2", 24),)))
    service.add_arp_neighbors([Neighbor("10.80.0.1", "eth0", PEER_MAC)])
    neighbors = netns.ip("neigh", "show", "dev", "eth0")
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neighbors] == [("10.80.0.1", PEER_MAC, ["PERMANENT"])]
    with pytest.raises(NotFound, match="nosuchdev"):
        service.add_arp_neighbors([Neighbor("10.80.0.3", "nosuchdev", PEER_MAC)])

    assert "UP" not in link(netns, "lo")["flags"]
    service.loopback_up()
    assert "UP" in link(netns, "lo")["flags"]


def test_handlers_convert_protobuf(netns: Namespace) -> None:
    services = Services(AgentConfig(), HostPaths())
    services._built["network"] = service_in(netns)
    request = agent_pb2.UpdateInterfaceRequest(
        interface=types_pb2.Interface(
            name="eth0",
            hwAddr=MAC,
            mtu=1450,
            IPAddresses=[types_pb2.IPAddress(family=types_pb2.v4, address="10.81.0.2", mask="24")],
        )
    )
    reply = update_interface(services, request, CallContext("ttrpc"))
    assert (reply.name, reply.mtu, reply.hwAddr) == ("eth0", 1450, MAC)
    assert [(a.address, a.mask, a.family) for a in reply.IPAddresses if a.family == types_pb2.v4] == [
        ("10.81.0.2", "24", types_pb2.v4)
    ]
    routes = list_routes(services, agent_pb2.ListRoutesRequest(), CallContext("grpc"))
    assert ("10.81.0.0/24", "eth0") in {(r.dest, r.device) for r in routes.Routes}


IPTABLES_SCRIPT = """
import sys
from agent.config import AgentConfig
from agent.services.network import NetworkService
from agent.system.paths import HostPaths
service = NetworkService(AgentConfig(), HostPaths())
rules = b"*filter\\n:INPUT ACCEPT [0:0]\\n-A INPUT -s 10.82.0.9/32 -j DROP\\nCOMMIT\\n"
service.set_iptables(False, rules)
sys.stdout.buffer.write(service.get_iptables(False))
"""


def test_iptables_save_and_restore_inside_the_namespace(netns: Namespace) -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", netns.name, sys.executable, "-c", IPTABLES_SCRIPT],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "-A INPUT -s 10.82.0.9/32 -j DROP" in out


HOSTNAME_SCRIPT = """
import socket
from agent.config import AgentConfig
from agent.services.network import NetworkService
from agent.system.paths import HostPaths
NetworkService(AgentConfig(), HostPaths()).set_hostname("pykata-sandbox-1")
print(socket.gethostname())
"""


def test_set_hostname_in_a_private_uts_namespace() -> None:
    require_root()
    before = subprocess.run(["hostname"], check=True, capture_output=True, text=True).stdout
    out = subprocess.run(
        ["unshare", "--uts", sys.executable, "-c", HOSTNAME_SCRIPT],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == "pykata-sandbox-1"
    assert subprocess.run(["hostname"], check=True, capture_output=True, text=True).stdout == before
