"""Which modules does the agent import? Trace it, so the initrd carries those and no others.

Two runs on the host, both without ``site`` (as in the guest) and each ending with a dump of
``sys.modules``:
- every module of the agent package imported at once (covers module-level imports of all code paths),
  then each of ``config.LAZY_IMPORTS``, so what those import in turn is traced too (pyroute2 imports
  multiprocessing at its top, which the agent only reaches inside a function);
- the agent serving on a unix socket while a client asks Check over ttrpc, gRPC and ttrpc again; the
  dump is asked for with SIGUSR2 while it still serves.
The union, plus ``config.LAZY_IMPORTS``, is the list the initrd builder resolves to files.

A third run, ``trace_start``, starts the agent as the guest's /init does (no arguments, its address from
the environment) and dumps ``sys.modules`` when the RPC handlers begin to load, i.e. once it has
answered its first Check: what the agent needs before that goes into the initrd's boot archive, the
rest into its deferred archive (osbuilder/initrd.py).
"""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.system import children
from osbuilder import config, probe

READY_TIMEOUT = 60.0
DUMP_TIMEOUT = 10.0

# Runs in a fresh interpreter started with -S: only the source tree and the host's site-packages.
PRELUDE = """
import sys
sys.path[:0] = {paths!r}
"""

IMPORT_ALL = (
    PRELUDE
    + """
failed = []
for name in {names!r}:
    try:
        __import__(name)
    except Exception as exc:
        failed.append(name + ": " + type(exc).__name__ + ": " + str(exc))
with open({out!r}, "w") as out:
    out.write(repr((sorted(sys.modules), failed)))
"""
)

SERVE = (
    PRELUDE
    + """
import signal

def dump(signum, frame):
    with open({out!r} + ".tmp", "w") as out:
        out.write(repr(sorted(sys.modules)))
    import os
    os.rename({out!r} + ".tmp", {out!r})

signal.signal(signal.SIGUSR2, dump)
sys.argv = ["agent", "--server-addr", {address!r}]
import runpy
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""
)


# The handlers start loading once the first call has been answered (agent/rpc/servicer.py): the
# modules present at that moment are the ones serving the first Check needed.
START = (
    PRELUDE
    + """
import os
import agent.rpc.servicer

for name in {extra!r}:
    __import__(name)
load_all = agent.rpc.servicer.Servicer._load_all

def dump_then_load(self, delay=0.0):
    self._first_call.wait(delay)
    with open({out!r} + ".tmp", "w") as out:
        out.write(repr(sorted(sys.modules)))
    os.rename({out!r} + ".tmp", {out!r})
    load_all(self)

agent.rpc.servicer.Servicer._load_all = dump_then_load
sys.argv = ["agent"]
from agent.__main__ import main
main()
"""
)


class TraceError(RuntimeError):
    pass


def agent_modules(source: Path) -> list[str]:
    """Every module of the agent package, by name (from the files; nothing is imported)."""
    names = []
    for path in sorted((source / "agent").rglob("*.py")):
        rel = path.relative_to(source).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return names


def _sys_path(source: Path) -> list[str]:
    return [str(source.resolve()), *site.getsitepackages()]


def _read_dump(path: Path) -> object:
    import ast

    return ast.literal_eval(path.read_text())


def trace_import_all(source: Path) -> tuple[set[str], list[str]]:
    """Import every agent module; returns the modules imported and the agent modules that failed."""
    with tempfile.TemporaryDirectory(prefix="pykata-trace-") as tmp:
        out = Path(tmp) / "modules"
        names = agent_modules(source) + [name for name in config.LAZY_IMPORTS if name != "agent"]
        code = IMPORT_ALL.format(paths=_sys_path(source), names=names, out=str(out))
        proc = subprocess.run(
            [sys.executable, "-S", "-E", "-c", code], capture_output=True, text=True, cwd=tmp, timeout=300
        )
        if proc.returncode != 0 or not out.exists():
            raise TraceError(f"importing the agent's modules failed: {proc.stderr[-2000:]}")
        dump = _read_dump(out)
    assert isinstance(dump, tuple)
    modules, failed = dump
    return set(modules), list(failed)


def _served_modules(
    code: str,
    sock: Path,
    checks: tuple[Callable[[str], int], ...],
    out: Path,
    env: dict[str, str] | None = None,
    signal_dump: bool = True,
) -> set[str]:
    """Run ``code`` (an agent serving on ``sock``), ask ``checks`` in order, and read the module dump
    it writes to ``out`` (asked for with SIGUSR2 when ``signal_dump``); the agent is stopped after."""
    log_path = out.with_name("stderr")
    with log_path.open("w") as log, children.spawning() as own:
        agent = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", code], cwd=out.parent, stdout=subprocess.DEVNULL, stderr=log, env=env
        )
        own(agent.pid)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not sock.exists():
            if agent.poll() is not None:
                raise TraceError(f"the agent exited with {agent.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TraceError(f"the agent did not listen on {sock} within {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)
        for check in checks:
            status = check(str(sock))
            if status != probe.SERVING:
                raise TraceError(f"{check.__name__}: the agent answered status {status}, not SERVING")
        if signal_dump:
            agent.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + DUMP_TIMEOUT
        while not out.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise TraceError(f"the agent did not dump its modules: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        modules = _read_dump(out)
    finally:
        if agent.poll() is None:
            children.stop(agent)
        children.release(agent.pid)
    assert isinstance(modules, list)
    return set(modules)


def _require_agent(source: Path) -> None:
    if not (source / "agent/__main__.py").exists():
        raise TraceError(f"{source}/agent/__main__.py is missing: there is no agent to start")


def trace_session(source: Path) -> set[str]:
    """Run the agent on a unix socket, ask Check over ttrpc and gRPC, dump its modules, stop it."""
    _require_agent(source)
    with tempfile.TemporaryDirectory(prefix="pykata-trace-") as tmp:
        sock = Path(tmp) / "agent.sock"
        out = Path(tmp) / "modules"
        code = SERVE.format(paths=_sys_path(source), out=str(out), address=f"unix://{sock}")
        checks = (probe.check_ttrpc, probe.check_grpc, probe.check_ttrpc)
        return _served_modules(code, sock, checks, out)


def trace_start(source: Path) -> set[str]:
    """The modules the agent has imported when it has answered its first Check (over ttrpc), started
    as the initrd's /init starts it (no arguments), plus ``config.START_IMPORTS``."""
    _require_agent(source)
    with tempfile.TemporaryDirectory(prefix="pykata-trace-") as tmp:
        sock = Path(tmp) / "agent.sock"
        out = Path(tmp) / "modules"
        code = START.format(paths=_sys_path(source), out=str(out), extra=list(config.START_IMPORTS))
        env = {key: value for key, value in os.environ.items() if not key.startswith("KATA_AGENT_")}
        env["KATA_AGENT_SERVER_ADDR"] = f"unix://{sock}"
        return _served_modules(code, sock, (probe.check_ttrpc,), out, env, signal_dump=False)


def trace(source: Path) -> tuple[set[str], list[str]]:
    """Modules the agent imports (both runs), and agent modules that could not be imported."""
    everything, failed = trace_import_all(source)
    return everything | trace_session(source), failed


def main() -> None:
    """Print the traced module list (``python -m osbuilder.tracing``)."""
    source = Path(__file__).resolve().parent.parent
    modules, failed = trace(source)
    start = trace_start(source)
    print(json.dumps({"modules": sorted(modules), "start": sorted(start), "failed": failed}, indent=1))


if __name__ == "__main__":
    main()
