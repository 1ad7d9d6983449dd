"""The initrd's two archives: the split (osbuilder/initrd.py), and /init's side of it
(osbuilder/guest/launcher.py): unpacking the deferred archive and the finder that makes an import of
one of its modules wait for it."""

from __future__ import annotations

import gzip
import io
import mmap
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.init import wait_for_deferred_files
from osbuilder import cpio, initrd
from osbuilder.guest import launcher

STDLIB = "usr/lib/python3.11"
SITE = "usr/lib/pykata"


def write(root: Path, guest: str, data: bytes = b"x", mode: int = 0o644) -> None:
    path = root / guest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for guest in (
        "init",
        f"{STDLIB}/os.pyc",
        f"{STDLIB}/json/__init__.pyc",
        f"{STDLIB}/json/tool.pyc",
        f"{STDLIB}/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
        f"{STDLIB}/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so",
        f"{SITE}/agent/__init__.pyc",
        f"{SITE}/agent/container/__init__.pyc",
        f"{SITE}/agent/container/engine.pyc",
        f"{SITE}/google/protobuf/__init__.pyc",
        f"{SITE}/google/protobuf/py.typed",
        "usr/bin/busybox",
    ):
        write(root, guest, guest.encode(), 0o755 if guest in ("init", "usr/bin/busybox") else 0o644)
    (root / "usr/bin/sh").symlink_to("busybox")
    for empty in initrd.EMPTY_DIRS:
        (root / empty).mkdir(parents=True, exist_ok=True)
    return root


BOOT = {
    "init",
    f"{STDLIB}/os.pyc",
    f"{STDLIB}/json/__init__.pyc",
    f"{SITE}/agent/__init__.pyc",
    f"{STDLIB}/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
}


def test_compiled_module_paths_find_pyc_packages_and_extensions(staging: Path) -> None:
    assert initrd._compiled_module_paths(staging, "json") == [f"{STDLIB}/json/__init__.pyc"]
    assert initrd._compiled_module_paths(staging, "json.tool") == [f"{STDLIB}/json/tool.pyc"]
    assert initrd._compiled_module_paths(staging, "_json") == [
        f"{STDLIB}/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"
    ]
    assert initrd._compiled_module_paths(staging, "google") == []  # namespace package: no file of its own
    assert initrd._compiled_module_paths(staging, "sys") == []  # built in


def test_module_names_of_files_and_directories() -> None:
    names = initrd.module_names(
        [
            f"{STDLIB}/json/tool.pyc",
            f"{STDLIB}/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so",
            f"{SITE}/agent/container",
            f"{SITE}/agent/container/__init__.pyc",
            f"{SITE}/google",
            f"{SITE}/google/protobuf/py.typed",
            "usr/bin/busybox",
        ]
    )
    assert names == ["_ctypes", "agent.container", "google", "json.tool"]


def test_split_keeps_boot_files_and_stores_the_rest_as_one_gzip_member(staging: Path) -> None:
    raw, packed, deferred_raw = initrd.split_archives(staging, 1767225600, BOOT)
    first = {path: (mode, data) for path, mode, data in cpio.read_archive(raw)}
    files = {path for path, (mode, _) in first.items() if stat.S_ISREG(mode)}
    assert files == BOOT | {initrd.DEFERRED_ARCHIVE, initrd.DEFERRED_INDEX}
    assert first[initrd.DEFERRED_ARCHIVE][1] == packed
    assert stat.S_ISLNK(first["usr/bin/sh"][0]) and stat.S_ISCHR(first["dev/console"][0])
    # a directory with no boot file comes with the deferred files: no package appears without its __init__
    assert f"{SITE}/agent" in first and f"{SITE}/agent/container" not in first and f"{SITE}/google" not in first
    assert all(empty in first for empty in initrd.EMPTY_DIRS)
    deferred = {path: data for path, _mode, data in cpio.read_archive(gzip.decompress(packed))}
    assert deferred_raw == len(gzip.decompress(packed))
    assert set(deferred) >= {
        f"{SITE}/agent/container",
        f"{SITE}/agent/container/engine.pyc",
        "usr/bin/busybox",
        f"{STDLIB}/json/tool.pyc",
        f"{SITE}/google/protobuf/py.typed",
    }
    assert deferred["usr/bin/busybox"] == b"usr/bin/busybox"
    assert not set(deferred) & BOOT
    index = first[initrd.DEFERRED_INDEX][1].decode().split()
    assert index == ["_ctypes", "agent.container", "agent.container.engine", "google", "google.protobuf", "json.tool"]
    # reproducible
    assert initrd.split_archives(staging, 1767225600, BOOT) == (raw, packed, deferred_raw)


def test_unpack_cpio_writes_directories_files_modes_and_links(staging: Path, tmp_path: Path) -> None:
    out = io.BytesIO()
    cpio.write_archive(out, cpio.entries_from_tree(staging), 0)
    target = tmp_path / "out"
    target.mkdir()
    count = launcher.unpack_cpio(out.getvalue(), str(target))
    assert count == len(list(cpio.entries_from_tree(staging)))
    for path in staging.rglob("*"):
        copy = target / path.relative_to(staging)
        if path.is_symlink():
            assert os.readlink(copy) == os.readlink(path)
        elif path.is_file():
            assert copy.read_bytes() == path.read_bytes()
            assert stat.S_IMODE(copy.stat().st_mode) == stat.S_IMODE(path.stat().st_mode)
        else:
            assert copy.is_dir()


def test_unpack_cpio_refuses_members_outside_the_tree(tmp_path: Path) -> None:
    out = io.BytesIO()
    cpio.write_archive(out, [cpio.Entry("a/../../escape", stat.S_IFREG | 0o644, b"x")], 0)
    with pytest.raises(ValueError, match="outside"):
        launcher.unpack_cpio(out.getvalue(), str(tmp_path))
    assert not (tmp_path.parent / "escape").exists()


def test_unpack_deferred_unpacks_the_gzip_archive_and_removes_it(staging: Path, tmp_path: Path) -> None:
    raw, packed, _ = initrd.split_archives(staging, 0, BOOT)
    archive = tmp_path / "deferred.cpio.gz"
    archive.write_bytes(packed)
    target = tmp_path / "root"
    for path, mode, _data in cpio.read_archive(raw):  # the boot archive's directories, as the kernel makes them
        if stat.S_ISDIR(mode):
            (target / path).mkdir(parents=True, exist_ok=True)
    launcher.unpack_deferred(str(archive), str(target))
    assert (target / "usr/bin/busybox").read_bytes() == b"usr/bin/busybox"
    assert (target / SITE / "agent/container/engine.pyc").is_file()
    assert not archive.exists()


@pytest.fixture
def deferred_import(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """A sys.path directory, and a DeferredFiles finder on sys.meta_path listening on a pipe."""
    lib = tmp_path / "lib"
    (lib / "pkg_boot_now").mkdir(parents=True)
    (lib / "pkg_boot_now/__init__.py").write_text("")
    index = tmp_path / "index"
    index.write_text("pkg_boot_now.later\npkg_later\n")
    read_fd, write_fd = os.pipe()
    finder = launcher.DeferredFiles(read_fd, str(index))
    sys.path.insert(0, str(lib))
    sys.meta_path.insert(0, finder)  # where start_background_work puts it
    try:
        yield lib, write_fd, read_fd
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(str(lib))
        for name in [n for n in sys.modules if n.startswith(("pkg_boot_now", "pkg_later"))]:
            del sys.modules[name]
        for fd in (write_fd, read_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def test_import_of_a_deferred_module_waits_for_the_files(deferred_import: tuple[Path, int, int]) -> None:
    lib, write_fd, _ = deferred_import
    import pkg_boot_now

    with pytest.raises(ModuleNotFoundError):  # not in the index: fails at once, no wait
        import pkg_boot_now.never  # noqa: F401

    def unpack() -> None:
        time.sleep(0.3)
        (lib / "pkg_boot_now/later.py").write_text("VALUE = 1\n")
        (lib / "pkg_later").mkdir()
        (lib / "pkg_later/__init__.py").write_text("VALUE = 2\n")
        os.write(write_fd, b"ok")
        os.close(write_fd)

    worker = threading.Thread(target=unpack)
    worker.start()
    try:
        import pkg_later
        from pkg_boot_now import later
    finally:
        worker.join()
    assert (later.VALUE, pkg_later.VALUE) == (1, 2)
    assert wait_for_deferred_files("the test")  # done: returns at once


def test_a_deferred_module_already_on_disk_still_waits_for_the_unpack(deferred_import: tuple[Path, int, int]) -> None:
    """The finder comes first: a file of the archive that is there already (the unpack is under way)
    is not imported before the child says every file, and the drivers, are there."""
    lib, write_fd, _ = deferred_import
    (lib / "pkg_later").mkdir()
    (lib / "pkg_later/__init__.py").write_text("VALUE = 3\n")
    imported: list[int] = []

    def import_it() -> None:
        import pkg_later

        imported.append(pkg_later.VALUE)

    importer = threading.Thread(target=import_it)
    importer.start()
    importer.join(0.5)
    assert importer.is_alive() and imported == []  # waiting for the child's word
    os.write(write_fd, b"ok")
    os.close(write_fd)
    importer.join(10)
    assert imported == [3]


def test_unpack_replaces_a_file_by_rename_never_in_place(tmp_path: Path) -> None:
    """A file is written under a hidden name and renamed: whoever has the old one mapped keeps it
    whole (a file truncated or grown under a mapping is a SIGBUS), and nobody sees a half-written one."""
    (tmp_path / "lib").mkdir()
    old = tmp_path / "lib/libx.so"
    old.write_bytes(b"A" * 8192)
    with old.open("rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        out = io.BytesIO()
        entries = [
            cpio.Entry("lib/libx.so", stat.S_IFREG | 0o755, b"B" * 100),
            cpio.Entry("lib/libx.so.1", stat.S_IFLNK | 0o777, b"libx.so"),
        ]
        cpio.write_archive(out, entries, 0)
        launcher.unpack_cpio(out.getvalue(), str(tmp_path))
        assert mapped[8191:8192] == b"A"  # the old inode, untouched
    assert old.read_bytes() == b"B" * 100 and os.readlink(tmp_path / "lib/libx.so.1") == "libx.so"
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["libx.so", "libx.so.1"]  # nothing hidden left


def test_failed_unpack_fails_the_import_and_the_wait(deferred_import: tuple[Path, int, int]) -> None:
    _lib, write_fd, _ = deferred_import
    os.write(write_fd, b"OSError: no space left")
    os.close(write_fd)
    assert not wait_for_deferred_files("the test")
    with pytest.raises(ModuleNotFoundError):
        import pkg_later  # noqa: F401


def test_nothing_to_wait_for_without_deferred_files() -> None:
    assert not any(hasattr(finder, "wait_for_files") for finder in sys.meta_path)
    assert wait_for_deferred_files("the test")
