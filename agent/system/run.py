"""The one way the agent and its tools run a subprocess.

A failure raises ``CommandError`` naming the command, its exit status and the tail of its stderr,
so callers never have to format that themselves.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from agent.system import children

log = logging.getLogger(__name__)

STDERR_TAIL = 2000


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, hint: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip()[-STDERR_TAIL:]
        message = f"{shlex.join(self.argv)} failed with exit status {returncode}"
        if tail:
            message += f": {tail}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class CommandNotFound(RuntimeError):
    def __init__(self, program: str, package: str | None = None) -> None:
        self.program = program
        self.package = package
        message = f"{program}: command not found"
        if package:
            message += f"; install it with: apt-get install {package}"
        super().__init__(message)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    capture: bool = True,
    check: bool = True,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    package: str | None = None,
    hint: str = "",
    executable: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process.

    ``package`` names the Debian package that provides the program, for the error when it is missing.
    With ``capture`` the output is returned; otherwise it goes to our own stdout/stderr (progress).
    ``executable`` is the program to run when ``argv[0]`` is only the name it is given.
    """
    args = [str(a) for a in argv]
    log.debug("run %s", shlex.join(args))
    try:
        with children.spawning() as own:
            child = subprocess.Popen(
                args,
                executable=executable,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE if capture else None,
                cwd=cwd,
                env=dict(env) if env is not None else None,
            )
            own(child.pid)
    except FileNotFoundError as exc:
        if exc.filename in (executable or args[0], None):
            raise CommandNotFound(executable or args[0], package) from exc
        raise
    try:
        stdout, stderr = child.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise CommandError(args, -9, "", f"killed after {timeout} s") from None
    finally:
        children.release(child.pid)
    proc = subprocess.CompletedProcess(args, child.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, (stderr or b"").decode(errors="replace"), hint)
    return proc


def spawn(argv: Sequence[str | os.PathLike[str]]) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the background, for a caller that watches it and may kill it (``run`` waits).

    stdin and stdout are /dev/null, stderr a pipe (for the caller's error message). The child is the
    caller's, not the PID 1 reaper's: once it has ended (``wait``), the caller calls ``release(child)``.
    """
    args = [str(a) for a in argv]
    log.debug("spawn %s", shlex.join(args))
    with children.spawning() as own:
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        own(child.pid)
    return child


def release(child: subprocess.Popen[bytes]) -> str:
    """Forget a ``spawn``ed child that has ended; returns the end of its stderr."""
    try:
        stderr = child.stderr.read() if child.stderr is not None else b""
    finally:
        if child.stderr is not None:
            child.stderr.close()
        children.release(child.pid)
    return stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
