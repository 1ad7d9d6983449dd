"""OCI hooks: each runs as a program with the container's state JSON on its stdin.

prestart, createRuntime and poststop run in the runtime's namespaces (here: the agent's);
createContainer and startContainer should run in the container's, and this engine runs them in the
runtime's namespaces too, with the state JSON naming the container pid so a hook can enter them.
A failing hook before start aborts the create or start; poststart/poststop failures are logged.
"""

from __future__ import annotations

import json
from typing import Any

from agent.container.spec import Hook
from agent.errors import ResourceError
from agent.system.run import CommandError, CommandNotFound, run

DEFAULT_HOOK_TIMEOUT = 60.0


def run_hook(hook: Hook, state: dict[str, Any], kind: str) -> None:
    """Run one hook; ResourceError naming the hook kind and path when it fails or times out."""
    argv = list(hook.args) or [hook.path]
    env = dict(item.split("=", 1) for item in hook.env if "=" in item)
    try:
        run(
            [hook.path, *argv[1:]],
            input=json.dumps(state).encode(),
            env=env,
            timeout=float(hook.timeout) if hook.timeout else DEFAULT_HOOK_TIMEOUT,
        )
    except (CommandError, CommandNotFound, OSError) as exc:
        raise ResourceError(f"{kind} hook {hook.path} failed: {exc}") from exc
