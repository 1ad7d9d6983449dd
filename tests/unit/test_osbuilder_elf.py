"""osbuilder.elf: DT_NEEDED/RPATH/RUNPATH, PT_INTERP and .modinfo, on a real binary and built fixtures."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from osbuilder import elf
from tests.unit.elf_fixtures import dynamic_library_bytes, elf_bytes, module_bytes

TRUE = Path(shutil.which("true") or "/bin/true").resolve()


def readelf_needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_true_needs_what_readelf_says() -> None:
    info = elf.dynamic_info(TRUE)
    assert "libc.so.6" in info.needed
    if shutil.which("readelf"):
        assert info.needed == readelf_needed(TRUE)


def test_true_has_the_x86_64_loader_as_interpreter() -> None:
    assert elf.interpreter(TRUE) == "/lib64/ld-linux-x86-64.so.2"


def test_needed_rpath_and_runpath_of_a_built_library(tmp_path: Path) -> None:
    lib = tmp_path / "libfake.so"
    lib.write_bytes(dynamic_library_bytes(["libz.so.1", "libc.so.6"], rpath="/opt/a:/opt/b", runpath="$ORIGIN/../lib"))
    info = elf.dynamic_info(lib)
    assert info.needed == ["libz.so.1", "libc.so.6"]
    assert info.rpath == ["/opt/a", "/opt/b"]
    assert info.runpath == ["$ORIGIN/../lib"]
    assert elf.interpreter(lib) is None


def test_a_file_without_dynamic_section_needs_nothing(tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.write_bytes(module_bytes(license="GPL"))
    assert elf.dynamic_info(static) == elf.DynamicInfo()


def test_modinfo_keeps_repeated_keys_and_values_with_equals(tmp_path: Path) -> None:
    module = tmp_path / "m.ko"
    module.write_bytes(module_bytes(depends="virtio,virtio_ring", alias=["fs-9p", "9p"], parm="debug=int"))
    info = elf.modinfo(module)
    assert info["depends"] == ["virtio,virtio_ring"]
    assert info["alias"] == ["fs-9p", "9p"]
    assert info["parm"] == ["debug=int"]
    assert elf.module_depends(module) == ["virtio", "virtio_ring"]


def test_empty_depends_is_no_dependency(tmp_path: Path) -> None:
    module = tmp_path / "leaf.ko"
    module.write_bytes(module_bytes(depends=""))
    assert elf.module_depends(module) == []


def test_modinfo_of_a_binary_without_it_names_the_file() -> None:
    with pytest.raises(elf.ElfError, match=r"no \.modinfo"):
        elf.modinfo(TRUE)


def test_not_elf_and_wrong_class_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not elf.is_elf(text)
    assert not elf.is_elf(tmp_path / "missing")
    with pytest.raises(elf.ElfError, match="not an ELF file"):
        elf.dynamic_info(text)
    elf32 = tmp_path / "elf32"
    elf32.write_bytes(elf_bytes([], elf_class=1))
    assert elf.is_elf(elf32)
    with pytest.raises(elf.ElfError, match="64-bit little-endian"):
        elf.dynamic_info(elf32)


def test_section_bytes_finds_by_name(tmp_path: Path) -> None:
    module = tmp_path / "m.ko"
    module.write_bytes(module_bytes(license="GPL"))
    assert elf.section_bytes(module, ".modinfo") == b"license=GPL\0"
    assert elf.section_bytes(module, ".nothere") is None
