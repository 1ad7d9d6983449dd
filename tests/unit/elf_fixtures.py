"""Small ELF64 files built byte by byte for the osbuilder ELF and module tests: just a header, the
sections asked for and a section name table, which is all osbuilder.elf reads."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SHT_PROGBITS = 1
SHT_STRTAB = 3
SHT_DYNAMIC = 6
DT_NEEDED = 1
DT_RPATH = 15
DT_RUNPATH = 29
HEADER_SIZE = 64
SECTION_HEADER_SIZE = 64


@dataclass(frozen=True)
class FakeSection:
    name: str
    type: int
    data: bytes
    link: int = 0  # index of a linked section (1-based: index 0 is the null section)


def elf_bytes(sections: list[FakeSection], elf_class: int = 2) -> bytes:
    """An ELF64 little-endian file with a null section, ``sections`` and a .shstrtab at the end."""
    names = b"\0"
    name_offsets = []
    for section in [*sections, FakeSection(".shstrtab", SHT_STRTAB, b"")]:
        name_offsets.append(len(names))
        names += section.name.encode() + b"\0"
    blobs = [section.data for section in sections] + [names]
    offsets = []
    body = b""
    for blob in blobs:
        offsets.append(HEADER_SIZE + len(body))
        body += blob + b"\0" * (-len(blob) % 8)
    shoff = HEADER_SIZE + len(body)
    count = len(blobs) + 1
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 9
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, HEADER_SIZE, 0, 0, SECTION_HEADER_SIZE, count, count - 1
    )
    table = b"\0" * SECTION_HEADER_SIZE
    types = [section.type for section in sections] + [SHT_STRTAB]
    links = [section.link for section in sections] + [0]
    for index, blob in enumerate(blobs):
        table += struct.pack(
            "<IIQQQQIIQQ", name_offsets[index], types[index], 0, 0, offsets[index], len(blob), links[index], 0, 1, 0
        )
    return header + body + table


def module_bytes(**modinfo: str | list[str]) -> bytes:
    """A kernel module with a .modinfo section of ``key=value`` strings (lists give repeated keys)."""
    items = b""
    for key, values in modinfo.items():
        for value in [values] if isinstance(values, str) else values:
            items += f"{key}={value}".encode() + b"\0"
    return elf_bytes([FakeSection(".text", SHT_PROGBITS, b"\x90" * 16), FakeSection(".modinfo", SHT_PROGBITS, items)])


def write_module(path: Path, **modinfo: str | list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(module_bytes(**modinfo))
    return path


def dynamic_library_bytes(needed: list[str], rpath: str = "", runpath: str = "") -> bytes:
    """A shared object with .dynstr and .dynamic holding DT_NEEDED, DT_RPATH and DT_RUNPATH entries."""
    strings = b"\0"
    entries = []
    for tag, text in [(DT_NEEDED, name) for name in needed] + [(DT_RPATH, rpath), (DT_RUNPATH, runpath)]:
        if not text:
            continue
        entries.append((tag, len(strings)))
        strings += text.encode() + b"\0"
    dynamic = b"".join(struct.pack("<qQ", tag, value) for tag, value in entries) + struct.pack("<qQ", 0, 0)
    # section 1 is .dynstr, section 2 .dynamic linking to it
    return elf_bytes([FakeSection(".dynstr", SHT_STRTAB, strings), FakeSection(".dynamic", SHT_DYNAMIC, dynamic, 1)])
