"""GetVolumeStats' answers for paths that are not volumes: each names the problem with the right
code (a NUL byte was INTERNAL, a name too long RESOURCE_EXHAUSTED)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InvalidArgument, NotFound
from agent.storage.volume import volume_stats


def test_a_directory_gives_its_file_systems_usage(tmp_path: Path) -> None:
    stats = volume_stats(str(tmp_path))
    assert stats.bytes.total > 0 and stats.inodes.total >= stats.inodes.available


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("relative/dir", InvalidArgument, r"volume path 'relative/dir' must be absolute"),
        ("/tmp/\0x", InvalidArgument, r"must be absolute, without NUL bytes"),
        ("/" + "x" * 300, InvalidArgument, r"File name too long"),
        ("/nonexistent-volume", NotFound, r"volume /nonexistent-volume does not exist"),
    ],
)
def test_paths_that_are_no_volume_are_named(path: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        volume_stats(path)


def test_a_path_through_a_file_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotFound, match="does not exist"):
        volume_stats(str(tmp_path / "file" / "below"))
