"""Ask an agent's ``grpc.Health/Check`` over a unix socket, by ttrpc or gRPC, from the host.

The builders use it to exercise a running agent (import tracing, initrd checks) without importing the
agent's generated code: the two small messages involved are encoded by hand.
HealthCheckRequest{service=1}, HealthCheckResponse{status=1} (SERVING=1);
ttrpc Request{service=1, method=2, payload=3, timeout_nano=4}, Response{status=1, payload=2}.
"""

from __future__ import annotations

import socket
import struct

SERVING = 1
TTRPC_REQUEST = 1
TTRPC_RESPONSE = 2
HEALTH_SERVICE = "grpc.Health"
CHECK = "Check"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def parse_fields(data: bytes) -> dict[int, list[int | bytes]]:
    """Decode one protobuf message level: field number -> values (varints as int, the rest as bytes)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value = varint()
        elif wire == 2:
            length = varint()
            value = data[pos : pos + length]
            pos += length
        elif wire == 5:
            value = data[pos : pos + 4]
            pos += 4
        elif wire == 1:
            value = data[pos : pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def health_status(response: bytes) -> int:
    values = parse_fields(response).get(1, [0])
    status = values[-1]
    return status if isinstance(status, int) else 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("agent closed the connection")
        chunks += chunk
    return chunks


def check_ttrpc(path: str, timeout: float = 10.0) -> int:
    """Health Check over ttrpc; returns the HealthCheckResponse status (1 = SERVING)."""
    request = _field_bytes(1, HEALTH_SERVICE.encode()) + _field_bytes(2, CHECK.encode()) + _field_bytes(3, b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(struct.pack(">IIBB", len(request), 1, TTRPC_REQUEST, 0) + request)
        length, stream, kind, _flags = struct.unpack(">IIBB", _recv_exact(sock, 10))
        body = _recv_exact(sock, length)
    if stream != 1 or kind != TTRPC_RESPONSE:
        raise ConnectionError(f"unexpected ttrpc frame: stream {stream}, type {kind}")
    fields = parse_fields(body)
    status = fields.get(1)
    if status:
        raw = status[0]
        code = parse_fields(raw).get(1, [0])[0] if isinstance(raw, bytes) else 0
        if code:
            raise ConnectionError(f"ttrpc Check failed with status {code!r}: {raw!r}")
    payload = fields.get(2, [b""])[0]
    return health_status(payload if isinstance(payload, bytes) else b"")


def check_grpc(path: str, timeout: float = 10.0) -> int:
    """Health Check over gRPC (HTTP/2) on a unix socket; needs grpcio on the host."""
    import grpc

    with grpc.insecure_channel(f"unix:{path}") as channel:
        call = channel.unary_unary(
            f"/{HEALTH_SERVICE}/{CHECK}", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        response = call(b"", timeout=timeout)
    return health_status(response)
