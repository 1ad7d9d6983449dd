"""Fragment merge and verify on small fixture fragments (no kernel is built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from osbuilder.kernel import fragments, verify
from tests.conftest import REPO


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_parse_assignments_and_not_set(tmp_path: Path) -> None:
    settings = fragments.parse_config_text('CONFIG_A=y\n# comment\n# CONFIG_B is not set\nCONFIG_C="x y"\n', "f")
    assert [(s.symbol, s.value) for s in settings] == [("CONFIG_A", "y"), ("CONFIG_B", "n"), ("CONFIG_C", '"x y"')]
    assert settings[1].origin == "f:3"


def test_parse_rejects_garbage() -> None:
    with pytest.raises(fragments.FragmentError, match=r"f:2: cannot parse 'VSOCK=y'"):
        fragments.parse_config_text("CONFIG_A=y\nVSOCK=y\n", "f")


def test_conflict_names_both_fragments(tmp_path: Path) -> None:
    a = write(tmp_path / "fragments/common/a.conf", "CONFIG_VSOCKETS=y\n")
    b = write(tmp_path / "fragments/common/b.conf", "CONFIG_X=y\n# CONFIG_VSOCKETS is not set\n")
    with pytest.raises(fragments.FragmentError) as info:
        fragments.merge([a, b], relative_to=tmp_path)
    message = str(info.value)
    assert "CONFIG_VSOCKETS" in message
    assert "fragments/common/a.conf:1" in message and "fragments/common/b.conf:2" in message


def test_same_value_twice_is_fine(tmp_path: Path) -> None:
    a = write(tmp_path / "a.conf", "CONFIG_A=y\n")
    b = write(tmp_path / "b.conf", "CONFIG_A=y\nCONFIG_B=m\n")
    merged = fragments.merge([a, b])
    assert {k: v.value for k, v in merged.items()} == {"CONFIG_A": "y", "CONFIG_B": "m"}
    assert fragments.render(merged) == "CONFIG_A=y\nCONFIG_B=m\n"


def test_arch_tags_by_directory(tmp_path: Path) -> None:
    write(tmp_path / "common/base.conf", "CONFIG_A=y\n")
    write(tmp_path / "x86_64/guest.conf", "CONFIG_X86_ONLY=y\n")
    write(tmp_path / "aarch64/guest.conf", "CONFIG_ARM_ONLY=y\n")
    x86 = fragments.merge(fragments.select_fragments(tmp_path, "x86_64"))
    arm = fragments.merge(fragments.select_fragments(tmp_path, "aarch64"))
    assert set(x86) == {"CONFIG_A", "CONFIG_X86_ONLY"}
    assert set(arm) == {"CONFIG_A", "CONFIG_ARM_ONLY"}


def test_verify_reports_dropped_symbol(tmp_path: Path) -> None:
    requested = fragments.merge([write(tmp_path / "vsock.conf", "CONFIG_VSOCKETS=y\nCONFIG_VIRTIO_VSOCKETS=y\n")])
    dot_config = "CONFIG_VSOCKETS=y\n# CONFIG_VIRTIO_VSOCKETS is not set\n"
    problems = verify.mismatches(requested, dot_config, set())
    assert [p.setting.symbol for p in problems] == ["CONFIG_VIRTIO_VSOCKETS"]
    with pytest.raises(fragments.FragmentError, match="CONFIG_VIRTIO_VSOCKETS: requested y"):
        verify.verify(requested, dot_config, set())


def test_verify_missing_symbol_and_wrong_value(tmp_path: Path) -> None:
    requested = fragments.merge([write(tmp_path / "f.conf", "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=m\n")])
    problems = verify.mismatches(requested, "CONFIG_B=m\nCONFIG_C=m\n", set())
    assert [(p.setting.symbol, p.actual) for p in problems] == [("CONFIG_A", "n"), ("CONFIG_B", "m")]


def test_allow_list_excuses_symbols(tmp_path: Path) -> None:
    requested = fragments.merge([write(tmp_path / "f.conf", "CONFIG_A=y\nCONFIG_GONE=y\n")])
    allow = write(tmp_path / "allow-list", "# why\nGONE  # removed upstream\n")
    allowed = verify.read_allow_list(allow)
    assert allowed == {"CONFIG_GONE"}
    verify.verify(requested, "CONFIG_A=y\n", allowed)
    with pytest.raises(fragments.FragmentError):
        verify.verify(requested, "CONFIG_A=y\n", set())


def test_requested_not_set_is_satisfied_by_absence(tmp_path: Path) -> None:
    requested = fragments.merge([write(tmp_path / "f.conf", "# CONFIG_DEBUG_X is not set\n")])
    assert verify.mismatches(requested, "CONFIG_A=y\n", set()) == []
    assert len(verify.mismatches(requested, "CONFIG_DEBUG_X=y\n", set())) == 1


def test_repository_fragments_merge_without_conflict() -> None:
    config_dir = REPO / "kernel-config"
    chosen = fragments.select_fragments(config_dir / "fragments", "x86_64")
    names = {p.stem for p in chosen}
    assert {
        "base",
        "virtio",
        "vsock",
        "hotplug",
        "cgroup",
        "namespaces",
        "fs",
        "network",
        "9p",
        "seccomp",
        "debug",
    } <= names
    merged = fragments.merge(chosen, relative_to=config_dir)
    assert merged["CONFIG_VIRTIO_VSOCKETS"].value == "y"
