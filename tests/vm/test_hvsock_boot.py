"""The hybrid vsock back-end against a real guest kernel: boot the test guest under QEMU and move
bytes both ways through virtio-vsock."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentctl import testguest, vm, vm_cli
from tests.vm.conftest import REPO, phase

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


def _count(guest: vm.Guest, pattern: str) -> int:
    out = guest_shell(guest, f"ls -d {pattern} | wc -l")
    return int(out.split()[-1])


def _state_file(test_guest: vm.Guest, tmp_path: Path) -> vm.GuestState:
    """A state file for the shared guest, as agentctl boot would leave it, named "shared"."""
    assert test_guest.qemu is not None and test_guest.backend is not None
    state = vm.GuestState(
        name="shared",
        run_dir=str(tmp_path / "shared"),
        qemu_pid=test_guest.qemu.pid,
        backend_pid=test_guest.backend.pid,
        uds=str(test_guest.uds),
        qmp=str(test_guest.paths["qmp"]),
        console_log=str(test_guest.console_log),
        accel=test_guest.accel,
    )
    Path(state.run_dir).mkdir()
    state.save()
    return state


def test_logs_command_follows_json_lines_from_the_guest(test_guest: vm.Guest, tmp_path: Path) -> None:
    _state_file(test_guest, tmp_path)
    argv = [sys.executable, "-m", "agentctl.vm_cli", "logs", "--port", str(testguest.LOG_HOST_PORT)]
    argv += ["--name", "shared", "--run-dir", str(tmp_path)]
    logs = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert logs.stdout is not None
        lines = [logs.stdout.readline().decode() for _ in range(2)]
    finally:
        logs.terminate()
        logs.wait(10)
    for line in lines:
        assert re.fullmatch(r" ?INFO +testguest: tick \d+\n", line), lines
    assert not Path(f"{test_guest.uds}_{testguest.LOG_HOST_PORT}").exists(), "logs removed its listener"


def test_hotplug_cpu_and_memory_through_the_cli(test_guest: vm.Guest, tmp_path: Path) -> None:
    """agentctl hotplug finds the guest by its state file and adds through QMP; the guest sees the
    devices, and vsock keeps working with the new memory in the table."""
    _state_file(test_guest, tmp_path)
    cpus_before = _count(test_guest, "/sys/devices/system/cpu/cpu[0-9]*")
    blocks_before = _count(test_guest, "/sys/devices/system/memory/memory*")
    runner = CliRunner()
    common = ["--name", "shared", "--run-dir", str(tmp_path)]
    start = time.monotonic()
    result = runner.invoke(vm_cli.hotplug, ["cpu", "2", *common])
    assert result.exit_code == 0, result.output
    assert len(result.output.split()) == 2
    result = runner.invoke(vm_cli.hotplug, ["mem", "256M", *common])
    assert result.exit_code == 0, result.output
    phase(f"hot-added 2 CPUs and 256 MiB in {time.monotonic() - start:.2f} s")
    deadline = time.monotonic() + 30
    while _count(test_guest, "/sys/devices/system/cpu/cpu[0-9]*") < cpus_before + 2:
        assert time.monotonic() < deadline, "hot-added CPUs never appeared in sysfs"
        time.sleep(0.5)
    block_size = int(guest_shell(test_guest, "cat /sys/devices/system/memory/block_size_bytes").split()[-1], 16)
    assert _count(test_guest, "/sys/devices/system/memory/memory*") == blocks_before + (256 * MiB) // block_size
    result = runner.invoke(vm_cli.hotplug, ["mem", "12Q", *common])
    assert result.exit_code != 0 and "12Q" in result.output
    payload = _pattern(64 * 1024, 3)
    with test_guest.connect(testguest.ECHO_PORT) as sock:
        sock.settimeout(60)
        assert _echo(sock, payload) == payload


def test_guest_power_off_ends_qemu(test_guest: vm.Guest) -> None:
    """Last in this module: the shared guest powers off and QEMU and the back-end exit cleanly."""
    with test_guest.connect(testguest.SHELL_PORT) as sock:
        sock.sendall(b"poweroff -f\n")
        code = test_guest.wait_exit(60)
    assert code == 0
    assert test_guest.backend is not None and test_guest.backend.poll() == 0
    assert not test_guest.uds.exists(), "the back-end left its socket behind"
