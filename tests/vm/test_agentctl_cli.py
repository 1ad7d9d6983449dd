"""agentctl's VM commands against the real agent: boot (detached, state file), console (a raw pty
session with the window size passed on attach and on SIGWINCH, Ctrl-] detaches), logs (the agent
streams its JSON log to the host through hybrid vsock) and stop (QEMU and the back-end end, the run
directory goes)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentctl import vm
from tests.vm.conftest import REPO, phase

CLI = [sys.executable, "-m", "agentctl.vm_cli"]


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, vm.GuestState]]:
    out = tmp_path_factory.mktemp("guest")
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "osbuilder.cli", "initrd", "-q", "--output", str(out), "--compression", "none"],
        cwd=REPO,
        check=True,
    )
    phase(f"osbuilder initrd: {time.monotonic() - start:.1f} s")
    run_dir = tmp_path_factory.mktemp("run")
    start = time.monotonic()
    boot = subprocess.run(
        [*CLI, "boot", "--kernel", str(out / "vmlinuz"), "--initrd", str(out / "initrd.img"), "--debug-console",
         "--name", "cli", "--run-dir", str(run_dir), "--timeout", "240"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    phase(f"agentctl boot: {time.monotonic() - start:.1f} s, prints {boot.stdout.strip()}")
    assert boot.returncode == 0, boot.stderr
    state = vm.GuestState.load(run_dir / "cli")
    try:
        assert boot.stdout.strip() == state.address
        yield run_dir, state
    finally:
        vm.stop(state)  # by PID, whatever the tests did


def _read_until(fd: int, marker: bytes, timeout: float = 60.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_console_passes_window_size_and_detaches(booted: tuple[Path, vm.GuestState]) -> None:
    run_dir, _ = booted
    pid, fd = pty.fork()
    if pid == 0:  # the child only execs
        os.execv(sys.executable, [*CLI, "console", "--name", "cli", "--run-dir", str(run_dir)])
    try:
        _set_size(fd, 37, 111)
        assert b"# " in _read_until(fd, b"# "), "no shell prompt"
        os.write(fd, b"stty size; grep -c ^processor /proc/cpuinfo; echo $((20+1))-done\r")
        out = _read_until(fd, b"21-done\r\n")
        assert b"37 111\r\n1\r\n21-done" in out, out
        _set_size(fd, 50, 140)
        os.kill(pid, signal.SIGWINCH)
        time.sleep(0.5)  # the resize message goes ahead of the next command on the same stream
        os.write(fd, b"stty size; echo $((40+2))-done\r")
        assert b"50 140\r\n42-done" in _read_until(fd, b"42-done\r\n")
        os.write(fd, b"\x1d")  # Ctrl-]
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_logs_follow_the_agents_json_log(booted: tuple[Path, vm.GuestState]) -> None:
    run_dir, _ = booted
    logs = subprocess.Popen(
        [*CLI, "logs", "--name", "cli", "--run-dir", str(run_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert logs.stdout is not None
        first = logs.stdout.readline()
    finally:
        logs.terminate()
        logs.wait(10)
    # The agent buffered what it logged before anyone listened: the first line is from start-up.
    assert " INFO " in first and "agent" in first, first


def test_stop_ends_qemu_and_the_backend(booted: tuple[Path, vm.GuestState]) -> None:
    run_dir, state = booted
    stop = subprocess.run([*CLI, "stop", "--name", "cli", "--run-dir", str(run_dir)], cwd=REPO, check=False)
    assert stop.returncode == 0
    for pid in (state.qemu_pid, state.backend_pid):
        assert not vm.guest_process(pid, state.run_dir), f"pid {pid} still runs"
    assert not (run_dir / "cli").exists()
