"""Load a filesystem's kernel module when a mount finds the kernel without it.

The initrd loads only the modules the agent needs at boot; the ext4 driver (and its dependencies)
ships in the image too, listed in ``modules-root.load``, but stays unloaded until a blk storage asks
for it. There is no modprobe in the initrd, so the kernel cannot load it by itself: a mount that fails
with ENODEV looks the filesystem up in the image's module lists and loads it, dependencies first.
"""

from __future__ import annotations

import logging
import os
import threading

from agent.system import libc
from agent.system.paths import HostPaths

log = logging.getLogger(__name__)

_lock = threading.Lock()


def registered_filesystems(paths: HostPaths) -> set[str]:
    """Filesystem types the running kernel knows (/proc/filesystems)."""
    try:
        text = _read(paths.proc_filesystems)
    except OSError:
        return set()
    return {line.split()[-1] for line in text.splitlines() if line.split()}


def _read(path: str) -> str:
    with open(path) as stream:
        return stream.read()


def module_name(relpath: str) -> str:
    """``kernel/fs/ext4/ext4.ko`` -> ``ext4`` (dashes and underscores are the same to the kernel)."""
    name = relpath.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def modules_for(fstype: str, listing: str) -> list[tuple[str, str]]:
    """The lines of a module list (``relpath [params]``, dependency order) to load for ``fstype``:
    every module listed before it, and itself; empty when it is not listed."""
    wanted = fstype.replace("-", "_")
    entries: list[tuple[str, str]] = []
    for line in listing.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel, _, params = line.partition(" ")
        entries.append((rel, params.strip()))
        if module_name(rel) == wanted:
            return entries
    return []


def load_filesystem(paths: HostPaths, fstype: str) -> bool:
    """Load ``fstype``'s module from the image's lists; True when the kernel knows it afterwards."""
    if not fstype or fstype in registered_filesystems(paths):
        return bool(fstype)
    from agent.init import wait_for_deferred_files

    wait_for_deferred_files(f"the {fstype} kernel module")  # the initrd unpacks most modules after boot
    base = f"{paths.modules_dir}/{os.uname().release}"
    with _lock:
        for listing_path in (paths.modules_load_list, paths.modules_root_load_list):
            try:
                listing = _read(listing_path)
            except OSError:
                continue
            plan = modules_for(fstype, listing)
            if plan:
                for rel, params in plan:
                    _load(f"{base}/{rel}", params)
                break
    known = fstype in registered_filesystems(paths)
    if known:
        log.info("loaded the kernel module for filesystem %s", fstype)
    return known


def _load(module: str, params: str) -> None:
    try:
        libc.load_module(module, params)
    except OSError as exc:
        log.warning("loading kernel module %s failed: %s", module, exc)
