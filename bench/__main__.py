"""python3 -m bench [NAME ...]: run every bench/<name>.py main() in turn, or only the named ones."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def run(names: list[str]) -> int:
    known = available()
    unknown = [name for name in names if name not in known]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(known)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or known:
        print(f"== bench/{name}.py", flush=True)
        started = time.monotonic()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"bench/{name}.py failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"== bench/{name}.py took {time.monotonic() - started:.1f} s\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
