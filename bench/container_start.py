"""Container start benchmark: create + start + wait + delete of /bin/true, four ways and a floor, alternating.

(a) the agent's RPCs over a unix socket (ttrpc: CreateContainer, StartContainer, WaitProcess,
    RemoveContainer) against ``python3 -m agent --server-addr unix://...``;
(b) ``pykata-runc run``: started cold (the launcher scripts/setup.sh installs, which runs
    ``python -S``; then as pip's console script would run, with site's start-up), and handed to a
    warm ``pykata-runc serve`` by its small client; (c) Debian's ``runc run``; (d) ``crun run`` on
    the same bundle. Then pykata-runc (cold, and handed to the server) and runc again, driven as
    containerd's shim drives a runtime: a command per step (create, start, state, delete), each step's
    time under the way's line.

The python floor (bench/_python_floor.py) is the least any cold Python process pays to run that container:
a ``python -S`` started as the pykata-runc launcher is (its code from a .pyc), the C modules it needs
(``_ctypes`` for mount, unshare and pivot_root, which os lacks in 3.11; ``_json``'s scanner) and, straight
-line, only the kernel work runc does for this bundle: the cgroups in every hierarchy, fork, join,
unshare, a second fork for the pid namespace, the mount tree, pivot_root, the process's limits,
capabilities and exec, then wait and rmdir. It is there to say whether a Python runtime can match runc
at all on this host, and what is left for pykata-runc to cut. Its phases (from its PYKATA_FLOOR_TRACE
marks; ``python start`` runs from the spawn to its first line, ``python exit`` from its last mark until
the process is gone) are printed under it. ``python -c pass``, ``python -S -c pass`` and
``python -S -c 'import ctypes'`` are not containers: the interpreter's own start, and with ctypes.
The floor and the ``python -S`` lines run the launcher's interpreter (cli_client.launcher_python);
``python -c pass`` (site's start-up) and the "pykata-runc site" way run the one pykata was installed
with, as pip's console script would.

crun refuses this host's hybrid cgroup layout, so it runs in a private mount namespace with the
cgroup2 mount hidden (the wrapper's cost is part of its figure, and measured separately).
Prints median and p90 per way, the ratios to crun and runc, and the figures measured on this
kind of host before, side by side. ``PYKATA_BENCH_RUNS`` sets the number of runs (default 30).

Every timed run starts after a settle gap (``PYKATA_BENCH_GAP_MS``, default 100 ms) so each way starts
from the same idle state. Without it the order matters: moving a process into a cgroup v1 by pid (runc
and crun do) turns off the fast path of the kernel's cgroup_threadgroup_rwsem for a grace period, so
a way that does the same right after runs faster than after one that did not.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.system.children import stop

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("PYKATA_BENCH_RUNS", "30"))
GAP_MS = float(os.environ.get("PYKATA_BENCH_GAP_MS", "100"))  # settle time before every timed run
# Measured on this kind of host (ENVIRONMENT.md): `run` of /bin/true from a busybox bundle, 30 runs.
BASELINE_MS = {"runc": (38.0, 49.0), "crun": (14.0, 23.0)}
CGROUP_PARENT = f"/pykata-bench-{os.getpid()}"
CRUN_WRAPPER = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'umount -l /sys/fs/cgroup/unified; exec crun "$@"', "crun"]  # fmt: skip


@dataclass
class Way:
    name: str
    cycle: Callable[[str], None]  # one create+start+wait+delete with this container id
    close: Callable[[], None] = lambda: None
    samples: list[float] = field(default_factory=list)
    failure: str = ""
    phases: dict[str, list[float]] = field(default_factory=dict)  # where the time goes, when known


def _timed_command(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Callable[[str], None]:
    def cycle(container_id: str) -> None:
        done = subprocess.run([*argv, container_id], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, env=env)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-400:]
            raise RuntimeError(f"{' '.join(argv)} {container_id}: exit {done.returncode}: {tail}")

    return cycle


def runc_way(bundle: Path, state: Path) -> Way:
    return Way("runc", _timed_command(["runc", "--root", str(state / "runc"), "run", "--bundle", str(bundle)], bundle))


def crun_way(bundle: Path, state: Path) -> Way:
    argv = [*CRUN_WRAPPER, "--root", str(state / "crun"), "run", "--bundle", str(bundle)]
    return Way("crun", _timed_command(argv, bundle))


def install_bench_launcher(workdir: Path) -> tuple[Path, str]:
    """The launcher scripts/setup.sh would install, written for this checkout, and the interpreter it
    runs (cli_client.launcher_python: the system's python of this version when it loads pykata)."""
    from agent.container.cli_client import install_launcher

    launcher = workdir / "pykata-runc"
    return launcher, install_launcher(str(launcher))


def pykata_runc_way(bundle: Path, state: Path, launcher: Path) -> Way:
    """(b) cold, as a user runs it after scripts/setup.sh: its launcher."""
    argv = [str(launcher), "--root", str(state / "pykata"), "run", "--bundle", str(bundle)]
    return Way("pykata-runc", _timed_command(argv, REPO))


def no_site_env() -> dict[str, str]:
    """PYTHONPATH for ``python -S``: the repo and site-packages, without running site's .pth hooks."""
    import sysconfig

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])}


def lifecycle_way(name: str, argv: list[str], bundle: Path, env: dict[str, str] | None = None) -> Way:
    """The same container driven the way containerd's shim drives a runtime, one command per step:
    ``create``, ``start``, ``state``, ``delete --force`` (the program has ended by then, or is killed);
    each command's time is a phase. A Python command pays the interpreter's start at every step."""
    steps = (("create", ["create", "--bundle", str(bundle)]), ("start", ["start"]), ("state", ["state"]),
             ("delete", ["delete", "--force"]))  # fmt: skip

    def cycle(container_id: str) -> None:
        # output to a file: a created container holds its stdio until it ends, so a pipe's reader
        # (waiting for the end) would wait for the start that comes after
        with tempfile.TemporaryFile() as errors:
            for step, args in steps:
                started = time.perf_counter()
                done = subprocess.run([*argv, *args, container_id], cwd=REPO, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=errors, env=env)  # fmt: skip
                way.phases.setdefault(step, []).append(time.perf_counter() - started)
                if done.returncode != 0:
                    errors.seek(0)
                    tail = errors.read().decode(errors="replace")[-400:]
                    raise RuntimeError(f"{' '.join(argv)} {step} {container_id}: exit {done.returncode}: {tail}")

    way = Way(name, cycle)
    return way


def pykata_runc_site_way(bundle: Path, state: Path) -> Way:
    """(b) again as pip's console script would start it: python with site's start-up (.pth hooks)."""
    argv = [sys.executable, "-m", "agent.container.cli", "--root", str(state / "pykata-site"), "run",
            "--bundle", str(bundle)]  # fmt: skip
    return Way("pykata-runc site", _timed_command(argv, REPO, {**os.environ, "PYTHONPATH": str(REPO)}))


def served_env(workdir: Path) -> dict[str, str]:
    """The environment of a command handed to the benchmark's ``pykata-runc serve``."""
    return {**no_site_env(), "PYKATA_RUNC_SERVER": str(workdir / "pykata-runc.sock")}


def pykata_runc_server_way(bundle: Path, state: Path, workdir: Path, launcher: Path) -> Way:
    """(b) through ``pykata-runc serve`` (started by the launcher, as a user starts it): the same
    launcher, with ``PYKATA_RUNC_SERVER`` set, hands the command (python -S, a few C modules) to the
    warm server, which forks a worker for it, so nothing is imported per container."""
    env = served_env(workdir)
    socket_path = Path(env["PYKATA_RUNC_SERVER"])
    server = subprocess.Popen(
        [str(launcher), "serve", "--socket", str(socket_path)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket_path.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    argv = [str(launcher), "--root", str(state / "pykata-server"), "run", "--bundle", str(bundle)]

    return Way("pykata-runc served", _timed_command(argv, REPO, env), lambda: stop(server))


def python_startup_way(python: str, *flags: str, program: str = "pass") -> Way:
    """Not a container: the interpreter's own start-up (running ``program``), to show what part of (b) it is."""
    argv = [python, *flags, "-c", program]

    def cycle(container_id: str) -> None:
        subprocess.run(argv, check=True)

    shown = program if program == "pass" else f"'{program}'"
    return Way(" ".join(["python", *flags, "-c", shown]), cycle)


# the floor's marks (bench/_python_floor.py, PYKATA_FLOOR_TRACE) in the order they happen, each the end of
# the phase named after it; "start" is the first line of the module, "end" is when the process is gone
FLOOR_PHASES = (("start", "python start"), ("imports", "imports"), ("config", "config.json"),
                ("cgroups", "cgroups mkdir"), ("joined", "fork, join"), ("unshared", "unshare"),
                ("init", "fork pid 1"), ("mounts", "mounts"), ("pivot_root", "pivot_root"),
                ("paths", "masks, ro paths"), ("process", "caps, rlimits"), ("waited", "exec, exit"),
                ("removed", "rmdir"), ("end", "python exit"))  # fmt: skip


def floor_marks(stderr: str) -> dict[str, float]:
    """The absolute times (time.perf_counter) of the marks in the floor's trace lines."""
    marks: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("python_floor "):
            continue
        fields = dict(field.split("=", 1) for field in line.split()[2:] if "=" in field)
        t0 = float(fields.pop("t0"))
        marks["start"] = t0
        marks.update((name, t0 + float(value) / 1000) for name, value in fields.items() if name != "pid")
    return marks


def python_floor_way(bundle: Path, python: str) -> Way:
    """The floor: bench/_python_floor.py, cold, imported from its .pyc by ``python -S -c`` (the launcher's
    interpreter) as the launcher imports pykata (compiling the script at every start would add about 9 ms)."""
    import py_compile

    script = REPO / "bench" / "_python_floor.py"
    py_compile.compile(str(script), doraise=True)  # its .pyc, as for agent/ (PYTHONDONTWRITEBYTECODE)
    program = (f"import sys; sys.path[0:1] = [{str(script.parent)!r}]; import _python_floor; "
               "_python_floor.floor(sys.argv[1:])")  # fmt: skip
    argv = [python, "-S", "-c", program, str(bundle)]

    def cycle(container_id: str) -> None:
        spawned = time.perf_counter()
        env = {**os.environ, "PYKATA_FLOOR_TRACE": "1", "PYKATA_FLOOR_SPAWNED": repr(spawned)}
        done = subprocess.run(argv, cwd=bundle, stdin=subprocess.DEVNULL, capture_output=True, env=env)
        ended = time.perf_counter()
        stderr = done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise RuntimeError(f"python floor: exit {done.returncode}: {stderr[-400:]}")
        marks = {**floor_marks(stderr), "end": ended}
        previous = spawned
        for mark, phase in FLOOR_PHASES:
            if mark in marks:
                way.phases.setdefault(phase, []).append(marks[mark] - previous)
                previous = marks[mark]

    way = Way("python floor", cycle)
    return way


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def report(ways: list[Way]) -> None:
    medians = {w.name: statistics.median(w.samples) for w in ways if w.samples}
    print(f"create+start+wait+delete of /bin/true, {RUNS} runs each, alternating, {GAP_MS:g} ms settle gap "
          "before each (ms)")  # fmt: skip
    width = max(18, *(len(way.name) + 1 for way in ways))
    print(f"{'way':<{width}}{'median':>9}{'p90':>9}{'/crun':>8}{'/runc':>8}   measured before (median/p90)")
    for way in ways:
        if not way.samples:
            print(f"{way.name:<{width}}  unavailable: {way.failure}")
            continue
        median = medians[way.name] * 1000
        p90 = percentile(way.samples, 0.9) * 1000
        ratios = "".join(
            f"{medians[way.name] / medians[base]:>8.2f}" if base in medians else f"{'-':>8}"
            for base in ("crun", "runc")
        )
        before = BASELINE_MS.get(way.name)
        before_text = f"   {before[0]:.0f}/{before[1]:.0f}" if before else ""
        print(f"{way.name:<{width}}{median:>9.1f}{p90:>9.1f}{ratios}{before_text}")
        if way.failure:
            print(f"  stopped after {len(way.samples)} runs: {way.failure[-300:]}")
        for phase, samples in way.phases.items():
            median_text = f"{statistics.median(samples) * 1000:>9.1f}{percentile(samples, 0.9) * 1000:>9.1f}"
            print(f"  {phase:<{width - 2}}{median_text}")


def report_steps(ways: list[Way], ours: str = "pykata-runc by step", theirs: str = "runc by step") -> None:
    """pykata-runc against runc, driven a command per step: the whole and each step's ratio of medians."""
    found = {way.name: way for way in ways if way.name in (ours, theirs) and way.samples}
    if len(found) < 2:
        return
    mine, base = found[ours], found[theirs]
    steps = ", ".join(
        f"{step} {statistics.median(samples) / statistics.median(base.phases[step]):.2f}x"
        for step, samples in mine.phases.items()
        if base.phases.get(step)
    )
    whole = statistics.median(mine.samples) / statistics.median(base.samples)
    print(f"{ours} / {theirs}: {whole:.2f}x ({steps})")


def measure(ways: list[Way], runs: int) -> None:
    for run in range(runs):
        for way in ways:
            if way.failure:
                continue
            container_id = f"bench-{os.getpid()}-{run}"
            time.sleep(GAP_MS / 1000)
            started = time.perf_counter()
            try:
                way.cycle(container_id)
            except Exception as exc:
                way.failure = str(exc)
                continue
            way.samples.append(time.perf_counter() - started)


def main() -> None:
    sys.path.insert(0, str(REPO))
    import compileall

    from tests.helpers.bundle import make_bundle

    # An installed package has its .pyc files; a checkout under PYTHONDONTWRITEBYTECODE would compile
    # every module at every start. Compile once, as pip does at install.
    compileall.compile_dir(REPO / "agent", quiet=1)

    with tempfile.TemporaryDirectory(prefix="pykata-bench-") as temporary:
        workdir = Path(temporary)
        # Every way puts its container under one cgroup parent of the benchmark's own, removed at the end.
        bundle = make_bundle(workdir / "bundle", ["/bin/true"],
                             edit=lambda c: c["linux"].update(cgroupsPath=f"{CGROUP_PARENT}/c"))  # fmt: skip
        state = workdir / "state"
        launcher, python = install_bench_launcher(workdir)
        print(f"pykata-runc's launcher runs {python} -S (the floor and the python -S lines too)")
        ways = [agent_way(bundle, workdir), pykata_runc_way(bundle, state, launcher),
                pykata_runc_site_way(bundle, state), pykata_runc_server_way(bundle, state, workdir, launcher),
                runc_way(bundle, state), crun_way(bundle, state),
                lifecycle_way("pykata-runc by step", [str(launcher), "--root", str(state / "steps")], bundle),
                lifecycle_way("pykata-runc served by step", [str(launcher), "--root", str(state / "served-steps")],
                              bundle, served_env(workdir)),
                lifecycle_way("runc by step", ["runc", "--root", str(state / "runc-steps")], bundle),
                python_floor_way(bundle, python),
                python_startup_way(sys.executable), python_startup_way(python, "-S"),
                python_startup_way(python, "-S", program="import ctypes")]  # fmt: skip
        try:
            measure(ways, 2)  # warm caches (page cache, .pyc files); not counted
            for way in ways:
                way.samples.clear()
                way.phases.clear()
            measure(ways, RUNS)
        finally:
            for way in ways:
                way.close()
            remove_cgroups()
        report(ways)
        report_steps(ways)
        report_steps(ways, "pykata-runc served by step")


def remove_cgroups() -> None:
    for parent in sorted(Path("/sys/fs/cgroup").glob(f"*{CGROUP_PARENT}")):
        if parent.parent.is_symlink():
            continue
        for cgroup in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            cgroup.rmdir()
        try:
            parent.rmdir()
        except OSError as exc:
            print(f"warning: cannot remove the benchmark's cgroup {parent}: {exc.strerror}")


def spec_message(spec: dict[str, Any], message: Any) -> Any:
    """Fill an oci.proto message from runtime-spec JSON (Kata's field names are the JSON keys, capitalised)."""
    fields = {f.name.lower(): f for f in message.DESCRIPTOR.fields}
    for key, value in spec.items():
        descriptor = fields.get(key.lower())
        if descriptor is None:
            continue  # a field Kata's proto does not carry
        target = getattr(message, descriptor.name)
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            target.update({k: str(v) for k, v in value.items()})
        elif descriptor.message_type is not None and isinstance(value, list):
            for item in value:
                spec_message(item, target.add())
        elif descriptor.message_type is not None:
            spec_message(value, target)
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(message, descriptor.name, value)
    return message


def agent_way(bundle: Path, workdir: Path) -> Way:
    """The agent's container RPCs over ttrpc on a unix socket, one connection for all runs."""
    import json

    from agent.rpc.pb import agent_pb2, oci_pb2
    from agentctl.client import connect

    socket_path = workdir / "agent.sock"
    log = open(workdir / "agent.log", "wb")  # noqa: SIM115 (closed by close())
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "--server-addr", f"unix://{socket_path}"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while not socket_path.exists() and agent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"]["path"] = str(bundle / spec["root"]["path"])
    spec.setdefault("linux", {})["cgroupsPath"] = f"{CGROUP_PARENT}/agent"
    oci = spec_message(spec, oci_pb2.Spec())
    client = connect(f"unix://{socket_path}", "ttrpc", timeout=30)
    try:
        # no hostname: this agent runs on the host, whose name must not change
        client.call("CreateSandbox", agent_pb2.CreateSandboxRequest(sandbox_id="bench"))
    except Exception as exc:  # reported as this way's failure, with the agent's own words
        setup_error = f"CreateSandbox: {exc}"
    else:
        setup_error = ""

    def cycle(container_id: str) -> None:
        if setup_error:
            raise RuntimeError(setup_error)
        create = agent_pb2.CreateContainerRequest(container_id=container_id, exec_id=container_id, OCI=oci)
        calls = (
            ("CreateContainer", create),
            ("StartContainer", agent_pb2.StartContainerRequest(container_id=container_id)),
            ("WaitProcess", agent_pb2.WaitProcessRequest(container_id=container_id, exec_id=container_id)),
            ("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=container_id, timeout=10)),
        )
        for method, request in calls:
            started = time.perf_counter()
            client.call(method, request)
            way.phases.setdefault(method, []).append(time.perf_counter() - started)

    def close() -> None:
        client.close()
        stop(agent)
        log.close()

    way = Way("agent (ttrpc)", cycle, close)
    return way


if __name__ == "__main__":
    main()
