"""Load a filesystem's kernel module when a mount finds the kernel without it.

The initrd loads only the modules the agent needs at boot; the ext4 driver (and its dependencies)
ships in the image too, listed in ``modules-root.load``, but stays unloaded until a blk storage asks
for it. There is no modprobe in the initrd, so the kernel cannot load it by itself: a mount that fails
with ENODEV looks the filesystem up in the image's module lists and loads it, dependencies first.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence

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
        for rel, params in _listed_plan(fstype, (paths.modules_load_list, paths.modules_root_load_list)):
            _load(f"{base}/{rel}", params)
    known = fstype in registered_filesystems(paths)
    if known:
        log.info("loaded the kernel module for filesystem %s", fstype)
    return known


def _listed_plan(module: str, listings: Sequence[str]) -> list[tuple[str, str]]:
    """``modules_for`` in the first of ``listings`` (module list files) that names ``module``."""
    for listing_path in listings:
        try:
            plan = modules_for(module, _read(listing_path))
        except OSError:
            continue
        if plan:
            return plan
    return []


def _load(module: str, params: str) -> None:
    try:
        libc.load_module(module, params)
    except OSError as exc:
        log.warning("loading kernel module %s failed: %s", module, exc)


MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _module_lists(paths: HostPaths) -> list[str]:
    """The image's module lists (``relpath [params]`` lines, dependency order): modules.load first."""
    directory = os.path.dirname(paths.modules_load_list)
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".load")]
    except OSError:
        return []
    first = os.path.basename(paths.modules_load_list)
    return [f"{directory}/{n}" for n in sorted(names, key=lambda n: (n != first, n))]


def load_named(paths: HostPaths, name: str, parameters: list[str], modprobe: str | None = None) -> str:
    """Load the kernel module ``name`` with ``parameters`` (``key=value`` words), as CreateSandbox's
    kernel_modules ask (Kata's agent runs modprobe). Already loaded or built in: nothing to do. With a
    ``modprobe`` (the rootfs image has kmod) it does the work; else the initrd's module lists give the
    module and what it needs, in order. Returns what was done; InvalidArgument for a bad name or
    parameter, NotFound for a module the guest does not have, ResourceError when the kernel refuses it."""
    from agent.errors import InvalidArgument, NotFound, ResourceError

    if not MODULE_NAME.fullmatch(name):
        raise InvalidArgument(f"kernel module name {name!r} is not a module name ([A-Za-z0-9_-], up to 64)")
    for word in parameters:
        if not word or any(c.isspace() or c == "\0" for c in word):
            raise InvalidArgument(f"kernel module {name}: parameter {word!r} must be one key=value word")
    wanted = name.replace("-", "_")
    if os.path.isdir(f"{paths.sys}/module/{wanted}") and os.listdir(f"{paths.sys}/module/{wanted}"):
        return f"{name}: loaded already (or built in)"
    base = f"{paths.modules_dir}/{os.uname().release}"
    try:
        builtin = {module_name(line.strip()) for line in _read(f"{base}/modules.builtin").splitlines() if line.strip()}
    except OSError:
        builtin = set()
    if wanted in builtin:
        return f"{name}: built into the kernel"
    if modprobe:
        from agent.system.run import CommandError, run

        try:
            run([modprobe, name, *parameters], timeout=60)
        except CommandError as exc:
            raise ResourceError(f"kernel module {name}: {exc}") from exc
        return f"{name}: loaded by {modprobe}"
    from agent.init import wait_for_deferred_files

    wait_for_deferred_files(f"the {name} kernel module")
    with _lock:
        plan = _listed_plan(wanted, _module_lists(paths))
        if plan:
            for rel, params in plan[:-1]:
                _load(f"{base}/{rel}", params)  # what it needs: a failure shows in its own load below
            rel, listed = plan[-1]
            try:
                libc.load_module(f"{base}/{rel}", " ".join(filter(None, [listed, *parameters])))
            except OSError as exc:
                raise ResourceError(f"kernel module {name}: loading {rel} failed: {exc.strerror or exc}") from exc
            return f"{name}: loaded from {rel}"
    raise NotFound(
        f"kernel module {name} is not in this guest (neither loaded nor in the module lists under "
        f"{os.path.dirname(paths.modules_load_list)}); add it to the guest's modules when building it"
    )
