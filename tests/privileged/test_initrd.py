"""The initrd holds everything the agent imports: unpack it, chroot into it, run the agent.

The initrd is built once per session under build/cache (the rootfs and the initrd are cached by their
inputs, so reruns only repack when the agent changed). Building from scratch runs mkosi: minutes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.rpc.pb import health_pb2
from agent.system import children
from agentctl.client import connect
from osbuilder import cpio, initrd, probe, rootfs
from osbuilder.context import BuildContext
from osbuilder.kernel import distro
from tests.conftest import REPO, require_root

READY_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def built_initrd(tmp_path_factory: pytest.TempPathFactory) -> initrd.InitrdResult:
    require_root()
    ctx = BuildContext(REPO / "build/cache", tmp_path_factory.mktemp("initrd-out"))
    kernel = distro.prepare(ctx)
    tree = rootfs.build(ctx)
    return initrd.build(ctx, tree, kernel, "gzip")


@pytest.fixture(scope="session")
def unpacked(built_initrd: initrd.InitrdResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("initrd-root")
    subprocess.run(
        ["cpio", "-idm", "--quiet"], input=gzip.decompress(built_initrd.image.read_bytes()), cwd=target, check=True
    )
    return target


def test_layout(unpacked: Path) -> None:
    assert (unpacked / "init").read_text().startswith("#!/usr/bin/python3.11 -IS\n")
    assert os.access(unpacked / "init", os.X_OK)
    assert (unpacked / "usr/bin/python3.11").is_file()
    assert (unpacked / "lib").is_symlink() and os.readlink(unpacked / "lib") == "usr/lib"
    assert (unpacked / "usr/bin/sh").is_symlink()
    # sources are dropped for sourceless bytecode
    assert (unpacked / "usr/lib/pykata/agent/__init__.pyc").is_file()
    assert not list((unpacked / "usr/lib/pykata").rglob("*.py"))
    # modules listed exist, and vsock comes after the virtio transport it sits on
    release = next((unpacked / "usr/lib/modules").iterdir()).name
    listed = (unpacked / "etc/pykata/modules.load").read_text().split()
    for rel in listed:
        assert (unpacked / "usr/lib/modules" / release / rel).is_file(), rel
    names = [Path(rel).stem for rel in listed]
    assert names.index("virtio_pci") < names.index("vmw_vsock_virtio_transport")
    assert names.index("vsock") < names.index("vmw_vsock_virtio_transport_common")
    # optional stdlib imports that would pull libssl and libcrypto are left out
    assert not list(unpacked.rglob("libcrypto.so*"))
    # an excluded package leaves none of its modules behind, in either archive
    deferred = gzip.decompress((unpacked / "etc/pykata/deferred.cpio.gz").read_bytes())
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=deferred, capture_output=True, check=True).stdout
    every = listing.decode().split() + [str(p.relative_to(unpacked)) for p in unpacked.rglob("*")]
    assert not [name for name in every if "/sqlite3/" in name or "_sqlite3" in name]
    # the agent serves gRPC with its own HTTP/2 code: no grpcio (nor click, for host tools only)
    site = unpacked / "usr/lib/pykata"
    assert not (site / "grpc").exists() and not list(site.glob("grpcio*")) and not (site / "click").exists()


def test_agent_help_in_chroot(unpacked: Path) -> None:
    proc = subprocess.run(["chroot", str(unpacked), "/init", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--server-addr" in proc.stdout + proc.stderr


@pytest.fixture
def chrooted_agent(unpacked: Path) -> Iterator[Path]:
    sock = unpacked / "run/test-agent.sock"
    sock.unlink(missing_ok=True)
    log = unpacked / "tmp/agent.log"
    # /dev and /proc as PID 1 would mount them, in a private mount namespace that vanishes with the agent
    script = (
        'root=$1; shift; mount -t devtmpfs devtmpfs "$root/dev" && mount -t proc proc "$root/proc" '
        '&& exec chroot "$root" "$@"'
    )
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(unpacked),
        "/init",
        "--server-addr",
        "unix:///run/test-agent.sock",
    ]
    with log.open("w") as out:
        agent = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not sock.exists():
            assert agent.poll() is None, f"agent exited {agent.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no socket after {READY_TIMEOUT} s: {log.read_text()[-3000:]}"
            time.sleep(0.05)
        print(f"agent in chroot listening after {time.monotonic() - deadline + READY_TIMEOUT:.2f} s")
        yield sock
    finally:
        children.stop(agent)
        sock.unlink(missing_ok=True)


def test_agent_answers_check_in_chroot(chrooted_agent: Path, unpacked: Path) -> None:
    log = unpacked / "tmp/agent.log"
    assert probe.check_ttrpc(str(chrooted_agent)) == probe.SERVING, log.read_text()[-3000:]
    assert probe.check_grpc(str(chrooted_agent)) == probe.SERVING, log.read_text()[-3000:]
    assert probe.check_ttrpc(str(chrooted_agent)) == probe.SERVING, log.read_text()[-3000:]
    # agentctl's clients from the host side of the socket, with the generated messages, both protocols
    for protocol in ("grpc", "ttrpc"):
        with connect(f"unix://{chrooted_agent}", protocol, timeout=30) as client:
            reply = client.call("grpc.Health/Check", health_pb2.CheckRequest())
            assert isinstance(reply, health_pb2.HealthCheckResponse), protocol
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, (protocol, log.read_text()[-3000:])
            version = client.call("grpc.Health/Version", health_pb2.CheckRequest())
            assert isinstance(version, health_pb2.VersionCheckResponse)
            assert version.agent_version, protocol


def test_rebuild_is_byte_identical(built_initrd: initrd.InitrdResult, tmp_path: Path) -> None:
    # A frozen copy of the sources: the working tree may change between two builds.
    source = tmp_path / "src"
    shutil.copytree(REPO / "agent", source / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "pyproject.toml", source / "pyproject.toml")
    digests = []
    for attempt in range(2):
        ctx = BuildContext(REPO / "build/cache", tmp_path / f"out{attempt}", source=source)
        kernel = distro.prepare(ctx)
        tree = rootfs.build(ctx)
        image = initrd.build(ctx, tree, kernel, "gzip", use_cache=False).image
        digests.append(hashlib.sha256(image.read_bytes()).hexdigest())
        members = cpio.read_archive(gzip.decompress(image.read_bytes()))
        paths = [m[0] for m in members]
        assert paths == sorted(paths, key=lambda p: tuple(p.split("/")))
    assert digests[0] == digests[1]
