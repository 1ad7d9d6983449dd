"""Cgroup lifecycle cost of the container engine, next to the kernel's floor (root, this host's layout).

(a) pykata: ``manager_for`` + create + apply (cpu shares/quota, cpuset, memory limit, pids) + add_pid
    of a waiting process + destroy after it exits;
(b) floor: the same mkdirs, file writes, cgroup.procs writes and rmdirs done with bare os calls (no
    validation, no planning, no layout detection), in the same order;
each timed in two phases: set-up, and removal after the process exits;
and freeze+thaw of one busy process through the manager. Spawning and reaping the process are outside
the timed part. ``PYKATA_BENCH_RUNS`` sets the number of runs (default 30); (a) and (b) alternate.
Everything is made under ``pykata-bench-<pid>`` in each hierarchy and removed.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent.container.cgroups import detect, manager_for
from agent.system.paths import HostPaths

RUNS = int(os.environ.get("PYKATA_BENCH_RUNS", "30"))
RESOURCES = {
    "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
    "memory": {"limit": 64 << 20},
    "pids": {"limit": 64},
}
V1_FILES = {
    "cpu": [("cpu.shares", "512"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")],
    "cpuset": [("cpuset.cpus", "0"), ("cpuset.mems", "0")],
    "memory": [("memory.limit_in_bytes", str(64 << 20))],
    "pids": [("pids.max", "64")],
}


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _waiter() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    process.wait()


def _pykata(paths: HostPaths, parent: str, index: int) -> tuple[float, float]:
    process = _waiter()
    start = time.perf_counter()
    manager = manager_for(paths, f"/{parent}/a{index}", f"a{index}")
    manager.create()
    manager.apply(RESOURCES)
    manager.add_pid(process.pid)
    elapsed = time.perf_counter() - start
    _finish(process)
    start = time.perf_counter()
    manager.destroy()
    return elapsed, time.perf_counter() - start


def _floor(roots: dict[str, Path], parent: str, index: int) -> tuple[float, float]:
    process = _waiter()
    start = time.perf_counter()
    dirs = {name: root / parent / f"b{index}" for name, root in roots.items()}
    for directory in dict.fromkeys(dirs.values()):
        os.mkdir(directory)
    for name, files in V1_FILES.items():
        for file, value in files:
            with open(dirs[name] / file, "w") as handle:
                handle.write(value)
    for directory in dict.fromkeys(dirs.values()):
        with open(directory / "cgroup.procs", "w") as handle:
            handle.write(str(process.pid))
    elapsed = time.perf_counter() - start
    _finish(process)
    start = time.perf_counter()
    for directory in dict.fromkeys(dirs.values()):
        while True:
            try:
                os.rmdir(directory)
                break
            except OSError:
                time.sleep(0.001)
    return elapsed, time.perf_counter() - start


def _freeze_thaw(paths: HostPaths, parent: str) -> list[float]:
    manager = manager_for(paths, f"/{parent}/freeze", "freeze")
    manager.create()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    samples: list[float] = []
    try:
        manager.add_pid(busy.pid)
        for _ in range(RUNS):
            start = time.perf_counter()
            manager.freeze()
            manager.thaw()
            samples.append(time.perf_counter() - start)
    finally:
        os.kill(busy.pid, signal.SIGKILL)
        busy.wait()
    while manager.pids():
        time.sleep(0.01)
    manager.destroy()
    return samples


def _line(name: str, samples: list[float], baseline: list[float] | None = None) -> str:
    median = statistics.median(samples) * 1000
    text = f"{name:<44} median {median:7.2f} ms  p90 {_percentile(samples, 0.9) * 1000:7.2f} ms"
    if baseline:
        text += f"  ({median / (statistics.median(baseline) * 1000):.1f}x the floor)"
    return text


def main() -> None:
    paths = HostPaths()
    layout = detect(paths)
    parent = f"pykata-bench-{os.getpid()}"
    if layout.version != 1:
        print(f"cgroup v{layout.version}: this benchmark's floor is written for the v1 layout; skipped")
        return
    roots = {name: Path(root) for name, root in layout.controllers.items()}
    for root in dict.fromkeys(roots.values()):
        (root / parent).mkdir()
    cpuset = roots["cpuset"] / parent
    for name in ("cpuset.cpus", "cpuset.mems"):
        (cpuset / name).write_text((roots["cpuset"] / name).read_text())
    ours: list[tuple[float, float]] = []
    floor: list[tuple[float, float]] = []
    try:
        for index in range(RUNS):
            ours.append(_pykata(paths, parent, index))
            floor.append(_floor(roots, parent, index))
        freeze = _freeze_thaw(paths, parent)
    finally:
        for root in dict.fromkeys(roots.values()):
            for current, _dirs, _files in os.walk(root / parent, topdown=False):
                os.rmdir(current)
    print(f"cgroup v1 lifecycle, {RUNS} runs each, {len(set(roots.values()))} hierarchies")
    for phase, label in ((0, "create+apply+add_pid"), (1, "destroy (rmdir after exit)")):
        mine = [sample[phase] for sample in ours]
        bare = [sample[phase] for sample in floor]
        print(_line(f"(a) pykata {label}", mine, bare))
        print(_line(f"(b) floor {label}", bare))
    print(_line("pykata freeze+thaw (one busy process)", freeze))


if __name__ == "__main__":
    main()
