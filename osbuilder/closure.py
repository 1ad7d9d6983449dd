"""Select files from a guest tree: symlinks followed inside the tree, Python modules, ELF dependencies.

Paths are "guest paths": relative to the tree's root, as the guest will see them. A symlink on the way
to a file (bookworm's /lib -> usr/lib) is kept as a symlink, and the file is kept at its real place.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from osbuilder import elf

LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib")
MAX_LINKS = 40


class ClosureError(LookupError):
    pass


@dataclass
class Selection:
    """What goes into the image: real files (by their real guest path), symlinks and directories."""

    files: dict[str, Path] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


class GuestTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.selection = Selection()

    def host(self, guest: str) -> Path:
        return self.root / guest

    def canonical(self, guest: str, keep_links: bool = True) -> str:
        """Resolve symlinks inside the tree; components that do not exist are kept as written."""
        parts = [p for p in guest.strip("/").split("/") if p and p != "."]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            current = "/".join([*resolved, part])
            path = self.host(current)
            if path.is_symlink():
                hops += 1
                if hops > MAX_LINKS:
                    raise ClosureError(f"{guest}: too many levels of symlinks in {self.root}")
                target = os.readlink(path)
                if keep_links:
                    self.selection.links[current] = target
                base = "" if target.startswith("/") else "/".join(resolved)
                parts = [p for p in posixpath.join(base, target).strip("/").split("/") if p] + parts
                resolved = []
                continue
            resolved.append(part)
        return "/".join(resolved)

    def exists(self, guest: str) -> bool:
        real = self.canonical(guest, keep_links=False)
        return self.host(real).exists() or self.host(real).is_symlink()

    def add(self, guest: str) -> str:
        """Select a file (following links inside the tree); returns its real guest path."""
        real = self.canonical(guest)
        path = self.host(real)
        if path.is_dir():
            self.selection.dirs.add(real)
        elif path.is_file():
            self.selection.files[real] = path
        else:
            raise ClosureError(f"{guest} is not in {self.root}")
        return real

    def add_tree(self, guest: str, skip: tuple[str, ...] = ()) -> None:
        """Select a directory and everything under it, except guest paths starting with one of ``skip``."""
        real = self.canonical(guest)
        top = self.host(real)
        for dirpath, dirnames, filenames in os.walk(top):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not f"{rel_dir}/{d}".startswith(skip))
            self.selection.dirs.add(rel_dir)
            for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
                rel = f"{rel_dir}/{name}"
                if rel.startswith(skip) or name.endswith(".pyc"):
                    continue
                full = Path(dirpath) / name
                if full.is_symlink():
                    self.selection.links[rel] = os.readlink(full)
                else:
                    self.selection.files[rel] = full

    # ---- ELF
    def find_library(self, name: str, origin: str, info: elf.DynamicInfo) -> str | None:
        search = [p.replace("$ORIGIN", "/" + origin).replace("${ORIGIN}", "/" + origin) for p in info.rpath]
        search += [p.replace("$ORIGIN", "/" + origin).replace("${ORIGIN}", "/" + origin) for p in info.runpath]
        search += list(LIBRARY_DIRS)
        for directory in search:
            candidate = posixpath.normpath(posixpath.join(directory.strip("/"), name))
            if self.exists(candidate):
                return candidate
        return None

    def add_elf_closure(self) -> list[str]:
        """Add the shared libraries (and program interpreter) every selected ELF file needs.

        Returns the libraries added, in the order found."""
        added: list[str] = []
        pending = sorted(real for real, path in self.selection.files.items() if elf.is_elf(path))
        seen = set(pending)
        while pending:
            real = pending.pop(0)
            path = self.host(real)
            if real.startswith(("usr/lib/modules/", "lib/modules/")):
                continue
            info = elf.dynamic_info(path)
            wanted = list(info.needed)
            interp = elf.interpreter(path)
            if interp:
                wanted.append(interp)
            for name in wanted:
                if "/" in name:
                    found: str | None = name.strip("/")
                else:
                    found = self.find_library(name, posixpath.dirname(real), info)
                if found is None:
                    raise ClosureError(f"{real} needs {name}, which is not in {self.root}")
                lib = self.add(found)
                if lib not in seen:
                    seen.add(lib)
                    added.append(lib)
                    pending.append(lib)
        return added


@dataclass(frozen=True)
class ModuleFiles:
    name: str
    paths: tuple[str, ...]  # guest paths; empty for a namespace package


def locate_module(tree: GuestTree, name: str, search: tuple[str, ...]) -> ModuleFiles | None:
    """Where a Python module lives under the search dirs (guest paths); None when not a file (built in)."""
    parts = name.split(".")
    for directory in search:
        base = "/".join([directory, *parts])
        host = tree.host(base)
        if host.is_dir():
            init = host / "__init__.py"
            if init.exists():
                return ModuleFiles(name, (f"{base}/__init__.py",))
            if len(parts) > 1 or any(host.iterdir()):
                return ModuleFiles(name, ())
        if tree.host(base + ".py").is_file():
            return ModuleFiles(name, (base + ".py",))
        parent = host.parent
        if parent.is_dir():
            for candidate in sorted(parent.glob(parts[-1] + ".*so")):
                if candidate.name.split(".")[0] == parts[-1]:
                    return ModuleFiles(name, (candidate.relative_to(tree.root).as_posix(),))
    return None
