"""Kernel module closure: from the names the guest needs to an ordered load list.

Dependencies come from each module's own ``.modinfo`` (``depends=`` and ``softdep=pre:``), so no
``modules.dep`` is needed. Compressed modules (.ko.xz, .ko.zst) are decompressed when staged, so the
agent can hand them to finit_module as they are.
"""

from __future__ import annotations

import lzma
import os
from dataclasses import dataclass
from pathlib import Path

from agent.system.run import run
from osbuilder import elf

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class ModuleError(LookupError):
    pass


def module_name(filename: str) -> str:
    for suffix in MODULE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].replace("-", "_")
    raise ModuleError(f"{filename} is not a kernel module file")


def plain_relpath(rel: str) -> str:
    """The staged (decompressed) path of a module: kernel/fs/x.ko.xz -> kernel/fs/x.ko."""
    for suffix in MODULE_SUFFIXES[1:]:
        if rel.endswith(suffix):
            return rel[: -len(suffix)] + ".ko"
    return rel


def decompress(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    name = source.name
    if name.endswith(".ko"):
        target.write_bytes(source.read_bytes())
    elif name.endswith(".xz"):
        target.write_bytes(lzma.decompress(source.read_bytes()))
    elif name.endswith(".gz"):
        import gzip

        target.write_bytes(gzip.decompress(source.read_bytes()))
    elif name.endswith(".zst"):
        run(["zstd", "-q", "-d", "-f", "-o", target, source], package="zstd")
    else:
        raise ModuleError(f"{source}: unknown module compression")


@dataclass(frozen=True)
class Module:
    name: str
    relpath: str  # under lib/modules/<version>/, as found (maybe compressed)
    path: Path


class ModuleTree:
    """The modules of one kernel version (``<root>/lib/modules/<version>``), indexed by name."""

    def __init__(self, modules_dir: Path, staging: Path) -> None:
        self.dir = modules_dir
        self.staging = staging  # decompressed copies, so .modinfo can be read
        self.by_name: dict[str, Module] = {}
        for dirpath, _dirs, files in os.walk(modules_dir):
            for filename in files:
                if filename.endswith(MODULE_SUFFIXES):
                    path = Path(dirpath) / filename
                    rel = path.relative_to(modules_dir).as_posix()
                    self.by_name.setdefault(module_name(filename), Module(module_name(filename), rel, path))
        self._aliases: dict[str, str] | None = None

    def plain(self, module: Module) -> Path:
        """The decompressed module file (staged once; plain modules are used where they are)."""
        if module.relpath.endswith(".ko"):
            return module.path
        target = self.staging / plain_relpath(module.relpath)
        if not target.exists():
            decompress(module.path, target)
        return target

    def info(self, name: str) -> dict[str, list[str]]:
        return elf.modinfo(self.plain(self.by_name[name]))

    def resolve(self, wanted: str) -> str | None:
        """A module name, or an alias (``crc32c``) resolved to a module that provides it."""
        key = wanted.replace("-", "_")
        if key in self.by_name:
            return key
        if self._aliases is None:
            self._aliases = {}
            for name in sorted(self.by_name):
                for alias in self.info(name).get("alias", []):
                    self._aliases.setdefault(alias.replace("-", "_"), name)
        return self._aliases.get(key)

    def dependencies(self, name: str) -> list[str]:
        info = self.info(name)
        deps = [d for value in info.get("depends", []) for d in value.split(",") if d]
        for softdep in info.get("softdep", []):
            words = softdep.split()
            if words and words[0] == "pre:":
                for word in words[1:]:
                    if word.endswith(":"):
                        break
                    resolved = self.resolve(word)
                    if resolved:
                        deps.append(resolved)
        return deps

    def closure(self, wanted: list[str] | tuple[str, ...], builtin: set[str] | None = None) -> list[Module]:
        """``wanted`` and everything they depend on, each after its dependencies; built-ins are skipped."""
        builtin = builtin or set()
        ordered: list[Module] = []
        done: set[str] = set()
        visiting: list[str] = []

        def visit(name: str, wanted_by: str | None) -> None:
            key = name.replace("-", "_")
            if key in done or key in builtin:
                return
            if key in visiting:
                raise ModuleError(f"dependency cycle: {' -> '.join([*visiting, key])}")
            if key not in self.by_name:
                needed = f" (needed by {wanted_by})" if wanted_by else ""
                raise ModuleError(f"kernel module {key}{needed} is not in {self.dir} and not built in")
            visiting.append(key)
            for dep in self.dependencies(key):
                visit(dep, key)
            visiting.pop()
            done.add(key)
            ordered.append(self.by_name[key])

        for name in wanted:
            visit(name, None)
        return ordered


def builtin_modules(modules_dir: Path) -> set[str]:
    """Names listed in modules.builtin (when the package ships it)."""
    listing = modules_dir / "modules.builtin"
    if not listing.exists():
        return set()
    return {module_name(Path(line.strip()).name) for line in listing.read_text().splitlines() if line.strip()}


def load_list(modules: list[Module], params: dict[str, str] | None = None) -> str:
    """modules.load text: one path relative to lib/modules/<version>/ per line, params after a space."""
    params = params or {}
    lines = []
    for module in modules:
        extra = params.get(module.name, "")
        lines.append(f"{plain_relpath(module.relpath)} {extra}".rstrip())
    return "\n".join(lines) + "\n"
