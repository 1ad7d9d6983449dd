"""Two builds sharing a workdir run one after the other (they would replace each other's caches)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

HOLD = """
import sys, time
from pathlib import Path
from osbuilder.context import BuildContext
ctx = BuildContext(workdir=Path(sys.argv[1]), output=Path(sys.argv[1]) / "out")
ctx.ensure()
print(time.monotonic(), flush=True)
time.sleep(float(sys.argv[2]))
print(time.monotonic(), flush=True)
"""


def test_second_build_waits_for_the_first(tmp_path: Path) -> None:
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "1.0"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert first.stdout is not None
    first_start = float(first.stdout.readline())  # the first holds the lock from here
    second = subprocess.run(
        [sys.executable, "-c", HOLD, str(tmp_path), "0"], cwd=REPO, capture_output=True, text=True, check=True
    )
    first_end = float(first.stdout.readline())
    assert first.wait() == 0
    second_start = float(second.stdout.split()[0])
    assert first_start < first_end <= second_start
    assert f"waiting for another build using {tmp_path}" in second.stderr + second.stdout
