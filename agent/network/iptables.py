"""GetIPTables / SetIPTables through iptables-save and iptables-restore (ip6tables-* for IPv6)."""

from __future__ import annotations

from agent.errors import InvalidArgument, Unsupported
from agent.system.run import CommandError, CommandNotFound, run

MAX_RULES_BYTES = 4 * 1024 * 1024
TIMEOUT = 30.0


def _tool(action: str, ipv6: bool) -> str:
    return f"{'ip6tables' if ipv6 else 'iptables'}-{action}"


def save(ipv6: bool = False) -> bytes:
    tool = _tool("save", ipv6)
    try:
        return run([tool], timeout=TIMEOUT, package="iptables").stdout
    except CommandNotFound as exc:
        raise Unsupported(f"GetIPTables: {tool} is not in this guest image ({exc})") from exc
    except CommandError as exc:
        raise Unsupported(f"GetIPTables: {exc}") from exc


def restore(data: bytes, ipv6: bool = False) -> bytes:
    tool = _tool("restore", ipv6)
    if len(data) > MAX_RULES_BYTES:
        raise InvalidArgument(f"SetIPTables: {len(data)} bytes of rules is more than {MAX_RULES_BYTES}")
    try:
        return run([tool], input=data, timeout=TIMEOUT, package="iptables").stdout
    except CommandNotFound as exc:
        raise Unsupported(f"SetIPTables: {tool} is not in this guest image ({exc})") from exc
    except CommandError as exc:
        raise InvalidArgument(f"SetIPTables: {exc}") from exc
