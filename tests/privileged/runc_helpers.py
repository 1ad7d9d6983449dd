"""pykata-runc run as containerd or a shell script runs runc, one command a process: what the command
line's privileged tests share (test_runc_cli.py, test_runc_warm.py).

Bundles hold a busybox rootfs and the config.json that Debian's ``runc spec`` writes, with the rootfs
and args changed, and ``linux.cgroupsPath`` under a cgroup parent named for the test module and run
(``tag``), so the tests create and remove only their own cgroups (tests/helpers/cgroups.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.helpers.bundle import make_bundle

CLI = [sys.executable, "-m", "agent.container.cli"]


def run_command(
    command: list[str], args: tuple[str, ...], *, check: bool = True, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a pykata-runc ``command`` (whose own arguments are ``args``, for the result and errors).

    Output goes to files, not pipes: a created container inherits our stdio and keeps it open, so
    reading pipes to their end would wait for the container (as with runc)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        returncode = subprocess.run(
            command, stdout=out, stderr=err, timeout=timeout, stdin=subprocess.DEVNULL, **kw
        ).returncode
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(args, returncode, out.read().decode(), err.read().decode())
    if check and done.returncode != 0:
        raise AssertionError(f"pykata-runc {' '.join(args)}: exit {done.returncode}: {done.stderr}")
    return done


class Runtime:
    """One --root for a test; remembers the ids it created (and the pids it started) so teardown can
    delete them. ``flags`` go before every command's own (``--debug``, say)."""

    def __init__(self, root: Path, workdir: Path, spec: dict[str, Any], tag: str, flags: tuple[str, ...] = ()) -> None:
        self.root = root
        self.workdir = workdir
        self.spec = spec
        self.tag = tag
        self.flags = flags
        self.ids: list[str] = []
        self.pids: list[int] = []
        self.command = CLI
        self.env: dict[str, str] | None = None

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        command = [*self.command, *self.flags, "--root", str(self.root), *args]
        return run_command(command, args, check=check, cwd=REPO, env=self.env, timeout=timeout, **kw)

    def bundle(
        self, name: str, args: list[str], edit: Callable[[dict[str, Any]], None] | None = None, **process: Any
    ) -> Path:
        """A bundle for ``args``, its cgroup under the tag's parent; ``process`` fields replace the spec's,
        then ``edit`` may change the rest."""

        def edited(config: dict[str, Any]) -> None:
            config["linux"]["cgroupsPath"] = f"/{self.tag}/{name}"
            for key, value in process.items():
                config["process"][key] = value
            if edit is not None:
                edit(config)

        return make_bundle(self.workdir / name, args, spec=self.spec, edit=edited)

    def new_id(self, name: str) -> str:
        container_id = f"{self.tag}-{name}"
        self.ids.append(container_id)
        return container_id

    def state(self, container_id: str) -> dict[str, Any]:
        """What ``pykata-runc state`` prints (runc's state JSON)."""
        state: dict[str, Any] = json.loads(self("state", container_id).stdout)
        return state

    def saved(self, container_id: str) -> dict[str, Any]:
        """The record ``create`` saved (``<root>/<id>/state.json``), the engine's part included."""
        record: dict[str, Any] = json.loads((self.root / container_id / "state.json").read_text())
        return record

    def processes(self) -> list[int]:
        """Live processes forked from our commands: their command line names our --root."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and str(self.root).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
