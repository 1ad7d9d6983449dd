"""Just enough of ELF64 (little-endian) to read a kernel module's ``.modinfo`` and a binary's
dynamic dependencies (DT_NEEDED, DT_RPATH, DT_RUNPATH), without running the file or ``ldd``."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
SHT_DYNAMIC = 6
DT_NULL = 0
DT_NEEDED = 1
DT_RPATH = 15
DT_RUNPATH = 29


class ElfError(ValueError):
    pass


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


@dataclass
class DynamicInfo:
    needed: list[str] = field(default_factory=list)
    rpath: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == ELF_MAGIC
    except OSError:
        return False


def _sections(data: bytes, where: str) -> list[Section]:
    if data[:4] != ELF_MAGIC:
        raise ElfError(f"{where}: not an ELF file")
    if data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
        raise ElfError(f"{where}: only 64-bit little-endian ELF is supported")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = []
    for index in range(shnum):
        name_off, sh_type, _flags, _addr, offset, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + index * shentsize
        )
        raw.append((name_off, sh_type, offset, size, link))
    if not raw:
        return []
    names_at = raw[shstrndx][2]

    def name(off: int) -> str:
        end = data.index(b"\0", names_at + off)
        return data[names_at + off : end].decode()

    return [Section(name(n), t, o, s, lk) for n, t, o, s, lk in raw]


def section_bytes(path: Path, name: str) -> bytes | None:
    data = path.read_bytes()
    for section in _sections(data, str(path)):
        if section.name == name:
            return data[section.offset : section.offset + section.size]
    return None


def modinfo(path: Path) -> dict[str, list[str]]:
    """A kernel module's ``.modinfo`` as key -> values (``depends`` is one comma-separated value)."""
    raw = section_bytes(path, ".modinfo")
    if raw is None:
        raise ElfError(f"{path}: no .modinfo section (not a kernel module?)")
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode(errors="replace").partition("=")
            info.setdefault(key, []).append(value)
    return info


def module_depends(path: Path) -> list[str]:
    values = modinfo(path).get("depends", [""])
    return [name for value in values for name in value.split(",") if name]


def dynamic_info(path: Path) -> DynamicInfo:
    """DT_NEEDED, DT_RPATH and DT_RUNPATH of an executable or shared library (empty when static)."""
    data = path.read_bytes()
    sections = _sections(data, str(path))
    info = DynamicInfo()
    for section in sections:
        if section.type != SHT_DYNAMIC:
            continue
        strtab = sections[section.link]
        for pos in range(section.offset, section.offset + section.size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NULL:
                break
            if tag in (DT_NEEDED, DT_RPATH, DT_RUNPATH):
                start = strtab.offset + value
                text = data[start : data.index(b"\0", start)].decode()
                if tag == DT_NEEDED:
                    info.needed.append(text)
                elif tag == DT_RPATH:
                    info.rpath.extend(p for p in text.split(":") if p)
                else:
                    info.runpath.extend(p for p in text.split(":") if p)
    return info


def interpreter(path: Path) -> str | None:
    """The PT_INTERP program interpreter (``/lib64/ld-linux-x86-64.so.2``), if any."""
    raw = section_bytes(path, ".interp")
    return raw.rstrip(b"\0").decode() if raw else None
