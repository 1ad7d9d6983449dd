"""osbuilder.kernel.modules: from module names to an ordered load list, on fake module trees whose
.ko files carry real .modinfo sections (depends=, alias=, softdep=)."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from osbuilder.kernel.modules import (
    Module,
    ModuleError,
    ModuleTree,
    builtin_modules,
    load_list,
    module_name,
    plain_relpath,
)
from tests.unit.elf_fixtures import module_bytes, write_module


def vsock_tree(root: Path) -> Path:
    """The vsock stack as Debian's kernel has it (dependencies from its .modinfo)."""
    kernel = root / "kernel"
    write_module(kernel / "drivers/virtio/virtio_ring.ko", depends="")
    write_module(kernel / "drivers/virtio/virtio.ko", depends="virtio_ring")
    write_module(kernel / "drivers/virtio/virtio_pci_modern_dev.ko", depends="")
    write_module(kernel / "drivers/virtio/virtio_pci_legacy_dev.ko", depends="")
    write_module(
        kernel / "drivers/virtio/virtio_pci.ko",
        depends="virtio_pci_modern_dev,virtio_ring,virtio,virtio_pci_legacy_dev",
    )
    write_module(kernel / "net/vmw_vsock/vsock.ko", depends="")
    write_module(kernel / "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", depends="vsock,virtio_ring")
    write_module(
        kernel / "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        depends="vmw_vsock_virtio_transport_common,virtio,virtio_ring,vsock",
    )
    return root


def names(modules: list[Module]) -> list[str]:
    return [m.name for m in modules]


def assert_dependency_order(tree: ModuleTree, ordered: list[str]) -> None:
    for index, name in enumerate(ordered):
        for dep in tree.dependencies(name):
            assert dep in ordered[:index], f"{name} comes before its dependency {dep}"


def test_vsock_closure_puts_every_dependency_first(tmp_path: Path) -> None:
    tree = ModuleTree(vsock_tree(tmp_path / "lib"), tmp_path / "plain")
    ordered = names(tree.closure(["virtio_pci", "vmw_vsock_virtio_transport"]))
    assert sorted(ordered) == sorted(
        [
            "virtio_ring",
            "virtio",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ]
    )
    assert len(ordered) == len(set(ordered))  # shared dependencies once
    assert_dependency_order(tree, ordered)


def test_closure_of_a_leaf_is_the_leaf(tmp_path: Path) -> None:
    tree = ModuleTree(vsock_tree(tmp_path / "lib"), tmp_path / "plain")
    assert names(tree.closure(["vsock"])) == ["vsock"]


def test_builtin_dependencies_are_skipped(tmp_path: Path) -> None:
    tree = ModuleTree(vsock_tree(tmp_path / "lib"), tmp_path / "plain")
    ordered = names(tree.closure(["vmw_vsock_virtio_transport"], builtin={"virtio", "virtio_ring"}))
    assert "virtio" not in ordered and "virtio_ring" not in ordered
    assert ordered[-1] == "vmw_vsock_virtio_transport"


def test_missing_dependency_names_who_needs_it(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    write_module(root / "kernel/fs/9p/9p.ko", depends="9pnet,netfs")
    write_module(root / "kernel/fs/netfs/netfs.ko", depends="")
    tree = ModuleTree(root, tmp_path / "plain")
    with pytest.raises(ModuleError, match=r"9pnet \(needed by 9p\)"):
        tree.closure(["9p"])
    with pytest.raises(ModuleError, match="kernel module nosuch is not in"):
        tree.closure(["nosuch"])


def test_cycle_is_reported_with_its_path(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    write_module(root / "a.ko", depends="b")
    write_module(root / "b.ko", depends="c")
    write_module(root / "c.ko", depends="a")
    with pytest.raises(ModuleError, match="cycle: a -> b -> c -> a"):
        ModuleTree(root, tmp_path / "plain").closure(["a"])


def test_dashes_and_underscores_name_the_same_module(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    write_module(root / "kernel/crypto/crc32c-generic.ko", depends="", alias=["crypto-crc32c", "crc32c"])
    write_module(root / "kernel/fs/ext4/ext4.ko", depends="crc32c-generic")
    tree = ModuleTree(root, tmp_path / "plain")
    assert names(tree.closure(["ext4"])) == ["crc32c_generic", "ext4"]
    assert module_name("crc32c-generic.ko.xz") == "crc32c_generic"


def test_softdep_pre_is_resolved_through_aliases(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    write_module(root / "kernel/crypto/crc32c_generic.ko", depends="", alias=["crypto-crc32c", "crc32c"])
    write_module(root / "kernel/lib/libcrc32c.ko", depends="")
    # pre: modules load first; post: ones do not make a dependency
    write_module(root / "kernel/fs/ext4/ext4.ko", depends="", softdep="pre: crc32c libcrc32c post: nothere")
    tree = ModuleTree(root, tmp_path / "plain")
    assert tree.resolve("crc32c") == "crc32c_generic"
    assert tree.resolve("nothere") is None
    assert tree.dependencies("ext4") == ["crc32c_generic", "libcrc32c"]
    assert names(tree.closure(["ext4"])) == ["crc32c_generic", "libcrc32c", "ext4"]


def test_compressed_module_is_read_from_its_decompressed_copy(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    packed = root / "kernel/fs/overlayfs/overlay.ko.xz"
    packed.parent.mkdir(parents=True)
    packed.write_bytes(lzma.compress(module_bytes(depends="", alias="fs-overlay")))
    tree = ModuleTree(root, tmp_path / "plain")
    (module,) = tree.closure(["overlay"])
    assert module.relpath == "kernel/fs/overlayfs/overlay.ko.xz"
    plain = tree.plain(module)
    assert plain == tmp_path / "plain/kernel/fs/overlayfs/overlay.ko"
    assert plain.read_bytes() == module_bytes(depends="", alias="fs-overlay")
    assert tree.info("overlay")["alias"] == ["fs-overlay"]
    assert load_list([module]) == "kernel/fs/overlayfs/overlay.ko\n"


def test_load_list_carries_parameters(tmp_path: Path) -> None:
    tree = ModuleTree(vsock_tree(tmp_path / "lib"), tmp_path / "plain")
    text = load_list(tree.closure(["vsock", "virtio"]), {"virtio": "force_legacy=1"})
    assert text.splitlines() == [
        "kernel/net/vmw_vsock/vsock.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko force_legacy=1",
    ]


def test_plain_relpath_and_unknown_files() -> None:
    assert plain_relpath("kernel/a.ko.zst") == "kernel/a.ko"
    assert plain_relpath("kernel/a.ko") == "kernel/a.ko"
    with pytest.raises(ModuleError, match="not a kernel module"):
        module_name("README")


def test_modules_builtin_listing(tmp_path: Path) -> None:
    assert builtin_modules(tmp_path) == set()
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\nkernel/crypto/crc32c-generic.ko\n\n")
    assert builtin_modules(tmp_path) == {"virtio", "crc32c_generic"}
