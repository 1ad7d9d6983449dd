"""OCI hooks run in the runtime's namespaces (agent/container/hooks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.container.hooks import run_hook
from agent.container.spec import Hook
from agent.errors import ResourceError


def test_a_hook_gets_its_own_argv0_its_env_and_the_state(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = f'echo "$0 $WHO" > {out}; cat >> {out}'
    hook = Hook(path="/bin/sh", args=("named-by-args", "-c", script), env=("WHO=hook",))
    run_hook(hook, {"id": "c1", "status": "creating"}, "prestart")
    first, state = out.read_text().split("\n", 1)
    assert first == "named-by-args hook"  # args[0] is argv[0], as execve gets it
    assert json.loads(state) == {"id": "c1", "status": "creating"}


def test_a_failing_hook_is_named(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match="poststop hook /bin/sh failed"):
        run_hook(Hook(path="/bin/sh", args=("sh", "-c", "exit 3")), {}, "poststop")
