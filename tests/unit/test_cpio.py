"""The newc writer: GNU cpio lists and extracts what it wrote; the same tree gives the same bytes."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
from pathlib import Path

from osbuilder import cpio

EPOCH = 1700000000


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/pykata").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "etc/pykata/modules.load").write_text("kernel/a.ko\nkernel/b.ko param=1\n")
    (root / "etc/pykata/modules.load").chmod(0o640)
    (root / "empty").write_bytes(b"")
    (root / "odd").write_bytes(b"x" * 5)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/sh").symlink_to("tool")


def archive(root: Path) -> bytes:
    out = io.BytesIO()
    cpio.write_archive(out, cpio.entries_from_tree(root), EPOCH)
    return out.getvalue()


def test_gnu_cpio_extracts_the_same_tree(tmp_path: Path) -> None:
    source = tmp_path / "src"
    make_tree(source)
    data = archive(source)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True).stdout.decode()
    assert listing.split() == [
        "bin",
        "empty",
        "etc",
        "etc/pykata",
        "etc/pykata/modules.load",
        "odd",
        "usr",
        "usr/bin",
        "usr/bin/sh",
        "usr/bin/tool",
    ]
    target = tmp_path / "out"
    target.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=target, check=True)
    for rel in ("usr/bin/tool", "etc/pykata/modules.load", "empty", "odd"):
        assert (target / rel).read_bytes() == (source / rel).read_bytes()
        assert stat.S_IMODE((target / rel).stat().st_mode) == stat.S_IMODE((source / rel).stat().st_mode)
        assert int((target / rel).stat().st_mtime) == EPOCH
    assert os.readlink(target / "bin") == "usr/bin"
    assert os.readlink(target / "usr/bin/sh") == "tool"


def test_same_tree_same_bytes_regardless_of_mtimes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    make_tree(first)
    make_tree(second)
    os.utime(second / "odd", (1, 1))
    digests = {hashlib.sha256(archive(root)).hexdigest() for root in (first, second)}
    assert len(digests) == 1


def test_header_fields_are_fixed(tmp_path: Path) -> None:
    make_tree(tmp_path)
    members = cpio.read_archive(archive(tmp_path))
    data = archive(tmp_path)
    # the second header: inode 2, uid 0, gid 0, mtime EPOCH, dev 0
    offset = 0
    for ino in range(1, 4):
        header = data[offset : offset + cpio.HEADER_SIZE]
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        assert fields[0] == ino and fields[2] == 0 and fields[3] == 0 and fields[5] == EPOCH
        assert fields[7] == 0 and fields[8] == 0
        offset += cpio.HEADER_SIZE + fields[11]
        offset += -offset % 4
        offset += fields[6] + (-fields[6] % 4)
    assert [m[0] for m in members][:3] == ["bin", "empty", "etc"]


def test_duplicate_paths_with_different_contents_fail() -> None:
    entries = [cpio.Entry("a", stat.S_IFREG | 0o644, b"1"), cpio.Entry("a", stat.S_IFREG | 0o644, b"2")]
    try:
        cpio.write_archive(io.BytesIO(), entries, EPOCH)
    except ValueError as exc:
        assert "a given twice" in str(exc)
    else:
        raise AssertionError("duplicate path accepted")


def test_device_node_entry_round_trips() -> None:
    out = io.BytesIO()
    cpio.write_archive(out, [cpio.Entry("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1))], EPOCH)
    listing = subprocess.run(["cpio", "-tv", "--quiet"], input=out.getvalue(), capture_output=True, check=True)
    words = listing.stdout.decode().split()
    assert words[0] == "crw-------"
    assert words[4:6] == ["5,", "1"]
    assert words[-1] == "dev/console"
