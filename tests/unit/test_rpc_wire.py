"""The hand-written protobuf wire code (agent/rpc/wire.py, ttrpc's envelope, the early Check) against
the generated classes: same bytes out, same values in, and clear errors for malformed input."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from agent.rpc import registry, wire
from agent.rpc.pb import health_pb2, ttrpc_pb2
from agent.rpc.servicer import CHECK_SERVING, Servicer
from agent.rpc.status import Code
from agent.rpc.ttrpc import Request, decode_response_message, encode_response_message
from tests.conftest import REPO

TEXTS = ["", "grpc.Health", "Check", "ünïcödé ✓", "x" * 300]


def _random_request(rng: random.Random) -> tuple[ttrpc_pb2.Request, Request]:
    service, method = rng.choice(TEXTS), rng.choice(TEXTS)
    payload = rng.randbytes(rng.choice([0, 1, 127, 128, 20000]))
    timeout = rng.choice([0, 1, 10**9, 2**62, -5])
    metadata = {rng.choice(TEXTS): rng.choice(TEXTS) for _ in range(rng.randrange(4))}
    generated = ttrpc_pb2.Request(
        service=service,
        method=method,
        payload=payload,
        timeout_nano=timeout,
        metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata.items()],
    )
    return generated, Request(service, method, payload, timeout, metadata)


def test_request_encodes_as_the_generated_class_does() -> None:
    rng = random.Random(5)
    for _ in range(300):
        generated, ours = _random_request(rng)
        assert ours.encode() == generated.SerializeToString()


def test_request_decodes_what_the_generated_class_encodes() -> None:
    rng = random.Random(7)
    for _ in range(300):
        generated, ours = _random_request(rng)
        decoded = Request.decode(generated.SerializeToString())
        assert (decoded.service, decoded.method, decoded.payload, decoded.timeout_nano, decoded.metadata) == (
            ours.service,
            ours.method,
            ours.payload,
            ours.timeout_nano,
            ours.metadata,
        )


def test_request_decode_skips_unknown_fields_and_keeps_the_last_scalar() -> None:
    data = (
        wire.length_delimited(1, b"first")
        + wire.varint_field(9, 12345)  # unknown varint
        + wire.key(10, wire.FIXED64)
        + b"\x00" * 8
        + wire.key(11, wire.FIXED32)
        + b"\x00" * 4
        + wire.varint_field(1, 7)  # known number, unexpected wire type: unknown field
        + wire.length_delimited(1, b"last")
    )
    assert ttrpc_pb2.Request.FromString(data).service == "last"
    assert Request.decode(data).service == "last"


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # length past the end
        b"\x0a",  # key without its length
        b"\x20" + b"\xff" * 11,  # varint longer than 10 bytes
        b"\x0a\x02\xff\xfe",  # service not UTF-8
        b"\x0b",  # wire type 3 (group)
        b"\x00\x00",  # field number 0
        b"\x2a\x03\x0a\x05a",  # metadata entry truncated inside
    ],
)
def test_request_decode_refuses_malformed_bytes(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        Request.decode(data)
    with pytest.raises(Exception):  # noqa: B017 - the generated parser refuses them too
        ttrpc_pb2.Request.FromString(data)


@pytest.mark.parametrize(
    ("code", "message", "payload"),
    [(0, "", b""), (0, "", b"\x08\x01"), (5, "not found", b""), (16, "ü", b"x" * 200), (-1, "", b"")],
)
def test_response_matches_the_generated_class(code: int, message: str, payload: bytes) -> None:
    generated = ttrpc_pb2.Response(status=ttrpc_pb2.Status(code=code, message=message), payload=payload)
    assert encode_response_message(code, message, payload) == generated.SerializeToString()
    assert decode_response_message(generated.SerializeToString()) == (code, message, payload)


def test_response_decode_ignores_status_details() -> None:
    status = ttrpc_pb2.Status(code=3, message="bad")
    status.details.add(type_url="type.example/x", value=b"\x01")
    data = ttrpc_pb2.Response(status=status, payload=b"p").SerializeToString()
    assert decode_response_message(data) == (3, "bad", b"p")


def test_check_reply_is_serving() -> None:
    reply = health_pb2.HealthCheckResponse.FromString(CHECK_SERVING)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse(status=1).SerializeToString() == CHECK_SERVING


class _NoServices:
    pass


def _unloaded_servicer() -> Servicer:
    """A servicer whose handlers have not loaded yet (its background load waits for a first call)."""
    return Servicer(_NoServices(), background_load=True)  # type: ignore[arg-type]


def test_early_check_validates_the_request() -> None:
    servicer = _unloaded_servicer()
    ctx = registry.CallContext("ttrpc")
    good = health_pb2.CheckRequest(service="anything").SerializeToString()
    assert servicer.call("grpc.Health", "Check", good, ctx) == (Code.OK, "", CHECK_SERVING)
    code, message, payload = servicer.call("grpc.Health", "Check", b"\x0a\x02\xff\xfe", ctx)
    assert code == Code.INVALID_ARGUMENT and "CheckRequest" in message and payload == b""
    expired = registry.CallContext("ttrpc", deadline=0.0)
    assert servicer.call("grpc.Health", "Check", b"", expired)[0] == Code.DEADLINE_EXCEEDED
    assert servicer.wait_loaded(60)


def test_serving_imports_no_protobuf_before_the_first_check() -> None:
    """The agent's start path: server, ttrpc and servicer up and a Check answered over ttrpc, with
    neither google.protobuf nor the generated code nor the gRPC server imported. (The handlers' load,
    which imports them once the first call is answered, is switched off so that it cannot race.)"""
    script = """
import socket, sys, tempfile, os
from agent.address import parse_address
from agent.rpc.server import AgentServer
from agent.rpc.servicer import Servicer
from agent.rpc import ttrpc
Servicer._load_all = lambda self, delay=0.0: None
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "s")
    server = AgentServer(parse_address("unix://" + path), Servicer(object(), background_load=True))
    server.start()
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    client = ttrpc.TtrpcClientConnection(sock)
    reply = client.call("grpc.Health", "Check", b"", timeout=30)
    loaded = sorted(m for m in sys.modules if m.startswith(("google", "agent.rpc.pb", "agent.rpc.h2grpc", "grpc")))
    client.close()
    server.shutdown()
print(reply.hex(), loaded)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [CHECK_SERVING.hex(), "[]"]
