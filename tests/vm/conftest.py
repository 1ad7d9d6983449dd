"""Fixtures for tests that boot a guest under QEMU: the distro kernel and test initrd (cached under
build/cache), and one booted test guest shared by the tests of a module."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.rpc.pb import agent_pb2, oci_pb2
from agentctl import testguest, vm
from agentctl.client import AgentClient

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "cache"
GUEST_DIR = REPO / "build" / "guest"


def phase(message: str) -> None:
    print(f"[vm {time.strftime('%H:%M:%S')}] {message}", flush=True)


def agent_guest_config(
    guest_files: Path, *, name: str, share: Path, cmdline: str, run_dir: Path, **settings: Any
) -> vm.GuestConfig:
    """A guest of osbuilder's kernel and initrd (the agent as PID 1) with the 9p ``share``; ``settings``
    are the GuestConfig's others (CPUs, memory, network...)."""
    return vm.GuestConfig(kernel=guest_files / "vmlinuz", initrd=guest_files / "initrd.img", share=share,
                          cmdline=cmdline, name=name, run_dir=run_dir, ready_timeout=240.0, **settings)  # fmt: skip


def image_guest_config(guest_files: Path, *, name: str, run_dir: Path, cmdline: str = "") -> vm.GuestConfig:
    """osbuilder's rootfs image, booted through its initrd, where systemd is PID 1 and starts the agent
    (ready when the agent answers); ``cmdline``: words added to the image's kernel command line."""
    from osbuilder import config as osconfig

    return vm.GuestConfig(kernel=guest_files / "vmlinuz", initrd=guest_files / "initrd.img",
                          image=guest_files / "rootfs.img", cmdline=f"{osconfig.IMAGE_CMDLINE} {cmdline}".strip(),
                          name=name, run_dir=run_dir, ready_marker="", ready_timeout=300.0)  # fmt: skip


def console_answers(guest: vm.Guest, command: str) -> list[tuple[str, str]]:
    """Run ``command`` in the guest's debug console with ``t=@`` set, and return the lines it tags
    ``$t KEY VALUE`` as (KEY, VALUE), in order. Only answers carry the tag: the "@" comes from a
    variable, so the echo of the command line (which the console may wrap anywhere) holds none, and
    the shell's prompts and terminal queries between the answers are passed over."""
    text = guest.run_in_console(f"t=@; {command}")
    found = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith("@") and " " in line:
            key, _, value = line[1:].partition(" ")
            found.append((key, value.strip()))
    return found


def exec_in(agent: AgentClient, cid: str, exec_id: str, args: list[str]) -> tuple[int, bytes]:
    """ExecProcess in a running container; its exit status and everything it wrote to stdout."""
    agent.call(
        "grpc.AgentService/ExecProcess",
        agent_pb2.ExecProcessRequest(
            container_id=cid, exec_id=exec_id, process=oci_pb2.Process(Args=args, Cwd="/", Env=["PATH=/bin"])
        ),
    )
    status = agent.call(
        "grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=exec_id)
    ).status
    return status, agent.read_to_end(cid, exec_id, chunk=4096)


@contextlib.contextmanager
def booted(config: vm.GuestConfig, progress: Callable[[str], None] = phase) -> Iterator[vm.Guest]:
    """The guest ``config`` describes, booted (its boot phases' times printed), killed at the end."""
    guest = vm.Guest(config, progress)
    try:
        guest.start()
        progress(f"booted ({guest.accel}): " + ", ".join(f"{k} {v:.2f} s" for k, v in guest.timings.items()))
        yield guest
    finally:
        guest.kill()


@pytest.fixture(scope="session")
def guest_files() -> Path:
    """The guest osbuilder builds (``all``: kernel, initrd, rootfs image; cached under build/cache, a
    rebuild copies only the agent)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "osbuilder.cli", "all", "--output", str(GUEST_DIR)], cwd=REPO, check=True)
    phase(f"osbuilder all: {time.monotonic() - start:.1f} s")
    return GUEST_DIR


@pytest.fixture(scope="session")
def test_guest_files() -> tuple[Path, Path]:
    start = time.monotonic()
    files = testguest.test_guest_files(CACHE, phase)
    phase(f"kernel and test initrd ready in {time.monotonic() - start:.1f} s: {files[1].name}")
    return files


@pytest.fixture(scope="module")
def test_guest(test_guest_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.Guest]:
    """A booted test guest (echo on vsock 1024, shell on 1025, dials host port 5000)."""
    kernel, initrd = test_guest_files
    config = vm.GuestConfig(
        kernel=kernel,
        initrd=initrd,
        cmdline="quiet",
        name="test",
        run_dir=tmp_path_factory.mktemp("guest"),
        ready_marker=testguest.READY_MARKER,
        ready_port=testguest.ECHO_PORT,
        ready_all=True,
        ready_timeout=180.0,
    )
    guest = vm.Guest(config, phase)
    try:
        guest.start()
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in guest.timings.items())
        phase(f"booted ({guest.accel}): {timings}")
        yield guest
    finally:
        guest.kill()
        for proc in (guest.qemu, guest.backend):
            assert proc is None or proc.poll() is not None, "a guest process outlived its teardown"
