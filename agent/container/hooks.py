"""OCI hooks: each runs as a program with the container's state JSON on its stdin.

prestart, createRuntime, poststart and poststop run here, in the runtime's namespaces (the agent's).
createContainer and startContainer run in the container's namespaces, from the container's own
process (agent/container/init.py's run_hooks): createContainer before the root changes,
startContainer after, so its path is the container's. A failing hook before start aborts the create
or start; poststart/poststop failures are logged.
"""

from __future__ import annotations

import os

from agent.errors import ResourceError
from agent.system import jsonlite

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from agent.container.spec import Hook

DEFAULT_HOOK_TIMEOUT = 60.0


def run_hook(hook: Hook, state: dict[str, Any], kind: str) -> None:
    """Run one hook; ResourceError naming the hook kind and path when it fails or times out."""
    from agent.system.run import CommandError, CommandNotFound, run  # subprocess: only when a hook runs

    argv = list(hook.args) or [hook.path]  # args[0] is the program's argv[0], as in execve
    env = dict(item.split("=", 1) for item in hook.env if "=" in item)
    try:
        run(
            argv,
            executable=hook.path,
            input=jsonlite.dumps(state).encode(),
            env=env,
            timeout=float(hook.timeout) if hook.timeout else DEFAULT_HOOK_TIMEOUT,
        )
    except (CommandError, CommandNotFound, OSError) as exc:
        raise ResourceError(f"{kind} hook {hook.path} failed: {exc}") from exc


GUEST_HOOK_KINDS = ("prestart", "poststart", "poststop")


def add_guest_hooks(spec: dict[str, Any], hook_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``spec`` with the guest's own hooks appended: every executable file in
    ``hook_dir/{prestart,poststart,poststop}/`` (CreateSandbox's guest_hook_path), sorted by name,
    run with its own name as argv[0], as Kata's agent does."""
    root = os.fspath(hook_dir)
    added: dict[str, list[dict[str, Any]]] = {kind: [] for kind in GUEST_HOOK_KINDS}
    for kind in GUEST_HOOK_KINDS:
        directory = os.path.join(root, kind)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            entry = os.path.join(directory, name)
            if os.path.isfile(entry) and os.access(entry, os.X_OK):
                added[kind].append({"path": entry, "args": [name]})
    if not any(added.values()):
        return spec
    hooks = dict(spec.get("hooks") or {})
    for kind, items in added.items():
        if items:
            hooks[kind] = [*(hooks.get(kind) or []), *items]
    return {**spec, "hooks": hooks}
