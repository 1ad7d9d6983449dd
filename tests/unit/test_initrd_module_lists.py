"""The initrd's three kernel module lists: what the agent loads before serving, what loads in the
background, and what loads on demand (or before a switch to the disk image's root)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from osbuilder.initrd import module_lists
from osbuilder.kernel.distro import GuestKernel

VSOCK = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/vmw_vsock/vsock.ko",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
]
OTHERS = [
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/net/9p/9pnet.ko",
    "kernel/net/9p/9pnet_virtio.ko",
    "kernel/fs/9p/9p.ko",
    "kernel/fs/overlayfs/overlay.ko params=1",
]
ROOT_EXTRA = ["kernel/crypto/crc32c_generic.ko", "kernel/fs/ext4/ext4.ko"]


def kernel() -> GuestKernel:
    guest = VSOCK[:3] + OTHERS[:1] + VSOCK[3:] + OTHERS[1:]  # closure order interleaves them
    return GuestKernel(
        package="linux-image-test",
        package_version="1",
        release="6.1.0-test",
        vmlinuz=Path("/nonexistent"),
        modules_root=Path("/nonexistent"),
        guest_modules=guest,
        root_modules=guest + ROOT_EXTRA,
        boot_modules=VSOCK,
    )


def test_the_agent_loads_only_vsock_before_serving() -> None:
    assert module_lists(kernel())["modules.load"] == VSOCK


def test_background_list_is_the_rest_of_the_guest_in_order() -> None:
    assert module_lists(kernel())["modules-background.load"] == OTHERS


def test_on_demand_list_has_everything_else_with_the_9p_transport_before_9p() -> None:
    listed = module_lists(kernel())["modules-root.load"]
    assert listed == OTHERS + ROOT_EXTRA
    assert not set(listed) & set(VSOCK)
    assert listed.index("kernel/net/9p/9pnet_virtio.ko") < listed.index("kernel/fs/9p/9p.ko")


def test_every_module_is_in_a_list_once() -> None:
    lists = module_lists(kernel())
    loaded = lists["modules.load"] + lists["modules-root.load"]
    assert sorted(loaded) == sorted(set(kernel().root_modules))


def kernel_with_drivers() -> GuestKernel:
    """The agent loads vsock before serving; the block driver loads with the deferred files."""
    return replace(kernel(), boot_modules=VSOCK[:3] + OTHERS[:1] + VSOCK[3:], serve_modules=VSOCK)


def test_drivers_load_with_the_deferred_files_not_before_serving() -> None:
    lists = module_lists(kernel_with_drivers())
    assert lists["modules.load"] == VSOCK
    assert lists["modules-drivers.load"] == OTHERS[:1]
    assert lists["modules-background.load"] == OTHERS[1:]
    # the disk image boot loads modules.load and modules-root.load: the block driver is in the latter
    assert lists["modules-root.load"] == OTHERS + ROOT_EXTRA


def test_without_a_serve_list_the_drivers_load_before_serving() -> None:
    lists = module_lists(kernel())
    assert lists["modules.load"] == VSOCK and lists["modules-drivers.load"] == []
