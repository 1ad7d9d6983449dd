"""Runs in the fork server's children: the shim and the container process. (Being written.)"""

from __future__ import annotations

from typing import Any


def run_shim(request: dict[str, Any], fds: list[int]) -> int:
    raise NotImplementedError
