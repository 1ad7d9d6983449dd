"""pykata-runc run by a user other than root, as rootless runc is (root makes the user's world).

The test runs the command line as an unprivileged uid with util-linux's ``setpriv`` (no passwd entry
needed). That uid cannot read root's home, where the test's own interpreter and site-packages may
be, so the command runs under the system's ``python3.X`` from a copy of the agent package and
python-prctl's C module, in a directory of the test's own; the bundle's config.json is the one
``pykata-runc spec --rootless`` writes as that uid. Everything is owned by the test and removed at
the end: its directory, and the uid's processes that name it (killed by pid).
"""

from __future__ import annotations

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

from tests.conftest import REPO, require_root
from tests.helpers.bundle import make_rootfs
from tests.privileged.runc_helpers import run_command

UID = 46117  # no such user: setpriv needs none, and no file of the host belongs to it
LAUNCH = "import sys; sys.path[0:0] = [{path!r}]; from agent.container.cli_client import main; main()"
SUBUIDS, SUBGIDS = (200000, 65536), (300000, 65536)  # what /etc/subuid and /etc/subgid grant it, for newuidmap
SUBIDS_SETUP = f"""
mount -t tmpfs pykata-etc "$1"
mkdir "$1/upper" "$1/work"
mount -t overlay pykata-etc -o lowerdir=/etc,upperdir="$1/upper",workdir="$1/work" /etc
echo "pykata-rootless:x:{UID}:{UID}::/nonexistent:/usr/sbin/nologin" >> /etc/passwd
echo "pykata-rootless:{SUBUIDS[0]}:{SUBUIDS[1]}" >> /etc/subuid
echo "pykata-rootless:{SUBGIDS[0]}:{SUBGIDS[1]}" >> /etc/subgid
shift
exec "$@"
"""


class Rootless:
    """The unprivileged user's pykata-runc, bundle and state, in a directory only this test uses."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.python = self._python()
        self.modules = base / "py"
        shutil.copytree(REPO / "agent", self.modules / "agent", ignore=shutil.ignore_patterns("__pycache__"))
        import _prctl

        shutil.copy2(_prctl.__file__, self.modules)  # type: ignore[arg-type]
        self.etc = base / "etc"  # a tmpfs there (in the command's mount namespace) holds the /etc overlay's layers
        self.etc.mkdir()
        self.runtime_dir = base / "run"
        self.bundle = base / "bundle"
        for directory in (self.runtime_dir, self.bundle):
            directory.mkdir()
            os.chown(directory, UID, UID)
        make_rootfs(self.bundle / "rootfs")
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)

    @staticmethod
    def _python() -> str:
        """An interpreter of this version that other users may run (the system's, usually)."""
        system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if not os.access(system, os.X_OK):
            pytest.fail(f"{system} is missing: the unprivileged user needs an interpreter outside root's home")
        return system

    def __call__(
        self, *args: str, check: bool = True, cgroup2: bool = False, subids: bool = False, nosuid: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """The command as the user; ``cgroup2``: in a mount namespace of its own where /sys/fs/cgroup is a
        cgroup2 mount, as on a host with cgroup v2 alone (root makes it, then becomes the user);
        ``subids``: in a mount namespace of its own where /etc (an overlay: the host's files stay as
        they are) names the user and grants it SUBUIDS and SUBGIDS, for newuidmap and newgidmap;
        ``nosuid``: in a mount namespace of its own where the bundle is a nosuid,nodev mount (as /run is)."""
        env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(self.runtime_dir)}
        wrap: list[str] = []
        if nosuid:
            script = 'mount --bind "$0" "$0"; mount -o remount,bind,nosuid,nodev "$0"; exec "$@"'
            wrap = ["unshare", "-m", "--propagation", "private", "sh", "-ec", script, str(self.bundle)]
        elif cgroup2:
            wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"', "sh"]  # fmt: skip
        elif subids:
            wrap = ["unshare", "-m", "--propagation", "private", "sh", "-ec", SUBIDS_SETUP, "sh", str(self.etc)]
        # A login's bounding set is full; other tests empty it to be sure nothing privileged is left,
        # but the setuid newuidmap needs CAP_SETUID from it (the set limits what a setuid file gets).
        user = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=-all",
                *([] if subids else ["--bounding-set=-all"])]  # fmt: skip
        launch = [self.python, "-S", "-B", "-c", LAUNCH.format(path=str(self.modules))]
        command = [*wrap, *user, *launch, *args]
        return run_command(command, args, check=check, cwd=self.bundle, env=env)

    def config(self, **process: Any) -> None:
        """``spec --rootless`` as the user, then ``process`` fields over its process (terminal off)."""
        (self.bundle / "config.json").unlink(missing_ok=True)
        self("spec", "--rootless")
        spec = json.loads((self.bundle / "config.json").read_text())
        spec["process"].update(terminal=False, **process)
        (self.bundle / "config.json").write_text(json.dumps(spec))

    def processes(self) -> list[int]:
        """The user's live processes (every one of them started by this test); zombies are not counted:
        a shim whose command has exited is reaped by pid 1, in its own time."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if not entry.name.isdigit() or entry.stat().st_uid != UID:
                    continue
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


@pytest.fixture
def rootless() -> Iterator[Rootless]:
    require_root()
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv not found: apt-get install util-linux")
    base = Path(tempfile.mkdtemp(prefix="pykata-rootless-"))
    base.chmod(0o755)
    own = None
    try:
        own = Rootless(base)
        assert own.processes() == [], f"uid {UID} already runs processes: pick another for this test"
        yield own
    finally:
        left = own.processes() if own is not None else []
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base)
    assert not left, f"processes of uid {UID} left behind: {left}"


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_rootless_run_maps_the_user_to_root_in_a_user_namespace(rootless: Rootless) -> None:
    script = "id -u; cat /proc/self/uid_map; cat /proc/self/gid_map; hostname; ls /sys/fs/cgroup | head -1; exit 7"
    rootless.config(args=["/bin/sh", "-c", script])
    done = rootless("run", "r1", check=False)
    assert done.returncode == 7, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines[0] == ["0"]
    assert lines[1] == ["0", str(UID), "1"] and lines[2] == ["0", str(UID), "1"]
    assert lines[3] == ["runc"]
    assert lines[4], "the spec's cgroup mount shows the starter's cgroups (read-only binds)"
    assert not (rootless.runtime_dir / "pykata-runc" / "r1").exists()  # state in $XDG_RUNTIME_DIR, removed


def test_rootless_on_a_cgroup_v2_host_shows_the_starters_cgroup(rootless: Rootless) -> None:
    """With cgroup2 alone, the spec's cgroup mount is a read-only bind of the cgroup the user runs in."""
    rootless.config(args=["/bin/sh", "-c", "ls /sys/fs/cgroup; touch /sys/fs/cgroup/x || echo read-only"])
    done = rootless("run", "r5", cgroup2=True)
    listed = done.stdout.split()
    assert "cgroup.procs" in listed and "cgroup.controllers" in listed
    assert listed[-1] == "read-only"


def test_rootless_read_only_root_keeps_the_flags_locked_on_its_mount(rootless: Rootless) -> None:
    """A bundle on a nosuid,nodev mount (a rootless container's rootfs under /run, say): in the container's
    user namespace those flags are locked on its copy of the mount, and the read-only root is remounted
    keeping them (runc does the same; a plain read-only remount is refused: EPERM)."""
    script = "touch /x 2>/dev/null || echo read-only; grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ' /proc/self/mountinfo"
    rootless.config(args=["/bin/sh", "-c", script])
    done = rootless("run", "r9", nosuid=True)
    first, root = done.stdout.splitlines()
    assert first == "read-only"
    assert {"ro", "nosuid", "nodev"} <= set(root.split()[5].split(",")), root


def test_rootless_lifecycle_without_a_cgroup(rootless: Rootless) -> None:
    """create, start, exec, ps, kill and delete work without a cgroup; what needs one says so."""
    rootless.config(args=["/bin/sleep", "300"])
    rootless("create", "r2")
    state = json.loads(rootless("state", "r2").stdout)
    assert state["status"] == "created"
    assert (rootless.runtime_dir / "pykata-runc" / "r2" / "state.json").exists()
    rootless("start", "r2")
    exec_out = rootless("exec", "r2", "/bin/sh", "-c", "id -u; readlink /proc/self/ns/pid").stdout.split()
    assert exec_out[0] == "0"
    assert exec_out[1] == os.readlink(f"/proc/{state['pid']}/ns/pid")
    listed = rootless("ps", "r2").stdout
    assert str(state["pid"]) in listed
    for command, message in (
        (("pause", "r2"), "pausing freezes a cgroup, and this rootless container has none"),
        (("update", "--memory", "100M", "r2"), "this container has no cgroup of its own"),
        (("events", "--stats", "r2"), "statistics come from a cgroup"),
    ):
        done = rootless(*command, check=False)
        assert done.returncode == 1 and message in done.stderr, (command, done.stderr)
    rootless("kill", "--all", "r2", "KILL")
    wait_for(lambda: json.loads(rootless("state", "r2").stdout)["status"] == "stopped", "the container to stop")
    rootless("delete", "r2")
    assert rootless("list", "-q").stdout == ""


def test_rootless_refusals_leave_nothing_behind(rootless: Rootless) -> None:
    """Limits need a cgroup the user may not make; a spec without a user namespace cannot be made."""
    rootless.config(args=["/bin/true"])
    spec = json.loads((rootless.bundle / "config.json").read_text())
    spec["linux"]["resources"] = {"memory": {"limit": 64 << 20}}
    (rootless.bundle / "config.json").write_text(json.dumps(spec))
    done = rootless("run", "r3", check=False)
    assert done.returncode == 1 and "linux.resources.memory: this container has no cgroup" in done.stderr
    spec["linux"].pop("resources")
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "user"]
    (rootless.bundle / "config.json").write_text(json.dumps(spec))
    done = rootless("run", "r4", check=False)
    assert done.returncode == 1 and "only make a container in a new user namespace" in done.stderr
    assert not list((rootless.runtime_dir / "pykata-runc").glob("r*"))
    assert rootless.processes() == []


@pytest.fixture
def delegated() -> Iterator[tuple[str, Path]]:
    """A cgroup root makes in every cgroup v1 hierarchy and hands to the user (runc's delegated
    subtree): the directory and its tasks and cgroup.procs files are the user's. Removed after.
    Yields its path below the hierarchies and its directory in the pids hierarchy."""
    from agent.container.cgroups.layout import detect
    from agent.system.paths import HostPaths

    layout = detect(HostPaths("/"))
    if layout.version != 1:
        pytest.fail("written for a cgroup v1 host, as CI's (a user's systemd delegates on v2: tests/vm)")
    relative = f"pykata-delegated-{os.getpid()}"
    made = []
    try:
        for hierarchy in sorted(set(layout.controllers.values())):
            directory = Path(hierarchy) / relative
            directory.mkdir()
            made.append(directory)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (directory / name).exists():
                    (directory / name).write_text((Path(hierarchy) / name).read_text())
            for path in (directory, directory / "tasks", directory / "cgroup.procs"):
                os.chown(path, UID, UID)
        yield relative, Path(layout.controllers["pids"]) / relative
    finally:  # (after the rootless fixture's end, which kills what the user left running: see the test)
        for directory in made:
            for child in [*sorted(directory.glob("*/**/"), key=lambda p: -len(p.parts)), directory]:
                deadline = time.monotonic() + 5
                while True:
                    try:
                        child.rmdir()
                        break
                    except OSError:  # EBUSY while a killed process leaves it
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)


def test_rootless_in_a_delegated_cgroup_has_limits_pause_and_stats(
    delegated: tuple[str, Path], rootless: Rootless
) -> None:
    """In a cgroup the user was given, a rootless container gets its own cgroup below it, with its
    limits, pause and stats; its device rules are left unset, as runc does (devices.allow is root's).
    (``delegated`` comes first: it is removed after ``rootless`` has ended whatever the user runs.)"""
    relative, pids_parent = delegated
    rootless.config(args=["/bin/sleep", "300"])
    spec = json.loads((rootless.bundle / "config.json").read_text())
    # (the deny-all rule containerd's specs carry, and runc's default: not the user's to write)
    resources = {"pids": {"limit": 17}, "devices": [{"allow": False, "access": "rwm"}]}
    spec["linux"].update(cgroupsPath=f"/{relative}/c1", resources=resources)
    (rootless.bundle / "config.json").write_text(json.dumps(spec))
    rootless("run", "-d", "r6")
    pid = json.loads(rootless("state", "r6").stdout)["pid"]
    pids = pids_parent / "c1"
    assert (pids / "pids.max").read_text().strip() == "17"
    assert str(pid) in (pids / "cgroup.procs").read_text().split()
    rootless("pause", "r6")
    assert json.loads(rootless("state", "r6").stdout)["status"] == "paused"
    rootless("resume", "r6")
    stats = json.loads(rootless("events", "--stats", "r6").stdout)
    assert stats["data"]["pids"]["current"] >= 1
    rootless("update", "--pids-limit", "23", "r6")
    assert (pids / "pids.max").read_text().strip() == "23"
    rootless("delete", "--force", "r6")
    assert not pids.exists()


def _map_ranges(spec_path: Path, uid_host: int, gid_host: int) -> dict[str, Any]:
    """The bundle's spec with root mapped to the user and ids 1..65536 to ``uid_host``/``gid_host`` on."""
    spec = json.loads(spec_path.read_text())
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": UID, "size": 1},
                                    {"containerID": 1, "hostID": uid_host, "size": 65536}]  # fmt: skip
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": UID, "size": 1},
                                    {"containerID": 1, "hostID": gid_host, "size": 65536}]  # fmt: skip
    return spec


def test_rootless_maps_subordinate_ids_through_newuidmap(rootless: Rootless) -> None:
    """Ranges /etc/subuid and /etc/subgid grant the user are mapped by newuidmap and newgidmap, as
    rootless runc does: ids the container gives its files land in them on the host, and setgroups(2)
    stays allowed (newgidmap's choice for granted ranges), so additionalGids work."""
    for tool in ("/usr/bin/newuidmap", "/usr/bin/newgidmap"):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing: apt-get install uidmap (scripts/setup.sh does)")
    shared = rootless.base / "shared"
    shared.mkdir()
    os.chown(shared, UID, UID)
    (rootless.bundle / "rootfs" / "shared").mkdir()  # root's rootfs: the container may not make the mount point
    script = ("cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; id -G; "
              "touch /shared/f && chown 1000:2000 /shared/f")  # fmt: skip
    caps = ["CAP_CHOWN", "CAP_KILL"]  # chown needs it in the namespace (runc's default spec has none)
    rootless.config(args=["/bin/sh", "-c", script], user={"uid": 0, "gid": 0, "additionalGids": [5]},
                    capabilities={"bounding": caps, "effective": caps, "permitted": caps})  # fmt: skip
    spec = _map_ranges(rootless.bundle / "config.json", SUBUIDS[0], SUBGIDS[0])
    spec["mounts"].append({"destination": "/shared", "type": "bind", "source": str(shared), "options": ["rbind"]})
    (rootless.bundle / "config.json").write_text(json.dumps(spec))
    done = rootless("run", "r6", subids=True)
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines[0:2] == [["0", str(UID), "1"], ["1", str(SUBUIDS[0]), "65536"]], done.stdout
    assert lines[2:4] == [["0", str(UID), "1"], ["1", str(SUBGIDS[0]), "65536"]], done.stdout
    assert lines[4] == ["allow"]
    assert lines[5] == ["0", "5"]
    made = (shared / "f").stat()
    assert (made.st_uid, made.st_gid) == (SUBUIDS[0] + 999, SUBGIDS[0] + 1999)
    assert not (rootless.runtime_dir / "pykata-runc" / "r6").exists()


def test_rootless_ranges_not_granted_are_refused_by_newuidmap(rootless: Rootless) -> None:
    """A range /etc/subuid does not grant fails the create with newuidmap's own words, and leaves no
    state or process behind; so does a user the tools cannot find in /etc/passwd (outside the test's
    /etc overlay, this uid has no entry)."""
    rootless.config(args=["/bin/true"])
    spec = _map_ranges(rootless.bundle / "config.json", SUBUIDS[0] + SUBUIDS[1], SUBGIDS[0])
    (rootless.bundle / "config.json").write_text(json.dumps(spec))
    done = rootless("run", "r7", check=False, subids=True)
    assert done.returncode == 1
    assert "writing the user namespace's id maps failed: /usr/bin/newuidmap " in done.stderr
    assert f"[{SUBUIDS[0] + SUBUIDS[1]}-" in done.stderr and "not allowed" in done.stderr, done.stderr
    assert not list((rootless.runtime_dir / "pykata-runc").glob("r*"))
    assert rootless.processes() == []
    done = rootless("run", "r8", check=False)
    assert done.returncode == 1
    assert "id maps failed: /usr/bin/newgidmap " in done.stderr and "user name" in done.stderr, done.stderr
    assert not list((rootless.runtime_dir / "pykata-runc").glob("r*"))
    assert rootless.processes() == []
