"""Network domain types. Families are 4 and 6; prefixes are integers."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.errors import InvalidArgument

# Link flags (IFF_*) and neighbour states (NUD_*) keep the kernel's names.
IFF_UP = 0x1
IFF_NOARP = 0x80
NUD_PERMANENT = 0x80

# Route scopes (RT_SCOPE_*).
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254

# Route flags (RTNH_F_*).
RTNH_F_ONLINK = 0x4


@dataclass(frozen=True)
class IPAddress:
    address: str
    prefix: int
    family: int = 4

    @classmethod
    def parse(cls, address: str, prefix: str | int) -> IPAddress:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise InvalidArgument(f"{address!r} is not an IP address") from None
        try:
            length = int(prefix) if str(prefix) != "" else ip.max_prefixlen
        except ValueError:
            raise InvalidArgument(f"address {address}: prefix {prefix!r} is not a number") from None
        if not 0 <= length <= ip.max_prefixlen:
            raise InvalidArgument(f"address {address}: prefix /{length} is out of range")
        return cls(str(ip), length, ip.version)

    def __str__(self) -> str:
        return f"{self.address}/{self.prefix}"


@dataclass(frozen=True)
class Interface:
    name: str
    hw_addr: str = ""
    mtu: int = 0
    addresses: tuple[IPAddress, ...] = ()
    device_path: str = ""  # PCI path of the NIC, e.g. "02/01"
    link_type: str = ""  # netlink kind: "veth", "tun", "" for physical
    raw_flags: int = 0
    device: str = ""  # the link's current name, when the request renames it


@dataclass(frozen=True)
class Route:
    dest: str = ""  # "10.0.0.0/24"; "" is the default route
    gateway: str = ""
    device: str = ""
    source: str = ""
    scope: int = RT_SCOPE_UNIVERSE
    family: int = 4
    flags: int = 0

    @property
    def is_default(self) -> bool:
        return self.dest in ("", "default")


@dataclass(frozen=True)
class Neighbor:
    address: str
    device: str
    lladdr: str = ""
    state: int = NUD_PERMANENT
    flags: int = 0
