"""A container process that fails after it has changed root still reports why.

Past pivot_root the container's own tree is all there is: no Python library to import from. The
failure report must not need an import, or the engine sees only "the process ended".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

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
