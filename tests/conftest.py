"""Tiers by directory: tests/unit (no root), tests/privileged (root), tests/vm (boots QEMU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = REPO.parent / "shared" / "fixtures"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(TESTS).parts
        if parts[0] == "privileged":
            item.add_marker(pytest.mark.privileged)
        elif parts[0] == "vm":
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("privileged tests need root; run them as root (CI does)")
