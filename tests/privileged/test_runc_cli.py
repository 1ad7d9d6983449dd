"""pykata-runc driven the way containerd or a shell script drives runc, as root on the host.

Bundles hold a busybox rootfs and the config.json that Debian's ``runc spec`` writes, with the
rootfs and args changed; ``terminal`` is off (no tty here) and ``linux.cgroupsPath`` points under a
cgroup parent named for this test run, so the tests create and remove only their own cgroups. Every
test deletes its containers; the module checks that no process, mount or cgroup is left behind.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_root
from tests.helpers.bundle import make_bundle, runc_default_spec
from tests.helpers.cgroups import CGROUP_FS, remove_cgroups
from tests.helpers.seccomp_agent import SeccompAgent
from tests.privileged.runc_helpers import CLI, Runtime, alive, wait_for

RUN_TAG = f"pykata-test-runc-cli-{os.getpid()}"
CGROUP_PARENT = f"/{RUN_TAG}"


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {path}" in line]


@pytest.fixture(scope="module")
def default_spec() -> dict[str, Any]:
    require_root()
    return runc_default_spec()


@pytest.fixture
def runtime(tmp_path: Path, default_spec: dict[str, Any]) -> Iterator[Runtime]:
    rt = Runtime(tmp_path / "state", tmp_path, default_spec, RUN_TAG)
    yield rt
    for container_id in rt.ids:
        rt("delete", "--force", container_id, check=False)
    for pid in rt.pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    leftovers = [cid for cid in rt.ids if (rt.root / cid).exists()]
    assert not leftovers, f"state left behind for {leftovers}"
    assert not _mounts_under(tmp_path), "mounts left behind under the test's directory"


@pytest.fixture(scope="module", autouse=True)
def no_cgroups_left() -> Iterator[None]:
    yield
    containers = remove_cgroups(RUN_TAG)
    assert not containers, f"container cgroups left behind: {containers}"


def test_lifecycle_of_runc_spec_bundle(runtime: Runtime) -> None:
    bundle = runtime.bundle("life", ["/bin/sleep", "300"])
    cid = runtime.new_id("life")
    pid_file = runtime.workdir / "life.pid"
    runtime("create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid)

    state = runtime.state(cid)
    assert state["status"] == "created"
    assert state["id"] == cid
    assert state["bundle"] == str(bundle)
    assert state["rootfs"] == str(bundle / "rootfs")
    assert state["ociVersion"]
    assert state["created"].endswith("Z")
    pid = state["pid"]
    assert pid > 0 and alive(pid)
    assert int(pid_file.read_text()) == pid
    # The process waits before the user's program: it has not exec'd sleep yet.
    assert b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()

    runtime("start", cid)
    state = runtime.state(cid)
    assert state["status"] == "running"
    assert state["pid"] == pid
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/bin/sleep"), "sleep to run")
    # It runs in its own namespaces, as the spec asks.
    for ns in ("pid", "net", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns

    runtime("kill", cid, "KILL")
    wait_for(lambda: runtime.state(cid)["status"] == "stopped", "the container to stop")
    assert not alive(pid)
    assert runtime.state(cid)["pid"] == 0

    runtime("delete", cid)
    done = runtime("state", cid, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("pykata-runc: ")
    assert "does not exist" in done.stderr


def test_run_propagates_exit_status(runtime: Runtime) -> None:
    bundle = runtime.bundle("exit", ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    done = runtime("run", "--bundle", str(bundle), runtime.new_id("exit"), check=False)
    assert done.returncode == 7, done.stderr
    assert done.stdout == "out\n"
    assert "err\n" in done.stderr
    # run without --keep deletes the container afterwards.
    assert runtime("list", "-q").stdout == ""


def test_run_reports_signal_as_128_plus_n(runtime: Runtime) -> None:
    bundle = runtime.bundle("sig", ["/bin/sleep", "300"])
    cid = runtime.new_id("sig")
    with tempfile.TemporaryFile() as out:
        foreground = subprocess.Popen(
            [*CLI, "--root", str(runtime.root), "run", "-b", str(bundle), cid],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        runtime.pids.append(foreground.pid)
        wait_for(lambda: (runtime.root / cid / "state.json").exists(), "the container to exist")
        wait_for(lambda: runtime.state(cid)["status"] == "running", "the container to run")
        runtime("kill", cid, "SIGKILL")
        assert foreground.wait(timeout=30) == 128 + signal.SIGKILL
    assert runtime("list", "-q").stdout == ""


def test_run_detached_then_exec(runtime: Runtime) -> None:
    bundle = runtime.bundle("exec", ["/bin/sleep", "300"])
    cid = runtime.new_id("exec")
    runtime("run", "--detach", "--bundle", str(bundle), cid)
    state = runtime.state(cid)
    assert state["status"] == "running"

    script = "echo $$; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; exit 3"
    done = runtime("exec", cid, "/bin/sh", "-c", script, check=False)
    assert done.returncode == 3, done.stderr
    # The exec'd shell joined the container's pid and mount namespaces (it is not their pid 1).
    own_pid, pid_ns, mnt_ns = done.stdout.split()
    assert own_pid != "1"
    assert pid_ns == os.readlink(f"/proc/{state['pid']}/ns/pid")
    assert mnt_ns == os.readlink(f"/proc/{state['pid']}/ns/mnt")

    process = {"args": ["/bin/cat", "/etc/hostname"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}
    process_json = runtime.workdir / "process.json"
    process_json.write_text(json.dumps(process))
    done = runtime("exec", "--process", str(process_json), cid)
    assert done.stdout == "busybox\n"

    done = runtime("exec", cid, "/bin/hostname")
    assert done.stdout == "runc\n"  # the spec's hostname, in the container's uts namespace

    runtime("delete", "--force", cid)
    wait_for(lambda: not alive(state["pid"]), "the container to die")


def test_exec_into_a_created_container_as_runc_allows(runtime: Runtime) -> None:
    bundle = runtime.bundle("execcreated", ["/bin/sleep", "300"])
    cid = runtime.new_id("execcreated")
    runtime("create", "-b", str(bundle), cid)
    done = runtime("exec", cid, "/bin/hostname")
    assert done.stdout == "runc\n"  # in the container's uts namespace before its program runs
    assert runtime.state(cid)["status"] == "created"
    runtime("kill", cid, "KILL")
    wait_for(lambda: runtime.state(cid)["status"] == "stopped", "the container to stop")
    done = runtime("exec", cid, "/bin/true", check=False)
    assert done.returncode == 1 and "it is stopped" in done.stderr, done.stderr


def test_exec_detached_writes_pid_file(runtime: Runtime) -> None:
    bundle = runtime.bundle("execd", ["/bin/sleep", "300"])
    cid = runtime.new_id("execd")
    runtime("run", "-d", "-b", str(bundle), cid)
    pid_file = runtime.workdir / "exec.pid"
    runtime("exec", "--detach", "--pid-file", str(pid_file), cid, "/bin/sleep", "200")
    pid = int(pid_file.read_text())
    runtime.pids.append(pid)
    assert alive(pid)
    init = runtime.state(cid)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{init}/ns/pid")
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{init}/ns/mnt")
    ps = json.loads(runtime("ps", "--format", "json", cid).stdout)
    assert sorted(ps) == sorted([init, pid])
    runtime("kill", "--all", cid, "KILL")
    wait_for(lambda: not alive(pid) and not alive(init), "every process to die")


def test_force_delete_kills_what_earlier_calls_exec_d(runtime: Runtime) -> None:
    def without_pid_namespace(config: dict[str, Any]) -> None:
        # no pid namespace, whose end would take every process with the init: only the cgroup knows them
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/execdel"
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "pid"]

    bundle = make_bundle(runtime.workdir / "execdel", ["/bin/sleep", "300"], spec=runtime.spec,
                         edit=without_pid_namespace)  # fmt: skip
    cid = runtime.new_id("execdel")
    runtime("run", "-d", "-b", str(bundle), cid)
    pids = []
    for index in range(3):
        pid_file = runtime.workdir / f"execdel-{index}.pid"
        runtime("exec", "--detach", "--pid-file", str(pid_file), cid, "/bin/sleep", "200")
        pids.append(int(pid_file.read_text()))
    runtime.pids.extend(pids)
    init = runtime.state(cid)["pid"]
    runtime("delete", "--force", cid)  # at once: the engine knows only the init, the cgroup knows them all
    assert not [pid for pid in [init, *pids] if alive(pid)]
    assert not (runtime.root / cid).exists()
    assert not [p for p in CGROUP_FS.glob(f"*/{RUN_TAG}/execdel") if not p.parent.parent.is_symlink()]


def test_pause_resume_and_ps(runtime: Runtime) -> None:
    bundle = runtime.bundle("pause", ["/bin/sh", "-c", "while :; do sleep 0.05; done"])
    cid = runtime.new_id("pause")
    runtime("run", "-d", "-b", str(bundle), cid)
    pid = runtime.state(cid)["pid"]

    runtime("pause", cid)
    assert runtime.state(cid)["status"] == "paused"
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "DS", "the shell to freeze")
    table = runtime("ps", cid).stdout.splitlines()
    assert table[0].split()[:2] == ["UID", "PID"]
    assert any(line.split()[1] == str(pid) for line in table[1:])
    done = runtime("start", cid, check=False)
    assert done.returncode == 1 and "paused" in done.stderr

    runtime("resume", cid)
    assert runtime.state(cid)["status"] == "running"
    pids = json.loads(runtime("ps", "-f", "json", cid).stdout)
    assert pid in pids


def test_list_shows_every_container(runtime: Runtime) -> None:
    bundle = runtime.bundle("list", ["/bin/sleep", "300"])
    first, second = runtime.new_id("list-a"), runtime.new_id("list-b")
    runtime("create", "-b", str(bundle), first)
    runtime("run", "-d", "-b", str(runtime.bundle("list2", ["/bin/sleep", "300"])), second)

    assert runtime("list", "-q").stdout.split() == [first, second]
    listed = {s["id"]: s for s in json.loads(runtime("list", "--format", "json").stdout)}
    assert listed[first]["status"] == "created" and listed[second]["status"] == "running"
    assert listed[first]["owner"] == "root"
    table = runtime("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert [line.split()[2] for line in table[1:]] == ["created", "running"]


def test_errors_for_unknown_and_duplicate_ids(runtime: Runtime) -> None:
    for command in (["state"], ["start"], ["kill"], ["delete"], ["pause"], ["exec"]):
        done = runtime(*command, f"{RUN_TAG}-nope", *(["/bin/true"] if command == ["exec"] else []), check=False)
        assert done.returncode == 1, command
        assert done.stderr.startswith("pykata-runc: ") and "does not exist" in done.stderr, done.stderr

    bundle = runtime.bundle("dup", ["/bin/sleep", "300"])
    cid = runtime.new_id("dup")
    runtime("create", "-b", str(bundle), cid)
    pid = runtime.state(cid)["pid"]
    done = runtime("create", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1 and "already exists" in done.stderr
    assert runtime.state(cid)["pid"] == pid  # the first container is untouched

    done = runtime("create", "-b", str(bundle), "../escape", check=False)
    assert done.returncode == 1 and "invalid container id" in done.stderr

    runtime("start", cid)
    done = runtime("start", cid, check=False)
    assert done.returncode == 1 and "running" in done.stderr
    done = runtime("delete", cid, check=False)  # running, no --force
    assert done.returncode == 1 and "running" in done.stderr


def test_update_limits_memory_and_pids(runtime: Runtime) -> None:
    bundle = runtime.bundle("update", ["/bin/sleep", "300"])
    cid = runtime.new_id("update")
    runtime("run", "-d", "-b", str(bundle), cid)
    runtime("update", "--memory", "64m", "--pids-limit", "20", "--cpu-quota", "50000", "--cpu-period", "100000", cid)
    memory = CGROUP_FS / "memory" / RUN_TAG / "update"
    pids = CGROUP_FS / "pids" / RUN_TAG / "update"
    cpu = CGROUP_FS / "cpu" / RUN_TAG / "update"
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    assert (pids / "pids.max").read_text().strip() == "20"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"

    runtime("update", "--cpu-shares", "512", "--cpuset-cpus", "0", cid)
    assert (cpu / "cpu.shares").read_text().strip() == "512"
    assert (CGROUP_FS / "cpuset" / RUN_TAG / "update" / "cpuset.cpus").read_text().strip() == "0"
    done = runtime("update", "--memory", "lots", cid, check=False)
    assert done.returncode == 1 and "--memory" in done.stderr

    resources = runtime.workdir / "resources.json"
    resources.write_text(json.dumps({"pids": {"limit": 30}}))
    runtime("update", "-r", str(resources), cid)
    assert (pids / "pids.max").read_text().strip() == "30"


def test_console_socket_receives_pty_master(runtime: Runtime) -> None:
    bundle = runtime.bundle("tty", ["/bin/sh", "-c", "tty; sleep 300"], terminal=True)
    cid = runtime.new_id("tty")
    path = runtime.workdir / "console.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        runtime("create", "-b", str(bundle), "--console-socket", str(path), cid)
        connection, _ = listener.accept()
        with connection:
            fds = array.array("i")
            _message, ancillary, _flags, _addr = connection.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
            level, kind, data = ancillary[0]
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(data[: fds.itemsize])
    master = fds[0]
    try:
        assert os.isatty(master)
        runtime("start", cid)
        output = b""
        deadline = time.monotonic() + 10
        while b"\n" not in output and time.monotonic() < deadline:
            output += os.read(master, 1024)
        assert output.startswith(b"/dev/"), output  # the shell's stdin is a terminal
    finally:
        os.close(master)


def test_failed_create_leaves_nothing_behind(runtime: Runtime) -> None:
    def bad_mount(config: dict[str, Any]) -> None:
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/broken"
        config["mounts"].append(
            {"destination": "/data", "type": "bind", "source": str(runtime.workdir / "missing"), "options": ["rbind"]}
        )

    bundle = make_bundle(runtime.workdir / "broken", ["/bin/true"], spec=runtime.spec, edit=bad_mount)
    cid = runtime.new_id("broken")
    before = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()}
    done = runtime("create", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1
    assert "missing" in done.stderr, done.stderr  # names what failed
    assert not (runtime.root / cid).exists()
    assert runtime("list", "-q").stdout == ""
    assert not [p for p in CGROUP_FS.glob(f"*/{RUN_TAG}/broken") if not p.parent.parent.is_symlink()]
    assert not _mounts_under(bundle)
    after = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()}
    leftover = [pid for pid in after - before if b"/bin/true" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert not leftover


def test_created_container_deletes_without_force(runtime: Runtime) -> None:
    bundle = runtime.bundle("unstarted", ["/bin/sleep", "300"])
    cid = runtime.new_id("unstarted")
    runtime("create", "-b", str(bundle), cid)
    pid = runtime.state(cid)["pid"]
    runtime("delete", cid)
    assert not alive(pid)
    assert runtime("list", "-q").stdout == ""


def test_terminal_needs_a_console_socket(runtime: Runtime) -> None:
    bundle = runtime.bundle("notty", ["/bin/sh"], terminal=True)
    done = runtime("run", "-d", "-b", str(bundle), runtime.new_id("notty"), check=False)
    assert done.returncode == 1 and "--console-socket" in done.stderr


def test_hooks_run_at_their_points_with_the_state(runtime: Runtime) -> None:
    seen = runtime.workdir / "hooks"
    seen.mkdir()

    def host_hook(name: str) -> dict[str, Any]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {seen}/{name}"]}

    def with_hooks(config: dict[str, Any]) -> None:
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/hooks"
        config["hooks"] = {
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
            # startContainer runs in the container, before its program: /dev/shm is the container's tmpfs.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo from-hook > /dev/shm/started"]}],
        }

    bundle = make_bundle(runtime.workdir / "hooked", ["/bin/cat", "/dev/shm/started"], spec=runtime.spec,
                         edit=with_hooks)  # fmt: skip
    cid = runtime.new_id("hooks")
    done = runtime("run", "-b", str(bundle), cid)
    assert done.stdout == "from-hook\n"
    states = {name: json.loads((seen / name).read_text()) for name in ("prestart", "createRuntime", "poststart",
                                                                       "poststop")}  # fmt: skip
    assert states["prestart"]["status"] == "creating" and states["prestart"]["pid"] > 0
    assert states["createRuntime"]["id"] == cid
    assert states["poststart"]["status"] in ("running", "stopped")  # /bin/cat may be done already
    assert states["poststop"]["status"] == "stopped" and states["poststop"]["bundle"] == str(bundle)


def test_failing_start_container_hook_stops_the_run(runtime: Runtime) -> None:
    def with_hook(config: dict[str, Any]) -> None:
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/badhook"
        # runs in the container: /dev/shm/ran is the container's, so the program would see it
        config["hooks"] = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "touch /dev/shm/ran; exit 3"]}]}

    bundle = make_bundle(runtime.workdir / "badhook", ["/bin/ls", "/dev/shm"], spec=runtime.spec, edit=with_hook)
    cid = runtime.new_id("badhook")
    done = runtime("run", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1 and "startContainer hook /bin/sh failed with exit status 3" in done.stderr, done.stderr
    assert done.stdout == ""  # the program never ran
    assert not (runtime.root / cid).exists()
    assert not Path("/dev/shm/ran").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["process"].update(cwd="relative"), "process.cwd"),
        (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "bogus"),
        (lambda c: c["linux"]["resources"].update(pids={"limit": "many"}), "pids"),
        (lambda c: c["root"].update(path="no-such-rootfs"), "root.path"),
    ],
)
def test_bad_specs_are_refused_before_any_side_effect(runtime: Runtime, edit: Any, message: str) -> None:
    def broken(config: dict[str, Any]) -> None:
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/bad"
        edit(config)

    bundle = make_bundle(runtime.workdir / "bad", ["/bin/true"], spec=runtime.spec, edit=broken)
    cid = runtime.new_id("bad")
    done = runtime("create", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not (runtime.root / cid).exists()
    assert not [p for p in CGROUP_FS.glob(f"*/{RUN_TAG}/bad") if not p.parent.parent.is_symlink()]


def test_default_devices_are_usable_behind_a_deny_all_rule(runtime: Runtime) -> None:
    # runc spec's only device rule denies everything; the default nodes must still work.
    bundle = runtime.bundle("devs", ["/bin/sh", "-c", "echo x > /dev/null && head -c 4 /dev/urandom | wc -c"])
    done = runtime("run", "-b", str(bundle), runtime.new_id("devs"))
    assert done.stdout.strip() == "4"


def test_foreground_run_forwards_signals(runtime: Runtime) -> None:
    bundle = runtime.bundle("fwd", ["/bin/sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"])
    cid = runtime.new_id("fwd")
    with tempfile.TemporaryFile() as out:
        foreground = subprocess.Popen(
            [*CLI, "--root", str(runtime.root), "run", "-b", str(bundle), cid],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        runtime.pids.append(foreground.pid)

        def ready() -> bool:
            out.seek(0)
            return b"ready" in out.read()

        wait_for(ready, "the container's shell to set its trap")
        foreground.send_signal(signal.SIGTERM)  # to pykata-runc, which passes it on
        assert foreground.wait(timeout=30) == 42


def test_force_delete_of_a_paused_container(runtime: Runtime) -> None:
    bundle = runtime.bundle("frozen", ["/bin/sleep", "300"])
    cid = runtime.new_id("frozen")
    runtime("run", "-d", "-b", str(bundle), cid)
    pid = runtime.state(cid)["pid"]
    runtime("pause", cid)
    done = runtime("delete", cid, check=False)
    assert done.returncode == 1 and "paused" in done.stderr
    runtime("delete", "--force", cid)
    assert not alive(pid)
    assert not (runtime.root / cid).exists()


def test_exec_with_a_terminal_over_the_console_socket(runtime: Runtime) -> None:
    bundle = runtime.bundle("exectty", ["/bin/sleep", "300"])
    cid = runtime.new_id("exectty")
    runtime("run", "-d", "-b", str(bundle), cid)
    path = runtime.workdir / "exec-console.sock"
    pid_file = runtime.workdir / "exec-tty.pid"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        runtime("exec", "--tty", "--detach", "--console-socket", str(path), "--pid-file", str(pid_file), cid,
                "/bin/sh", "-c", "tty; sleep 300")  # fmt: skip
        connection, _ = listener.accept()
        with connection:
            fds = array.array("i")
            _message, ancillary, _flags, _addr = connection.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
            fds.frombytes(ancillary[0][2][: fds.itemsize])
    runtime.pids.append(int(pid_file.read_text()))
    master = fds[0]
    try:
        output = b""
        deadline = time.monotonic() + 10
        while b"\n" not in output and time.monotonic() < deadline:
            output += os.read(master, 1024)
        assert output.startswith(b"/dev/"), output
    finally:
        os.close(master)


@pytest.fixture
def served(runtime: Runtime) -> Iterator[Runtime]:
    """The same runtime, its commands handed by agent/container/cli_client.py to ``pykata-runc serve``."""
    socket_path = runtime.workdir / "server.sock"
    env = {**os.environ, "PYKATA_RUNC_SERVER": str(socket_path)}
    server_log = runtime.workdir / "server.log"
    server = subprocess.Popen(
        [*CLI, "--debug", "--log", str(server_log), "serve", "--socket", str(socket_path)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    wait_for(socket_path.exists, "the server's socket", timeout=30)
    client = Runtime(runtime.root, runtime.workdir, runtime.spec, RUN_TAG)
    client.server_log = server_log  # type: ignore[attr-defined]
    client.ids = runtime.ids  # the runtime fixture deletes them all at the end
    client.pids = runtime.pids
    client.command = [sys.executable, str(REPO / "agent" / "container" / "cli_client.py")]
    client.env = env
    try:
        yield client
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0
    assert not socket_path.exists()


def test_served_commands_behave_like_the_cli(served: Runtime) -> None:
    bundle = served.bundle("served", ["/bin/sh", "-c", "echo out; echo err >&2; exit 9"])
    done = served("run", "-b", str(bundle), served.new_id("served-run"), check=False)
    assert (done.returncode, done.stdout) == (9, "out\n")
    assert "err\n" in done.stderr

    life = served.bundle("served-life", ["/bin/sleep", "300"])
    cid = served.new_id("served-life")
    served("create", "-b", str(life), cid)
    assert served.state(cid)["status"] == "created"
    served("start", cid)
    assert served.state(cid)["status"] == "running"
    done = served("create", "-b", str(life), cid, check=False)
    assert done.returncode == 1 and done.stderr.startswith("pykata-runc: ") and "already exists" in done.stderr
    done = served("exec", cid, "/bin/sh", "-c", "pwd; exit 4", check=False)
    assert (done.returncode, done.stdout) == (4, "/\n")
    served("delete", "--force", cid)
    assert served("list", "-q").stdout == ""


def test_served_workers_learn_the_pages_a_run_writes(served: Runtime) -> None:
    # a worker that ran a container reports the pages it wrote; the later spare workers fault them
    # in while they wait (agent/container/cli_serve.py); a command served after that runs the same
    log: Path = served.server_log  # type: ignore[attr-defined]
    bundle = served.bundle("served-learn", ["/bin/sh", "-c", "echo $0", "learned"])
    done = served("state", "nothing-here", check=False)  # not a container command: teaches nothing
    assert done.returncode == 1
    assert served("run", "-b", str(bundle), served.new_id("served-learn")).stdout == "learned\n"
    wait_for(lambda: "KiB of pages a command writes" in log.read_text(), "the server's learning", timeout=10)
    learned = [line for line in log.read_text().splitlines() if "KiB of pages a command writes" in line]
    assert len(learned) == 1 and int(learned[0].split(" learned ")[1].split()[0]) > 0
    time.sleep(0.2)  # the spare worker is idle: it faults the pages in
    for index in range(2):
        done = served("run", "-b", str(bundle), served.new_id(f"served-learn-{index}"))
        assert done.stdout == "learned\n"
    assert len([line for line in log.read_text().splitlines() if "KiB of pages" in line]) == 1  # learned once


def test_served_run_forwards_signals(served: Runtime) -> None:
    script = "trap 'exit 43' TERM; echo ready; while :; do sleep 0.05; done"
    bundle = served.bundle("served-fwd", ["/bin/sh", "-c", script])
    cid = served.new_id("served-fwd")
    with tempfile.TemporaryFile() as out:
        foreground = subprocess.Popen(
            [*served.command, "--root", str(served.root), "run", "-b", str(bundle), cid],
            cwd=REPO,
            env=served.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        served.pids.append(foreground.pid)

        def ready() -> bool:
            out.seek(0)
            return b"ready" in out.read()

        wait_for(ready, "the container's shell to set its trap")
        foreground.send_signal(signal.SIGTERM)
        assert foreground.wait(timeout=30) == 43


def test_run_without_pivot_root(runtime: Runtime) -> None:
    bundle = runtime.bundle("nopivot", ["/bin/sh", "-c", "cat /etc/hostname; ls /"])
    done = runtime("run", "--no-pivot", "-b", str(bundle), runtime.new_id("nopivot"))
    lines = done.stdout.split()
    assert lines[0] == "busybox" and "bin" in lines and "proc" in lines


def test_seccomp_profile_applies_to_init_and_exec(runtime: Runtime) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }

    def with_profile(config: dict[str, Any]) -> None:
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/seccomp"
        config["linux"]["seccomp"] = profile

    script = "mkdir /dev/shm/d 2>&1; touch /dev/shm/f && echo touched; sleep 300"
    bundle = make_bundle(runtime.workdir / "seccomp", ["/bin/sh", "-c", script], spec=runtime.spec, edit=with_profile)
    cid = runtime.new_id("seccomp")
    log = runtime.workdir / "seccomp.out"
    with open(log, "w") as out:
        subprocess.run([*CLI, "--root", str(runtime.root), "run", "-d", "-b", str(bundle), cid], cwd=REPO,
                       stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True, timeout=60)  # fmt: skip
    wait_for(lambda: "touched" in log.read_text(), "the container's script")
    assert "Operation not permitted" in log.read_text()
    done = runtime("exec", cid, "/bin/mkdir", "/dev/shm/e", check=False)
    assert done.returncode != 0 and "Operation not permitted" in done.stderr
    assert runtime("exec", cid, "/bin/ls", "/dev/shm").stdout.split() == ["f"]


def test_seccomp_notify_through_the_cli(runtime: Runtime) -> None:
    """pykata-runc run with SCMP_ACT_NOTIFY rules: the seccomp agent at listenerPath gets the process's
    listener and answers its mkdir (success, nothing made); without the agent the run fails naming the
    path, and nothing of the container is left."""
    socket_path = runtime.workdir / "seccomp-agent.sock"
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": str(socket_path),
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
    }

    def with_profile(config: dict[str, Any]) -> None:
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/notify"
        config["linux"]["seccomp"] = profile

    script = "mkdir /dev/shm/d; echo rc=$?; ls -A /dev/shm | wc -l"
    bundle = make_bundle(runtime.workdir / "notify", ["/bin/sh", "-c", script], spec=runtime.spec, edit=with_profile)
    agent = SeccompAgent(socket_path)
    try:
        cid = runtime.new_id("notify")
        assert runtime("run", "-b", str(bundle), cid).stdout.split() == ["rc=0", "0"]
        ((state, fds),) = agent.wait_states(1)
        assert (fds, state["state"]["id"], state["state"]["status"], state["fds"]) == (
            1, cid, "creating", ["seccompFd"])  # fmt: skip
    finally:
        agent.close()
    socket_path.unlink()
    cid = runtime.new_id("notify")
    done = runtime("run", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1 and f"listenerPath {socket_path}" in done.stderr, done.stderr
    assert cid not in runtime("list", "-q").stdout.split() and not (runtime.root / cid).exists()


def test_repeated_runs_leave_nothing_behind(runtime: Runtime) -> None:
    def snapshot() -> tuple[int, list[str], list[Path]]:
        mounts = len(Path("/proc/self/mountinfo").read_text().splitlines())
        zombies = [
            p.name
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _stat_fields(p)[:2] == ["Z", str(os.getpid())]
        ]
        cgroups = sorted(p for p in CGROUP_FS.glob(f"*/{RUN_TAG}/cycle*") if not p.parent.parent.is_symlink())
        return mounts, zombies, cgroups

    bundle = runtime.bundle("cycle", ["/bin/true"])
    before = snapshot()
    for index in range(20):
        runtime("run", "-b", str(bundle), runtime.new_id(f"cycle-{index}"))
    assert snapshot() == before
    assert list(runtime.root.iterdir()) == []


def _stat_fields(proc_dir: Path) -> list[str]:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()


def _key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key of a JSON object, nested, as dotted paths (lists are not descended)."""
    if not isinstance(value, dict):
        return set()
    paths = set()
    for key, inner in value.items():
        paths.add(prefix + key)
        paths |= _key_paths(inner, f"{prefix}{key}.")
    return paths


def test_events_stats_are_laid_out_as_runcs(runtime: Runtime) -> None:
    ours_id, runcs_id = runtime.new_id("events"), f"{RUN_TAG}-events-runc"
    runtime("run", "-d", "-b", str(runtime.bundle("events", ["/bin/sleep", "300"])), ours_id)
    runc_root = runtime.workdir / "runc-state"
    runc = ["runc", "--root", str(runc_root)]
    subprocess.run([*runc, "run", "-d", "-b", str(runtime.bundle("events-runc", ["/bin/sleep", "300"])), runcs_id],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=60)  # fmt: skip
    try:
        ours = json.loads(runtime("events", "--stats", ours_id).stdout)
        theirs = json.loads(subprocess.run([*runc, "events", "--stats", runcs_id], check=True, capture_output=True,
                                           text=True, timeout=60).stdout)  # fmt: skip
    finally:
        subprocess.run([*runc, "delete", "--force", runcs_id], capture_output=True, timeout=60)
    assert (ours["type"], ours["id"]) == ("stats", ours_id)
    # no key runc does not have (the cgroup's own counters under memory.raw aside), and runc's main ones
    mine = {path for path in _key_paths(ours) if not path.startswith("data.memory.raw.")}
    runcs = {path for path in _key_paths(theirs) if not path.startswith("data.memory.raw.")}
    assert sorted(mine - runcs) == []
    assert {"data.cpu.usage.total", "data.cpu.usage.kernel", "data.memory.usage.limit", "data.memory.swap.failcnt",
            "data.pids.current", "data.cpuset.cpus", "data.memory.raw"} <= mine  # fmt: skip
    data = ours["data"]
    assert data["pids"]["current"] == 1  # the sleep
    assert data["memory"]["usage"]["usage"] > 0 and data["cpu"]["usage"]["total"] > 0
    assert data["cpuset"]["cpus"] == theirs["data"]["cpuset"]["cpus"]
    assert data["memory"]["raw"].keys() == theirs["data"]["memory"]["raw"].keys()


def test_events_stream_reports_an_oom_kill_and_ends_with_the_container(runtime: Runtime) -> None:
    def limited(config: dict[str, Any]) -> None:
        config["linux"].setdefault("resources", {})["memory"] = {"limit": 32 << 20, "swap": 32 << 20}

    # a shell variable that doubles until the 32 MiB limit stops it
    bundle = runtime.bundle("oom", ["/bin/sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"], limited)
    cid = runtime.new_id("oom")
    runtime("create", "-b", str(bundle), cid)
    events = subprocess.Popen([*runtime.command, "--root", str(runtime.root), "events", "--interval", "200ms", cid],
                              cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)  # fmt: skip
    runtime.pids.append(events.pid)
    try:
        assert events.stdout is not None
        first = json.loads(events.stdout.readline())
        assert (first["type"], first["id"]) == ("stats", cid)  # one at once, before the container runs
        runtime("start", cid)
        kinds = []
        for line in events.stdout:  # to its end: the command stops when the container has ended
            kinds.append(json.loads(line)["type"])
        assert events.wait(timeout=30) == 0
        assert "oom" in kinds, kinds
        assert runtime.state(cid)["status"] == "stopped"
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()


def test_events_refuses_a_bad_interval_and_a_stopped_container(runtime: Runtime) -> None:
    bundle = runtime.bundle("events-bad", ["/bin/true"])
    cid = runtime.new_id("events-bad")
    runtime("create", "-b", str(bundle), cid)
    done = runtime("events", "--interval", "5 parsecs", cid, check=False)
    assert done.returncode == 1 and "'5 parsecs' is not a duration" in done.stderr
    runtime("start", cid)
    wait_for(lambda: runtime.state(cid)["status"] == "stopped", "/bin/true to end")
    done = runtime("events", "--stats", cid, check=False)
    assert done.returncode == 1 and "is not running" in done.stderr


def test_exec_into_a_sub_cgroup(runtime: Runtime) -> None:
    bundle = runtime.bundle("subcg", ["/bin/sleep", "300"])
    cid = runtime.new_id("subcg")
    runtime("run", "-d", "-b", str(bundle), cid)
    hierarchies = [h for h in CGROUP_FS.iterdir() if not h.is_symlink() and (h / RUN_TAG / "subcg").is_dir()]
    for hierarchy in hierarchies:
        (hierarchy / RUN_TAG / "subcg" / "work").mkdir()
    cpuset = CGROUP_FS / "cpuset" / RUN_TAG / "subcg"
    if cpuset.is_dir():  # cgroup v1: a new cpuset takes no process until it has cpus and mems
        done = runtime("exec", "--cgroup", "cpuset:work", cid, "true", check=False)
        assert done.returncode == 1 and "needs its cpuset.cpus and cpuset.mems set first" in done.stderr
        for name in ("cpuset.cpus", "cpuset.mems"):
            (cpuset / "work" / name).write_text((cpuset / name).read_text())

    def cgroups_of_an_exec(*flags: str) -> dict[str, str]:
        out = runtime("exec", *flags, cid, "cat", "/proc/self/cgroup").stdout
        # "4:memory:/path" -> {"memory": "/path"}, one entry per controller of a hierarchy
        return {c: line.split(":", 2)[2] for line in out.splitlines() for c in line.split(":", 2)[1].split(",")}

    container_path = f"/{RUN_TAG}/subcg"
    everywhere = cgroups_of_an_exec("--cgroup", "work")
    assert everywhere["memory"] == everywhere["pids"] == f"{container_path}/work"
    only_memory = cgroups_of_an_exec("--cgroup", "memory:work")
    assert (only_memory["memory"], only_memory["pids"]) == (f"{container_path}/work", container_path)
    done = runtime("exec", "--cgroup", "nope", cid, "true", check=False)
    assert done.returncode == 1 and "sub-cgroup" in done.stderr and "nope does not exist" in done.stderr
    done = runtime("exec", "--cgroup", "../escape", cid, "true", check=False)
    assert done.returncode == 1 and "relative path below the container's cgroup" in done.stderr
    runtime("delete", "--force", cid)  # the sub-cgroups go with the container's
    assert not any((hierarchy / RUN_TAG / "subcg").exists() for hierarchy in hierarchies)


ATTRIBUTES_PROBE = (
    "cat /proc/self/personality; uname -m; cat /proc/sys/kernel/domainname; "
    "sed -n 's/^policy *: *//p' /proc/self/sched; cut -d' ' -f19 /proc/self/stat; "
    "sed -n 's/^Cpus_allowed_list:\\t//p' /proc/self/status; ionice"
)


def test_runtime_spec_process_attributes_apply_to_init_and_exec(runtime: Runtime) -> None:
    """domainname, linux.personality, and the process's ioPriority, scheduler and execCPUAffinity, as
    runc 1.2 applies them: read back by the container's own processes, the init's from its spec and
    an exec'd one's from its process.json (which gets the container's personality too)."""
    last_cpu = max(os.sched_getaffinity(0))

    def attributes(config: dict[str, Any]) -> None:
        config["domainname"] = "example.test"
        config["linux"]["personality"] = {"domain": "LINUX32"}
        config["process"]["ioPriority"] = {"class": "IOPRIO_CLASS_BE", "priority": 6}
        config["process"]["scheduler"] = {"policy": "SCHED_BATCH", "nice": 5}
        config["process"]["execCPUAffinity"] = {"initial": f"0-{last_cpu}", "final": str(last_cpu)}

    bundle = runtime.bundle("attrs", ["/bin/sh", "-c", ATTRIBUTES_PROBE + "; exec sleep 300"], edit=attributes)
    cid = runtime.new_id("attrs")
    runtime("run", "--detach", "--bundle", str(bundle), cid)
    wait_for(lambda: (bundle / "rootfs").exists() and runtime.state(cid)["status"] == "running", "the container")
    init = runtime.state(cid)["pid"]
    wait_for(lambda: Path(f"/proc/{init}/comm").read_text().strip() == "sleep", "the probe to finish")
    # the init's output went to our stdout file; read its attributes from the host instead
    assert Path(f"/proc/{init}/personality").read_text().strip() == "00000008"
    assert os.sched_getscheduler(init) == os.SCHED_BATCH
    assert os.getpriority(os.PRIO_PROCESS, init) == 5
    assert os.sched_getaffinity(init) == {last_cpu}
    assert subprocess.run(["ionice", "-p", str(init)], capture_output=True, text=True).stdout.strip() == (
        "best-effort: prio 6"
    )

    process = {"args": ["/bin/sh", "-c", ATTRIBUTES_PROBE], "cwd": "/", "env": ["PATH=/bin"],
               "user": {"uid": 0, "gid": 0}, "scheduler": {"policy": "SCHED_IDLE"},
               "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 0}}  # fmt: skip
    process_json = runtime.workdir / "attrs-process.json"
    process_json.write_text(json.dumps(process))
    lines = runtime("exec", "--process", str(process_json), cid).stdout.splitlines()
    assert lines[0] == "00000008"  # the container's personality
    assert lines[1] in ("i686", "i386")  # what uname reports under PER_LINUX32
    assert lines[2] == "example.test"
    assert lines[3] == str(os.SCHED_IDLE)
    assert lines[6] == "idle"
    runtime("delete", "--force", cid)
    wait_for(lambda: not alive(init), "the container to die")


def test_time_offsets_shift_the_containers_clocks(runtime: Runtime) -> None:
    """linux.timeOffsets: the container's monotonic and boot-time clocks are the host's plus the
    offsets: the init is in a time namespace of its own with them, and an exec'd process there reads
    the host's uptime plus the boot-time offset."""
    day, hour = 86400, 3600

    def offsets(config: dict[str, Any]) -> None:
        config["linux"]["namespaces"].append({"type": "time"})
        config["linux"]["timeOffsets"] = {"boottime": {"secs": 10 * day}, "monotonic": {"secs": hour, "nanosecs": 5}}

    bundle = runtime.bundle("timens", ["/bin/sleep", "300"], edit=offsets)
    cid = runtime.new_id("timens")
    runtime("run", "--detach", "--bundle", str(bundle), cid)
    init = runtime.state(cid)["pid"]
    assert Path(f"/proc/{init}/timens_offsets").read_text().split() == [
        "monotonic",
        str(hour),
        "5",
        "boottime",
        str(10 * day),
        "0",
    ]
    assert os.readlink(f"/proc/{init}/ns/time") != os.readlink("/proc/self/ns/time")
    host_before = float(Path("/proc/uptime").read_text().split()[0])  # boot time, as /proc/uptime counts it
    inside = float(runtime("exec", cid, "cat", "/proc/uptime").stdout.split()[0])
    host_after = float(Path("/proc/uptime").read_text().split()[0])
    assert host_before + 10 * day <= inside <= host_after + 10 * day
    runtime("delete", "--force", cid)
    wait_for(lambda: not alive(init), "the container to die")


def test_memory_policy_applies_to_init_and_exec(runtime: Runtime) -> None:
    """linux.memoryPolicy: the init's and an exec'd process's NUMA policy (numa_maps shows it for every
    mapping without one of its own); a node this host lacks fails the create by name, leaving nothing."""

    def bind_to_node0(config: dict[str, Any]) -> None:
        config["linux"]["memoryPolicy"] = {"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]}

    bundle = runtime.bundle("mempolicy", ["/bin/sleep", "300"], edit=bind_to_node0)
    cid = runtime.new_id("mempolicy")
    runtime("run", "--detach", "--bundle", str(bundle), cid)
    init = runtime.state(cid)["pid"]
    policies = {line.split()[1] for line in Path(f"/proc/{init}/numa_maps").read_text().splitlines()}
    assert policies == {"bind=static:0"}, policies
    exec_policies = {
        line.split()[1] for line in runtime("exec", cid, "cat", "/proc/self/numa_maps").stdout.splitlines()
    }
    assert exec_policies == {"bind=static:0"}, exec_policies
    runtime("delete", "--force", cid)
    wait_for(lambda: not alive(init), "the container to die")

    missing = max(int(name[4:]) for name in os.listdir("/sys/devices/system/node") if name[4:].isdigit()) + 1

    def bind_to_a_missing_node(config: dict[str, Any]) -> None:
        config["linux"]["memoryPolicy"] = {"mode": "MPOL_BIND", "nodes": str(missing)}

    bundle = runtime.bundle("mempolicybad", ["/bin/true"], edit=bind_to_a_missing_node)
    cid = runtime.new_id("mempolicybad")
    done = runtime("run", "--bundle", str(bundle), cid, check=False)
    assert done.returncode != 0 and "linux.memoryPolicy: Invalid argument" in done.stderr, done.stderr
    assert not (runtime.root / cid).exists()


def test_lsm_labels_are_applied_or_refused_by_name(runtime: Runtime) -> None:
    """An AppArmor profile or SELinux label the host cannot enforce is refused before anything is
    made (runc fails too); where the host has the LSM, the process runs confined as asked."""
    from agent.container import procattrs
    from agent.system.paths import HostPaths

    host = HostPaths()
    cases = [("apparmorProfile", "unconfined", procattrs.apparmor_enabled(host), "AppArmor is not enabled")]
    try:
        current = Path("/proc/self/attr/current").read_text().strip("\0\n")  # our own label, where an LSM has one
    except OSError:  # EINVAL: no LSM answers for this attribute
        current = ""
    cases.append(("selinuxLabel", current or "unconfined_u:unconfined_r:unconfined_t:s0",
                  procattrs.selinux_enabled(host), "SELinux is not enabled"))  # fmt: skip
    for field, label, enabled, refusal in cases:
        bundle = runtime.bundle(f"lsm-{field}", ["/bin/cat", "/proc/self/attr/current"], **{field: label})
        cid = runtime.new_id(f"lsm-{field}")
        done = runtime("run", "--bundle", str(bundle), cid, check=False)
        if enabled:
            assert done.returncode == 0, done.stderr
            assert label in done.stdout
        else:
            assert done.returncode == 1 and f"process.{field}" in done.stderr and refusal in done.stderr, done.stderr
            assert not (runtime.root / cid).exists()
            assert not [p for p in CGROUP_FS.glob(f"*/{RUN_TAG}/lsm-{field}") if not p.parent.parent.is_symlink()]


def _session_keyrings(name: str) -> list[str]:
    """The lines of /proc/keys for keyrings called ``name`` (root sees every root-owned key)."""
    return [line for line in Path("/proc/keys").read_text().splitlines() if line.endswith(f" keyring   {name}: empty")]


def test_each_container_joins_a_session_keyring_of_its_own(runtime: Runtime) -> None:
    """As runc: the container's processes leave the runtime's session keyring for one named
    ``_ses.<id>`` (exec'd ones join it too); ``--no-new-keyring`` keeps the inherited one, for the
    container's exec'd processes as well (later commands read it back from the state)."""

    def unmasked(config: dict[str, Any]) -> None:  # runc's spec masks /proc/keys
        config["linux"]["maskedPaths"] = [p for p in config["linux"]["maskedPaths"] if p != "/proc/keys"]

    bundle = runtime.bundle("keys", ["/bin/sleep", "300"], edit=unmasked)
    cid = runtime.new_id("keys")
    runtime("run", "--detach", "--bundle", str(bundle), cid)
    assert len(_session_keyrings(f"_ses.{cid}")) == 1
    seen = runtime("exec", cid, "/bin/grep", f"_ses.{cid}:", "/proc/keys").stdout.split()
    assert seen[0] == _session_keyrings(f"_ses.{cid}")[0].split()[0]  # the same keyring, not a second one
    runtime("delete", "--force", cid)

    other = runtime.new_id("keys-kept")
    runtime("run", "--detach", "--no-new-keyring", "--bundle", str(bundle), other)
    runtime("exec", other, "/bin/true")
    assert _session_keyrings(f"_ses.{other}") == []
    runtime("delete", "--force", other)


def _with_fds_3_and_4(runtime: Runtime, out: Path, given: Path) -> Runtime:
    """``runtime``'s commands with ``out`` open for writing as their fd 3 and ``given`` for reading as 4."""
    wrapped = Runtime(runtime.root, runtime.workdir, runtime.spec, RUN_TAG)
    wrapped.ids, wrapped.pids = runtime.ids, runtime.pids
    wrapped.command = ["/bin/sh", "-c", 'exec "$@" 3>"$PK_OUT" 4<"$PK_IN"', "sh", *runtime.command]
    wrapped.env = {**(runtime.env or os.environ), "PK_OUT": str(out), "PK_IN": str(given)}
    return wrapped


FD_PROBE = "echo to-three >&3; read line <&4; echo read $line; ls /proc/self/fd"


@pytest.mark.parametrize("mode", ["cold", "served"])
def test_preserve_fds_passes_descriptors_3_and_up(runtime: Runtime, mode: str, request: pytest.FixtureRequest) -> None:
    """runc's --preserve-fds: the caller's descriptors 3 .. 2+N are the process's 3 .. 2+N, for run and
    exec, and nothing else of the runtime's is open in it. With a server set, the command runs in the
    client, which holds the descriptors."""
    rt = request.getfixturevalue("served") if mode == "served" else runtime
    out, given = runtime.workdir / f"fd3-{mode}", runtime.workdir / f"fd4-{mode}"
    given.write_text("from-four\n")
    with_fds = _with_fds_3_and_4(rt, out, given)
    bundle = runtime.bundle(f"fds-{mode}", ["/bin/sh", "-c", FD_PROBE])
    done = with_fds("run", "--preserve-fds", "2", "--bundle", str(bundle), runtime.new_id(f"fds-{mode}"))
    lines = done.stdout.split()
    assert lines[:2] == ["read", "from-four"]
    assert sorted(lines[2:]) == ["0", "1", "2", "3", "4", "5"]  # 5: the directory ls is listing
    assert out.read_text() == "to-three\n"

    sleeper = runtime.bundle(f"fds-exec-{mode}", ["/bin/sleep", "300"])
    cid = runtime.new_id(f"fds-exec-{mode}")
    rt("run", "--detach", "--bundle", str(sleeper), cid)
    done = with_fds("exec", "--preserve-fds", "2", cid, "/bin/sh", "-c", FD_PROBE)
    assert done.stdout.split()[:2] == ["read", "from-four"]
    assert out.read_text() == "to-three\n"
    refused = rt("exec", "--preserve-fds", "3", cid, "/bin/true", check=False)
    assert refused.returncode == 1 and "--preserve-fds 3: descriptor" in refused.stderr, refused.stderr
    rt("delete", "--force", cid)


def _idmap_sources(base: Path) -> Path:
    """Files owned by different ids on the host, as runc's idmap tests have them."""
    source = base / "idmap-source"
    source.mkdir()
    for name, uid, gid in (("foo", 100, 211), ("bar", 101, 222), ("baz", 102, 233), ("root", 0, 0)):
        (source / name).write_text(name)
        os.chown(source / name, uid, gid)
    return source


def _ids(stat_lines: str) -> dict[str, tuple[int, int]]:
    """``stat -c %n=%u=%g`` lines as {file name: (uid, gid)}."""
    found = {}
    for line in stat_lines.split():
        name, uid, gid = line.rsplit("=", 2)
        found[os.path.basename(name)] = (int(uid), int(gid))
    return found


def test_idmapped_mounts_show_the_files_through_their_maps(runtime: Runtime) -> None:
    """runtime-spec 1.2's idmapped bind mounts, as runc 1.2 makes them, in a container without a user
    namespace: each file's owner is seen through the mount's maps (two mounts of one source with
    different maps differ), a plain bind of it shows the host's ids, and root (unmapped there) may not
    create a file in it (EOVERFLOW); the host's files keep their owners."""
    source = _idmap_sources(runtime.workdir)

    def idmapped(config: dict[str, Any]) -> None:
        config["mounts"] += [
            {"destination": "/m1", "type": "bind", "source": str(source), "options": ["bind"],
             "uidMappings": [{"containerID": 100, "hostID": 1100, "size": 3}],
             "gidMappings": [{"containerID": 200, "hostID": 1900, "size": 50}]},
            {"destination": "/m2", "type": "bind", "source": str(source), "options": ["rbind", "idmap", "ro"],
             "uidMappings": [{"containerID": 0, "hostID": 5000, "size": 200}],
             "gidMappings": [{"containerID": 0, "hostID": 6000, "size": 300}]},
            {"destination": "/plain", "type": "bind", "source": str(source), "options": ["bind"]},
        ]  # fmt: skip

    script = "for d in m1 m2 plain; do stat -c %n=%u=%g /$d/foo /$d/bar /$d/root; done; echo x > /m1/new"
    bundle = runtime.bundle("idmap", ["/bin/sh", "-c", script], edit=idmapped)
    done = runtime("run", "--bundle", str(bundle), runtime.new_id("idmap"), check=False)
    lines = done.stdout.split()
    m1, m2, plain = _ids(" ".join(lines[0:3])), _ids(" ".join(lines[3:6])), _ids(" ".join(lines[6:9]))
    assert m1 == {"foo": (1100, 1911), "bar": (1101, 1922), "root": (65534, 65534)}, done.stdout
    assert m2 == {"foo": (5100, 6211), "bar": (5101, 6222), "root": (5000, 6000)}, done.stdout
    assert plain == {"foo": (100, 211), "bar": (101, 222), "root": (0, 0)}, done.stdout
    assert done.returncode != 0 and "Value too large" in done.stderr, done.stderr
    assert not (source / "new").exists()
    assert (source / "foo").stat().st_uid == 100


def test_idmapped_mount_with_the_containers_user_namespace(runtime: Runtime) -> None:
    """ridmap alone takes the container's maps: in a user namespace mapping 0 to 100000, files the
    host's root owns in the source are root's inside, what root makes there is root's on the host,
    and a mount below the source (rbind) is idmapped too; a plain bind shows them unmapped. (The
    bundle and sources sit in a directory the container's root, host uid 100000, may walk through,
    as runc needs too: the test's own is root's alone.)"""
    walkable = Path(tempfile.mkdtemp(prefix="pykata-idmap-"))
    walkable.chmod(0o755)
    source = _idmap_sources(walkable)
    below = source / "below"
    below.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "pykata-idmap-test", str(below)], check=True)
    try:
        (below / "inner").write_text("x")

        def userns(config: dict[str, Any]) -> None:
            config["linux"]["namespaces"].append({"type": "user"})
            config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
            config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
            # a user namespace cannot mount cgroup v1, as runc's rootless spec knows
            config["mounts"] = [m for m in config["mounts"] if m["type"] != "cgroup"]
            config["linux"]["cgroupsPath"] = f"/{RUN_TAG}/idmapns"
            config["mounts"] += [
                {"destination": "/m", "type": "bind", "source": str(source), "options": ["rbind", "ridmap"]},
                # rbind: in a user namespace a bind may not leave out the locked mount below (EINVAL)
                {"destination": "/plain", "type": "bind", "source": str(source), "options": ["rbind"]},
            ]

        script = "stat -c %n=%u=%g /m/root /m/below/inner /plain/root; touch /m/made"
        bundle = make_bundle(walkable / "bundle", ["/bin/sh", "-c", script], spec=runtime.spec, edit=userns)
        for mount_point in ("m", "plain"):  # the rootfs is the host root's: the container's may not make them
            (bundle / "rootfs" / mount_point).mkdir()
        subprocess.run(["chmod", "-R", "a+rX", str(bundle)], check=True)
        done = runtime("run", "--bundle", str(bundle), runtime.new_id("idmapns"))
        seen = done.stdout.split()
        assert _ids(seen[0]) == {"root": (0, 0)} and _ids(seen[1]) == {"inner": (0, 0)}, done.stdout
        assert _ids(seen[2]) == {"root": (65534, 65534)}, done.stdout
        made = (source / "made").stat()
        assert (made.st_uid, made.st_gid) == (0, 0)
    finally:
        subprocess.run(["umount", str(below)], check=True)
        shutil.rmtree(walkable)


def test_idmapped_mount_refusals(runtime: Runtime) -> None:
    """A source whose file system refuses idmapping (proc) fails the create, naming the source, and
    leaves nothing behind; an idmapped tmpfs is refused before anything is made."""

    def proc_source(config: dict[str, Any]) -> None:
        config["mounts"].append({"destination": "/m", "type": "bind", "source": "/proc/self", "options": ["bind"],
                                 "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}],
                                 "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}]})  # fmt: skip

    bundle = runtime.bundle("idmapbad", ["/bin/true"], edit=proc_source)
    cid = runtime.new_id("idmapbad")
    done = runtime("run", "--bundle", str(bundle), cid, check=False)
    assert done.returncode != 0
    assert "idmapped" in done.stderr and "/proc/self" in done.stderr, done.stderr
    assert not (runtime.root / cid).exists()

    def idmapped_tmpfs(config: dict[str, Any]) -> None:
        config["mounts"].append({"destination": "/m", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]})

    bundle = runtime.bundle("idmaptmpfs", ["/bin/true"], edit=idmapped_tmpfs)
    done = runtime("run", "--bundle", str(bundle), runtime.new_id("idmaptmpfs"), check=False)
    assert done.returncode == 1 and "only a bind mount can be idmapped" in done.stderr, done.stderr


@pytest.fixture
def netns_runtime(runtime: Runtime) -> Iterator[tuple[Runtime, str]]:
    """``runtime`` whose commands run in a network namespace made for the test (the runtime's
    namespace, where the devices to move live), removed with everything in it at the end."""
    name = f"pykata-netdev-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    plain = runtime.command
    # nsenter, not `ip netns exec`: that one mounts a sysfs over /sys, which hides the cgroup mounts
    runtime.command = ["nsenter", f"--net=/run/netns/{name}", *plain]
    try:
        yield runtime, name
    finally:
        for container_id in runtime.ids:  # while the namespace is there (the fixture's own delete follows)
            runtime("delete", "--force", container_id, check=False)
        runtime.command = plain
        subprocess.run(["ip", "netns", "del", name], check=True)


def _links(netns: str) -> dict[str, str]:
    """The namespace's links by name, with their state (UP or DOWN, from their flags)."""
    shown = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True)
    links = {}
    for line in shown.stdout.splitlines():
        name, flags = line.split(": ")[1].split("@")[0], line.split("<")[1].split(">")[0].split(",")
        links[name] = "UP" if "UP" in flags else "DOWN"
    return links


def test_net_devices_move_into_the_container_and_back(netns_runtime: tuple[Runtime, str]) -> None:
    """linux.netDevices, as runc 1.3 moves them: the runtime's device goes into the container's network
    namespace under its new name, up, with nothing else changed (its MAC address); delete brings it
    back under its first name, down. A create that fails after the move (a failing createRuntime hook)
    gives it back too, and a device the runtime's namespace lacks is named in the error."""
    runtime, netns = netns_runtime
    # a veth pair (this kernel has no dummy driver): one end moves, its peer stays
    subprocess.run(["ip", "-n", netns, "link", "add", "pkdummy0", "address", "02:00:00:00:00:42", "type", "veth",
                    "peer", "name", "pkpeer0"], check=True)  # fmt: skip
    subprocess.run(["ip", "-n", netns, "link", "set", "pkdummy0", "up"], check=True)

    def move(config: dict[str, Any]) -> None:
        config["linux"]["netDevices"] = {"pkdummy0": {"name": "ctr0"}}

    bundle = runtime.bundle("netdev", ["/bin/sleep", "300"], edit=move)
    cid = runtime.new_id("netdev")
    runtime("run", "--detach", "--bundle", str(bundle), cid)
    assert "pkdummy0" not in _links(netns)
    inside = runtime("exec", cid, "ip", "-o", "link", "show", "ctr0").stdout
    assert "UP" in inside.split("<")[1].split(">")[0].split(",") and "02:00:00:00:00:42" in inside, inside
    runtime("delete", "--force", cid)
    assert _links(netns)["pkdummy0"] == "DOWN"

    def move_then_fail(config: dict[str, Any]) -> None:
        move(config)
        config["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}

    bundle = runtime.bundle("netdevfail", ["/bin/true"], edit=move_then_fail)
    done = runtime("run", "--bundle", str(bundle), runtime.new_id("netdevfail"), check=False)
    assert done.returncode != 0 and "createRuntime hook /bin/false failed" in done.stderr, done.stderr
    assert "pkdummy0" in _links(netns)

    def move_missing(config: dict[str, Any]) -> None:
        config["linux"]["netDevices"] = {"pknone0": {}}

    bundle = runtime.bundle("netdevnone", ["/bin/true"], edit=move_missing)
    done = runtime("run", "--bundle", str(bundle), runtime.new_id("netdevnone"), check=False)
    assert done.returncode != 0
    assert "linux.netDevices['pknone0']: cannot move it into the container: No such device" in done.stderr, done.stderr


def test_systemd_cgroup_is_refused_where_systemd_is_not_init(runtime: Runtime) -> None:
    """``--systemd-cgroup`` asks for a scope systemd makes; this host runs no systemd (the rootfs image's
    guest does: tests/vm/test_systemd_cgroup.py). Refused by name, before anything is made."""
    assert not Path("/run/systemd/system").exists(), "this test expects a host where systemd is not init"
    bundle = make_bundle(runtime.workdir / "sd", ["/bin/true"], spec=runtime.spec,
                         edit=lambda config: config["linux"].update(cgroupsPath="system.slice:pykata:sd"))  # fmt: skip
    cid = runtime.new_id("sd")
    done = runtime("--systemd-cgroup", "run", "-b", str(bundle), cid, check=False)
    assert done.returncode == 1
    assert "systemd is not this system's init" in done.stderr, done.stderr
    assert not (runtime.root / cid).exists()
    assert not list(CGROUP_FS.glob("*/system.slice/pykata-sd.scope"))
