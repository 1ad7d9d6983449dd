"""Listen and dial addresses: vsock://CID:PORT, unix://PATH, tcp://HOST:PORT, hvsock://UDS:PORT.

Shared by the agent (listen) and agentctl (dial); pure parsing, no sockets.
"""

from __future__ import annotations

from agent.errors import InvalidArgument
from agent.system.records import Record

VMADDR_CID_ANY = 0xFFFFFFFF


class Address(Record):
    _fields = ("scheme", "path", "host", "cid", "port")
    __slots__ = _fields
    scheme: str  # "vsock", "unix", "tcp", "hvsock"
    path: str  # unix socket path (unix, hvsock)
    host: str  # tcp host
    cid: int  # vsock CID
    port: int  # tcp or vsock port

    def __init__(self, scheme: str, path: str = "", host: str = "", cid: int = 0, port: int = 0) -> None:
        self._assign(scheme, path, host, cid, port)

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        if self.scheme == "tcp":
            return f"tcp://{self.host}:{self.port}"
        if self.scheme == "hvsock":
            return f"hvsock://{self.path}:{self.port}"
        cid = -1 if self.cid == VMADDR_CID_ANY else self.cid
        return f"vsock://{cid}:{self.port}"


def _port(text: str, what: str, limit: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise InvalidArgument(f"{what}: port {text!r} is not a number") from None
    if not 0 <= value <= limit:
        raise InvalidArgument(f"{what}: port {value} is out of range 0..{limit}")
    return value


def parse_address(text: str) -> Address:
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise InvalidArgument(f"address {text!r} has no scheme; use vsock://, unix://, tcp:// or hvsock://")
    if scheme == "unix":
        if not rest:
            raise InvalidArgument(f"address {text!r}: unix:// needs a socket path")
        return Address("unix", path=rest)
    if scheme in ("vsock", "tcp", "hvsock"):
        head, colon, port_text = rest.rpartition(":")
        if not colon or not head:
            what = "CID" if scheme == "vsock" else "PATH" if scheme == "hvsock" else "HOST"
            raise InvalidArgument(f"address {text!r}: expected {scheme}://{what}:PORT")
        if scheme == "tcp":
            return Address("tcp", host=head.strip("[]"), port=_port(port_text, text, 0xFFFF))
        port = _port(port_text, text, 0xFFFFFFFF)
        if scheme == "hvsock":
            return Address("hvsock", path=head, port=port)
        try:
            cid = int(head, 10)
        except ValueError:
            raise InvalidArgument(f"address {text!r}: CID {head!r} is not a number") from None
        if cid == -1:
            cid = VMADDR_CID_ANY
        elif not 0 <= cid < VMADDR_CID_ANY:
            raise InvalidArgument(f"address {text!r}: CID {cid} is out of range")
        return Address("vsock", cid=cid, port=port)
    raise InvalidArgument(f"address {text!r}: unknown scheme {scheme!r}; use vsock, unix, tcp or hvsock")
