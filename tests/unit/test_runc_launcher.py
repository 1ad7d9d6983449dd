"""The pykata-runc launcher scripts/setup.sh installs: python -S, and pykata found without site."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.container.cli_client import install_launcher, launcher_python, launcher_text


def test_launcher_runs_python_without_site_and_sets_its_own_path() -> None:
    text = launcher_text("/usr/bin/python3", ["/src", "/site"])
    first, *rest = text.splitlines()
    assert first == "#!/usr/bin/python3 -S"
    # pykata's directory first, site-packages after the standard library (as site orders them)
    source = next(i for i, line in enumerate(rest) if line.startswith("sys.path[0:1] = ['/src']"))
    assert rest[source + 1] == "sys.path += ['/site']"


def test_installed_launcher_runs_the_cli(tmp_path: Path) -> None:
    target = tmp_path / "pykata-runc"
    python = install_launcher(str(target))
    assert os.stat(target).st_mode & 0o777 == 0o755
    assert target.read_text().startswith(f"#!{python} -S\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYKATA_RUNC_SERVER")}
    done = subprocess.run([str(target), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pykata-runc version ")


def test_launcher_does_not_run_site(tmp_path: Path) -> None:
    """The interpreter it starts has not imported site (so no .pth hook ran), and its path has the
    standard library before site-packages, as site would have it."""
    target = tmp_path / "pykata-runc"
    install_launcher(str(target))
    probe = tmp_path / "probe"
    lines = target.read_text().splitlines()
    lines[-2:] = [
        "print('site' in sys.modules, sys.flags.no_site)",
        "import sysconfig",
        "print(sysconfig.get_path('stdlib'))",
        "print(*sys.path, sep='\\n')",
    ]
    probe.write_text("\n".join(lines) + "\n")
    probe.chmod(0o755)
    done = subprocess.run([str(probe)], capture_output=True, text=True, check=True)
    flags, stdlib, *path = done.stdout.splitlines()
    assert flags.split() == ["False", "1"]
    # the standard library comes before site-packages, as site orders them
    import sysconfig

    assert path.index(stdlib) < path.index(sysconfig.get_path("purelib"))


def _wrapper(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _module_path() -> list[str]:
    import sysconfig

    import agent

    return [str(Path(agent.__file__).resolve().parent.parent), sysconfig.get_path("purelib")]


def test_launcher_python_takes_a_candidate_that_loads_the_command(tmp_path: Path) -> None:
    """Another interpreter of this version that loads the CLI and its C modules is chosen."""
    works = _wrapper(tmp_path / "python-works", f'exec {sys.executable} "$@"')
    assert launcher_python(_module_path(), [str(tmp_path / "missing"), works]) == works


def test_launcher_python_keeps_this_one_when_no_candidate_loads_the_command(tmp_path: Path) -> None:
    fails = _wrapper(tmp_path / "python-fails", "exit 1")
    assert launcher_python(_module_path(), [fails]) == sys.executable
    # This interpreter again, but without site-packages on its path (-S): _prctl is not found.
    no_site = _wrapper(tmp_path / "python-no-site", f'exec {sys.executable} "$@"')
    assert launcher_python(_module_path()[:1], [no_site]) == sys.executable
    assert launcher_python(_module_path(), [sys.executable]) == sys.executable


def test_install_launcher_writes_the_interpreter_it_was_given(tmp_path: Path) -> None:
    target = tmp_path / "pykata-runc"
    assert install_launcher(str(target), python="/opt/python") == "/opt/python"
    assert target.read_text().startswith("#!/opt/python -S\n")


def test_the_client_hands_over_without_importing_os() -> None:
    """A served command's client loads neither os nor what os brings (_collections_abc: ~1.8 ms)."""
    probe = (
        f"import sys; sys.path[0:1] = [{str(Path(__file__).resolve().parents[2])!r}]; "
        "import agent.container.cli_client; print(sorted({'os', '_collections_abc'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_request_round_trip_keeps_undecodable_names() -> None:
    """The working directory and the arguments travel as the kernel's bytes, as os.fsencode has them."""
    from agent.container.cli_client import decode_request, encode_request

    odd = os.fsdecode(b"bundle-\xff")  # not UTF-8: a surrogate escape
    data = encode_request(b"/work/\xfe", ["run", "--bundle", odd, "id"])
    assert data == b"\0".join([b"/work/\xfe", b"run", b"--bundle", b"bundle-\xff", b"id"])
    assert decode_request(data) == (os.fsdecode(b"/work/\xfe"), ["run", "--bundle", odd, "id"])
    assert encode_request("/w", ["x"]) == b"/w\0x"
