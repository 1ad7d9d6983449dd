"""The initrd: the smallest tree that runs the agent as PID 1, packed by our own cpio writer.

From the rootfs tree it takes the interpreter, the stdlib modules and packages the agent imports
(traced, plus ``config.LAZY_IMPORTS``), the shared libraries they need (ELF DT_NEEDED closure), the
distro kernel's modules with their load lists, and busybox as /bin/sh. Python files ship as .pyc with
unchecked hashes next to where the source was, and the sources are dropped.

``/init`` is the launcher (osbuilder/guest/launcher.py) with a shebang to the interpreter: without
``root=`` on the kernel command line the agent becomes PID 1; with it (the disk image boot) the launcher
loads the modules, mounts that root and hands over to its systemd.

Two archives in one: the kernel unpacks the boot archive, which holds only what the agent needs to
answer its first Check (the interpreter and its libraries, the modules traced by
``tracing.trace_start``, the kernel modules of modules.load); everything else (protobuf, pyroute2,
psutil, most of the stdlib and the agent, busybox, the other kernel modules) is a gzip-compressed cpio
stored in it as one file, ``DEFERRED_ARCHIVE``. Compressing the outer archive leaves that file as it is
(stored blocks), so the kernel only copies it; /init unpacks it in a low-priority process once the agent
serves, and an import of a module it holds (listed in ``DEFERRED_INDEX``) waits for it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import py_compile
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.system.run import run
from osbuilder import config, cpio, elf, tracing
from osbuilder.closure import GuestTree, locate_module
from osbuilder.context import BuildContext
from osbuilder.kernel.distro import GuestKernel
from osbuilder.rootfs import Rootfs, launcher_script, tree_digest

COMPRESSIONS = ("gzip", "lz4", "zstd", "xz", "none")
# gzip by default (issue 5), the format every kernel unpacks. Without grpcio the initrd is 29.4 MiB
# uncompressed: 11.1 MiB as gzip, 12.9 MiB as lz4, 9.0 MiB as zstd, 7.8 MiB as xz. Under TCG the kernel
# unpacks it (its own timestamps, bench/guest_image.py, median of 2 boots) in 1.84 s from gzip, 0.77 s
# from lz4, 1.28 s from zstd and 5.67 s from xz. lz4 boots fastest under TCG but misses the 12 MiB
# target; zstd is smaller and faster than gzip where the kernel has it (Debian's 6.1 does). Those
# figures are for the whole tree; the kernel now unpacks only the boot archive (about 13 MiB, see the
# module docstring), and the deferred archive inside it is gzip whatever the outer compression.
DEFAULT_COMPRESSION = "gzip"
PARTS = ("interpreter", "shared libraries", "stdlib", "site-packages", "agent", "kernel modules", "the rest")
DEV_CONSOLE = (5, 1)
# Guest paths of the deferred archive and of the module names it holds (osbuilder/guest/launcher.py
# reads both).
DEFERRED_ARCHIVE = "etc/pykata/deferred.cpio.gz"
DEFERRED_INDEX = "etc/pykata/deferred.modules"
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "sysroot", "root", "etc/pykata")


class InitrdError(RuntimeError):
    pass


@dataclass
class InitrdResult:
    image: Path
    compression: str
    size: int
    raw_size: int
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # part -> (raw bytes, compressed bytes)
    modules_imported: int = 0
    modules_builtin: list[str] = field(default_factory=list)
    agent_import_failures: list[str] = field(default_factory=list)
    deferred_raw_size: int = 0  # the deferred archive's files, uncompressed (part of raw_size)
    deferred_size: int = 0  # the deferred archive as stored in the initrd


def part_of(guest: str) -> str:
    if guest == config.GUEST_PYTHON:
        return "interpreter"
    if guest.startswith(f"{config.AGENT_LIB_DIR}/agent/") or guest == "init":
        return "agent"
    if guest.startswith(config.AGENT_LIB_DIR + "/"):
        return "site-packages"
    if guest.startswith(config.STDLIB_DIR + "/"):
        return "stdlib"
    if guest.startswith("usr/lib/modules/"):
        return "kernel modules"
    if ".so" in guest.rsplit("/", 1)[-1] and guest.startswith(("usr/lib/x86_64-linux-gnu/", "usr/lib64/")):
        return "shared libraries"
    return "the rest"


def compress(data: bytes, method: str) -> bytes:
    """Deterministic compression in a format the kernel unpacks (xz with CRC32, gzip without a timestamp,
    lz4 in legacy frames)."""
    if method == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if method == "xz":
        filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    if method == "lz4":  # the kernel reads only lz4's legacy frame format (-l)
        return run(["lz4", "-l", "-12", "-q", "-c"], input=data, package="lz4").stdout
    if method == "zstd":
        return run(["zstd", "-19", "-q", "-c", "--no-progress"], input=data, package="zstd").stdout
    if method == "none":
        return data
    raise ValueError(f"unknown compression {method!r}; choose one of {', '.join(COMPRESSIONS)}")


def python_search_dirs() -> tuple[str, ...]:
    return (config.AGENT_LIB_DIR, config.STDLIB_DIR, f"{config.STDLIB_DIR}/lib-dynload")


def select(tree: GuestTree, kernel: GuestKernel | None, modules: set[str]) -> list[str]:
    """Select every file the initrd needs; returns the module names that are not files (built in)."""
    tree.add(config.GUEST_PYTHON)
    tree.add("bin/busybox")
    tree.selection.dirs.add(tree.canonical(f"{config.STDLIB_DIR}/lib-dynload"))  # Python's prefix landmark
    search = python_search_dirs()
    builtin: list[str] = []
    whole_done: set[str] = set()
    wanted = set(modules) | set(config.LAZY_IMPORTS) | set(config.PYTHON_LANDMARKS)
    for name in list(wanted):  # every parent package too
        parts = name.split(".")
        wanted.update(".".join(parts[:i]) for i in range(1, len(parts)))
    excluded = set(config.EXCLUDE_MODULES)
    # an excluded package goes with its submodules (sqlite3's dbapi2 would otherwise stay, orphaned)
    wanted = {name for name in wanted if not any(name == x or name.startswith(x + ".") for x in excluded)}
    for name in sorted(wanted):
        top = name.split(".")[0]
        if top in config.WHOLE_PACKAGES:
            if top not in whole_done and tree.host(f"{config.AGENT_LIB_DIR}/{top}").is_dir():
                tree.add_tree(f"{config.AGENT_LIB_DIR}/{top}")
                whole_done.add(top)
                continue
            if top in whole_done:
                continue
        found = locate_module(tree, name, search)
        if found is None:
            builtin.append(name)
            continue
        for path in found.paths:
            if not path.startswith(config.DROP_FROM_PACKAGES):
                tree.add(path)
    tree.add_elf_closure()
    return builtin


def _strip(path: Path) -> None:
    if shutil.which("strip") is None:
        return
    run(["strip", "--strip-unneeded", path], package="binutils")


def materialize(tree: GuestTree, staging: Path, kernel: GuestKernel | None, init_text: str) -> None:
    """Write the selection to ``staging`` as the initrd tree: .pyc for .py, stripped .so files."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    selection = tree.selection
    for directory in sorted(selection.dirs):
        (staging / directory).mkdir(parents=True, exist_ok=True)
    for link, target in sorted(selection.links.items()):
        (staging / link).parent.mkdir(parents=True, exist_ok=True)
        (staging / link).symlink_to(target)
    keep = {"/".join([config.AGENT_LIB_DIR, *m.split(".")]) for m in config.KEEP_SOURCES}
    for guest, source in sorted(selection.files.items()):
        dest = staging / guest
        dest.parent.mkdir(parents=True, exist_ok=True)
        if guest.endswith(".py"):
            py_compile.compile(
                str(source),
                cfile=str(dest) + "c",
                dfile="/" + guest,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            (dest.parent / (dest.name + "c")).chmod(0o644)
            if guest[:-3] in keep or guest.removesuffix("/__init__.py") in keep:
                shutil.copyfile(source, dest)
            continue
        shutil.copyfile(source, dest)
        dest.chmod(stat.S_IMODE(source.stat().st_mode))
        if (guest.endswith(".so") or ".so." in guest) and elf.is_elf(dest):
            _strip(dest)
    sh = staging / Path(tree.canonical("bin/busybox", keep_links=False)).parent / "sh"
    if not sh.exists():
        sh.symlink_to("busybox")
    for directory in EMPTY_DIRS:
        (staging / directory).mkdir(parents=True, exist_ok=True)
    if kernel is not None:
        modules_dir = staging / tree.canonical("lib/modules") / kernel.release
        for rel in kernel.root_modules:
            relpath = rel.split(" ", 1)[0]
            module_file = modules_dir / relpath
            module_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kernel.modules_root / "lib/modules" / kernel.release / relpath, module_file)
        for name, listing in module_lists(kernel).items():
            (staging / "etc/pykata" / name).write_text("".join(f"{m}\n" for m in listing))
    init = staging / "init"
    init.write_text(init_text)
    init.chmod(0o755)


def module_lists(kernel: GuestKernel) -> dict[str, list[str]]:
    """The initrd's kernel module lists (``relpath [params]`` lines, each in load order).

    - modules.load: what the agent loads before it serves (vsock);
    - modules-drivers.load: the device drivers, which /init's low-priority child loads once it has
      unpacked the deferred files and before it says so (so before any handler runs);
    - modules-background.load: the rest of the guest's modules, which that child loads after;
    - modules-root.load: every module not in modules.load, which a mount loads on demand when its
      filesystem is missing, and which the disk image boot loads before it switches root.
    """
    serve = kernel.modules_before_serving()
    boot = set(kernel.boot_modules)
    return {
        "modules.load": list(serve),
        "modules-drivers.load": [m for m in kernel.boot_modules if m not in serve],
        "modules-background.load": [m for m in kernel.guest_modules if m not in boot],
        "modules-root.load": [m for m in kernel.root_modules if m not in serve],
    }


def _compiled_module_paths(staging: Path, name: str) -> list[str]:
    """The files of a module in the written tree (.pyc, extension module, package __init__.pyc)."""
    parts = name.split(".")
    for directory in python_search_dirs():
        base = staging / directory / "/".join(parts)
        if (base / "__init__.pyc").is_file():
            return [f"{directory}/{'/'.join(parts)}/__init__.pyc"]
        if base.is_dir():
            return []  # a namespace package: its directory comes with the files under it
        if base.with_name(base.name + ".pyc").is_file():
            return [f"{directory}/{'/'.join(parts)}.pyc"]
        if base.parent.is_dir():
            for candidate in sorted(base.parent.glob(parts[-1] + ".*so")):
                if candidate.name.split(".")[0] == parts[-1]:
                    return [candidate.relative_to(staging).as_posix()]
    return []


def boot_files(staging: Path, start_modules: set[str], kernel: GuestKernel | None) -> set[str]:
    """The regular files of the boot archive (guest paths): /init, the interpreter, the modules the
    agent imports before its first Check, the boot kernel modules and lists, and their libraries."""
    tree = GuestTree(staging)
    for guest in ("init", config.GUEST_PYTHON):
        tree.add(guest)
    wanted = set(start_modules) | set(config.START_IMPORTS) | set(config.PYTHON_LANDMARKS)
    for name in list(wanted):
        parts = name.split(".")
        wanted.update(".".join(parts[:i]) for i in range(1, len(parts)))
    for name in sorted(wanted):
        for path in _compiled_module_paths(staging, name):
            tree.add(path)
    for listing in sorted((staging / "etc/pykata").glob("*.load")):
        tree.add(listing.relative_to(staging).as_posix())
    if kernel is not None:
        modules_dir = f"{tree.canonical('lib/modules')}/{kernel.release}"
        for line in kernel.modules_before_serving():
            tree.add(f"{modules_dir}/{line.split(' ', 1)[0]}")
    tree.add_elf_closure()
    return set(tree.selection.files)


def module_names(paths: list[str]) -> list[str]:
    """The importable names the given guest paths provide: modules, packages and (for directories)
    namespace packages. Data files provide none."""
    names = set()
    search = sorted(python_search_dirs(), key=len, reverse=True)  # lib-dynload before the stdlib
    for guest in paths:
        directory = next((d for d in search if guest.startswith(d + "/")), None)
        if directory is None:
            continue
        parts = guest[len(directory) + 1 :].split("/")
        last = parts[-1]
        if last == "__init__.pyc":
            parts.pop()
        elif last.endswith(".pyc"):
            parts[-1] = last.removesuffix(".pyc")
        elif last.endswith(".so"):
            parts[-1] = last.split(".")[0]
        elif "." in last:
            continue
        if parts and all(part.isidentifier() for part in parts):
            names.add(".".join(parts))
    return sorted(names)


def split_archives(staging: Path, epoch: int, boot: set[str]) -> tuple[bytes, bytes, int]:
    """The boot archive (raw newc bytes) with the deferred archive stored in it, the deferred archive
    (gzip), and the deferred files' raw size.

    Directories go with their files: one that holds no boot file is unpacked with the deferred
    archive, so a package never shows up before its ``__init__`` (as an empty namespace package)."""
    entries = list(cpio.entries_from_tree(staging))
    boot_dirs = {""}
    for entry in entries:
        if not entry.is_dir and (entry.path in boot or not stat.S_ISREG(entry.mode)):
            parts = entry.path.split("/")
            boot_dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for directory in EMPTY_DIRS:
        if not any((staging / directory).iterdir()):
            boot_dirs.add(directory)
    first: list[cpio.Entry] = []
    deferred: list[cpio.Entry] = []
    for entry in entries:
        in_boot = entry.path in boot_dirs if entry.is_dir else entry.path in boot or not stat.S_ISREG(entry.mode)
        (first if in_boot else deferred).append(entry)
    out = io.BytesIO()
    deferred_raw = cpio.write_archive(out, deferred, epoch) if deferred else 0
    packed = compress(out.getvalue(), "gzip") if deferred else b""
    if deferred:
        index = module_names([entry.path for entry in deferred])
        first.append(cpio.Entry(DEFERRED_ARCHIVE, stat.S_IFREG | 0o600, packed))
        first.append(cpio.Entry(DEFERRED_INDEX, stat.S_IFREG | 0o644, "".join(f"{n}\n" for n in index).encode()))
    first.append(cpio.Entry("dev/console", stat.S_IFCHR | 0o600, b"", DEV_CONSOLE))
    out = io.BytesIO()
    cpio.write_archive(out, first, epoch)
    return out.getvalue(), packed, deferred_raw


def measure_parts(staging: Path, method: str | None) -> dict[str, tuple[int, int]]:
    """Raw and compressed bytes of each part (each part compressed on its own, in path order).

    Without ``method`` only raw sizes are counted (compressing each part again takes as long as the build)."""
    blobs: dict[str, list[bytes]] = {part: [] for part in PARTS}
    for entry in cpio.entries_from_tree(staging):
        if not entry.is_dir:
            blobs[part_of(entry.path)].append(entry.data)
    sizes = {}
    for part in PARTS:
        data = b"".join(blobs[part])
        sizes[part] = (len(data), len(compress(data, method)) if data and method else 0)
    return sizes


def cache_key(rootfs: Rootfs, kernel: GuestKernel | None, ctx: BuildContext, compression: str) -> str:
    inputs = {
        "rootfs": rootfs.key,
        "kernel": [kernel.package, kernel.package_version] if kernel else None,
        "agent": tree_digest(ctx.source / "agent"),
        "osbuilder": tree_digest(Path(__file__).parent),
        "epoch": ctx.epoch,
        "compression": compression,
        "python": list(sys.version_info[:2]),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def build(
    ctx: BuildContext,
    rootfs: Rootfs,
    kernel: GuestKernel | None,
    compression: str = DEFAULT_COMPRESSION,
    output_name: str = "initrd.img",
    use_cache: bool = True,
    measure: bool = False,
) -> InitrdResult:
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    if sys.version_info[:2] != tuple(int(x) for x in config.PYTHON_VERSION.split(".")):
        raise InitrdError(
            f"bytecode must be compiled by Python {config.PYTHON_VERSION} (the guest's); "
            f"this is {sys.version.split()[0]}"
        )
    progress = ctx.progress
    work = ctx.initrd_work
    work.mkdir(parents=True, exist_ok=True)
    key = cache_key(rootfs, kernel, ctx, compression + ("+measured" if measure else ""))
    cached = work / f"initrd-{key}.img"
    cached_info = work / f"initrd-{key}.json"
    output = ctx.output / output_name
    ctx.output.mkdir(parents=True, exist_ok=True)
    if use_cache and cached.exists() and cached_info.exists():
        progress.say("initrd", f"cached: {cached}")
        shutil.copyfile(cached, output)
        info = json.loads(cached_info.read_text())
        return InitrdResult(
            output,
            compression,
            output.stat().st_size,
            info["raw_size"],
            {k: (v[0], v[1]) for k, v in info["parts"].items()},
            info["modules_imported"],
            info["modules_builtin"],
            info["agent_import_failures"],
            info.get("deferred_raw_size", 0),
            info.get("deferred_size", 0),
        )
    with progress.step("initrd", "tracing the agent's imports (import every module; serve Check over ttrpc and gRPC)"):
        modules, failures = tracing.trace(ctx.source)
    with progress.step("initrd", "tracing what the agent imports to answer its first Check"):
        start_modules = tracing.trace_start(ctx.source)
    for failure in failures:
        progress.say("initrd", f"warning: agent module not importable on the host: {failure}")
    tree = GuestTree(rootfs.tree)
    with progress.step("initrd", f"selecting files for {len(modules)} traced modules and their libraries"):
        builtin = select(tree, kernel, modules)
    staging = work / "tree"
    with progress.step("initrd", "writing the tree (.pyc, stripped libraries, kernel modules, /init)"):
        materialize(tree, staging, kernel, launcher_script())
    with progress.step("initrd", f"packing the boot and deferred archives and compressing ({compression})"):
        raw, deferred, deferred_raw = split_archives(staging, ctx.epoch, boot_files(staging, start_modules, kernel))
        packed = compress(raw, compression)
        output.write_bytes(packed)
    with progress.step("initrd", "measuring the size by part"):
        parts = measure_parts(staging, compression if measure else None)
    result = InitrdResult(
        output,
        compression,
        len(packed),
        len(raw) - len(deferred) + deferred_raw,
        parts,
        len(modules),
        sorted(builtin),
        failures,
        deferred_raw,
        len(deferred),
    )
    progress.say("initrd", f"not files (built into the interpreter or frozen): {' '.join(result.modules_builtin)}")
    shutil.copyfile(output, cached)
    cached_info.write_text(
        json.dumps(
            {
                "raw_size": result.raw_size,
                "parts": result.parts,
                "modules_imported": result.modules_imported,
                "modules_builtin": result.modules_builtin,
                "agent_import_failures": result.agent_import_failures,
                "deferred_raw_size": result.deferred_raw_size,
                "deferred_size": result.deferred_size,
            },
            sort_keys=True,
        )
    )
    for old in work.glob("initrd-*.img"):
        if old != cached:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
    return result


def report(result: InitrdResult) -> list[str]:
    mib = 1024 * 1024
    lines = [
        f"{result.image}: {result.size / mib:.2f} MiB {result.compression} "
        f"({result.raw_size / mib:.2f} MiB uncompressed), target 12 MiB"
    ]
    for part in PARTS:
        raw, packed = result.parts.get(part, (0, 0))
        packed_text = f"  {packed / mib:6.2f} MiB {result.compression}" if packed else ""
        lines.append(f"  {part:<17} {raw / mib:7.2f} MiB raw{packed_text}")
    if result.deferred_size:
        boot = result.raw_size - result.deferred_raw_size
        lines.append(
            f"  the kernel unpacks {boot / mib:.2f} MiB before /init; /init unpacks the other "
            f"{result.deferred_raw_size / mib:.2f} MiB ({result.deferred_size / mib:.2f} MiB gzip) "
            "once the agent serves"
        )
    return lines
