"""Links, addresses, routes and neighbours through pyroute2.

``Netlink`` opens a socket per operation through ``open_socket`` (production: ``IPRoute()`` in the
agent's own namespace; tests: ``IPRoute(netns=...)``), so nothing imports pyroute2 before a network
RPC arrives. Kernel refusals become domain errors that name what was being done.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

from agent.errors import AgentError, AlreadyExists, InvalidArgument, NotFound, ResourceError
from agent.network.types import (
    IFF_NOARP,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RTNH_F_ONLINK,
    Interface,
    IPAddress,
    Neighbor,
    Route,
)

log = logging.getLogger(__name__)

RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTN_UNICAST = 1

_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}


# Modules pyroute2 imports at its top level for parts the agent never uses: ``ssl`` for its
# network-probe messages, ``sqlite3`` for NDB (its database of the host's network objects). The initrd
# leaves both out (with libssl, libcrypto and libsqlite3).
ABSENT_IMPORTS = ("ssl", "sqlite3")


def import_pyroute2() -> None:
    """Import pyroute2 where ``ssl`` or ``sqlite3`` is left out (the initrd drops them).

    An empty module stands in for each missing one while pyroute2 imports (it only uses them when
    called), and is taken away again so that nothing else mistakes it for the real one. asyncio comes
    first: its own optional ``ssl`` import must fail as it should. Where they exist, nothing changes.
    """
    if "pyroute2" in sys.modules:
        return
    missing = []
    for name in ABSENT_IMPORTS:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if not missing:
        return
    import asyncio  # noqa: F401

    stubs = {name: types.ModuleType(name, "stand-in while pyroute2 imports: this Python has no such module")
             for name in missing}  # fmt: skip
    sys.modules.update(stubs)
    try:
        import pyroute2  # noqa: F401
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


def _default_socket() -> Any:
    import_pyroute2()
    from pyroute2 import IPRoute

    return IPRoute()


def netlink_error(exc: Exception, doing: str) -> AgentError:
    """A pyroute2 NetlinkError (``code`` is the errno) as a domain error."""
    code = getattr(exc, "code", 0)
    message = f"{doing}: {exc.args[1] if len(exc.args) > 1 else exc}"
    if code == errno.EEXIST:
        return AlreadyExists(message)
    if code in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        return NotFound(message)
    if code in (errno.EINVAL, errno.ERANGE, errno.ENETUNREACH, errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
        return InvalidArgument(message)
    return ResourceError(message)


def _is_link_local_v6(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.version == 6 and ip.is_link_local


class Netlink:
    """One netlink socket, opened on first use and kept; calls from several threads take turns."""

    def __init__(self, open_socket: Callable[[], Any] | None = None) -> None:
        self._open = open_socket or _default_socket
        self._lock = threading.Lock()
        self._ipr: Any = None

    @contextlib.contextmanager
    def _socket(self) -> Iterator[Any]:
        with self._lock:
            if self._ipr is None:
                self._ipr = self._open()
            try:
                yield self._ipr
            except OSError:
                # The socket itself may be broken (not a kernel refusal): start afresh next time.
                self._close_locked()
                raise

    def _close_locked(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    @contextlib.contextmanager
    def _doing(self, what: str) -> Iterator[None]:
        import_pyroute2()
        from pyroute2 import NetlinkError

        try:
            yield
        except NetlinkError as exc:
            raise netlink_error(exc, what) from exc

    # --- reading

    def _names(self, ipr: Any) -> dict[int, str]:
        return {link["index"]: link.get("ifname") for link in ipr.get_links()}

    def _interface(self, ipr: Any, link: Any) -> Interface:
        addresses = tuple(
            IPAddress(
                a.get("IFA_ADDRESS") if a.get("IFA_LOCAL") is None else a.get("IFA_LOCAL"),
                a["prefixlen"],
                _VERSION.get(a["family"], 4),
            )
            for a in ipr.get_addr(index=link["index"])
        )
        name = link.get("ifname") or ""
        return Interface(
            name=name,
            hw_addr=(link.get("address") or "").lower(),
            mtu=link.get("mtu") or 0,
            addresses=addresses,
            link_type=link.get(("linkinfo", "kind")) or "",
            raw_flags=link["flags"],
            device=name,
        )

    def list_interfaces(self) -> list[Interface]:
        with self._socket() as ipr, self._doing("list links"):
            return [self._interface(ipr, link) for link in ipr.get_links()]

    def _routes(self, ipr: Any) -> list[tuple[Route, Any]]:
        names = self._names(ipr)
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                if msg["type"] != RTN_UNICAST:
                    continue
                dst = msg.get("dst")
                route = Route(
                    dest=f"{dst}/{msg['dst_len']}" if dst and msg["dst_len"] else "",
                    gateway=msg.get("gateway") or "",
                    device=names.get(msg.get("oif") or 0, ""),
                    source=msg.get("prefsrc") or "",
                    scope=msg["scope"],
                    family=_VERSION[family],
                    flags=msg["flags"],
                )
                found.append((route, msg))
        return found

    def list_routes(self) -> list[Route]:
        with self._socket() as ipr, self._doing("list routes"):
            return [route for route, _ in self._routes(ipr)]

    # --- links

    def _find_index(self, ipr: Any, hw_addr: str = "", name: str = "") -> int | None:
        for link in ipr.get_links():
            if hw_addr and (link.get("address") or "").lower() == hw_addr.lower():
                return int(link["index"])
            if name and link.get("ifname") == name:
                return int(link["index"])
        return None

    def index_of(self, name: str) -> int:
        with self._socket() as ipr:
            index = self._find_index(ipr, name=name)
        if index is None:
            raise NotFound(f"network device {name!r} does not exist")
        return index

    def update_interface(self, iface: Interface, current_name: str = "") -> Interface:
        """Configure the link with MAC ``iface.hw_addr`` (or named ``current_name``): name, MTU,
        the address list (replacing the old one), ARP, then up. Returns the link as it is now."""
        with self._socket() as ipr:
            index = self._find_index(ipr, hw_addr=iface.hw_addr) if iface.hw_addr else None
            if index is None and current_name:
                index = self._find_index(ipr, name=current_name)
            if index is None:
                wanted = iface.hw_addr or current_name or iface.name
                raise NotFound(f"UpdateInterface: no network link with {'MAC ' if iface.hw_addr else 'name '}{wanted}")
            label = iface.name or current_name or iface.hw_addr
            with self._doing(f"set {label} down"):
                ipr.link("set", index=index, state="down")
            if iface.name:
                with self._doing(f"rename link {index} to {iface.name}"):
                    ipr.link("set", index=index, ifname=iface.name)
            if iface.mtu:
                with self._doing(f"set MTU {iface.mtu} on {label}"):
                    ipr.link("set", index=index, mtu=iface.mtu)
            if iface.raw_flags & IFF_NOARP:
                with self._doing(f"turn ARP off on {label}"):
                    ipr.link("set", index=index, arp=False)
            self._replace_addresses(ipr, index, iface.addresses, label)
            with self._doing(f"set {label} up"):
                ipr.link("set", index=index, state="up")
            link = ipr.get_links(index)[0]
            return self._interface(ipr, link)

    def _replace_addresses(self, ipr: Any, index: int, addresses: tuple[IPAddress, ...], label: str) -> None:
        wanted = {(a.address, a.prefix) for a in addresses}
        for old in ipr.get_addr(index=index):
            address = old.get("IFA_LOCAL") or old.get("IFA_ADDRESS")
            if (address, old["prefixlen"]) in wanted or _is_link_local_v6(address):
                continue
            with self._doing(f"remove address {address}/{old['prefixlen']} from {label}"):
                ipr.addr("del", index=index, address=address, prefixlen=old["prefixlen"])
        present = {(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
        for new in addresses:
            if (new.address, new.prefix) in present:
                continue
            extra: dict[str, Any] = {}
            if new.family == 4 and new.prefix < 31:
                extra["broadcast"] = str(ipaddress.ip_interface(str(new)).network.broadcast_address)
            with self._doing(f"add address {new} to {label}"):
                ipr.addr("add", index=index, address=new.address, prefixlen=new.prefix, **extra)

    def set_up(self, name: str) -> None:
        index = self.index_of(name)
        with self._socket() as ipr, self._doing(f"set {name} up"):
            ipr.link("set", index=index, state="up")

    # --- routes

    def update_routes(self, routes: list[Route]) -> list[Route]:
        """Replace the main table's routes (those the kernel did not add itself) with ``routes``,
        link-scope ones first so every gateway is reachable when its route goes in."""
        with self._socket() as ipr:
            names = {v: k for k, v in self._names(ipr).items()}
            for route in routes:
                if route.device and route.device not in names:
                    raise NotFound(
                        f"UpdateRoutes: route {route.dest or 'default'} names device {route.device!r}, "
                        "which does not exist"
                    )
            # every route checked before the table is touched: bad input changes nothing
            wanted = [(route, _route_args(route, names)) for route in _link_routes_first(routes)]
            previous = [(old, msg) for old, msg in self._routes(ipr) if msg["proto"] != RTPROT_KERNEL]
            for old, msg in previous:
                with self._doing(f"delete route {old.dest or 'default'} via {old.gateway or old.device}"):
                    ipr.route("del", **_route_key(msg))
            try:
                for route, args in wanted:
                    with self._doing(f"add route {route.dest or 'default'} via {route.gateway or route.device}"):
                        ipr.route("replace", **args)
            except AgentError:
                self._restore_routes(ipr, previous, names)  # the kernel refused one: the table as it was
                raise
            return [route for route, _ in self._routes(ipr)]

    def _restore_routes(self, ipr: Any, previous: list[tuple[Route, Any]], names: dict[str, int]) -> None:
        import_pyroute2()
        from pyroute2 import NetlinkError

        for _, msg in self._routes(ipr):
            if msg["proto"] != RTPROT_KERNEL:
                with contextlib.suppress(NetlinkError):
                    ipr.route("del", **_route_key(msg))
        for old in _link_routes_first([route for route, _ in previous]):
            try:
                ipr.route("replace", **_route_args(old, names))
            except (NetlinkError, AgentError) as exc:
                log.warning("UpdateRoutes: could not put back route %s: %s", old.dest or "default", exc)

    # --- neighbours

    def add_neighbors(self, neighbors: list[Neighbor]) -> None:
        with self._socket() as ipr:
            names = {v: k for k, v in self._names(ipr).items()}
            for neighbor in neighbors:
                if neighbor.device not in names:
                    raise NotFound(f"AddARPNeighbors: device {neighbor.device!r} of {neighbor.address} does not exist")
                ip = ipaddress.ip_address(neighbor.address)
                with self._doing(f"add neighbour {neighbor.address} lladdr {neighbor.lladdr} on {neighbor.device}"):
                    ipr.neigh(
                        "replace",
                        dst=str(ip),
                        lladdr=neighbor.lladdr,
                        ifindex=names[neighbor.device],
                        state=neighbor.state or NUD_PERMANENT,
                        flags=neighbor.flags,
                        family=_FAMILY[ip.version],
                    )


def _route_key(msg: Any) -> dict[str, Any]:
    key: dict[str, Any] = {
        "family": msg["family"],
        "table": RT_TABLE_MAIN,
        "dst_len": msg["dst_len"],
        "scope": msg["scope"],
    }
    for attr in ("dst", "gateway", "oif", "priority"):
        if msg.get(attr) is not None:
            key[attr] = msg.get(attr)
    return key


def _address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (None when empty); InvalidArgument names ``what`` when it is none."""
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"{what} {text!r} is not an IP address") from None


def _link_routes_first(routes: list[Route]) -> list[Route]:
    """Link-scope routes before gateway routes, so every gateway is reachable when its route goes in."""
    return sorted(routes, key=lambda route: bool(route.gateway))


def _route_args(route: Route, names: dict[str, int]) -> dict[str, Any]:
    """pyroute2's arguments for ``route``; InvalidArgument names a field that is not an address of the
    route's family."""
    where = f"UpdateRoutes: route {route.dest or 'default'}"
    dest = None
    try:
        if not route.is_default:
            dest = ipaddress.ip_network(route.dest, strict=False)
    except ValueError:
        raise InvalidArgument(f"{where}: destination {route.dest!r} is not a network") from None
    gateway = _address(route.gateway, f"{where}: gateway")
    source = _address(route.source, f"{where}: source")
    family = gateway.version if gateway else dest.version if dest else route.family
    versions = {"destination": dest and dest.version, "gateway": gateway and gateway.version,
                "source": source and source.version}  # fmt: skip
    for field, version in versions.items():
        if version and version != family:
            raise InvalidArgument(f"{where}: the {field} is IPv{version}, the route IPv{family}")
    args: dict[str, Any] = {"family": _FAMILY.get(family, socket.AF_INET), "table": RT_TABLE_MAIN}
    args["dst"] = "default" if dest is None else str(dest)
    if route.gateway:
        args["gateway"] = route.gateway
    if route.device:
        args["oif"] = names[route.device]
    if route.source:
        args["prefsrc"] = route.source
    scope = route.scope
    if not route.gateway and scope == RT_SCOPE_UNIVERSE and route.device:
        scope = RT_SCOPE_LINK
    args["scope"] = scope
    if route.flags & RTNH_F_ONLINK:
        args["flags"] = RTNH_F_ONLINK
    return args
