"""The engine as root on the host: namespaces, capabilities, read-only root, masked paths,
exit codes and signals, exec, terminals. Containers run busybox from the session's rootfs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.engine import Engine, FdIO, start_detached
from agent.container.state import Status
from agent.errors import IncorrectState, NotFound, ResourceError
from agent.system.paths import HostPaths
from tests.conftest import REPO
from tests.helpers.bundle import make_rootfs
from tests.helpers.cgroups import cgroups_below
from tests.helpers.i386 import build_mkdir32
from tests.helpers.seccomp_agent import SeccompAgent
from tests.privileged.engine_helpers import ALL_NAMESPACES, ns_inode, read_to_end, run, spec_for, started


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    e = Engine(HostPaths())
    yield e
    e.close()


@pytest.fixture
def spec(runc_spec: dict[str, Any], busybox_rootfs: Path, cgroup_parent: str) -> Any:
    def make(name: str, args: list[str], **process: Any) -> dict[str, Any]:
        return spec_for(runc_spec, busybox_rootfs, args, cgroup_parent, name, **process)

    return make


def test_exit_code_and_stdout(engine: Engine, spec: Any) -> None:
    code, out, err = run(engine, "iso-exit", spec("iso-exit", ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"]))
    assert (code, out, err) == (7, b"out\n", b"err\n")


def test_signals_give_128_plus_n(engine: Engine, spec: Any) -> None:
    container = started(engine, "iso-sig", spec("iso-sig", ["/bin/sleep", "300"]))
    try:
        # an exec'd process is no pid 1, so SIGTERM's default action applies
        proc = container.exec("term", {"args": ["/bin/sleep", "300"], "cwd": "/"})
        container.signal(signal.SIGTERM, "term")
        assert proc.wait(20) == 128 + signal.SIGTERM
        # pid 1 of the container's pid namespace only dies of signals it handles, or SIGKILL
        container.signal(signal.SIGKILL)
        assert container.wait(timeout=20) == 128 + signal.SIGKILL
        assert container.status is Status.STOPPED
    finally:
        engine.remove("iso-sig", timeout=10)


def test_each_namespace_is_separate_and_exec_joins_them(engine: Engine, spec: Any) -> None:
    s = spec("iso-ns", ["/bin/sleep", "300"])
    s["linux"]["namespaces"] = ALL_NAMESPACES
    container = started(engine, "iso-ns", s)
    try:
        assert container.init is not None
        pid = container.init.pid
        for kind in ("pid", "net", "ipc", "uts", "mnt", "cgroup"):
            assert ns_inode(pid, kind) != ns_inode("self", kind), f"{kind} namespace is shared with the host"
        proc = container.exec("e1", {"args": ["/bin/sleep", "300"], "cwd": "/", "env": ["PATH=/bin"]})
        for kind in ("pid", "net", "ipc", "uts", "mnt", "cgroup"):
            assert ns_inode(proc.pid, kind) == ns_inode(pid, kind), f"exec is not in the container's {kind} namespace"
        assert proc.pid in container.pids()
        container.signal(signal.SIGKILL, "e1")
        assert proc.wait(20) == 137
    finally:
        engine.remove("iso-ns", timeout=10)


def test_exec_output_and_exit_code(engine: Engine, spec: Any) -> None:
    container = started(engine, "iso-exec", spec("iso-exec", ["/bin/sleep", "300"]))
    try:
        proc = container.exec("e1", {"args": ["/bin/sh", "-c", "hostname; cat /proc/1/cmdline; exit 4"], "cwd": "/"})
        out = read_to_end(proc.io.stdout)
        assert proc.wait(20) == 4
        assert out.split(b"\n")[0] == b"runc"  # the hostname in runc spec's config.json
        assert out.split(b"\n")[1].startswith(b"/bin/sleep")  # pid 1 is the container's init
    finally:
        engine.remove("iso-exec", timeout=10)


def test_capabilities_are_dropped(engine: Engine, spec: Any) -> None:
    code, out, _ = run(engine, "iso-caps", spec("iso-caps", ["/bin/sh", "-c", "grep Cap /proc/self/status"]))
    assert code == 0
    caps = dict(line.split(":\t") for line in out.decode().splitlines())
    # runc's default: AUDIT_WRITE(29), KILL(5), NET_BIND_SERVICE(10)
    expected = (1 << 29) | (1 << 5) | (1 << 10)
    assert int(caps["CapEff"], 16) == expected
    assert int(caps["CapBnd"], 16) == expected
    assert int(caps["CapPrm"], 16) == expected


def test_user_ids_and_no_caps_for_non_root(engine: Engine, spec: Any) -> None:
    s = spec("iso-user", ["/bin/sh", "-c", "id -u; id -g; id -G; grep CapEff /proc/self/status"])
    s["process"]["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [1002, 1003]}
    s["process"]["capabilities"] = {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")}
    code, out, err = run(engine, "iso-user", s)
    assert code == 0, err
    lines = out.decode().split("\n")
    assert lines[0] == "1000" and lines[1] == "1001"
    assert set(lines[2].split()) == {"1001", "1002", "1003"}
    assert lines[3] == "CapEff:\t0000000000000000"


def test_read_only_root_refuses_writes(engine: Engine, spec: Any) -> None:
    code, _, err = run(engine, "iso-ro", spec("iso-ro", ["/bin/sh", "-c", "echo x > /file-in-root"]))
    assert code != 0
    assert b"Read-only file system" in err


@pytest.fixture
def tree_with_a_submount(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a tmpfs mounted on a subdirectory (removed after the test)."""
    top = tmp_path / "shared"
    (top / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(top / "sub")], check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", str(top / "sub")], check=True)


@pytest.mark.parametrize(("options", "top_writable", "sub_writable"), [
    (["rbind", "ro"], False, True),  # ro remounts the bind's top mount only
    (["rbind", "rro"], False, False),  # rro: the mount and every mount below it (mount_setattr)
    (["rbind", "rro", "rrw"], True, True),  # a later word undoes an earlier one
])  # fmt: skip
def test_recursive_read_only_bind(
    engine: Engine, spec: Any, tree_with_a_submount: Path, options: list[str], top_writable: bool, sub_writable: bool
) -> None:
    name = f"iso-rro-{len(options)}{options[1]}"
    config = spec(name, ["/bin/sh", "-c", "touch /mnt/shared/top; echo top=$?; touch /mnt/shared/sub/x; echo sub=$?"])
    config["mounts"].append(
        {"destination": "/mnt/shared", "type": "bind", "source": str(tree_with_a_submount), "options": options}
    )
    code, out, _ = run(engine, name, config)
    assert code == 0
    assert out.decode().split() == [f"top={0 if top_writable else 1}", f"sub={0 if sub_writable else 1}"]
    assert (tree_with_a_submount / "top").exists() is top_writable
    assert (tree_with_a_submount / "sub" / "x").exists() is sub_writable


def test_tmpcopyup_tmpfs_starts_with_what_the_directory_held(engine: Engine, spec: Any, busybox_rootfs: Path) -> None:
    image = busybox_rootfs / "copyup"
    shutil.rmtree(image, ignore_errors=True)
    (image / "dir").mkdir(parents=True)
    (image / "file").write_text("from the image\n")
    (image / "file").chmod(0o604)  # others may read: the container has no CAP_DAC_OVERRIDE
    os.chown(image / "file", 1000, 1000)
    (image / "dir" / "inner").write_text("inner\n")
    (image / "link").symlink_to("file")
    os.mkfifo(image / "fifo", 0o600)
    script = ("cat /copyup/file /copyup/dir/inner; stat -c '%a %u %g' /copyup/file; readlink /copyup/link; "
              "stat -c %F /copyup/fifo; grep ' /copyup ' /proc/mounts | cut -d' ' -f3; "
              "echo new > /copyup/added; echo added=$?")  # fmt: skip
    config = spec("iso-copyup", ["/bin/sh", "-c", script])
    config["mounts"].append(
        {"destination": "/copyup", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "mode=755", "ro"]}
    )
    try:
        code, out, err = run(engine, "iso-copyup", config)
        copied = ["from the image", "inner", "604 1000 1000", "file", "fifo", "tmpfs"]
        # ro: the copy went in before the remount made it read-only
        assert (code, out.decode().splitlines()) == (0, [*copied, "added=1"])
        assert b"Read-only file system" in err

        config["mounts"][-1]["options"] = ["tmpcopyup"]
        code, out, err = run(engine, "iso-copyup", config)
        assert (code, out.decode().splitlines()) == (0, [*copied, "added=0"]), err
        assert not (image / "added").exists()  # the write went to the tmpfs, not the image
    finally:
        shutil.rmtree(image)


def test_masked_and_readonly_paths(engine: Engine, spec: Any) -> None:
    script = "wc -c < /proc/keys; ls /sys/firmware | wc -l; echo 1 > /proc/sys/kernel/domainname; echo rc=$?"
    _, out, err = run(engine, "iso-mask", spec("iso-mask", ["/bin/sh", "-c", script]))
    lines = out.decode().split()
    assert lines[0] == "0"  # /proc/keys is /dev/null
    assert lines[1] == "0"  # /sys/firmware is an empty read-only tmpfs
    assert lines[2] != "rc=0"  # /proc/sys is read-only
    assert b"Read-only file system" in err


def test_terminal_process_gets_a_tty(engine: Engine, spec: Any) -> None:
    s = spec("iso-tty", ["/bin/sh", "-c", "tty; test -t 0 && test -t 1 && echo both-tty"], terminal=True)
    container = engine.create("iso-tty", s)
    try:
        assert container.init is not None and container.init.io.pty_master is not None
        container.start()
        assert container.wait(timeout=20) == 0
        out = b""
        while True:
            try:
                chunk = os.read(container.init.io.pty_master, 4096)
            except OSError:
                break  # EIO: the slave side is closed
            if not chunk:
                break
            out += chunk
        assert b"/dev/console" in out or b"/dev/pts/" in out
        assert b"both-tty" in out
    finally:
        engine.remove("iso-tty", timeout=10)


def test_given_fds_become_stdio(engine: Engine, spec: Any, tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        container = engine.create(
            "iso-fdio", spec("iso-fdio", ["/bin/echo", "to-file"]), io=FdIO(None, out.fileno(), out.fileno())
        )
    try:
        container.start()
        assert container.wait(timeout=20) == 0
    finally:
        engine.remove("iso-fdio", timeout=10)
    assert out_path.read_bytes() == b"to-file\n"


def test_states_are_enforced(engine: Engine, spec: Any) -> None:
    container = engine.create("iso-state", spec("iso-state", ["/bin/sleep", "300"]))
    try:
        assert container.status is Status.CREATED
        with pytest.raises(IncorrectState, match="container iso-state is created; exec needs running"):
            container.exec("e", {"args": ["/bin/true"], "cwd": "/"})
        container.start()
        assert container.status is Status.RUNNING
        with pytest.raises(IncorrectState, match="container iso-state is running; start needs created"):
            container.start()
        container.pause()
        assert container.status is Status.PAUSED
        with pytest.raises(IncorrectState, match="is paused; exec needs running"):
            container.exec("e", {"args": ["/bin/true"], "cwd": "/"})
        container.resume()
        container.signal(signal.SIGKILL)
        container.wait(timeout=20)
        assert container.status is Status.STOPPED
        with pytest.raises(IncorrectState, match="is stopped"):
            container.pause()
    finally:
        engine.remove("iso-state", timeout=10)


def test_destroy_before_start_ends_the_process(engine: Engine, spec: Any) -> None:
    container = engine.create("iso-early", spec("iso-early", ["/bin/sleep", "300"]))
    assert container.init is not None
    pid = container.init.pid
    engine.remove("iso-early", timeout=10)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("own_pid_namespace", [True, False])
def test_remove_after_the_init_exited_leaves_no_process(engine: Engine, spec: Any, own_pid_namespace: bool) -> None:
    # a process the init left behind: gone with the init's pid namespace, or still in the cgroup
    # (sharing the runtime's pid namespace) until the removal kills it
    name = "iso-left-pidns" if own_pid_namespace else "iso-left-hostpid"
    config = spec(name, ["/bin/sh", "-c", "sleep 300 & exit 0"])
    if not own_pid_namespace:
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "pid"]
    container = started(engine, name, config)
    assert container.wait(timeout=20) == 0
    left = container.pids()
    assert (left == []) is own_pid_namespace
    engine.remove(name, timeout=10)
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in left) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(Path(f"/proc/{pid}").exists() for pid in left)
    assert name not in [c.id for c in engine.list()]


@pytest.fixture
def open_rootfs() -> Iterator[Path]:
    """A busybox rootfs whose parents any uid may traverse (the mapped root is no host root)."""
    top = Path(tempfile.mkdtemp(prefix="pykata-userns-", dir="/tmp"))
    top.chmod(0o755)
    try:
        yield make_rootfs(top / "rootfs")
    finally:
        shutil.rmtree(top)


def test_user_namespace_maps_ids(engine: Engine, spec: Any, open_rootfs: Path) -> None:
    s = spec("iso-userns", ["/bin/sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u"])
    s["root"]["path"] = str(open_rootfs)
    s["linux"]["namespaces"] = [*ALL_NAMESPACES, {"type": "user"}]
    s["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    s["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    # a user namespace may not mount cgroup v1 hierarchies: drop that mount, as rootless runc does
    s["mounts"] = [m for m in s["mounts"] if m["type"] != "cgroup"]
    container = engine.create("iso-userns", s)
    try:
        assert container.init is not None
        assert ns_inode(container.init.pid, "user") != ns_inode("self", "user")
        assert Path(f"/proc/{container.init.pid}/uid_map").read_text().split() == ["0", "200000", "65536"]
        container.start()
        out = read_to_end(container.init.io.stdout)
        assert container.wait(timeout=20) == 0, read_to_end(container.init.io.stderr)
        lines = [line.split() for line in out.decode().splitlines()]
        assert lines[0] == ["0", "200000", "65536"]
        assert lines[1] == ["0", "200000", "65536"]
        assert lines[2] == ["0"]
    finally:
        engine.remove("iso-userns", timeout=10)


def test_user_namespace_sees_its_cgroup_through_read_only_binds(engine: Engine, spec: Any, open_rootfs: Path) -> None:
    """A user namespace may not mount a cgroup v1 hierarchy: the spec's cgroup mount becomes a read-only
    bind of the container's own cgroup in each hierarchy, as runc does."""
    s = spec("iso-userns-cg", ["/bin/sh", "-c", "ls /sys/fs/cgroup/memory; touch /sys/fs/cgroup/memory/x || echo ro"])
    s["root"]["path"] = str(open_rootfs)
    s["linux"]["namespaces"] = [*ALL_NAMESPACES, {"type": "user"}]
    s["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 400000, "size": 65536}]
    s["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 400000, "size": 65536}]
    container = engine.create("iso-userns-cg", s)
    try:
        container.start()
        out = read_to_end(container.init.io.stdout if container.init else None).decode().split()
        assert container.wait(timeout=20) == 0
        assert "memory.limit_in_bytes" in out and "cgroup.procs" in out  # a memory cgroup's files
        assert out[-1] == "ro"
    finally:
        engine.remove("iso-userns-cg", timeout=10)


@pytest.mark.parametrize("cgroup_ns", [False, True], ids=["host-cgroup-ns", "own-cgroup-ns"])
def test_cgroup_mount_shows_the_containers_own_cgroup(
    engine: Engine, spec: Any, cgroup_parent: str, cgroup_ns: bool
) -> None:
    """On this cgroup v1 host the spec's cgroup mount shows each hierarchy from the container's own
    cgroup, as runc does: a read-only bind of it without a cgroup namespace (a cgroup file system
    mounted afresh there would show the whole hierarchy), a fresh mount inside its own cgroup
    namespace, whose root is that cgroup."""
    name = f"iso-cgview-{int(cgroup_ns)}"
    script = ("cat /sys/fs/cgroup/pids/pids.max; grep ' /sys/fs/cgroup/pids ' /proc/self/mountinfo | cut -d' ' -f4; "
              "ls /sys/fs/cgroup/pids | grep -c -v -e '^pids' -e '^cgroup' -e '^notify' -e '^tasks' -e '^release'; "
              "touch /sys/fs/cgroup/pids/x 2>/dev/null || echo ro")  # fmt: skip
    s = spec(name, ["/bin/sh", "-c", script])
    s["linux"]["namespaces"] = [n for n in s["linux"]["namespaces"] if n["type"] != "cgroup"]
    if cgroup_ns:
        s["linux"]["namespaces"].append({"type": "cgroup"})
    assert any(m["type"] == "cgroup" for m in s["mounts"])
    s["linux"]["resources"] = {"pids": {"limit": 42}}
    container = engine.create(name, s)
    try:
        container.start()
        out = read_to_end(container.init.io.stdout if container.init else None).decode().split()
        assert container.wait(timeout=20) == 0
        # its limit, seen from the mount's root; no other cgroup below it; read-only (runc's spec: "ro")
        assert out[0] == "42", out
        assert out[1] == ("/" if cgroup_ns else f"{cgroup_parent}/{name}"), out
        assert out[2:] == ["0", "ro"], out
    finally:
        engine.remove(name, timeout=10)


def test_exec_joins_a_user_namespace(engine: Engine, spec: Any, open_rootfs: Path) -> None:
    s = spec("iso-userns-exec", ["/bin/sleep", "300"])
    s["root"]["path"] = str(open_rootfs)
    s["linux"]["namespaces"] = [*ALL_NAMESPACES, {"type": "user"}]
    s["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    s["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    s["mounts"] = [m for m in s["mounts"] if m["type"] != "cgroup"]
    container = started(engine, "iso-userns-exec", s)
    try:
        assert container.init is not None
        proc = container.exec("e", {"args": ["/bin/sh", "-c", "id -u; cat /proc/self/uid_map"], "cwd": "/"})
        out = read_to_end(proc.io.stdout)
        assert proc.wait(20) == 0, read_to_end(proc.io.stderr)
        assert out.decode().split() == ["0", "0", "300000", "65536"]
        sleeper = container.exec("s", {"args": ["/bin/sleep", "300"], "cwd": "/"})
        deadline = time.monotonic() + 10  # exec returns once the process runs its setup; wait for its execve
        while Path(f"/proc/{sleeper.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ns_inode(sleeper.pid, "user") == ns_inode(container.init.pid, "user")
        uid_line = next(
            line for line in Path(f"/proc/{sleeper.pid}/status").read_text().splitlines() if line.startswith("Uid:")
        )
        assert uid_line.split()[1:] == ["300000"] * 4  # as the host sees it
    finally:
        engine.remove("iso-userns-exec", timeout=10)


def test_join_existing_namespace_by_path(engine: Engine, spec: Any) -> None:
    first = started(engine, "iso-join-a", spec("iso-join-a", ["/bin/sleep", "300"]))
    try:
        assert first.init is not None
        s = spec("iso-join-b", ["/bin/sleep", "300"])
        s["linux"]["namespaces"] = [
            {"type": "network", "path": f"/proc/{first.init.pid}/ns/net"},
            {"type": "ipc", "path": f"/proc/{first.init.pid}/ns/ipc"},
            {"type": "pid"},
            {"type": "mount"},
            {"type": "uts"},
        ]
        second = started(engine, "iso-join-b", s)
        try:
            assert second.init is not None
            for kind in ("net", "ipc"):
                assert ns_inode(second.init.pid, kind) == ns_inode(first.init.pid, kind)
            for kind in ("pid", "mnt", "uts"):
                assert ns_inode(second.init.pid, kind) != ns_inode(first.init.pid, kind)
        finally:
            engine.remove("iso-join-b", timeout=10)
    finally:
        engine.remove("iso-join-a", timeout=10)


def test_pids_limit_stops_a_fork_bomb(engine: Engine, spec: Any) -> None:
    s = spec("iso-pids", ["/bin/sh", "-c", "for i in $(seq 1 30); do sleep 300 & done; wait"])
    s["linux"]["resources"] = {"pids": {"limit": 10}}
    code, _, err = run(engine, "iso-pids", s)
    assert code == 2  # busybox sh gives up when fork fails
    assert b"can't fork: Resource temporarily unavailable" in err


def test_stats_update_pause(engine: Engine, spec: Any) -> None:
    s = spec("iso-stats", ["/bin/sh", "-c", "sleep 300 & sleep 300 & wait"])
    s["linux"]["resources"] = {"pids": {"limit": 10}, "memory": {"limit": 64 << 20}}
    container = started(engine, "iso-stats", s)
    try:
        deadline = time.monotonic() + 10
        while len(container.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = container.stats()
        assert stats.pids_stats.current == 3
        assert stats.pids_stats.limit == 10
        assert stats.memory_stats.usage.limit == 64 << 20
        container.update({"pids": {"limit": 20}})
        assert container.stats().pids_stats.limit == 20
        container.pause()
        assert container.status is Status.PAUSED
        dirs = container.cgroup.directories()
        if "freezer" in dirs:
            assert Path(dirs["freezer"], "freezer.state").read_text().strip() == "FROZEN"
        else:
            assert Path(next(iter(dirs.values())), "cgroup.freeze").read_text().strip() == "1"
        container.resume()
        assert container.status is Status.RUNNING
    finally:
        engine.remove("iso-stats", timeout=10)


@pytest.mark.parametrize("no_new_privileges", [True, False])
def test_seccomp_profile_is_enforced(engine: Engine, spec: Any, no_new_privileges: bool) -> None:
    s = spec("iso-seccomp", ["/bin/sh", "-c", "mkdir /tmp/x; echo rc=$?; grep Seccomp: /proc/self/status; echo ok"])
    s["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})
    s["process"]["noNewPrivileges"] = no_new_privileges
    s["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    code, out, err = run(engine, "iso-seccomp", s)
    assert code == 0
    assert out.decode().split("\n")[:3] == ["rc=1", "Seccomp:\t2", "ok"]
    assert b"Permission denied" in err  # EACCES (13), the rule's errnoRet


def test_a_default_profile_of_docker_s_shape_covers_32_bit_calls(engine: Engine, spec: Any, tmp_path: Path) -> None:
    """A profile shaped as Docker's and containerd's defaults (errno by default, an allow list of some
    four hundred names, architectures x86_64, x86 and x32) on a container: its shell runs, and the rule
    for mkdir (EROFS, not the default's EPERM) answers a 64-bit call and a 32-bit one (int $0x80) alike:
    the 32-bit call went through the i386 section, not to the default."""
    from agent.container.syscalls_i386 import SYSCALLS_I386
    from agent.container.syscalls_x86_64 import SYSCALLS_X86_64

    tools = tmp_path / "tools"
    tools.mkdir()
    build_mkdir32(tools)
    allowed = sorted((set(SYSCALLS_X86_64) | set(SYSCALLS_I386)) - {"mkdir", "mkdirat"})
    s = spec("iso-docker", ["/bin/sh", "-c", "mkdir /tmp/a; echo rc=$?; /tools/mkdir32 /tmp/b; ls -A /tmp | wc -l"])
    tools_mount = {"destination": "/tools", "type": "bind", "source": str(tools), "options": ["rbind", "ro"]}
    s["mounts"] += [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}, tools_mount]
    s["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS},
        ],
    }
    code, out, err = run(engine, "iso-docker", s)
    assert code == 0, err
    assert out.split() == [b"rc=1", str(-errno.EROFS).encode(), b"0"]  # the rule's errno to both; nothing made
    assert b"Read-only file system" in err


def _audited_mkdir_errnos() -> int:
    """How many seccomp audit records (type 1326) of a mkdir program's mkdir call (syscall 83) answered
    with an errno (the action, 0x50000, without its data) the kernel log holds."""
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    wanted = ("type=1326", 'comm="mkdir"', " syscall=83 ", " code=0x50000")
    return sum(1 for line in log.splitlines() if all(part in line for part in wanted))


@pytest.mark.parametrize("flags", [["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"], []])
def test_seccomp_filter_flags_are_the_filters(engine: Engine, spec: Any, flags: list[str]) -> None:
    """The profile's flags reach the kernel with the filter: with SECCOMP_FILTER_FLAG_LOG the errno
    action is written to the audit log (the kernel log here); without it, it is not."""
    errno_value = 77  # EBADFD: an answer nothing else here gives mkdir
    s = spec("iso-secflags", ["/bin/mkdir", "/tmp/x"])
    s["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})
    s["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": flags,
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno_value}],
    }
    before = _audited_mkdir_errnos()
    code, _out, err = run(engine, "iso-secflags", s)
    assert code == 1 and b"File descriptor in bad state" in err, err  # the rule's errno
    deadline = time.monotonic() + 2  # (the record is written as the call returns; printk may lag)
    while _audited_mkdir_errnos() == before and flags and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _audited_mkdir_errnos() - before == (1 if flags else 0)


@pytest.fixture
def seccomp_agent(tmp_path: Path) -> Iterator[tuple[SeccompAgent, str]]:
    path = tmp_path / "agent.sock"
    agent = SeccompAgent(path)
    yield agent, str(path)
    agent.close()


MKDIR_CALLS = {83, 258}  # mkdir, mkdirat (x86_64)


@pytest.mark.parametrize("no_new_privileges", [True, False])
def test_seccomp_notify_hands_the_calls_to_an_agent(
    engine: Engine, spec: Any, seccomp_agent: tuple[SeccompAgent, str], no_new_privileges: bool
) -> None:
    """SCMP_ACT_NOTIFY: the container process's listener reaches the seccomp agent at listenerPath
    with the container process state before the create returns (runc's order); the agent answers
    mkdir (success, nothing made) for the init and for an exec'd process, whose state follows."""
    agent, path = seccomp_agent
    s = spec("iso-notify", ["/bin/sh", "-c", "mkdir /tmp/x; echo rc=$?; ls -A /tmp | wc -l"])
    s["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})
    s["process"]["noNewPrivileges"] = no_new_privileges
    s["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": path,
        "listenerMetadata": "pykata-test",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
    }
    container = engine.create("iso-notify", s)
    try:
        assert container.init is not None
        pid = container.init.pid
        ((state, fds),) = agent.wait_states(1)
        assert fds == 1
        assert state == {
            "ociVersion": s["ociVersion"], "fds": ["seccompFd"], "pid": pid, "metadata": "pykata-test",
            "state": {"ociVersion": s["ociVersion"], "id": "iso-notify", "status": "creating", "pid": pid,
                      "bundle": state["state"]["bundle"], "annotations": {}},
        }  # fmt: skip
        container.start()
        out = read_to_end(container.init.io.stdout)
        assert container.wait(timeout=30) == 0
        assert out.split() == [b"rc=0", b"0"]  # the agent said yes and made nothing
        assert set(agent.calls) & MKDIR_CALLS
    finally:
        engine.remove("iso-notify", timeout=10)
    exec_spec = spec("iso-notify-exec", ["/bin/sleep", "300"])
    exec_spec["process"]["noNewPrivileges"] = no_new_privileges
    exec_spec["mounts"] = s["mounts"]
    exec_spec["linux"]["seccomp"] = s["linux"]["seccomp"]
    container = started(engine, "iso-notify-exec", exec_spec)
    try:
        assert container.init is not None
        proc = container.exec("e1", {"args": ["/bin/sh", "-c", "mkdir /tmp/y; echo rc=$?; ls -A /tmp | wc -l"],
                                     "cwd": "/", "noNewPrivileges": no_new_privileges})  # fmt: skip
        assert read_to_end(proc.io.stdout).split() == [b"rc=0", b"0"]
        assert proc.wait(20) == 0
        state, fds = agent.wait_states(2)[-1]
        assert (fds, state["pid"], state["state"]["status"], state["state"]["pid"]) == (
            1, proc.pid, "running", container.init.pid)  # fmt: skip
    finally:
        engine.remove("iso-notify-exec", timeout=10)


def test_seccomp_notify_without_its_agent_fails_the_create_and_leaves_nothing(
    engine: Engine, spec: Any, cgroup_parent: str, tmp_path: Path
) -> None:
    s = spec("iso-noagent", ["/bin/true"])
    s["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": str(tmp_path / "nobody.sock"),
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
    }
    with pytest.raises(ResourceError, match=r"linux\.seccomp\.listenerPath .*nobody\.sock"):
        engine.create("iso-noagent", s)
    assert engine.list() == []
    assert not [path for path in cgroups_below(cgroup_parent) if path.name == "iso-noagent"]


def test_hooks_run_at_their_points_in_their_namespaces(engine: Engine, spec: Any, tmp_path: Path) -> None:
    """Each hook gets the state on stdin, in the runtime-spec's order. prestart, createRuntime and
    poststart/poststop run in the runtime's namespaces; createContainer in the container's (its pid
    namespace: it sees itself as a child of pid 1) before the root changes; startContainer in the
    container after the root changed (its path is the container's)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    hook_script = shared / "hook.sh"
    # argv: hook.sh KIND; LOG names the log file as the hook sees it
    # prints KIND, its parent's pid (as its own pid namespace sees it) and which root it sees
    hook_script.write_text(
        f"#!/bin/sh\nif [ -e {hook_script} ]; then root=runtime; else root=container; fi\n"
        '{ echo "$1 $PPID $root"; cat; echo; } >> "$LOG"\n'
    )
    hook_script.chmod(0o755)
    s = spec("iso-hooks", ["/bin/true"])
    s["mounts"].append({"destination": "/shared", "type": "bind", "source": str(shared), "options": ["rbind"]})
    host_hook = {"path": str(hook_script), "env": [f"LOG={shared}/hooks.log"]}
    s["hooks"] = {
        kind: [{**host_hook, "args": ["hook.sh", kind]}]
        for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")
    }
    s["hooks"]["startContainer"] = [
        {"path": "/shared/hook.sh", "args": ["hook.sh", "startContainer"], "env": ["LOG=/shared/hooks.log"]}
    ]
    code, _, _ = run(engine, "iso-hooks", s)
    assert code == 0
    lines = (shared / "hooks.log").read_text().splitlines()
    heads = [line.split() for line in lines[0::2]]
    states = [json.loads(line) for line in lines[1::2]]
    kinds = [head[0] for head in heads]
    assert kinds == ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
    parents = {head[0]: int(head[1]) for head in heads}
    roots = {head[0]: head[2] for head in heads}
    assert states[0]["status"] == "creating" and states[0]["pid"] > 0
    assert all(state["id"] == "iso-hooks" for state in states)
    assert states[2]["pid"] == states[0]["pid"]  # the container's pid, as the runtime sees it
    # createContainer and startContainer are children of the container's init, pid 1 of its pid
    # namespace; createContainer still sees the runtime's root, startContainer the container's
    assert parents["createContainer"] == 1 and parents["startContainer"] == 1
    assert roots["createContainer"] == "runtime" and roots["startContainer"] == "container"
    assert 1 not in (parents["prestart"], parents["createRuntime"], parents["poststart"], parents["poststop"])
    assert roots["prestart"] == roots["poststop"] == "runtime"
    assert states[-1]["status"] == "stopped"


def test_failing_create_container_hook_undoes_the_create(engine: Engine, spec: Any, cgroup_parent: str) -> None:
    s = spec("iso-badcc", ["/bin/true"])
    s["hooks"] = {"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}]}
    with pytest.raises(ResourceError, match="createContainer hook /bin/sh failed with exit status 4"):
        engine.create("iso-badcc", s)
    assert "iso-badcc" not in [c.id for c in engine.list()]
    assert not list(Path("/sys/fs/cgroup/pids").joinpath(cgroup_parent.strip("/")).glob("iso-badcc"))


def test_failing_prestart_hook_undoes_the_create(engine: Engine, spec: Any, cgroup_parent: str) -> None:
    s = spec("iso-badhook", ["/bin/true"])
    s["hooks"] = {"prestart": [{"path": "/bin/false"}]}
    with pytest.raises(ResourceError, match="prestart hook /bin/false failed"):
        engine.create("iso-badhook", s)
    assert engine.list() == [] or "iso-badhook" not in [c.id for c in engine.list()]
    assert not list(Path("/sys/fs/cgroup/pids").joinpath(cgroup_parent.strip("/")).glob("iso-badhook"))


def test_no_pivot_mode_moves_the_root(spec: Any) -> None:
    """MS_MOVE + chroot, the path for an initramfs root where pivot_root cannot work."""
    moving = Engine(HostPaths(), no_pivot=True)
    try:
        container = started(moving, "iso-nopivot", spec("iso-nopivot", ["/bin/sleep", "300"]))
        try:
            proc = container.exec("e", {"args": ["/bin/sh", "-c", "ls /bin/busybox; cat /proc/1/cmdline"], "cwd": "/"})
            out = read_to_end(proc.io.stdout)
            assert proc.wait(20) == 0
            assert out.startswith(b"/bin/busybox\n/bin/sleep")
            assert container.init is not None
            assert os.readlink(f"/proc/{container.init.pid}/root") == "/"  # chroot'ed at the moved mount
        finally:
            moving.remove("iso-nopivot", timeout=10)
    finally:
        moving.close()


def test_signal_dispositions_are_the_defaults(engine: Engine, spec: Any) -> None:
    # SigIgn lists the ignored signals; Python's own ignored SIGPIPE must not leak into containers
    code, out, _ = run(engine, "iso-sigign", spec("iso-sigign", ["/bin/grep", "SigIgn", "/proc/self/status"]))
    assert code == 0
    assert out == b"SigIgn:\t0000000000000000\n"


def test_sysctl_rlimits_oom_score_cwd_env(engine: Engine, spec: Any) -> None:
    script = "cat /proc/sys/net/ipv4/ip_forward; ulimit -n; cat /proc/self/oom_score_adj; pwd; echo $GREETING; hostname"
    s = spec("iso-knobs", ["/bin/sh", "-c", script], cwd="/tmp", env=["PATH=/bin", "GREETING=hi"])
    s["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    s["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]
    s["process"]["oomScoreAdj"] = 500
    s["hostname"] = "knobs"
    code, out, err = run(engine, "iso-knobs", s)
    assert code == 0, err
    assert out.decode().split("\n")[:6] == ["1", "123", "500", "/tmp", "hi", "knobs"]
    # the host's own settings are untouched
    assert Path("/proc/self/oom_score_adj").read_text().strip() != "500"


def test_start_through_a_fifo_from_another_process(engine: Engine, spec: Any, tmp_path: Path) -> None:
    """What a runtime CLI needs: ``create`` in one process, ``start`` in a later one."""
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo, 0o600)
    container = engine.create("iso-fifo", spec("iso-fifo", ["/bin/echo", "started"]), start_fifo=fifo)
    try:
        assert container.init is not None and container.init.exit_code is None
        starter = subprocess.run(
            [sys.executable, "-c", f"from agent.container.engine import start_detached; start_detached({str(fifo)!r})"],
            cwd=REPO,
            capture_output=True,
            timeout=30,
        )
        assert starter.returncode == 0, starter.stderr
        assert container.wait(timeout=20) == 0
        assert read_to_end(container.init.io.stdout) == b"started\n"
        with pytest.raises(NotFound, match="no container waits"):
            start_detached(fifo)
    finally:
        engine.remove("iso-fifo", timeout=10)


def test_spec_devices_are_created(engine: Engine, spec: Any) -> None:
    s = spec("iso-dev", ["/bin/sh", "-c", "ls -ln /dev/mynull; echo hi > /dev/mynull && echo written"])
    s["linux"]["devices"] = [
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 5, "gid": 6}
    ]
    s["linux"]["resources"]["devices"].append({"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
    code, out, err = run(engine, "iso-dev", s)
    assert code == 0, err
    fields = out.decode().split()
    assert fields[0] == "crw-rw-rw-" and fields[2:4] == ["5", "6"] and fields[4:6] == ["1,", "3"]
    assert out.decode().endswith("written\n")


def test_fork_server_inherits_the_agents_module_path(spec: Any, tmp_path: Path) -> None:
    """An agent started with -S and a sys.path of its own (as in the initrd) still gets a fork server."""
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path[:0] = [{str(REPO)!r}]\n"
        f"sys.path += {site_packages!r}\n"
        "from agent.container.engine import Engine\n"
        "from agent.system.paths import HostPaths\n"
        "from tests.privileged.engine_helpers import run\n"
        "engine = Engine(HostPaths())\n"
        "code, out, err = run(engine, 'iso-dash-s', json.loads(sys.argv[1]))\n"
        "engine.close()\n"
        "print(code, out.decode().strip())\n"
    )
    s = spec("iso-dash-s", ["/bin/echo", "from-S"])
    done = subprocess.run(
        [sys.executable, "-S", str(script), json.dumps(s)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 from-S"
