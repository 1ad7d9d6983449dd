"""CreateSandbox's kernel_modules: a module loaded by name, from the guest's module lists (the initrd:
no modprobe) or by modprobe (the image), and what is refused. On a fake tree; finit_module recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import InvalidArgument, NotFound, ResourceError, Unsupported
from agent.storage import fsmodules
from agent.system.paths import HostPaths

RELEASE = os.uname().release


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[HostPaths, list[tuple[str, str]]]:
    paths = HostPaths(tmp_path)
    lists = Path(paths.modules_load_list).parent
    lists.mkdir(parents=True)
    Path(paths.modules_load_list).write_text("kernel/net/vsock.ko\n")
    (lists / "modules-background.load").write_text(
        "kernel/fs/netfs/netfs.ko\nkernel/fs/fscache/fscache.ko\nkernel/fs/fuse/fuse.ko max_user_bgreq=8\n"
    )
    base = Path(paths.modules_dir) / RELEASE
    base.mkdir(parents=True)
    (base / "modules.builtin").write_text("kernel/drivers/char/mem.ko\nkernel/fs/ext4/ext4.ko\n")
    (tmp_path / "sys/module/vsock/parameters").mkdir(parents=True)
    loaded: list[tuple[str, str]] = []

    def load_module(path: str, params: str = "") -> bool:
        loaded.append((path.removeprefix(f"{base}/"), params))
        return True

    monkeypatch.setattr(fsmodules.libc, "load_module", load_module)
    return paths, loaded


def test_a_listed_module_loads_after_what_it_needs_with_its_parameters(
    tree: tuple[HostPaths, list[tuple[str, str]]],
) -> None:
    paths, loaded = tree
    assert fsmodules.load_named(paths, "fuse", ["max_user_reqs=4"]) == "fuse: loaded from kernel/fs/fuse/fuse.ko"
    assert loaded == [
        ("kernel/fs/netfs/netfs.ko", ""),
        ("kernel/fs/fscache/fscache.ko", ""),
        ("kernel/fs/fuse/fuse.ko", "max_user_bgreq=8 max_user_reqs=4"),  # the list's, then the request's
    ]


def test_loaded_and_built_in_modules_need_nothing(tree: tuple[HostPaths, list[tuple[str, str]]]) -> None:
    paths, loaded = tree
    assert "loaded already" in fsmodules.load_named(paths, "vsock", [])
    assert "built into the kernel" in fsmodules.load_named(paths, "ext4", [])
    assert loaded == []


def test_what_the_guest_lacks_or_refuses_is_named(
    tree: tuple[HostPaths, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, loaded = tree
    with pytest.raises(NotFound, match="kernel module e1000e is not in this guest"):
        fsmodules.load_named(paths, "e1000e", [])
    assert loaded == []
    with pytest.raises(InvalidArgument, match="is not a module name"):
        fsmodules.load_named(paths, "../../evil", [])
    with pytest.raises(InvalidArgument, match="one key=value word"):
        fsmodules.load_named(paths, "fuse", ["a=1 b=2"])

    def refuse(path: str, params: str = "") -> bool:
        raise OSError(22, "Invalid argument", path)

    monkeypatch.setattr(fsmodules.libc, "load_module", refuse)
    with pytest.raises(ResourceError, match=r"fuse: loading kernel/fs/fuse/fuse\.ko failed: Invalid argument"):
        fsmodules.load_named(paths, "fuse", ["bogus=1"])


def test_modprobe_does_the_work_where_there_is_one(
    tree: tuple[HostPaths, list[tuple[str, str]]], tmp_path: Path
) -> None:
    paths, loaded = tree
    record = tmp_path / "modprobe.args"
    modprobe = tmp_path / "modprobe"
    modprobe.write_text(
        f'#!/bin/sh\necho "$@" > {record}\n[ "$1" != broken ] || {{ echo "FATAL: no $1" >&2; exit 1; }}\n'
    )
    modprobe.chmod(0o755)
    assert fsmodules.load_named(paths, "e1000e", ["EEE=1"], str(modprobe)) == f"e1000e: loaded by {modprobe}"
    assert record.read_text() == "e1000e EEE=1\n" and loaded == []
    with pytest.raises(ResourceError, match="FATAL: no broken"):
        fsmodules.load_named(paths, "broken", [], str(modprobe))


def test_create_sandbox_refuses_a_shared_user_namespace(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.services import Services

    services = Services(AgentConfig(), HostPaths(tmp_path))
    with pytest.raises(Unsupported, match="guest_userns"):
        services.sandbox.create_sandbox(sandbox_id="s", guest_userns=True)
    assert services.sandbox.sandbox is None
