"""Fixtures for tests that boot a guest under QEMU: the distro kernel and test initrd (cached under
build/cache), and one booted test guest shared by the tests of a module."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
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


# the guests `booted` holds: a failing test is shown the console of each one that stopped under it
_GUESTS: list[vm.Guest] = []
_SHOWN: set[int] = set()  # id() of the guests whose console a report carries already
CONSOLE_TAIL = 6000  # characters


@contextlib.contextmanager
def booted(config: vm.GuestConfig, progress: Callable[[str], None] = phase) -> Iterator[vm.Guest]:
    """The guest ``config`` describes, booted (its boot phases' times printed), killed at the end."""
    guest = vm.Guest(config, progress)
    _GUESTS.append(guest)
    try:
        guest.start()
        progress(f"booted ({guest.accel}): " + ", ".join(f"{k} {v:.2f} s" for k, v in guest.timings.items()))
        yield guest
    finally:
        guest.kill()
        _GUESTS.remove(guest)
        _SHOWN.discard(id(guest))


def _stopped(guest: vm.Guest) -> list[str]:
    """What of ``guest`` has stopped on its own: QEMU, the hvsock back-end (with their exit status)."""
    return [
        f"{what} exited with {process.returncode}"
        for what, process in (("QEMU", guest.qemu), ("the hvsock back-end", guest.backend))
        if process is not None and process.poll() is not None
    ]


def _tail(path: Path, size: int = CONSOLE_TAIL) -> str:
    try:
        return path.read_text(errors="replace")[-size:] or "(empty)"
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that failed while a guest it used had stopped (QEMU exited: the agent as PID 1 died, the
    kernel panicked, the guest powered off; or the hvsock back-end died) gets the end of that guest's
    console and logs in its report, so a CI log says why."""
    report: pytest.TestReport = yield
    if not report.failed:
        return report
    for guest in _GUESTS:
        stopped = _stopped(guest)
        if stopped and id(guest) not in _SHOWN:
            _SHOWN.add(id(guest))
            for name, path in (("console", guest.console_log), ("hvsock back-end log", guest.paths["backend_log"]),
                               ("QEMU log", guest.paths["qemu_log"])):  # fmt: skip
                title = f"guest {guest.config.name}: {', '.join(stopped)}; its {name}'s end"
                report.sections.append((title, _tail(path)))
    return report


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
