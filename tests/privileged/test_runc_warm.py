"""pykata-runc's warm pair: a cold ``create`` forks its shim and container process as soon as it has
read the bundle's spec, before it imports the engine, and hands the engine's request to them
(agent/container/cli.py, cli_backend.LocalForkServer, agent/container/warm.py).

Each command runs as a new process, as test_runc_cli.py runs them, with ``--debug``, which names the
pair it forked. The tests check that the container's shim is that pair (and the rest of the
lifecycle works on it), that the namespaces the pair made ahead are the ones the spec asks for, that
specs a pair cannot serve (a user namespace, a joined pid namespace) run through the ordinary fork,
and that a create that fails once the pair exists, before or after it was handed the request, leaves
no process, mount or cgroup behind. In-process tests drive LocalForkServer with a pair that is gone or
unused.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.cli_backend import LocalForkServer
from agent.container.engine import Engine
from agent.container.warm import WarmPair, threads_run
from agent.system.paths import HostPaths
from tests.conftest import require_root
from tests.helpers.bundle import runc_default_spec
from tests.helpers.cgroups import CGROUP_FS, remove_cgroups
from tests.privileged.engine_helpers import ns_inode, run, spec_for
from tests.privileged.runc_helpers import Runtime, alive, wait_for

RUN_TAG = f"pykata-test-runc-warm-{os.getpid()}"
WARM_LINE = re.compile(r"create: warm pair (\d+) forked")


def _warm_pair(done: subprocess.CompletedProcess[str]) -> int | None:
    found = WARM_LINE.search(done.stderr)
    return int(found.group(1)) if found else None


def _mount_count() -> int:
    return len(Path("/proc/self/mountinfo").read_text().splitlines())


def _cgroups(name: str = "*") -> list[Path]:
    return [p for p in CGROUP_FS.glob(f"*/{RUN_TAG}/{name}") if not p.parent.parent.is_symlink()]


@pytest.fixture(scope="module")
def default_spec() -> dict[str, Any]:
    require_root()
    return runc_default_spec()


@pytest.fixture
def cli(tmp_path: Path, default_spec: dict[str, Any]) -> Iterator[Runtime]:
    runtime = Runtime(tmp_path / "state", tmp_path, default_spec, RUN_TAG, flags=("--debug",))
    yield runtime
    for container_id in runtime.ids:
        runtime("delete", "--force", container_id, check=False)
    wait_for(lambda: not runtime.processes(), "the test's processes to end")


@pytest.fixture(scope="module", autouse=True)
def no_cgroups_left() -> Iterator[None]:
    yield
    containers = remove_cgroups(RUN_TAG)
    assert not containers, f"container cgroups left behind: {containers}"


def test_a_cold_create_hands_its_container_to_the_pair_it_forked(cli: Runtime) -> None:
    bundle = cli.bundle("paired", ["/bin/sleep", "300"])
    cid = cli.new_id("paired")
    pair = _warm_pair(cli("create", "-b", str(bundle), cid))
    assert pair is not None, "create forked no warm pair"
    saved = cli.saved(cid)
    assert saved["engine"]["shim_pid"] == pair, "the container's shim is not the pair's"
    assert Path(f"/proc/{pair}/comm").read_text().strip() == "pykata-shim"
    init = saved["pid"]
    assert int(Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pair
    nspid = [line for line in Path(f"/proc/{init}/status").read_text().splitlines() if line.startswith("NSpid:")]
    assert nspid[0].split()[1:] == [str(init), "1"], "the init is not pid 1 of a pid namespace of its own"
    for kind in ("pid", "net", "ipc", "uts", "mnt"):
        assert ns_inode(init, kind) != ns_inode("self", kind), kind
    assert json.loads(cli("state", cid).stdout)["status"] == "created"
    cli("start", cid)
    assert json.loads(cli("state", cid).stdout)["status"] == "running"
    cli("kill", cid, "KILL")
    wait_for(lambda: json.loads(cli("state", cid).stdout)["status"] == "stopped", "the container to stop")
    cli("delete", cid)
    wait_for(lambda: not alive(pair), "the pair's shim to end")
    assert not (cli.root / cid).exists()
    assert not _cgroups("paired")


def test_the_namespaces_made_ahead_are_the_ones_the_spec_asks_for(cli: Runtime) -> None:
    """A spec without a network namespace: the pair makes IPC and UTS ahead, not the network."""

    def shared_network(config: dict[str, Any]) -> None:
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]

    script = "for kind in net uts ipc; do readlink /proc/self/ns/$kind; done"
    bundle = cli.bundle("hostnet", ["/bin/sh", "-c", script], shared_network)
    done = cli("run", "-b", str(bundle), cli.new_id("hostnet"))
    assert _warm_pair(done) is not None
    net, uts, ipc = done.stdout.split()
    assert net == ns_inode("self", "net")
    assert uts != ns_inode("self", "uts")
    assert ipc != ns_inode("self", "ipc")


def test_specs_a_pair_cannot_serve_run_through_the_ordinary_fork(cli: Runtime) -> None:
    holder_bundle = cli.bundle("holder", ["/bin/sleep", "300"])
    holder = cli.new_id("holder")
    cli("create", "-b", str(holder_bundle), holder)
    holder_pid = cli.saved(holder)["pid"]

    def joined_pid(config: dict[str, Any]) -> None:
        for ns in config["linux"]["namespaces"]:
            if ns["type"] == "pid":
                ns["path"] = f"/proc/{holder_pid}/ns/pid"

    def user_namespace(config: dict[str, Any]) -> None:
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
        # a user namespace may not mount cgroup v1 hierarchies: drop that mount, as rootless runc does
        config["mounts"] = [m for m in config["mounts"] if m["type"] != "cgroup"]

    def no_pid_namespace(config: dict[str, Any]) -> None:
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "pid"]

    script = "readlink /proc/self/ns/pid; echo done"
    for name, edit in (("joined", joined_pid), ("userns", user_namespace), ("nopidns", no_pid_namespace)):
        done = cli("run", "-b", str(cli.bundle(name, ["/bin/sh", "-c", script], edit)), cli.new_id(name))
        assert _warm_pair(done) is None, f"{name}: a warm pair was forked for a spec it cannot serve"
        pid_ns, said = done.stdout.split()
        assert said == "done"
        if name == "joined":
            assert pid_ns == ns_inode(holder_pid, "pid")
        elif name == "nopidns":
            assert pid_ns == ns_inode("self", "pid")
        else:
            assert pid_ns not in (ns_inode("self", "pid"), ns_inode(holder_pid, "pid"))
    cli("delete", "--force", holder)


def _bad_mount(config: dict[str, Any]) -> None:
    config["mounts"].append({"destination": "/data", "type": "bind", "source": "/nonexistent-pykata-source",
                             "options": ["rbind"]})  # fmt: skip


def _bad_cpu_quota(config: dict[str, Any]) -> None:
    config["linux"].setdefault("resources", {})["cpu"] = {"quota": 1, "period": 100000}


def _hostname_without_uts(config: dict[str, Any]) -> None:
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "uts"]
    config["hostname"] = "refused"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_bad_mount, "nonexistent-pykata-source"),  # fails in the container process: after the hand-over
        (_bad_cpu_quota, "cpu"),  # fails in the cgroup's limits, while the process sets up
        (_hostname_without_uts, "uts namespace"),  # refused by the engine's checks: before the hand-over
    ],
    ids=["bad-mount", "bad-cpu-quota", "refused-spec"],
)
def test_a_create_that_fails_once_the_pair_exists_leaves_nothing_behind(
    cli: Runtime, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    bundle = cli.bundle("broken", ["/bin/true"], edit)
    cid = cli.new_id("broken")
    mounts = _mount_count()
    done = cli("create", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr, done.stderr
    pair = _warm_pair(done)
    assert pair is not None, "the create failed before it forked its pair: not the case under test"
    wait_for(lambda: not cli.processes(), "the pair to end")
    assert not alive(pair)
    assert _mount_count() == mounts
    assert not _cgroups("broken")
    assert not (cli.root / cid).exists()


def test_a_duplicate_id_lets_its_pair_go(cli: Runtime) -> None:
    bundle = cli.bundle("twice", ["/bin/sleep", "300"])
    cid = cli.new_id("twice")
    cli("create", "-b", str(bundle), cid)
    first = cli.processes()
    done = cli("create", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1 and "exists" in done.stderr, done.stderr
    pair = _warm_pair(done)
    assert pair is not None and not alive(pair)
    assert sorted(cli.processes()) == sorted(first)  # the first container's shim and init only


# In-process: LocalForkServer given a pair it cannot use.


@pytest.fixture
def engine_spec(default_spec: dict[str, Any], busybox_rootfs: Path, cgroup_parent: str) -> Callable[..., Any]:
    def make(name: str, args: list[str], drop: tuple[str, ...] = ()) -> dict[str, Any]:
        spec = spec_for(default_spec, busybox_rootfs, args, cgroup_parent, name)
        spec["process"]["terminal"] = False
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] not in drop]
        return spec

    return make


def test_a_pair_that_is_gone_falls_back_to_a_fork(engine_spec: Callable[..., Any]) -> None:
    pair = WarmPair({"prefault": [], "preunshare": []}, keep_stdio=True)
    os.kill(pair.pid, signal.SIGKILL)
    os.waitpid(pair.pid, 0)
    forker = LocalForkServer(pair)
    engine = Engine(HostPaths(), forkserver=forker)  # type: ignore[arg-type]  # duck-typed, as cli_backend's
    try:
        code, out, _err = run(engine, "gone-pair", engine_spec("gone-pair", ["/bin/echo", "forked"]))
        assert (code, out) == (0, b"forked\n")
        assert pair.pid not in forker.shims
        if not threads_run():  # else (threads that other tests started) the engine's fork server forked it
            assert forker.shims, "the create was not forked here"
    finally:
        engine.close()


def test_a_pair_the_request_does_not_fit_is_reaped(engine_spec: Callable[..., Any]) -> None:
    pair = WarmPair({"prefault": [], "preunshare": []}, keep_stdio=True)
    forker = LocalForkServer(pair)
    engine = Engine(HostPaths(), forkserver=forker)  # type: ignore[arg-type]
    try:
        spec = engine_spec("no-pidns", ["/bin/echo", "shared"], drop=("pid",))
        assert run(engine, "no-pidns", spec)[:2] == (0, b"shared\n")
        assert pair.pid not in forker.shims
    finally:
        engine.close()
    assert not Path(f"/proc/{pair.pid}").exists(), "the unused pair was not reaped"
