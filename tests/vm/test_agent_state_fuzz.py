"""The agent as PID 1 of a booted guest, driven through container lifecycles in random order: create,
start, exec, signal, wait, pause, resume, update, stats, stdin and stdout, resize and remove, on a few
container and process ids, so that most calls come in a state that does not allow them. Every call
must be answered with a status that names the problem (never INTERNAL, UNKNOWN or a broken
connection), and once every container is removed the guest must hold nothing of theirs: no process
but the agent's, no container mount, no container cgroup. Seeded per protocol; a failure names the
call, its seed and step.

This found WriteStdin to a process that had ended answering INTERNAL (a broken pipe).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.rpc.convert_oci import dict_to_spec
from agent.rpc.pb import agent_pb2, health_pb2, oci_pb2
from agent.rpc.status import Code
from agentctl import vm
from agentctl.client import AgentCallError, AgentClient, connect
from tests.helpers.bundle import make_bundle
from tests.vm.conftest import agent_guest_config, booted, console_answers

SHARED = "/run/kata-containers/shared/containers"
STEPS = 250
CONTAINERS = ("c1", "c2", "c3")
PROCESSES = ("", "e1", "e2")  # "" is the container's init
PROGRAMS = (
    ["/bin/sleep", "20"], ["/bin/true"], ["/bin/sh", "-c", "exit 3"],
    ["/bin/sh", "-c", "echo hi; sleep 1; echo bye >&2"], ["/bin/sh", "-c", "cat"],
)  # fmt: skip
UNEXPECTED = (Code.INTERNAL, Code.UNKNOWN, Code.UNAVAILABLE)
# what runs in the guest besides containers: the agent, its fork server and warm pair, the debug
# console's shell, and the command that lists them
AGENT_PROCESSES = ("/init", "agent.container.forkserver", "/bin/sh -i", "ps -o args", "grep -v", "sed s/^/")


def phase(message: str) -> None:
    print(f"[state-fuzz {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("share")
    make_bundle(root / "b", ["/bin/true"])
    return root


@pytest.fixture(scope="module")
def guest(guest_files: Path, share: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.Guest]:
    config = agent_guest_config(
        guest_files,
        name="state-fuzz",
        share=share,
        cmdline="agent.debug_console agent.log=debug",
        run_dir=tmp_path_factory.mktemp("vm"),
    )
    with booted(config, phase) as booted_guest:
        yield booted_guest


class Driver:
    """Random calls on the ids above; what each answered, and the calls that answered badly."""

    def __init__(self, agent: AgentClient, spec: dict[str, Any], seed: str) -> None:
        self.agent = agent
        self.spec = spec
        self.seed = seed
        self.rng = random.Random(seed)
        self.failures: list[str] = []
        self.step = 0

    def call(self, method: str, request: Any, timeout: float = 8.0) -> None:
        try:
            self.agent.call(f"grpc.AgentService/{method}", request, timeout=timeout)
        except AgentCallError as exc:
            if exc.code in UNEXPECTED:
                what = str(request).replace("\n", " ")[:200]
                self.failures.append(f"seed {self.seed} step {self.step}: {method}({what}): {exc}")

    def create(self, cid: str, eid: str) -> None:
        spec = json.loads(json.dumps(self.spec))
        spec["process"]["args"] = self.rng.choice(PROGRAMS)
        spec["process"]["terminal"] = self.rng.random() < 0.2
        self.call(
            "CreateContainer", agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=dict_to_spec(spec))
        )

    def exec(self, cid: str, eid: str) -> None:
        process = oci_pb2.Process(
            Args=self.rng.choice(PROGRAMS), Cwd="/", Env=["PATH=/bin"], Terminal=self.rng.random() < 0.2
        )
        self.call("ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id=eid or "e1", process=process))

    def signal(self, cid: str, eid: str) -> None:
        number = self.rng.choice((0, 1, 9, 15, 18, 19, 64, 65, 2**32 - 1))
        self.call("SignalProcess", agent_pb2.SignalProcessRequest(container_id=cid, exec_id=eid, signal=number))

    def update(self, cid: str, eid: str) -> None:
        resources = oci_pb2.LinuxResources(CPU=oci_pb2.LinuxCPU(Shares=self.rng.choice((0, 2, 1024, 262144))),
                                           Pids=oci_pb2.LinuxPids(Limit=self.rng.choice((0, 5, -1))))  # fmt: skip
        self.call("UpdateContainer", agent_pb2.UpdateContainerRequest(container_id=cid, resources=resources))

    def read(self, cid: str, eid: str) -> None:
        request = agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=self.rng.choice((0, 1, 4096)))
        self.call(self.rng.choice(("ReadStdout", "ReadStderr")), request, timeout=3.0)

    def operations(self) -> list[Callable[[str, str], None]]:
        simple: list[tuple[str, Callable[[str, str], Any], float]] = [
            ("StartContainer", lambda c, e: agent_pb2.StartContainerRequest(container_id=c), 8.0),
            ("WaitProcess", lambda c, e: agent_pb2.WaitProcessRequest(container_id=c, exec_id=e), 3.0),
            ("PauseContainer", lambda c, e: agent_pb2.PauseContainerRequest(container_id=c), 8.0),
            ("ResumeContainer", lambda c, e: agent_pb2.ResumeContainerRequest(container_id=c), 8.0),
            ("RemoveContainer",
             lambda c, e: agent_pb2.RemoveContainerRequest(container_id=c, timeout=self.rng.choice((0, 1, 5))), 10.0),
            ("StatsContainer", lambda c, e: agent_pb2.StatsContainerRequest(container_id=c), 8.0),
            ("WriteStdin", lambda c, e: agent_pb2.WriteStreamRequest(container_id=c, exec_id=e, data=b"x\n"), 3.0),
            ("CloseStdin", lambda c, e: agent_pb2.CloseStdinRequest(container_id=c, exec_id=e), 8.0),
            ("TtyWinResize", lambda c, e: agent_pb2.TtyWinResizeRequest(
                container_id=c, exec_id=e, row=self.rng.choice((0, 24, 65535)), column=80), 8.0),
        ]  # fmt: skip

        def plain(method: str, make: Callable[[str, str], Any], timeout: float) -> Callable[[str, str], None]:
            return lambda c, e: self.call(method, make(c, e), timeout)

        return [self.create, self.create, self.exec, self.signal, self.update, self.read,
                *(plain(*entry) for entry in simple)]  # fmt: skip

    def run(self, steps: int) -> None:
        operations = self.operations()
        for self.step in range(steps):
            self.rng.choice(operations)(self.rng.choice(CONTAINERS), self.rng.choice(PROCESSES))
        for cid in CONTAINERS:
            self.call("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid, timeout=10), timeout=15.0)


@pytest.mark.parametrize("protocol", ["ttrpc", "grpc"])
def test_random_lifecycles_get_named_errors_and_leave_nothing(guest: vm.Guest, share: Path, protocol: str) -> None:
    agent = connect(guest.address, protocol, timeout=15)
    try:
        storage = agent_pb2.Storage(driver="9p", source="kataShared", fstype="9p", mount_point=SHARED,
                                    options=["trans=virtio,version=9p2000.L,cache=mmap", "nodev"])  # fmt: skip
        try:
            agent.call("grpc.AgentService/CreateSandbox", agent_pb2.CreateSandboxRequest(
                hostname="state-fuzz", sandbox_id="state-fuzz", storages=[storage]))  # fmt: skip
        except AgentCallError as exc:
            assert exc.code == Code.ALREADY_EXISTS, exc  # the other protocol's run made it
        spec = json.loads((share / "b" / "config.json").read_text())
        spec["root"]["path"] = f"{SHARED}/b/rootfs"
        mounts_before = _guest_answers(guest)["M"]
        assert SHARED in mounts_before, mounts_before  # the answers were read (the share is mounted)
        driver = Driver(agent, spec, protocol)
        started = time.monotonic()
        driver.run(STEPS)
        phase(f"{protocol}: {STEPS} steps in {time.monotonic() - started:.1f} s")
        agent.call("grpc.Health/Check", health_pb2.CheckRequest())
    finally:
        agent.close()
    assert not driver.failures, "\n".join(driver.failures)
    answers = _guest_answers(guest)
    processes = [line for line in answers["P"] if line != "COMMAND"]
    strays = [line for line in processes if not any(mark in line for mark in AGENT_PROCESSES)]
    assert processes and not strays, f"processes left in the guest: {strays}"
    assert answers["M"] == mounts_before, "mounts left in the agent's namespace"
    assert answers["C"] == ["0"], "container cgroups left"


def _guest_answers(guest: vm.Guest) -> dict[str, list[str]]:
    """The guest's processes (P), the mount points of the agent's namespace (M) and how many cgroups
    are named for the containers (C), through the debug console (conftest.console_answers)."""
    answers: dict[str, list[str]] = {"P": [], "M": [], "C": []}
    for key, value in console_answers(
        guest,
        "ps -o args | grep -v '^\\[' | sed \"s/^/${t}P /\"; cut -d' ' -f2 /proc/mounts | sed \"s/^/${t}M /\";"
        " echo ${t}C $(find /sys/fs/cgroup -mindepth 2 -type d | grep -c -e c1 -e c2 -e c3)",
    ):
        if key in answers:
            answers[key].append(value)
    return answers
