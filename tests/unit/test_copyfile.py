"""CopyFile: what it refuses (a table of escapes and bad numbers) and what it writes."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import InvalidArgument
from agent.services.guest import MAX_COPY_FILE_SIZE, TEMP_SUFFIX, CopyFileRequest, GuestService
from agent.system.paths import HostPaths

SHARED = "/run/kata-containers/shared/containers"
REG = stat.S_IFREG | 0o644


def request(path: str, data: bytes = b"hello", **changes: int) -> CopyFileRequest:
    base = CopyFileRequest(path, len(data), REG, 0o755, -1, -1, 0, data)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def guest(tmp_path: Path) -> GuestService:
    paths = HostPaths(tmp_path)
    Path(paths.shared_containers).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    # existing symlinks inside the share: one escapes, one stays inside
    (Path(paths.shared_containers) / "escape").symlink_to(outside)
    (Path(paths.shared_containers) / "absolute-escape").symlink_to("/etc")
    (Path(paths.shared_containers) / "real").mkdir()
    (Path(paths.shared_containers) / "inside").symlink_to(Path(paths.shared_containers) / "real")
    return GuestService(paths)


ESCAPES = [
    ("relative path", request("run/kata-containers/shared/containers/a"), "absolute"),
    ("outside the share", request("/etc/passwd"), "below"),
    ("sibling with common prefix", request(f"{SHARED}-evil/a"), "below"),
    ("dot-dot", request(f"{SHARED}/c1/../../x"), "'..'"),
    ("dot-dot at the end", request(f"{SHARED}/c1/.."), "'..'"),
    ("the share itself", request(SHARED), "shared directory itself"),
    ("symlink escaping", request(f"{SHARED}/escape/file"), "symlink"),
    ("symlink to an absolute path", request(f"{SHARED}/absolute-escape/passwd"), "symlink"),
    ("deep under an escaping symlink", request(f"{SHARED}/escape/new/dir/file"), "symlink"),
    ("negative offset", request(f"{SHARED}/a", offset=-1), "negative"),
    ("negative file_size", request(f"{SHARED}/a", b"", file_size=-5), "negative"),
    ("uid below -1", request(f"{SHARED}/a", uid=-2), "uid"),
    ("oversize file_size", request(f"{SHARED}/a", file_size=MAX_COPY_FILE_SIZE + 1), "exceeds"),
    ("data past file_size", request(f"{SHARED}/a", b"123456", file_size=3), "exceeds file_size"),
    ("offset past the received size", request(f"{SHARED}/a", b"xy", offset=10, file_size=12), "offset"),
    ("NUL in the path", request(f"{SHARED}/a\0b"), "NUL"),
    ("device node", request(f"{SHARED}/dev", file_mode=stat.S_IFCHR | 0o600), "unsupported file type"),
]


@pytest.mark.parametrize(("case", "bad", "fragment"), ESCAPES, ids=[case for case, _, _ in ESCAPES])
def test_rejected(guest: GuestService, tmp_path: Path, case: str, bad: CopyFileRequest, fragment: str) -> None:
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidArgument, match=fragment):
        guest.copy_file(bad)
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before, f"{case}: the rejected request changed the tree"
    assert list((tmp_path / "outside").iterdir()) == []


def test_symlink_that_stays_inside_the_share_is_followed(guest: GuestService) -> None:
    guest.copy_file(request(f"{SHARED}/inside/file", b"data"))
    assert (Path(guest.paths.shared_containers) / "real" / "file").read_bytes() == b"data"


def test_chunks_assemble_under_a_hidden_name_and_appear_whole(guest: GuestService) -> None:
    data = os.urandom(10_000)
    path = f"{SHARED}/c1/rootfs/etc/hosts"
    destination = Path(guest.paths.inside(path))
    chunks = [(0, data[:3000]), (3000, data[3000:7000]), (7000, data[7000:])]
    for offset, chunk in chunks[:-1]:
        guest.copy_file(request(path, chunk, offset=offset, file_size=len(data)))
        assert not destination.exists()
        assert (destination.parent / f".hosts{TEMP_SUFFIX}").exists()
    guest.copy_file(request(path, chunks[-1][1], offset=chunks[-1][0], file_size=len(data)))
    assert destination.read_bytes() == data
    assert not (destination.parent / f".hosts{TEMP_SUFFIX}").exists()


def test_resending_offset_zero_restarts_the_file(guest: GuestService) -> None:
    path = f"{SHARED}/c1/f"
    guest.copy_file(request(path, b"old-old-", file_size=16))
    guest.copy_file(request(path, b"new", file_size=6))
    guest.copy_file(request(path, b"new", offset=3, file_size=6))
    assert Path(guest.paths.inside(path)).read_bytes() == b"newnew"


def test_replacing_an_existing_file_keeps_the_old_one_until_complete(guest: GuestService) -> None:
    path = f"{SHARED}/c1/config"
    guest.copy_file(request(path, b"version 1"))
    guest.copy_file(request(path, b"version", file_size=9 + 2))
    assert Path(guest.paths.inside(path)).read_bytes() == b"version 1"
    guest.copy_file(request(path, b" 2", offset=7, file_size=9))
    assert Path(guest.paths.inside(path)).read_bytes() == b"version 2"


def test_empty_file(guest: GuestService) -> None:
    guest.copy_file(request(f"{SHARED}/empty", b""))
    assert Path(guest.paths.inside(f"{SHARED}/empty")).read_bytes() == b""


def test_mode_owner_and_parent_dir_mode(guest: GuestService) -> None:
    owner = 0 if os.geteuid() != 0 else 1234  # only root may give files away
    path = f"{SHARED}/c2/sub/file"
    guest.copy_file(request(path, b"x", file_mode=stat.S_IFREG | 0o600, dir_mode=0o711, uid=owner, gid=owner))
    info = Path(guest.paths.inside(path)).stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (1234, 1234)
    for directory in (Path(guest.paths.inside(f"{SHARED}/c2")), Path(guest.paths.inside(f"{SHARED}/c2/sub"))):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o711 & ~_umask()


def test_directory(guest: GuestService) -> None:
    path = f"{SHARED}/c3/volume"
    guest.copy_file(request(path, b"", file_mode=stat.S_IFDIR | 0o750))
    target = Path(guest.paths.inside(path))
    assert target.is_dir() and stat.S_IMODE(target.stat().st_mode) == 0o750
    guest.copy_file(request(path, b"", file_mode=stat.S_IFDIR | 0o700))  # again: mode updated
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_symlink(guest: GuestService) -> None:
    path = f"{SHARED}/c4/link"
    guest.copy_file(request(path, b"../target", file_mode=stat.S_IFLNK | 0o777, file_size=0))
    assert os.readlink(guest.paths.inside(path)) == "../target"
    guest.copy_file(request(path, b"other", file_mode=stat.S_IFLNK | 0o777, file_size=0))
    assert os.readlink(guest.paths.inside(path)) == "other"


def test_writing_through_a_symlink_created_by_copyfile_cannot_escape(guest: GuestService, tmp_path: Path) -> None:
    guest.copy_file(request(f"{SHARED}/c5/link", str(tmp_path / "outside").encode(), file_mode=stat.S_IFLNK))
    with pytest.raises(InvalidArgument, match="symlink"):
        guest.copy_file(request(f"{SHARED}/c5/link/file", b"x"))
    assert list((tmp_path / "outside").iterdir()) == []


def test_a_file_where_a_directory_is_needed(guest: GuestService) -> None:
    guest.copy_file(request(f"{SHARED}/c6", b"file"))
    with pytest.raises(InvalidArgument, match="not a directory"):
        guest.copy_file(request(f"{SHARED}/c6/below", b"x"))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
