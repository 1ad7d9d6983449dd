"""python3 -m agent as PID 1 of its own PID namespace: boot first, serve, power off on SIGTERM.

The agent runs under unshare with private mount, UTS, IPC, network and PID namespaces and fresh tmpfs
on /dev and /run (holding only null, random and urandom), so init.boot() changes nothing on the host.
reboot(2) from the init of a child PID namespace ends that namespace instead of the machine: its init
dies of SIGINT, which is how the test sees the power-off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentctl.client import connect
from tests.conftest import REPO, require_root

UNSHARE = [
    "unshare",
    "--pid",
    "--fork",
    "--mount",
    "--uts",
    "--ipc",
    "--net",
    "--mount-proc",
    "--propagation",
    "private",
]
PREPARE = (
    "mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/random c 1 8 && "
    'mknod -m 666 /dev/urandom c 1 9 && mount -t tmpfs tmpfs /run && exec "$0" -m agent "$@"'
)


class Pid1Agent:
    def __init__(self, directory: Path, *agent_args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("KATA_AGENT_SERVER_ADDR", None)
        self.process = subprocess.Popen(
            [*UNSHARE, "sh", "-c", PREPARE, sys.executable, *agent_args],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []

    def read_until(self, message: str) -> dict[str, Any]:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = json.loads(raw) if raw.startswith("{") else {"msg": raw.strip()}
            self.lines.append(line)
            if line.get("msg", "").startswith(message):
                return line
        raise AssertionError(f"the agent ended without logging {message!r}: {self.lines}")

    def agent_pid(self) -> int:
        """The agent's pid as the host sees it: the only child of unshare."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def finish(self, timeout: float = 30) -> int:
        returncode = self.process.wait(timeout=timeout)
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.lines.append(json.loads(raw) if raw.startswith("{") else {"msg": raw.strip()})
        self.process.stderr.close()
        return returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def workdir() -> Iterator[Path]:
    require_root()
    directory = Path(tempfile.mkdtemp(prefix="pk-pid1-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _killed_by_sigint(returncode: int) -> bool:
    # unshare re-raises its child's fatal signal, or reports it as 128 + signal number
    return returncode in (-signal.SIGINT, 128 + signal.SIGINT)


def test_pid1_boots_serves_and_powers_off_on_sigterm(workdir: Path) -> None:
    address = f"unix://{workdir}/agent.sock"
    agent = Pid1Agent(workdir, "--server-addr", address)
    hostname = socket.gethostname()
    try:
        ready = agent.read_until("agent ready")
        assert ready["pid"] == 1 and ready["address"] == address
        assert any(line["msg"].startswith("init done") for line in agent.lines[:-1]), "boot did not run first"
        for protocol in ("ttrpc", "grpc"):
            with connect(address, protocol, timeout=20) as client:
                assert client.call("grpc.Health/Check").status == 1  # type: ignore[attr-defined]
                details = client.call("GetGuestDetails")
                assert details.agent_details.init_daemon is True  # type: ignore[attr-defined]
        os.kill(agent.agent_pid(), signal.SIGTERM)
        assert _killed_by_sigint(agent.finish())
    finally:
        agent.kill()
    messages = [line["msg"] for line in agent.lines]
    assert "powering off: received SIGTERM" in messages
    assert socket.gethostname() == hostname


def test_pid1_powers_off_when_serving_fails(workdir: Path) -> None:
    blocker = workdir / "not-a-directory"
    blocker.write_text("")
    agent = Pid1Agent(workdir, "--server-addr", f"unix://{blocker}/agent.sock")
    try:
        assert _killed_by_sigint(agent.finish())
    finally:
        agent.kill()
    failed = [line for line in agent.lines if line.get("msg", "").startswith("agent failed")]
    assert failed and failed[0]["level"] == "critical"
    assert any(line.get("msg", "").startswith("powering off: agent failed") for line in agent.lines)
