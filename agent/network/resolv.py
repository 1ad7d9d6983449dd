"""The sandbox's resolv.conf, from CreateSandbox's ``dns`` lines."""

from __future__ import annotations

import ipaddress
import os

from agent.errors import InvalidArgument

MAX_DNS_LINES = 64
KEYWORDS = ("nameserver", "search", "domain", "options", "sortlist")


def format_resolv_conf(dns: list[str]) -> str:
    """Kata sends whole lines ("nameserver 10.0.0.1", "search svc.local"); a bare address is taken as
    a nameserver. Lines must be single lines with a known keyword."""
    if len(dns) > MAX_DNS_LINES:
        raise InvalidArgument(f"dns: {len(dns)} lines is more than {MAX_DNS_LINES}")
    lines = []
    for entry in dns:
        text = entry.strip()
        if not text:
            continue
        if "\n" in text or "\r" in text or "\0" in text:
            raise InvalidArgument(f"dns: entry {entry!r} spans more than one line")
        keyword = text.split()[0]
        if keyword not in KEYWORDS:
            try:
                ipaddress.ip_address(keyword)
            except ValueError:
                raise InvalidArgument(
                    f"dns: entry {entry!r} starts with neither an address nor one of {', '.join(KEYWORDS)}"
                ) from None
            text = f"nameserver {text}"
        lines.append(text)
    return "".join(line + "\n" for line in lines)


def write_resolv_conf(target: str | os.PathLike[str], dns: list[str]) -> str:
    """Write in place (not by rename), so bind mounts of the file into containers see the content."""
    path = os.fspath(target)
    content = format_resolv_conf(dns).encode()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    return path
