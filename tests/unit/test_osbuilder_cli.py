"""osbuilder's command line: which kernel each command builds for (no build runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from osbuilder import cli


class Built:
    key = "k"
    tree = Path("/nonexistent")
    python_requirements: list[str] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def no_distro_kernel(ctx: Any, package: Any) -> Any:
        seen["distro"] = True
        raise RuntimeError("the distro kernel was asked for")

    def fake_initrd(ctx: Any, tree: Any, kernel: Any, compression: str, measure: bool = False) -> Any:
        seen["kernel"] = kernel
        seen["compression"] = compression
        raise RuntimeError("stop here")

    monkeypatch.setattr(cli.distro, "prepare", no_distro_kernel)
    monkeypatch.setattr(cli.rootfs, "build", lambda ctx: Built())
    monkeypatch.setattr(cli.initrd, "build", fake_initrd)
    return seen


def test_initrd_for_a_source_kernel_has_no_modules(recorded: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.cli, ["initrd", "--source", "-q", "--workdir", str(tmp_path / "w"), "--output", str(tmp_path / "o")]
    )
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "stop here"
    assert recorded == {"kernel": None, "compression": "gzip"}  # no distro kernel, so no modules


def test_initrd_defaults_to_the_distro_kernel(recorded: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.cli, ["initrd", "-q", "--workdir", str(tmp_path / "w"), "--output", str(tmp_path / "o")]
    )
    assert str(result.exception) == "the distro kernel was asked for"
    assert recorded.get("distro") is True
