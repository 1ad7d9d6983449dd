"""Guest networking and storage drivers in a booted guest (the agent as PID 1 in osbuilder's initrd).

One guest is booted for the module with its NIC wired, Kata-style, into a network namespace the test
makes (``GuestConfig.netns``: tap0_kata next to the namespace's eth0, tc redirects both ways). The
namespace's eth0 is one end of a veth pair; the other end sits in a second namespace of ours that runs
a TCP server. Everything the tests create (namespaces, server, guest) is removed by name or PID.

The tests run in order on the one guest:
1. a 9p share mounted by CreateSandbox's storage (driver "9p") shows the host's file;
2. UpdateInterface (by MAC) and UpdateRoutes configure the guest's eth0; ListInterfaces and ListRoutes
   show it; a container (busybox from the 9p share) reaches the server in the peer namespace;
3. an ext4 disk image hot-added through QMP (virtio-blk on a PCIe root port) is mounted by
   CreateContainer's storage (driver "blk", source the PCI path) and a container reads a file from it;
4. a swap area hot-added the same way is given to AddSwap by PCI path, and the guest swaps to it.
Each phase prints its time.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.rpc.convert_oci import dict_to_spec
from agent.rpc.pb import agent_pb2, oci_pb2, types_pb2
from agent.rpc.status import Code
from agentctl import vm
from agentctl.client import AgentCallError, AgentClient, connect
from tests.conftest import REPO
from tests.helpers.bundle import make_bundle
from tests.vm.conftest import agent_guest_config, booted

GUEST_DIR = REPO / "build" / "guest-netstorage"
SHARED = "/run/kata-containers/shared/containers"
SANDBOX_STORAGE = "/run/kata-containers/sandbox/storage"
BUNDLE = "c-busybox"
SHARE_MARKER = "share-marker.txt"
SERVER_PORT = 8089


def phase(message: str) -> None:
    print(f"[netstore {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        phase(f"{what}: {(time.monotonic() - start) * 1000:.0f} ms")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Wiring:
    guest_ns: str  # holds eth0 (the guest's side) and, once booted, tap0_kata
    server_ns: str  # holds the veth peer and the server
    guest_address: str  # 10.200.X.2
    server_address: str  # 10.200.X.1, the guest's gateway
    prefix: int
    token: str  # what the server sends


@pytest.fixture(scope="module")
def wiring() -> Iterator[Wiring]:
    run = secrets.token_hex(3)
    subnet = 100 + secrets.randbelow(150)
    wired = Wiring(
        guest_ns=f"pykata-t-{run}-g",
        server_ns=f"pykata-t-{run}-s",
        guest_address=f"10.200.{subnet}.2",
        server_address=f"10.200.{subnet}.1",
        prefix=24,
        token=f"pykata-net-{run}",
    )
    made: list[str] = []
    try:
        for name in (wired.guest_ns, wired.server_ns):
            ip("netns", "add", name)
            made.append(name)
        ip("link", "add", "eth0", "netns", wired.guest_ns, "type", "veth", "peer", "name", "srv0",
           "netns", wired.server_ns)  # fmt: skip
        ip("-n", wired.guest_ns, "addr", "add", f"{wired.guest_address}/{wired.prefix}", "dev", "eth0")
        ip("-n", wired.server_ns, "addr", "add", f"{wired.server_address}/{wired.prefix}", "dev", "srv0")
        ip("-n", wired.server_ns, "link", "set", "srv0", "up")
        ip("-n", wired.server_ns, "link", "set", "lo", "up")
        yield wired
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def guest_files() -> Path:
    """Kernel and initrd from osbuilder, in a directory of this module's own (a rebuild elsewhere
    must not rewrite the files under a booted guest)."""
    start = time.monotonic()
    for what in ("kernel", "initrd"):
        subprocess.run([sys.executable, "-m", "osbuilder.cli", what, "-q", "--output", str(GUEST_DIR)],
                       cwd=REPO, check=True)  # fmt: skip
    phase(f"osbuilder kernel + initrd: {time.monotonic() - start:.1f} s")
    return GUEST_DIR


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("share")
    make_bundle(root / BUNDLE, ["/bin/true"])
    (root / SHARE_MARKER).write_text(f"shared over 9p {secrets.token_hex(4)}\n")
    return root


@pytest.fixture(scope="module")
def guest(
    guest_files: Path, share: Path, wiring: Wiring, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[vm.Guest]:
    config = agent_guest_config(
        guest_files,
        name="netstore",
        share=share,
        cmdline="agent.debug_console agent.log=debug agent.hotplug_timeout=60",
        run_dir=tmp_path_factory.mktemp("vm"),
        netns=wiring.guest_ns,
        pcie_root_ports=4,  # a hot-added disk each: ext4 volume, raw device, swap area, disk without one
    )
    with booted(config, phase) as guest:
        yield guest
    for proc in (guest.qemu, guest.backend):
        assert proc is None or proc.poll() is not None, "a guest process outlived its teardown"
    # the tap went with the guest; eth0 is left as the test made it
    links = json.loads(ip("-n", wiring.guest_ns, "-j", "link", "show"))
    assert "tap0_kata" not in {link["ifname"] for link in links}


def agent(guest: vm.Guest) -> AgentClient:
    return connect(guest.address, "ttrpc", timeout=120)


def rpc(client: AgentClient, method: str, request: Any) -> Any:
    """One call; the answer typed loosely (protobuf messages have no static field types here)."""
    return client.call(method, request)


def container_spec(share: Path, args: list[str], mounts: list[dict[str, Any]] | None = None) -> Any:
    """The busybox bundle's runc spec, run from the 9p share, in the guest's network namespace (as
    Kata's runtime does: the sandbox's network is the guest's)."""
    spec: dict[str, Any] = json.loads((share / BUNDLE / "config.json").read_text())
    spec["root"]["path"] = f"{SHARED}/{BUNDLE}/rootfs"
    spec["process"]["args"] = args
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
    spec["mounts"] = spec.get("mounts", []) + (mounts or [])
    return dict_to_spec(spec)


def run_container(
    client: AgentClient,
    cid: str,
    spec: Any,
    storages: list[agent_pb2.Storage] | None = None,
    devices: list[agent_pb2.Device] | None = None,
) -> tuple[int, bytes]:
    """Create, start, read stdout to the end, wait, remove: (exit status, stdout)."""
    request = agent_pb2.CreateContainerRequest(
        container_id=cid, exec_id=cid, OCI=spec, storages=storages or [], devices=devices or []
    )
    with timed(f"CreateContainer {cid}"):
        rpc(client, "grpc.AgentService/CreateContainer", request)
    try:
        rpc(client, "grpc.AgentService/StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
        out = b""
        with timed(f"{cid} runs and its stdout is read"):
            while True:
                try:
                    chunk = rpc(
                        client,
                        "grpc.AgentService/ReadStdout",
                        agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=4096),
                    ).data
                except Exception:
                    break  # EOF is reported as an error once the stream is drained
                if not chunk:
                    break
                out += chunk
            waited = rpc(
                client, "grpc.AgentService/WaitProcess", agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid)
            )
        return waited.status, out
    finally:
        rpc(client, "grpc.AgentService/RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid, timeout=10))


def test_9p_share_mounted_by_sandbox_storage(guest: vm.Guest, share: Path) -> None:
    storage = agent_pb2.Storage(
        driver="9p",
        source="kataShared",
        fstype="9p",
        options=["trans=virtio,version=9p2000.L,cache=mmap", "nodev"],
        mount_point=SHARED,
    )
    with timed("CreateSandbox with a 9p storage"):
        rpc(
            agent(guest),
            "grpc.AgentService/CreateSandbox",
            agent_pb2.CreateSandboxRequest(hostname="netstore", sandbox_id="netstore", storages=[storage]),
        )
    seen = guest.run_in_console(f"cat {SHARED}/{SHARE_MARKER}; grep ' {SHARED} ' /proc/mounts")
    assert (share / SHARE_MARKER).read_text().strip() in seen
    assert f"kataShared {SHARED} 9p" in seen


def _interfaces(client: AgentClient) -> dict[str, Any]:
    listed = rpc(client, "grpc.AgentService/ListInterfaces", agent_pb2.ListInterfacesRequest())
    return {iface.hwAddr: iface for iface in listed.Interfaces}


def test_guest_nic_configured_and_reaches_server_in_peer_namespace(
    guest: vm.Guest, share: Path, wiring: Wiring
) -> None:
    assert guest.tap is not None
    mac = guest.tap.mac
    assert guest.tap.addresses == (f"{wiring.guest_address}/{wiring.prefix}",)
    client = agent(guest)
    with timed("ListInterfaces (the first netlink call imports pyroute2)"):
        before = _interfaces(client)
    assert mac in before, f"the guest has no NIC with the namespace eth0's MAC {mac}: {list(before)}"
    assert not [a for a in before[mac].IPAddresses if a.address == wiring.guest_address]

    wanted = types_pb2.Interface(
        name="eth0",
        hwAddr=mac,
        mtu=guest.tap.mtu,
        IPAddresses=[types_pb2.IPAddress(address=wiring.guest_address, mask=str(wiring.prefix))],
    )
    with timed("UpdateInterface (by MAC)"):
        updated = rpc(client, "grpc.AgentService/UpdateInterface", agent_pb2.UpdateInterfaceRequest(interface=wanted))
    assert updated.name == "eth0"
    assert updated.hwAddr == mac
    default = types_pb2.Route(gateway=wiring.server_address, device="eth0")
    with timed("UpdateRoutes (a default route)"):
        rpc(
            client,
            "grpc.AgentService/UpdateRoutes",
            agent_pb2.UpdateRoutesRequest(routes=agent_pb2.Routes(Routes=[default])),
        )
    after = _interfaces(client)[mac]
    assert after.name == "eth0"
    assert (wiring.guest_address, str(wiring.prefix)) in {(a.address, a.mask) for a in after.IPAddresses}
    assert after.raw_flags & 0x1, "eth0 is not up"
    routes = rpc(client, "grpc.AgentService/ListRoutes", agent_pb2.ListRoutesRequest()).Routes
    assert [r for r in routes if not r.dest and r.gateway == wiring.server_address and r.device == "eth0"]
    subnet = wiring.server_address.rsplit(".", 1)[0] + f".0/{wiring.prefix}"
    assert [r for r in routes if r.dest == subnet and r.device == "eth0"]

    server_code = (
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({wiring.server_address!r}, {SERVER_PORT})); s.listen(1); s.settimeout(120)\n"
        "print('listening', flush=True)\n"
        "c, peer = s.accept()\n"
        f"c.sendall({wiring.token!r}.encode() + b' to ' + peer[0].encode() + b'\\n'); c.close()\n"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", wiring.server_ns, sys.executable, "-c", server_code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"listening"
        spec = container_spec(share, ["/bin/sh", "-c", f"nc -w 30 {wiring.server_address} {SERVER_PORT} </dev/null"])
        status, out = run_container(client, "net-client", spec)
        server.wait(30)
    finally:
        if server.poll() is None:
            vm.kill_pid(server.pid)
            server.wait()
    assert (status, out) == (0, f"{wiring.token} to {wiring.guest_address}\n".encode()), server.stderr.read()  # type: ignore[union-attr]


def _hotplug_disk(guest: vm.Guest, image: Path, run_base: Path, *, read_only: bool) -> tuple[str, str]:
    """Hot-add ``image`` as a virtio-blk disk through agentctl's command line, as a developer would
    (agentctl finds the guest by its state file); (the disk's PCI path, its QEMU device id)."""
    (run_base / "netstore").mkdir(parents=True, exist_ok=True)
    assert guest.qemu is not None and guest.backend is not None
    vm.GuestState(
        name="netstore",
        run_dir=str(run_base / "netstore"),
        qemu_pid=guest.qemu.pid,
        backend_pid=guest.backend.pid,
        uds=str(guest.uds),
        qmp=str(guest.qmp_path),
        console_log=str(guest.console_log),
        accel=guest.accel,
    ).save()
    argv = [sys.executable, "-m", "agentctl.cli", "hotplug", "blk", str(image), "--name", "netstore",
            "--run-dir", str(run_base), *(["--read-only"] if read_only else [])]  # fmt: skip
    with timed("agentctl hotplug blk (QMP blockdev-add + device_add virtio-blk-pci)"):
        plugged = subprocess.run(argv, cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    pci_path, device_id = plugged
    return pci_path, device_id


def test_hot_added_virtio_blk_mounted_by_container_storage(guest: vm.Guest, share: Path, tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    token = f"on the disk {secrets.token_hex(4)}"
    (content / "hello.txt").write_text(token + "\n")
    image = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image), "8M"], check=True)
    pci_path, device_id = _hotplug_disk(guest, image, tmp_path / "run", read_only=True)
    with guest.qmp() as monitor:
        root_bus = next(bus for bus in monitor.execute("query-pci") if bus["bus"] == 0)["devices"]
    ports = [d for d in root_bus if device_id in {c["qdev_id"] for c in d.get("pci_bridge", {}).get("devices", [])}]
    assert [f"{port['slot']:02x}/00" for port in ports] == [pci_path]  # the port's slot, then slot 0 behind it
    phase(f"disk {device_id}: PCI path {pci_path}")
    mount_point = f"{SANDBOX_STORAGE}/disk-{device_id}"
    storage = agent_pb2.Storage(driver="blk", source=pci_path, fstype="ext4", options=["ro"], mount_point=mount_point)
    mount = {"destination": "/data", "type": "bind", "source": mount_point, "options": ["rbind", "ro"]}
    spec = container_spec(share, ["/bin/sh", "-c", "cat /data/hello.txt; grep ' /data ' /proc/mounts"], [mount])
    client = agent(guest)
    status, out = run_container(client, "blk-reader", spec, [storage])
    text = out.decode(errors="replace")
    assert status == 0, text
    assert text.splitlines()[0] == token
    assert " /data ext4 ro" in text
    # the container was the storage's only user: removing it unmounted the disk
    seen = guest.run_in_console(f"grep -q ' {mount_point} ' /proc/mounts && echo STILL''MOUNTED || echo NOT''MOUNTED")
    assert "NOTMOUNTED" in seen and "STILLMOUNTED" not in seen


def test_hot_added_disk_given_to_a_container_as_a_device(guest: vm.Guest, share: Path, tmp_path: Path) -> None:
    """A raw disk for the container itself (Kubernetes' volumeDevices): the spec names it by the host's
    numbers at /dev/xvdb, the request's device by its PCI path; the container reads it there."""
    token = f"raw {secrets.token_hex(4)}".encode()
    image = tmp_path / "raw.img"
    image.write_bytes(token + bytes(1024 * 1024 - len(token)))
    pci_path, device_id = _hotplug_disk(guest, image, tmp_path / "run", read_only=True)
    phase(f"raw disk {device_id}: PCI path {pci_path}")
    spec = container_spec(share, ["/bin/sh", "-c", f"head -c {len(token)} /dev/xvdb"])
    spec.Linux.Devices.append(oci_pb2.LinuxDevice(Path="/dev/xvdb", Type="b", Major=8, Minor=16, FileMode=0o660))
    spec.Linux.Resources.Devices.append(
        oci_pb2.LinuxDeviceCgroup(Allow=True, Type="b", Major=8, Minor=16, Access="rwm")
    )
    device = agent_pb2.Device(id=pci_path, type="blk", container_path="/dev/xvdb")
    status, out = run_container(agent(guest), "blk-device", spec, devices=[device])
    assert (status, out) == (0, token)


def test_add_swap_swaps_to_a_hot_added_disk(guest: vm.Guest, tmp_path: Path) -> None:
    image = tmp_path / "swap.img"
    image.write_bytes(bytes(16 << 20))
    subprocess.run(["mkswap", str(image)], check=True, capture_output=True)  # the runtime makes the area
    pci_path, device_id = _hotplug_disk(guest, image, tmp_path / "run", read_only=False)
    phase(f"swap disk {device_id}: PCI path {pci_path}")
    slots = [int(slot, 16) for slot in pci_path.split("/")]
    with timed("AddSwap"):
        rpc(agent(guest), "AddSwap", agent_pb2.AddSwapRequest(PCIPath=slots))
    swaps = guest.run_in_console("cat /proc/swaps")
    devices = [line.split()[0] for line in swaps.splitlines() if line.startswith("/dev/")]
    assert len(devices) == 1 and devices[0].startswith("/dev/vd"), swaps
    # a disk that holds no swap area is refused by name, and the agent goes on serving
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(4 << 20))
    plain_path, _ = _hotplug_disk(guest, plain, tmp_path / "run", read_only=False)
    with pytest.raises(AgentCallError, match="no swap area") as refused:
        rpc(agent(guest), "AddSwap", agent_pb2.AddSwapRequest(PCIPath=[int(s, 16) for s in plain_path.split("/")]))
    assert refused.value.code == Code.RESOURCE_EXHAUSTED
    assert rpc(agent(guest), "GetGuestDetails", agent_pb2.GuestDetailsRequest()) is not None
