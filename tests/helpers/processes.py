"""Running a piece of a test in a forked child, for what must not stay in the test's own process."""

from __future__ import annotations

import os
from collections.abc import Callable


def exit_code_in_child(work: Callable[[], int]) -> int:
    """Run ``work`` in a forked child (a seccomp filter, a process name, a prctl flag: what it changes
    stays there); its exit status, ``work``'s result when it returns, 1 when it raises."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = work()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
