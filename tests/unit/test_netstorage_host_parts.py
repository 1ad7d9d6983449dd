"""Pure parts behind ``agentctl boot --netns`` / ``agentctl hotplug blk`` and the guest-side fixes the
VM revealed: free root ports from a query-pci answer, the QEMU arguments, the filesystem module lists,
and pyroute2 importing where ``ssl`` is missing (as in the initrd)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.storage import fsmodules
from agent.storage import plan as p
from agent.system.paths import HostPaths
from agentctl import qmp, vm

REPO = Path(__file__).resolve().parents[2]


def _port(slot: int, qdev_id: str, behind: list[dict[str, Any]] | None) -> dict[str, Any]:
    bridge: dict[str, Any] = {"bus": {"number": 0, "secondary": slot, "subordinate": slot}}
    if behind is not None:
        bridge["devices"] = behind
    return {"bus": 0, "slot": slot, "function": 0, "qdev_id": qdev_id, "pci_bridge": bridge}


def test_free_root_ports_skips_used_foreign_and_non_bridges() -> None:
    disk = {"bus": 1, "slot": 0, "function": 0, "qdev_id": "vblk-hp0"}
    answer = [
        {
            "bus": 0,
            "devices": [
                {"bus": 0, "slot": 0, "function": 0, "qdev_id": ""},
                {"bus": 0, "slot": 2, "function": 0, "qdev_id": "hpfake"},  # named like a port, no bridge
                _port(5, "hp1", []),
                _port(3, "hp0", [disk]),
                _port(4, "other", None),  # someone else's root port
                _port(6, "hp2", None),
            ],
        },
        {"bus": 1, "devices": [_port(9, "hp9", [])]},  # not on the root bus
    ]
    assert qmp.free_root_ports(answer) == [("hp1", 5), ("hp2", 6)]


class FakeQMP:
    def __init__(self, answer: list[dict[str, Any]], fail_device_add: bool = False) -> None:
        self.answer = answer
        self.fail = fail_device_add
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def execute(self, command: str, **arguments: Any) -> Any:
        self.calls.append((command, arguments))
        if command == "query-pci":
            return self.answer
        if command == "device_add" and self.fail:
            raise qmp.QMPError("QMP device_add: GenericError: boom")
        return {}


def test_hotplug_blk_reports_kata_pci_path_and_undoes_on_failure(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    monitor = FakeQMP([{"bus": 0, "devices": [_port(0x1A, "hp0", [])]}])
    disk = qmp.hotplug_blk(monitor, image, read_only=True)  # type: ignore[arg-type]
    assert disk.pci_path == "1a/00"
    assert (disk.port, disk.device_id) == ("hp0", "vblk-hp0")
    added = dict(monitor.calls)["blockdev-add"]
    assert added["file"] == {"driver": "file", "filename": str(image.resolve()), "read-only": True}
    assert dict(monitor.calls)["device_add"] == {
        "driver": "virtio-blk-pci",
        "id": "vblk-hp0",
        "drive": disk.node_name,
        "bus": "hp0",
    }

    failing = FakeQMP([{"bus": 0, "devices": [_port(3, "hp0", [])]}], fail_device_add=True)
    with pytest.raises(qmp.QMPError):
        qmp.hotplug_blk(failing, image)  # type: ignore[arg-type]
    assert failing.calls[-1] == ("blockdev-del", {"node-name": "disk-hp0"})

    with pytest.raises(qmp.QMPError, match="pcie-ports"):
        qmp.hotplug_blk(FakeQMP([{"bus": 0, "devices": []}]), image)  # type: ignore[arg-type]


def test_qemu_argv_carries_nic_and_root_ports(tmp_path: Path) -> None:
    config = vm.GuestConfig(kernel=tmp_path / "k", initrd=tmp_path / "i", pcie_root_ports=2)
    paths = {name: tmp_path / name for name in ("vhost", "qmp", "console")}
    nic = ["-netdev", "tap,id=net0,fd=7", "-device", "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01"]
    argv = vm.qemu_argv(config, paths, "tcg", nic)
    assert argv[argv.index("-netdev") + 1] == "tap,id=net0,fd=7"
    ports = [argv[i + 1] for i, word in enumerate(argv) if word == "-device" and "pcie-root-port" in argv[i + 1]]
    assert ports == ["pcie-root-port,id=hp0,bus=pcie.0,chassis=1", "pcie-root-port,id=hp1,bus=pcie.0,chassis=2"]
    plain = vm.qemu_argv(vm.GuestConfig(kernel=tmp_path / "k", initrd=tmp_path / "i"), paths, "tcg")
    assert "-netdev" not in plain and not any("pcie-root-port" in word for word in plain)


def test_state_without_netns_fields_still_loads(tmp_path: Path) -> None:
    old = {"name": "n", "run_dir": str(tmp_path), "qemu_pid": 1, "backend_pid": 2, "uds": "u", "qmp": "q",
           "console_log": "c", "accel": "tcg"}  # fmt: skip
    (tmp_path / "state.json").write_text(json.dumps(old))
    state = vm.GuestState.load(tmp_path)
    assert (state.netns, state.mac) == ("", "")


ROOT_LIST = "kernel/crypto/crc32c_generic.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/lib/crc16.ko\nkernel/fs/ext4/ext4.ko\n"


def test_modules_for_takes_the_list_up_to_the_filesystem() -> None:
    plan = fsmodules.modules_for("ext4", "# comment\n" + ROOT_LIST + "kernel/fs/xfs/xfs.ko\n")
    assert [rel for rel, _ in plan] == [line for line in ROOT_LIST.splitlines()]
    assert fsmodules.modules_for("btrfs", ROOT_LIST) == []
    assert fsmodules.modules_for("fuse", "kernel/fs/fuse/fuse.ko opt=1\n") == [("kernel/fs/fuse/fuse.ko", "opt=1")]
    assert fsmodules.module_name("kernel/fs/nls/nls-utf8.ko.xz") == "nls_utf8"


def test_load_filesystem_known_missing_and_unlisted(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/filesystems").write_text("nodev\tproc\n\text4\n")
    assert fsmodules.registered_filesystems(paths) == {"proc", "ext4"}
    assert fsmodules.load_filesystem(paths, "ext4") is True  # known: nothing to load
    assert fsmodules.load_filesystem(paths, "xfs") is False  # no list names it


def test_host_mount_retries_after_loading_the_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    loaded: list[str] = []

    def fake_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        calls.append(f"{fstype}")
        if not loaded:
            raise OSError(19, "No such device", target)

    def loader(fstype: str) -> bool:
        loaded.append(fstype)
        return True

    monkeypatch.setattr(p.libc, "mount", fake_mount)
    p.HostSyscalls(loader).mount("/dev/vda", "/mnt", "ext4", 0, None)
    assert (calls, loaded) == (["ext4", "ext4"], ["ext4"])
    calls.clear()
    loaded.clear()
    with pytest.raises(OSError):
        p.HostSyscalls(lambda fstype: False).mount("/dev/vda", "/mnt", "ext4", 0, None)
    with pytest.raises(OSError):
        p.HostSyscalls().mount("/dev/vda", "/mnt", "ext4", 0, None)
    assert calls == ["ext4", "ext4"]  # no retry without a loader that succeeded


def test_pyroute2_imports_without_ssl_or_sqlite3() -> None:
    """As in the initrd: ssl, sqlite3 (and friends) cannot be imported; the agent's netlink still works."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("ssl", "_ssl", "bz2", "_bz2", "lzma", "_lzma", "_hashlib", "sqlite3",
                                          "_sqlite3"):
                    raise ImportError("left out: " + name)
        sys.meta_path.insert(0, Block())
        from agent.network import netlink
        names = [i.name for i in netlink.Netlink().list_interfaces()]
        import asyncio.sslproto
        print("lo" in names, "ssl" in sys.modules, asyncio.sslproto.ssl is None, "sqlite3" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True", "False"]


def test_boot_command_passes_netns_and_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``agentctl boot --netns NS --pcie-ports N`` reaches the launcher; the state records the netns."""
    from click.testing import CliRunner

    from agentctl import netns, vm_cli

    seen: list[vm.GuestConfig] = []

    class FakeGuest:
        def __init__(self, config: vm.GuestConfig, progress: Any) -> None:
            seen.append(config)
            self.tap = netns.TapAttachment(config.netns or "", "tap0_kata", "eth0", "02:00:00:00:00:09", 1500,
                                           ("10.9.9.2/24",))  # fmt: skip

        def start(self) -> None:
            pass

        def detach(self) -> vm.GuestState:
            state = vm.GuestState("g", str(tmp_path / "g"), 1, 2, "/u", "/q", "/c", "tcg", "ns1", self.tap.mac)
            return state

    monkeypatch.setattr(vm, "Guest", FakeGuest)
    kernel = tmp_path / "k"
    kernel.write_bytes(b"")
    (tmp_path / "g").mkdir()  # the real launcher makes its run directory
    result = CliRunner().invoke(
        vm_cli.boot,
        ["--kernel", str(kernel), "--initrd", str(kernel), "--netns", "ns1", "--pcie-ports", "3",
         "--name", "g", "--run-dir", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (seen[0].netns, seen[0].pcie_root_ports) == ("ns1", 3)
    assert "02:00:00:00:00:09" in result.output and "10.9.9.2/24" in result.output
