"""A container process's output to the host: through the agent's pipe and ReadStdout calls (how Kata's
Go runtime reads it), against the same process writing straight to a passfd stream
(agent.passfd_listener_port: the stream is the process's stdout), side by side in one booted guest.

One guest (osbuilder's kernel and initrd, build/guest), a sandbox with a busybox bundle on the 9p share,
a sleeping container; each round execs ``head -c N /dev/zero`` twice, once read with ReadStdout (64 KiB
a call, as agentctl reads) and once on a stream, and measures MiB/s from ExecProcess to EOF. Then the
latency of a short command (``echo``) from ExecProcess to its whole output, both ways.
``PYKATA_BENCH_MIB`` sets the transfer size (default 16), ``PYKATA_BENCH_ROUNDS`` the rounds (default 3).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.rpc.convert_oci import dict_to_spec
from agent.rpc.pb import agent_pb2, oci_pb2
from agentctl import hvsock, vm
from agentctl.client import AgentClient, connect

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "build" / "guest"
MIB = int(os.environ.get("PYKATA_BENCH_MIB", "16"))
ROUNDS = int(os.environ.get("PYKATA_BENCH_ROUNDS", "3"))
PASSFD_PORT = 1027
SHARED = "/run/kata-containers/shared/containers"
CID = "bench-stdio"


def _quiet(message: str) -> None:
    pass


def _exec(agent: AgentClient, exec_id: str, args: list[str], ports: dict[str, int] | None = None) -> None:
    process = oci_pb2.Process(Args=args, Cwd="/", Env=["PATH=/bin:/usr/bin"])
    request = agent_pb2.ExecProcessRequest(container_id=CID, exec_id=exec_id, process=process)
    for field, port in (ports or {}).items():
        setattr(request, field, port)
    agent.call("grpc.AgentService/ExecProcess", request)


def _wait(agent: AgentClient, exec_id: str) -> int:
    reply = agent.call("grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id=CID, exec_id=exec_id))
    assert isinstance(reply, agent_pb2.WaitProcessResponse)
    return reply.status


def by_read_stdout(agent: AgentClient, exec_id: str, args: list[str]) -> tuple[int, float]:
    started = time.monotonic()
    _exec(agent, exec_id, args)
    size = len(agent.read_to_end(CID, exec_id))
    took = time.monotonic() - started
    _wait(agent, exec_id)
    return size, took


def by_stream(agent: AgentClient, guest: vm.Guest, exec_id: str, args: list[str]) -> tuple[int, float]:
    sock, host_port = hvsock.connect_port(guest.uds, PASSFD_PORT)
    with sock:
        started = time.monotonic()
        _exec(agent, exec_id, args, {"stdout_port": host_port})
        size = 0
        while chunk := sock.recv(1 << 20):
            size += len(chunk)
        took = time.monotonic() - started
    _wait(agent, exec_id)
    return size, took


def _setup(agent: AgentClient, share: Path) -> None:
    from tests.helpers.bundle import make_bundle

    make_bundle(share / CID, ["/bin/sleep", "3600"])
    spec: dict[str, Any] = json.loads((share / CID / "config.json").read_text())
    spec["root"]["path"] = f"{SHARED}/{CID}/rootfs"
    storage = agent_pb2.Storage(driver="9p", source="kataShared", fstype="9p", mount_point=SHARED,
                                options=["trans=virtio,version=9p2000.L,cache=mmap", "nodev"])  # fmt: skip
    agent.call(
        "grpc.AgentService/CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="bench", storages=[storage])
    )
    request = agent_pb2.CreateContainerRequest(container_id=CID, exec_id=CID, OCI=dict_to_spec(spec))
    agent.call("grpc.AgentService/CreateContainer", request)
    agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id=CID))


def main() -> None:
    for name in ("vmlinuz", "initrd.img"):
        if not (GUEST / name).exists():
            raise SystemExit(f"{GUEST / name} is missing; build the guest first: python3 -m osbuilder.cli all")
    size = MIB << 20
    bulk = ["/bin/sh", "-c", f"head -c {size} /dev/zero"]
    short = ["/bin/echo", "hello"]
    with tempfile.TemporaryDirectory(prefix="pykata-bench-stdio-") as workdir:
        share = Path(workdir) / "share"
        share.mkdir()
        config = vm.GuestConfig(kernel=GUEST / "vmlinuz", initrd=GUEST / "initrd.img", share=share,
                                cmdline=f"agent.passfd_listener_port={PASSFD_PORT}", name="bench-stdio",
                                run_dir=Path(workdir) / "vm", memory="512M", ready_timeout=240.0)  # fmt: skip
        with vm.Guest(config, _quiet) as guest:
            guest.start()
            print(
                f"guest up ({guest.accel}) in {guest.timings['ready']:.1f} s; {ROUNDS} rounds of {MIB} MiB", flush=True
            )
            agent = connect(guest.address, "ttrpc", timeout=300)
            _setup(agent, share)
            rates: dict[str, list[float]] = {"ReadStdout": [], "passfd stream": []}
            latency: dict[str, list[float]] = {"ReadStdout": [], "passfd stream": []}
            for index in range(ROUNDS):
                for way in rates:  # alternating: both see the same guest state
                    exec_id = f"{way.split()[0].lower()}-{index}"
                    if way == "ReadStdout":
                        got, took = by_read_stdout(agent, exec_id, bulk)
                        _, small = by_read_stdout(agent, exec_id + "-echo", short)
                    else:
                        got, took = by_stream(agent, guest, exec_id, bulk)
                        _, small = by_stream(agent, guest, exec_id + "-echo", short)
                    if got != size:
                        raise SystemExit(f"{way}: read {got} bytes of {size}")
                    rates[way].append(MIB / took)
                    latency[way].append(small * 1000)
            agent.close()
    print(f"{'way':<16}{'MiB/s (median)':>16}{'runs':>28}{'echo, ms (median)':>20}")
    for way in rates:
        runs = " ".join(f"{rate:.1f}" for rate in rates[way])
        print(f"{way:<16}{statistics.median(rates[way]):>16.1f}{runs:>28}{statistics.median(latency[way]):>20.1f}")
    ratio = statistics.median(rates["passfd stream"]) / statistics.median(rates["ReadStdout"])
    print(f"passfd stream / ReadStdout throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
