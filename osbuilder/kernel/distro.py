"""The distro kernel: Debian's generic ``linux-image-<abi>-amd64``, downloaded with apt and unpacked.

Gives ``vmlinuz`` and the ordered, decompressed closure of the modules the guest needs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.system.run import run
from osbuilder import config
from osbuilder.context import BuildContext
from osbuilder.kernel.modules import Module, ModuleTree, builtin_modules, load_list, plain_relpath


@dataclass(frozen=True)
class GuestKernel:
    package: str
    package_version: str
    release: str  # uname -r
    vmlinuz: Path
    modules_root: Path  # holds lib/modules/<release>/<relpath>.ko, decompressed
    guest_modules: list[str]  # relpaths in load order
    root_modules: list[str]  # the guest's plus what mounting an ext4 root needs
    boot_modules: list[str]  # what the agent needs before its handlers serve (config.BOOT_MODULES), in load order
    serve_modules: list[str] | None = None  # of those, what it loads before it serves (config.SERVE_MODULES)

    def modules_before_serving(self) -> list[str]:
        return self.boot_modules if self.serve_modules is None else self.serve_modules

    def modules_load(self, with_root: bool = False) -> str:
        listing = self.root_modules if with_root else self.guest_modules
        return "".join(f"{rel}\n" for rel in listing)


def current_package(meta: str = config.KERNEL_META_PACKAGE) -> str:
    """The concrete image package the meta package depends on (linux-image-6.1.0-N-amd64)."""
    out = run(["apt-cache", "depends", meta], package="apt").stdout.decode()
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise LookupError(f"apt-cache depends {meta} names no linux-image package; run apt-get update")


def download(package: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    existing = sorted(into.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    run(["apt-get", "download", package], cwd=into, package="apt", hint="is the package name right? try apt-get update")
    found = sorted(into.glob(f"{package}_*.deb"))
    if not found:
        raise FileNotFoundError(f"apt-get download {package} left no .deb in {into}")
    return found[-1]


def deb_version(deb: Path) -> str:
    return run(["dpkg-deb", "-f", deb, "Version"], package="dpkg").stdout.decode().strip()


def extract(deb: Path, tree: Path) -> None:
    if (tree / ".extracted").exists():
        return
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    run(["dpkg-deb", "-x", deb, tree], package="dpkg")
    (tree / ".extracted").write_text(deb.name + "\n")


def find_release(tree: Path) -> str:
    releases = sorted(p.name for p in (tree / "lib/modules").iterdir() if p.is_dir())
    if len(releases) != 1:
        raise LookupError(f"{tree}/lib/modules: expected one kernel release, found {releases}")
    return releases[0]


def stage_modules(tree: ModuleTree, modules: list[Module], target: Path) -> None:
    for module in modules:
        plain = tree.plain(module)
        dest = target / plain_relpath(module.relpath)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plain, dest)


def prepare(ctx: BuildContext, package: str | None = None) -> GuestKernel:
    """Download, unpack and resolve the guest's module closure (cached under the workdir)."""
    progress = ctx.progress
    if package is None:
        package = current_package()
    cache = ctx.kernel_cache
    with progress.step("kernel", f"downloading {package}"):
        deb = download(package, cache / "debs")
    version = deb_version(deb)
    tree = cache / f"{package}_{version}"
    with progress.step("kernel", f"unpacking {deb.name}"):
        extract(deb, tree / "tree")
    release = find_release(tree / "tree")
    modules_dir = tree / "tree/lib/modules" / release
    vmlinuz = tree / "tree/boot" / f"vmlinuz-{release}"
    if not vmlinuz.exists():
        raise FileNotFoundError(f"{deb.name} has no boot/vmlinuz-{release}")
    with progress.step("kernel", "resolving the module closure"):
        index = ModuleTree(modules_dir, tree / "plain")
        builtin = builtin_modules(modules_dir)
        guest = index.closure(config.GUEST_MODULES, builtin)
        boot = index.closure(config.BOOT_MODULES, builtin)
        serve = index.closure(config.SERVE_MODULES, builtin)
        rooted = index.closure(config.GUEST_MODULES + config.ROOT_MODULES, builtin)
        staged = tree / "staged/lib/modules" / release
        stage_modules(index, rooted, staged)
    progress.say(
        "kernel",
        f"{release}: {len(guest)} guest modules ({len(boot)} before the agent serves), "
        f"{len(rooted)} with the ext4 root",
    )
    progress.say("kernel", "load order: " + " ".join(m.name for m in guest))
    return GuestKernel(
        package=package,
        package_version=version,
        release=release,
        vmlinuz=vmlinuz,
        modules_root=tree / "staged",
        guest_modules=load_list(guest, config.MODULE_PARAMS).splitlines(),
        root_modules=load_list(rooted, config.MODULE_PARAMS).splitlines(),
        boot_modules=load_list(boot, config.MODULE_PARAMS).splitlines(),
        serve_modules=load_list(serve, config.MODULE_PARAMS).splitlines(),
    )
