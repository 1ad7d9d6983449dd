"""The quick way into pykata-runc: hand the command to a warm ``pykata-runc serve`` process.

A Python command line pays for the interpreter and its imports on every call, which is most of a
container start. ``pykata-runc serve`` imports everything once and forks a worker per command (it
runs no threads, so forking is safe); this client only connects, passes its working directory,
arguments and stdio descriptors (SCM_RIGHTS), forwards the signals it gets to the worker, and exits
with the worker's status. The worker runs exactly what ``pykata-runc`` would, so the output, the
state files and the exit codes are the same.

The server's socket is ``$PYKATA_RUNC_SERVER``; when it is unset or nobody answers there, the command
runs in this process instead. This module imports only what the hand-over needs, on purpose: the C
modules ``_socket`` and ``_signal`` rather than ``socket`` and ``signal`` (which import enum and
selectors), and those only when a server is named; ``posix`` (the C module under ``os``, already
loaded at start) rather than ``os``, whose import (with ``_collections_abc``) is ~1.8 ms of a served
command's ~17 ms of client; no typing at run time. Run it as a script or console entry, not with
``-m`` (runpy's imports cost more than the whole hand-over).
"""

from __future__ import annotations

import posix
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from typing import NoReturn

SERVER_ENV = "PYKATA_RUNC_SERVER"
FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def _fsencode(part: str | bytes) -> bytes:
    """os.fsencode, without os."""
    return (
        part if isinstance(part, bytes) else part.encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
    )


def _fsdecode(part: bytes) -> str:
    """os.fsdecode, without os."""
    return part.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def encode_request(cwd: str | bytes, argv: list[str]) -> bytes:
    """The working directory and the arguments, NUL-separated (no JSON: its import costs time)."""
    return b"\0".join(_fsencode(part) for part in [cwd, *argv])


def decode_request(data: bytes) -> tuple[str, list[str]]:
    cwd, *argv = (_fsdecode(part) for part in data.split(b"\0"))
    return cwd, argv


def launcher_text(python: str, module_path: list[str]) -> str:
    """The ``pykata-runc`` script scripts/setup.sh installs in place of pip's console script.

    pip's script runs under a plain ``python``, whose site start-up runs every ``.pth`` hook in
    site-packages (setuptools' editable-install finder, distutils shims...): 20 to 50 ms before the
    first line of ours, on a command that should take about that in all. This one runs ``python -S``
    and puts on sys.path itself what the command needs from site: ``module_path``'s first entry,
    pykata's own directory, in place of the script's, and the others (the site-packages directories
    found at install time) after the standard library, where site puts them (a package installed
    there never shadows a standard module; a cold ``run`` imports nothing from there).
    """
    source, *site_dirs = module_path
    return (
        f"#!{python} -S\n"
        "# pykata-runc, installed by scripts/setup.sh: see agent/container/cli_client.py launcher_text\n"
        "import sys\n"
        f"sys.path[0:1] = [{source!r}]  # in place of the script's own directory\n"
        f"sys.path += {site_dirs!r}\n"
        "from agent.container.cli_client import main\n"
        "main()\n"
    )


# What a command needs to load in the launcher's interpreter: the CLI and the C modules it uses.
LAUNCHER_CHECK = "import _ctypes, _json, _prctl, _struct, agent.container.cli"


def launcher_python(module_path: list[str], candidates: list[str] | None = None) -> str:
    """The interpreter the launcher runs: the system's ``/usr/bin/pythonX.Y`` of this very version when
    it can load what a command needs from ``module_path``, else this one.

    A command is mostly interpreter start-up and imports, and a distribution's python does both
    faster than a locally built one with a shared libpython (pyenv's, for one): Debian's is linked
    statically and built with profile-guided and link-time optimisation. Measured on Debian 12:
    ``python -S -c pass`` 9.7 against 12.0 ms, a cold ``pykata-runc run`` about 5 ms less. The same
    X.Y means the same bytecode cache (``cpython-3Y``) and the same extension ABI, so the installed
    packages load unchanged; a candidate that fails to load them is not used.
    """
    import os
    import subprocess

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in candidates if candidates is not None else [f"/usr/bin/python{version}"]:
        if not os.access(candidate, os.X_OK) or os.path.realpath(candidate) == os.path.realpath(sys.executable):
            continue
        probe = (
            f"import sys; sys.path[0:0] = {module_path[:1]!r}; sys.path += {module_path[1:]!r}; "
            f"assert sys.implementation.cache_tag == {sys.implementation.cache_tag!r}; {LAUNCHER_CHECK}"
        )
        done = subprocess.run([candidate, "-S", "-c", probe], capture_output=True, stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return candidate
    return sys.executable


def install_launcher(target: str, python: str | None = None) -> str:
    """Write the launcher for this pykata to ``target`` (atomically, mode 755) and return the
    interpreter it runs: ``python`` if given, else ``launcher_python``'s choice."""
    import os
    import sysconfig

    import agent

    source = os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))
    module_path: list[str] = []
    for entry in (source, sysconfig.get_path("purelib"), sysconfig.get_path("platlib")):
        if entry not in module_path:
            module_path.append(entry)
    interpreter = python or launcher_python(module_path)
    temporary = f"{target}.{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(launcher_text(interpreter, module_path))
    os.chmod(temporary, 0o755)
    os.replace(temporary, target)
    return interpreter


def _run_here(argv: list[str]) -> NoReturn:
    from agent.container.cli import main as cli_main

    cli_main(argv)


def _read_line(connection: _socket.socket, pending: bytearray) -> bytes | None:
    while b"\n" not in pending:
        try:
            chunk = connection.recv(64)
        except InterruptedError:
            continue
        if not chunk:
            return None
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    path = posix.environ.get(SERVER_ENV.encode())  # bytes: the environment as the kernel gave it
    if not path or any(arg == "--preserve-fds" or arg.startswith("--preserve-fds=") for arg in args):
        _run_here(args)  # (the descriptors to preserve are this process's: it runs the command itself)
    import _signal
    import _socket

    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.connect(path)
        stdio = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        connection.sendmsg([encode_request(posix.getcwdb(), args)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, stdio)])
        connection.shutdown(_socket.SHUT_WR)
    except OSError:
        connection.close()
        _run_here(args)  # no server there: do the work ourselves
    pending = bytearray()
    worker = _read_line(connection, pending)
    if worker is None or not worker.startswith(b"P"):
        print(f"pykata-runc: the server at {_fsdecode(path)} hung up before running the command", file=sys.stderr)
        sys.exit(1)
    worker_pid = int(worker[1:])
    for name in FORWARDED:
        _signal.signal(getattr(_signal, name), lambda number, _frame: posix.kill(worker_pid, number))
    status = _read_line(connection, pending)
    if status is None or not status.startswith(b"X"):
        print(f"pykata-runc: the server's worker {worker_pid} ended without a status", file=sys.stderr)
        sys.exit(1)
    # Nothing of ours is left to clean up: skip the interpreter's teardown (a millisecond or two).
    sys.stdout.flush()
    sys.stderr.flush()
    posix._exit(int(status[1:]))


if __name__ == "__main__":
    main()
