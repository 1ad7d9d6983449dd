"""The QEMU command line, QMP hotplug against a fake QMP server, and the CLI helpers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import InvalidArgument
from agentctl import vm
from agentctl.qmp import QMPClient, QMPError, hotplug_cpus, hotplug_memory, parse_size
from agentctl.vm_cli import format_log_line


def _paths(tmp_path: Path) -> dict[str, Path]:
    return {name: tmp_path / name for name in ("vhost", "qmp", "console")}


def test_qemu_argv_tcg_with_vsock_share_and_hotplug_room(tmp_path: Path) -> None:
    config = vm.GuestConfig(
        kernel=Path("/k"), initrd=Path("/i"), share=Path("/srv/share"), cmdline="agent.log=debug", cpus=2, max_cpus=6
    )
    argv = vm.qemu_argv(config, _paths(tmp_path), "tcg")
    joined = " ".join(argv)
    assert argv[0] == vm.QEMU
    assert "-machine q35,accel=tcg -cpu max" in joined
    assert "-smp 2,maxcpus=6" in joined and "-m 512M,slots=4,maxmem=2G" in joined
    assert "memory-backend-memfd,id=mem0,size=512M,share=on" in joined and "-numa node,memdev=mem0" in joined
    assert f"socket,id=vsock0,path={tmp_path / 'vhost'}" in joined
    assert "vhost-user-vsock-pci,chardev=vsock0" in joined
    assert "local,id=fs0,path=/srv/share,security_model=none" in joined
    assert "virtio-9p-pci,fsdev=fs0,mount_tag=kataShared" in joined
    assert "-no-reboot" in argv and "-nographic" in argv
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1 agent.log=debug"
    assert argv[argv.index("-initrd") + 1] == "/i"


def test_qemu_argv_kvm_and_image(tmp_path: Path) -> None:
    config = vm.GuestConfig(kernel=Path("/k"), image=Path("/r.img"))
    argv = vm.qemu_argv(config, _paths(tmp_path), "kvm")
    joined = " ".join(argv)
    assert "-accel kvm -cpu host" in joined
    assert "file=/r.img,if=virtio,format=raw,cache=unsafe,snapshot=on" in joined and "-initrd" not in argv
    config.image_writable = True
    assert "snapshot=on" not in " ".join(vm.qemu_argv(config, _paths(tmp_path), "kvm"))


def test_qemu_argv_needs_something_to_boot(tmp_path: Path) -> None:
    with pytest.raises(vm.BootError, match="nothing to boot"):
        vm.qemu_argv(vm.GuestConfig(), _paths(tmp_path), "tcg")


def test_guest_state_round_trips(tmp_path: Path) -> None:
    state = vm.GuestState("g", str(tmp_path), 10, 11, "/u.sock", "/q.sock", "/c.log", "tcg")
    state.save()
    assert vm.GuestState.load(tmp_path) == state
    assert state.address == "hvsock:///u.sock:1024"
    with pytest.raises(vm.BootError, match="is a guest booted"):
        vm.GuestState.load(tmp_path / "missing")


def test_boot_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="colour"):
        vm.boot(kernel=Path("/k"), colour="blue")


@pytest.mark.parametrize(
    ("text", "size"), [("256M", 256 << 20), ("2G", 2 << 30), ("1048576", 1 << 20), ("512MiB", 512 << 20), ("4k", 4096)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12Q", "-1M", "0", "M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text)


def test_format_log_line() -> None:
    line = json.dumps({"time": "T", "level": "info", "source": "agent.rpc", "msg": "ready", "port": 1024})
    assert format_log_line(line) == "T INFO    agent.rpc: ready port=1024"
    assert format_log_line("[    1.0] kernel text") == "[    1.0] kernel text"


class FakeQMP:
    """A QMP server that answers like QEMU 7.2 for the commands hotplug uses."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.commands: list[dict[str, Any]] = []
        self.cpus: list[dict[str, Any]] = [
            {"type": "max-x86_64-cpu", "vcpus-count": 1, "props": {"socket-id": i, "core-id": 0, "thread-id": 0}}
            for i in range(3)
        ]
        self.cpus[0]["qom-path"] = "/machine/unattached/device[0]"
        self.dimms: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _answer(self, command: dict[str, Any]) -> dict[str, Any]:
        name, args = command["execute"], command.get("arguments", {})
        if name == "query-hotpluggable-cpus":
            return {"return": self.cpus}
        if name == "query-memory-devices":
            return {"return": [{"type": "dimm", "data": {"id": d}} for d in self.dimms]}
        if name == "device_add" and args["driver"] == "pc-dimm":
            self.dimms.append(args["id"])
        elif name == "device_add":
            for slot in self.cpus:
                if slot["props"]["socket-id"] == args["socket-id"]:
                    if "qom-path" in slot:
                        return {"error": {"class": "GenericError", "desc": "slot in use"}}
                    slot["qom-path"] = f"/machine/peripheral/{args['id']}"
        return {"return": {}}

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
            stream.flush()
            for line in stream:
                command = json.loads(line)
                self.commands.append(command)
                stream.write(b'{"event": "SOMETHING", "data": {}}\r\n')  # events may interleave
                stream.write(json.dumps(self._answer(command)).encode() + b"\r\n")
                stream.flush()


@pytest.fixture
def qmp(tmp_path: Path) -> Iterator[tuple[QMPClient, FakeQMP]]:
    server = FakeQMP(tmp_path / "qmp.sock")
    client = QMPClient(tmp_path / "qmp.sock", timeout=10)
    try:
        yield client, server
    finally:
        client.close()
        server.thread.join(10)
        server.listener.close()


def test_hotplug_cpus_fills_free_slots_with_their_props(qmp: tuple[QMPClient, FakeQMP]) -> None:
    client, server = qmp
    assert hotplug_cpus(client, 2) == ["cpu-0-1-0", "cpu-0-2-0"]
    adds = [c["arguments"] for c in server.commands if c["execute"] == "device_add"]
    assert adds[0] == {"driver": "max-x86_64-cpu", "id": "cpu-0-1-0", "socket-id": 1, "core-id": 0, "thread-id": 0}
    with pytest.raises(QMPError, match="no free CPU slot"):
        hotplug_cpus(client, 1)
    assert server.commands[0]["execute"] == "qmp_capabilities"
    assert client.events, "events seen between replies are kept"


def test_hotplug_memory_adds_a_shared_backend_and_a_dimm(qmp: tuple[QMPClient, FakeQMP]) -> None:
    client, server = qmp
    assert hotplug_memory(client, 256 << 20) == "dimm0"
    assert hotplug_memory(client, 128 << 20) == "dimm1"
    objects = [c["arguments"] for c in server.commands if c["execute"] == "object-add"]
    assert objects[0] == {"qom-type": "memory-backend-memfd", "id": "hotmem0", "size": 256 << 20, "share": True}
    dimms = [c["arguments"] for c in server.commands if c["execute"] == "device_add"]
    assert dimms[1] == {"driver": "pc-dimm", "id": "dimm1", "memdev": "hotmem1"}


FAKE_QEMU = """#!/bin/sh
# Plays qemu-system-x86_64 for the launcher: fails under KVM, "boots" under TCG.
echo "$*" >> {calls}
console=""
for arg in "$@"; do
    case "$arg" in file,id=console0,path=*) console="${{arg#file,id=console0,path=}}" ;; esac
done
case "$*" in *"-accel kvm"*) echo "kvm: MSR assertion" >&2; exit 1 ;; esac
{behaviour}
"""


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str) -> Path:
    calls = tmp_path / "calls"
    script = tmp_path / "fake-qemu"
    script.write_text(FAKE_QEMU.format(calls=calls, behaviour=behaviour))
    script.chmod(0o755)
    monkeypatch.setattr(vm, "QEMU", str(script))
    monkeypatch.setattr(vm, "kvm_usable", lambda: True)
    monkeypatch.setattr(vm, "DEFAULT_RUN_DIR", tmp_path / "run" / "vm")
    return calls


def _config(tmp_path: Path) -> vm.GuestConfig:
    return vm.GuestConfig(kernel=Path("/k"), initrd=Path("/i"), run_dir=tmp_path / "guest", ready_port=None)


def test_kvm_failure_falls_back_to_tcg_and_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_qemu(tmp_path, monkeypatch, 'echo "agent ready" > "$console"; exec sleep 60')
    notes: list[str] = []
    with vm.Guest(_config(tmp_path), notes.append) as guest:
        guest.start()
        assert guest.accel == "tcg"
        assert guest.qemu is not None and guest.qemu.poll() is None
        assert guest.backend is not None and guest.backend.poll() is None
        assert guest.uds.exists()
    assert guest.qemu.poll() is not None and guest.backend.poll() is not None, "both ended by PID"
    assert [line.count("-accel kvm") for line in calls.read_text().splitlines()] == [1, 0]
    assert any("trying tcg" in note for note in notes)
    assert (tmp_path / "run" / vm.KVM_VERDICT).is_file()
    # The next boot goes straight to TCG.
    calls.unlink()
    with vm.Guest(_config(tmp_path), notes.append) as guest:
        guest.start()
    assert "-accel kvm" not in calls.read_text()


def test_guest_that_powers_off_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_qemu(tmp_path, monkeypatch, 'echo "agent failed: ImportError" > "$console"; exit 0')
    monkeypatch.setattr(vm, "kvm_usable", lambda: False)
    with pytest.raises(vm.GuestPoweredOff, match="ImportError"), vm.Guest(_config(tmp_path), lambda m: None) as guest:
        guest.start()
    assert len(calls.read_text().splitlines()) == 1
    assert guest.backend is not None and guest.backend.poll() is not None


def test_too_long_run_dir_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.run_dir = tmp_path / ("d" * 100)
    with pytest.raises(vm.BootError, match="too long for unix socket"):
        vm.Guest(config, lambda m: None).start()
    assert not config.run_dir.exists()


def test_stop_signals_only_processes_of_that_guest(tmp_path: Path) -> None:
    import subprocess
    import sys

    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "run")])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "/elsewhere"])
    try:
        assert vm.guest_process(mine.pid, str(tmp_path / "run"))
        assert not vm.guest_process(other.pid, str(tmp_path / "run"))
        (tmp_path / "run").mkdir()
        state = vm.GuestState("g", str(tmp_path / "run"), other.pid, mine.pid, "/u", "/q", "/c", "tcg")
        vm.stop(state, timeout=0.1)
        assert mine.wait(10) is not None
        assert other.poll() is None, "a process that is not the guest's was signalled"
        assert not (tmp_path / "run").exists()
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()
