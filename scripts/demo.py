"""The main job: build a guest with osbuilder, boot it under QEMU, and run a container in it.

    python3 scripts/demo.py [--args 'sh -c "echo hello; uname -a"'] [--keep-guest]

Each step prints a line with its time. The container's bundle (a busybox rootfs and runc's default
config.json) goes to a 9p share, as Kata's runtime shares bundles with the guest.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.rpc.convert_oci import dict_to_spec  # noqa: E402
from agent.rpc.pb import agent_pb2, health_pb2  # noqa: E402
from agentctl import vm  # noqa: E402
from agentctl.client import connect  # noqa: E402
from tests.helpers.bundle import make_bundle  # noqa: E402

SHARED = "/run/kata-containers/shared/containers"
STARTED = time.monotonic()


def step(message: str) -> None:
    print(f"[demo {time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--args", default='sh -c "echo hello from a pykata container; uname -sr; id"')
    parser.add_argument("--output", type=Path, default=REPO / "build" / "guest")
    parser.add_argument("--protocol", choices=("ttrpc", "grpc"), default="ttrpc")
    args = parser.parse_args()

    step(f"building the guest into {args.output} (osbuilder all)")
    subprocess.run([sys.executable, "-m", "osbuilder.cli", "all", "--output", str(args.output)], cwd=REPO, check=True)

    with tempfile.TemporaryDirectory(prefix="pykata-demo-") as tmp:
        share = Path(tmp) / "share"
        cid = "demo"
        make_bundle(share / cid, shlex.split(args.args))
        spec = json.loads((share / cid / "config.json").read_text())
        spec["root"]["path"] = f"{SHARED}/{cid}/rootfs"
        config = vm.GuestConfig(
            kernel=args.output / "vmlinuz",
            initrd=args.output / "initrd.img",
            share=share,
            name="demo",
            run_dir=Path(tmp) / "vm",
        )
        step("booting the guest under QEMU")
        with vm.Guest(config, step) as guest:
            guest.start()
            agent = connect(guest.address, args.protocol, timeout=120)
            status = agent.call("grpc.Health/Check", health_pb2.CheckRequest())
            serving = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
            step(f"agent over hybrid vsock ({args.protocol}): {serving}")
            storage = agent_pb2.Storage(
                driver="9p",
                source="kataShared",
                fstype="9p",
                mount_point=SHARED,
                options=["trans=virtio,version=9p2000.L,cache=mmap", "nodev"],
            )
            agent.call(
                "grpc.AgentService/CreateSandbox",
                agent_pb2.CreateSandboxRequest(hostname="demo", sandbox_id="demo", storages=[storage]),
            )
            step("sandbox created; the bundle share is mounted over 9p")
            agent.call(
                "grpc.AgentService/CreateContainer",
                agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=dict_to_spec(spec)),
            )
            agent.call("grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
            step(f"container started: {args.args}")
            output = agent.read_to_end(cid, cid)
            waited = agent.call(
                "grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid)
            )
            for line in output.decode(errors="replace").splitlines():
                print(f"    | {line}")
            step(f"container exited with status {waited.status}")
            agent.call("grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid))
            agent.call("grpc.AgentService/DestroySandbox", agent_pb2.DestroySandboxRequest())
            code = guest.wait_exit(60)
            step(f"sandbox destroyed; the guest powered off (QEMU exit status {code})")
        return 0 if waited.status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
