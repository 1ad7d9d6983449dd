"""NetworkService: the guest's interfaces, routes, neighbours, DNS, hostname and iptables.

The sandbox service calls ``write_resolv_conf(dns)`` and ``set_hostname(name)`` for CreateSandbox; the
container engine bind-mounts ``resolv_conf_path`` into containers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.errors import InvalidArgument, ResourceError
from agent.network import iptables, resolv
from agent.network.netlink import Netlink
from agent.network.types import Interface, Neighbor, Route
from agent.system import libc
from agent.system.paths import HostPaths
from agent.system.pcipath import Waker, device_children, parse_pci_path, pci_device_dir, wait_for

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

LOOPBACK = "lo"
MAX_HOSTNAME = 64
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class NetworkService:
    def __init__(
        self,
        config: AgentConfig,
        paths: HostPaths,
        open_socket: Callable[[], Any] | None = None,
        waker_factory: Callable[[], Waker | None] = lambda: None,
    ) -> None:
        self.config = config
        self.paths = paths
        self.netlink = Netlink(open_socket)
        self.waker_factory = waker_factory

    @classmethod
    def from_services(cls, services: Services) -> NetworkService:
        from agent.services.devicewait import waker_factory

        return cls(services.config, services.paths, waker_factory=waker_factory(services.paths, "net"))

    def close(self) -> None:
        self.netlink.close()

    # --- links and routes

    def link_name_at(self, pci_path: str) -> str:
        """The name of the NIC at ``pci_path``, waiting up to the hotplug timeout for it to appear."""
        parse_pci_path(pci_path)

        def probe() -> str | None:
            device = pci_device_dir(self.paths, pci_path)
            if device is None:
                return None
            names = device_children(device, "net")
            return os.path.basename(names[0]) if names else None

        waker = self.waker_factory()
        try:
            return wait_for(probe, self.config.hotplug_timeout, f"network device at PCI path {pci_path}", waker)
        finally:
            close = getattr(waker, "close", None)
            if close is not None:
                close()

    def update_interface(self, iface: Interface) -> Interface:
        """Find the link by MAC, or by PCI path when the request has no MAC, and configure it."""
        current = iface.device
        if iface.device_path:
            current = self.link_name_at(iface.device_path)
        if not iface.hw_addr and not current:
            raise InvalidArgument("UpdateInterface: the interface has neither hwAddr nor devicePath")
        result = self.netlink.update_interface(iface, current_name=current)
        log.info("interface %s (%s): %s", result.name, result.hw_addr, ", ".join(map(str, result.addresses)))
        return result

    def list_interfaces(self) -> list[Interface]:
        return self.netlink.list_interfaces()

    def update_routes(self, routes: list[Route]) -> list[Route]:
        return self.netlink.update_routes(routes)

    def list_routes(self) -> list[Route]:
        return self.netlink.list_routes()

    def add_arp_neighbors(self, neighbors: list[Neighbor]) -> None:
        self.netlink.add_neighbors(neighbors)

    def loopback_up(self) -> None:
        self.netlink.set_up(LOOPBACK)

    # --- sandbox DNS and hostname

    @property
    def resolv_conf_path(self) -> str:
        return f"{self.paths.sandbox_dir}/resolv.conf"

    def write_resolv_conf(self, dns: list[str]) -> str:
        return resolv.write_resolv_conf(self.resolv_conf_path, dns)

    def set_hostname(self, name: str) -> None:
        if not name:
            return
        if len(name) > MAX_HOSTNAME or not _HOSTNAME.match(name):
            raise InvalidArgument(f"hostname {name!r}: expected up to {MAX_HOSTNAME} letters, digits, '-' and '.'")
        try:
            libc.sethostname(name)
        except OSError as exc:
            raise ResourceError(f"sethostname {name!r}: {exc.strerror}") from exc

    # --- iptables

    def get_iptables(self, ipv6: bool) -> bytes:
        return iptables.save(ipv6)

    def set_iptables(self, ipv6: bool, data: bytes) -> bytes:
        return iptables.restore(data, ipv6)
