"""The hybrid vsock back-end against a real guest kernel: boot the test guest under QEMU and move
bytes both ways through virtio-vsock."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from agentctl import testguest, vm
from tests.vm.conftest import phase

MiB = 1 << 20


def _pattern(size: int, seed: int) -> bytes:
    block = bytes((i * 31 + seed) & 0xFF for i in range(4096)) + seed.to_bytes(4, "little")
    return (block * (size // len(block) + 1))[:size]


def _echo(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` while reading the echo back; returns what came back."""
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    received = bytearray()
    while len(received) < len(payload):
        chunk = sock.recv(256 * 1024)
        if not chunk:
            break
        received += chunk
    thread.join(60)
    assert not errors, errors
    return bytes(received)


def guest_shell(guest: vm.Guest, command: str, timeout: float = 30.0) -> str:
    """Run ``command`` with /bin/sh in the guest (its shell port) and return the output."""
    with guest.connect(testguest.SHELL_PORT) as sock:
        sock.settimeout(timeout)
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def test_one_mib_round_trip(test_guest: vm.Guest) -> None:
    payload = _pattern(MiB, 7)
    start = time.monotonic()
    with test_guest.connect(testguest.ECHO_PORT) as sock:
        sock.settimeout(120)
        received = _echo(sock, payload)
    took = time.monotonic() - start
    phase(f"1 MiB echoed in {took:.2f} s ({2 * len(payload) / MiB / took:.1f} MiB/s both ways)")
    assert len(received) == len(payload)
    assert received == payload


def test_concurrent_connections(test_guest: vm.Guest) -> None:
    count, size = 6, 192 * 1024
    results: dict[int, bytes] = {}
    failures: list[BaseException] = []

    def one(index: int) -> None:
        try:
            with test_guest.connect(testguest.ECHO_PORT) as sock:
                sock.settimeout(120)
                results[index] = _echo(sock, _pattern(size, index))
        except BaseException as exc:
            failures.append(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    phase(f"{count} concurrent echoes of {size // 1024} KiB in {time.monotonic() - start:.2f} s")
    assert not failures, failures
    assert sorted(results) == list(range(count))
    for index, data in results.items():
        assert data == _pattern(size, index), f"connection {index} got other bytes back"


def test_refused_port_closes_client(test_guest: vm.Guest) -> None:
    with pytest.raises(ConnectionRefusedError):
        test_guest.connect(4321, timeout=20)


def test_guest_shell_sees_vsock_device(test_guest: vm.Guest) -> None:
    out = guest_shell(test_guest, "grep -c virtio_vsock /proc/modules; cat /sys/bus/virtio/devices/*/device")
    assert "0x0013" in out, out  # the virtio device id of vsock


def test_guest_connects_to_host_listener(test_guest: vm.Guest) -> None:
    path = f"{test_guest.uds}_{testguest.DIAL_HOST_PORT}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(30)
        start = time.monotonic()
        conn, _ = listener.accept()  # the guest redials every half second
        phase(f"guest dialled UDS_{testguest.DIAL_HOST_PORT} after {time.monotonic() - start:.2f} s")
        with conn:
            conn.settimeout(60)
            payload = _pattern(256 * 1024, 99)
            assert _echo(conn, payload) == payload
    finally:
        listener.close()
        os.unlink(path)


def test_guest_power_off_ends_qemu(test_guest: vm.Guest) -> None:
    """Last in this module: the shared guest powers off and QEMU and the back-end exit cleanly."""
    with test_guest.connect(testguest.SHELL_PORT) as sock:
        sock.sendall(b"poweroff -f\n")
        code = test_guest.wait_exit(60)
    assert code == 0
    assert test_guest.backend is not None and test_guest.backend.poll() == 0
    assert not test_guest.uds.exists(), "the back-end left its socket behind"
