"""A container process that fails after it has changed root still reports why.

Past pivot_root the container's own tree is all there is: no Python library to import from. The
failure report must not need an import, or the engine sees only "the process ended".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.container import init
from agent.system import jsonlite


class _NoImports:
    """A meta path finder that refuses every import not already loaded, as in a changed root."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}")


@pytest.fixture
def no_imports() -> Iterator[None]:
    finder = _NoImports()
    sys.meta_path.insert(0, finder)
    saved = {name: sys.modules.pop(name) for name in ("traceback", "linecache", "tokenize") if name in sys.modules}
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        sys.modules.update(saved)


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (ValueError("bad value"), "ValueError: bad value"),
        (ModuleNotFoundError("No module named 'resource'"), "ModuleNotFoundError: No module named 'resource'"),
        (KeyError("args"), "KeyError: 'args'"),
        (RuntimeError(), "RuntimeError"),
        (init.SetupError("unknown rlimit 'RLIMIT_X'"), "unknown rlimit 'RLIMIT_X'"),
        (FileNotFoundError(2, "No such file or directory", "/bin/x"), "No such file or directory: /bin/x"),
    ],
)
def test_errors_are_described_without_importing(no_imports: None, error: BaseException, described: str) -> None:
    assert init._describe(error) == described


def test_a_failing_process_reports_its_error_without_importing() -> None:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the process as it is after pivot_root: nothing more can be imported
        try:
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            sys.meta_path.insert(0, _NoImports())
            for name in ("traceback", "linecache", "tokenize"):
                sys.modules.pop(name, None)
            init._fail(write_end, ModuleNotFoundError("No module named 'resource'"))
        finally:
            os._exit(99)  # _fail did not end the process itself
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 127
    events = [jsonlite.loads(line) for line in b"".join(chunks).splitlines()]
    assert any("No module named 'resource'" in str(event.get("error")) for event in events), events


def test_a_mapping_tool_gets_the_pid_and_the_flattened_map(tmp_path: Path) -> None:
    """newuidmap/newgidmap's command line: PID, then inside, outside and count of each line."""
    seen = tmp_path / "argv"
    tool = tmp_path / "newuidmap"
    tool.write_text(f'#!/bin/sh\necho "$@" > {seen}\n')
    tool.chmod(0o755)
    init._run_mapping_tool(str(tool), 4242, "0 1000 1\n1 200000 65536\n")
    assert seen.read_text() == "4242 0 1000 1 1 200000 65536\n"


def test_a_failing_mapping_tool_is_named_with_what_it_said(tmp_path: Path) -> None:
    tool = tmp_path / "newgidmap"
    tool.write_text("#!/bin/sh\necho 'newgidmap: gid range [1-65537) -> [200000-265536) not allowed' >&2\nexit 1\n")
    tool.chmod(0o755)
    with pytest.raises(init.SetupError) as caught:
        init._run_mapping_tool(str(tool), 4242, "0 1000 1\n1 200000 65536\n")
    assert str(caught.value) == (
        f"{tool} 4242 0 1000 1 1 200000 65536 failed with exit status 1: "
        "newgidmap: gid range [1-65537) -> [200000-265536) not allowed"
    )
    with pytest.raises(init.SetupError, match=r"^/nonexistent/newuidmap: command not found$"):
        init._run_mapping_tool("/nonexistent/newuidmap", 4242, "0 1000 1\n")
