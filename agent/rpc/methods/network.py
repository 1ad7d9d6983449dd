"""RPC handlers: network. Converts types.Interface/Route/ARPNeighbor to agent.network dataclasses."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from agent.network.types import NUD_PERMANENT, Interface, IPAddress, Neighbor, Route
from agent.rpc.pb import agent_pb2, types_pb2
from agent.rpc.registry import CallContext, rpc

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

AGENT = "grpc.AgentService"


def family_from_pb(family: int) -> int:
    return 6 if family == types_pb2.v6 else 4


def family_to_pb(family: int) -> types_pb2.IPFamily:
    return types_pb2.v6 if family == 6 else types_pb2.v4


def address_from_pb(pb: types_pb2.IPAddress) -> IPAddress:
    return IPAddress.parse(pb.address, pb.mask)


def address_to_pb(address: IPAddress) -> types_pb2.IPAddress:
    return types_pb2.IPAddress(family=family_to_pb(address.family), address=address.address, mask=str(address.prefix))


def interface_from_pb(pb: types_pb2.Interface) -> Interface:
    return Interface(
        name=pb.name,
        hw_addr=pb.hwAddr.lower(),
        mtu=pb.mtu,
        addresses=tuple(address_from_pb(a) for a in pb.IPAddresses),
        device_path=pb.devicePath,
        link_type=pb.type,
        raw_flags=pb.raw_flags,
        device=pb.device,
    )


def interface_to_pb(iface: Interface) -> types_pb2.Interface:
    return types_pb2.Interface(
        device=iface.device or iface.name,
        name=iface.name,
        IPAddresses=[address_to_pb(a) for a in iface.addresses],
        mtu=iface.mtu,
        hwAddr=iface.hw_addr,
        devicePath=iface.device_path,
        type=iface.link_type,
        raw_flags=iface.raw_flags,
    )


def route_from_pb(pb: types_pb2.Route) -> Route:
    return Route(
        dest=pb.dest,
        gateway=pb.gateway,
        device=pb.device,
        source=pb.source,
        scope=pb.scope,
        family=family_from_pb(pb.family),
        flags=pb.flags,
    )


def route_to_pb(route: Route) -> types_pb2.Route:
    return types_pb2.Route(
        dest=route.dest,
        gateway=route.gateway,
        device=route.device,
        source=route.source,
        scope=route.scope,
        family=family_to_pb(route.family),
        flags=route.flags,
    )


def neighbor_from_pb(pb: types_pb2.ARPNeighbor) -> Neighbor:
    return Neighbor(
        address=address_from_pb(pb.toIPAddress).address,
        device=pb.device,
        lladdr=pb.lladdr,
        state=pb.state or NUD_PERMANENT,
        flags=pb.flags,
    )


@rpc(AGENT, "UpdateInterface")
def update_interface(
    services: Services, request: agent_pb2.UpdateInterfaceRequest, ctx: CallContext
) -> types_pb2.Interface:
    return interface_to_pb(services.network.update_interface(interface_from_pb(request.interface)))


@rpc(AGENT, "ListInterfaces")
def list_interfaces(
    services: Services, request: agent_pb2.ListInterfacesRequest, ctx: CallContext
) -> agent_pb2.Interfaces:
    return agent_pb2.Interfaces(Interfaces=[interface_to_pb(i) for i in services.network.list_interfaces()])


@rpc(AGENT, "UpdateRoutes")
def update_routes(services: Services, request: agent_pb2.UpdateRoutesRequest, ctx: CallContext) -> agent_pb2.Routes:
    routes = services.network.update_routes([route_from_pb(r) for r in request.routes.Routes])
    return agent_pb2.Routes(Routes=[route_to_pb(r) for r in routes])


@rpc(AGENT, "ListRoutes")
def list_routes(services: Services, request: agent_pb2.ListRoutesRequest, ctx: CallContext) -> agent_pb2.Routes:
    return agent_pb2.Routes(Routes=[route_to_pb(r) for r in services.network.list_routes()])


@rpc(AGENT, "AddARPNeighbors")
def add_arp_neighbors(
    services: Services, request: agent_pb2.AddARPNeighborsRequest, ctx: CallContext
) -> empty_pb2.Empty:
    services.network.add_arp_neighbors([neighbor_from_pb(n) for n in request.neighbors.ARPNeighbors])
    return empty_pb2.Empty()


@rpc(AGENT, "GetIPTables")
def get_iptables(
    services: Services, request: agent_pb2.GetIPTablesRequest, ctx: CallContext
) -> agent_pb2.GetIPTablesResponse:
    return agent_pb2.GetIPTablesResponse(data=services.network.get_iptables(request.is_ipv6))


@rpc(AGENT, "SetIPTables")
def set_iptables(
    services: Services, request: agent_pb2.SetIPTablesRequest, ctx: CallContext
) -> agent_pb2.SetIPTablesResponse:
    return agent_pb2.SetIPTablesResponse(data=services.network.set_iptables(request.is_ipv6, request.data))
