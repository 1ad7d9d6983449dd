"""PID-1 duties that can be checked without being PID 1: the mount plan, the module list, reaping."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import init
from agent.config import AgentConfig, build_config
from agent.init import MountStep, SymlinkStep, boot_mounts, cgroup_v1_requested, execute, modules_to_load
from agent.system import children
from agent.system.paths import HostPaths


def test_unified_plan_mounts_api_filesystems_then_cgroup2(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    steps = boot_mounts(paths, cgroup_v1=False)
    mounts = [s for s in steps if isinstance(s, MountStep)]
    assert [(m.fstype, os.path.relpath(m.target, tmp_path)) for m in mounts] == [
        ("proc", "proc"),
        ("sysfs", "sys"),
        ("devtmpfs", "dev"),
        ("devpts", "dev/pts"),
        ("tmpfs", "dev/shm"),
        ("tmpfs", "run"),
        ("cgroup2", "sys/fs/cgroup"),
    ]
    links = [s for s in steps if isinstance(s, SymlinkStep)]
    assert links == [SymlinkStep("pts/ptmx", str(tmp_path / "dev/ptmx"))]
    assert all(type(m.target) is str for m in mounts)
    devpts = next(m for m in mounts if m.fstype == "devpts")
    assert "newinstance" in devpts.data and "ptmxmode=0666" in devpts.data
    cgroup2 = mounts[-1]
    assert (cgroup2.data, cgroup2.fallback_data) == ("nsdelegate,favordynmods", "nsdelegate")


def _recording_mount(monkeypatch: pytest.MonkeyPatch, refuse: dict[str, int]) -> list[tuple[str, str | None]]:
    """Replace libc.mount: record (fstype, data), fail with the errno ``refuse`` maps the data to."""
    calls: list[tuple[str, str | None]] = []

    def fake_mount(
        source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
    ) -> None:
        calls.append((str(fstype), data))
        if data in refuse:
            raise OSError(refuse[data], os.strerror(refuse[data]), target)

    monkeypatch.setattr(init.libc, "mount", fake_mount)
    return calls


def test_cgroup2_falls_back_to_nsdelegate_on_einval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording_mount(monkeypatch, {"nsdelegate,favordynmods": errno.EINVAL})
    execute(boot_mounts(HostPaths(tmp_path), cgroup_v1=False)[-1:])
    assert calls == [("cgroup2", "nsdelegate,favordynmods"), ("cgroup2", "nsdelegate")]


def test_cgroup2_with_favordynmods_needs_no_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording_mount(monkeypatch, {})
    execute(boot_mounts(HostPaths(tmp_path), cgroup_v1=False)[-1:])
    assert calls == [("cgroup2", "nsdelegate,favordynmods")]


def test_other_mount_errors_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording_mount(monkeypatch, {"nsdelegate,favordynmods": errno.EBUSY})
    with pytest.raises(OSError) as failure:
        execute(boot_mounts(HostPaths(tmp_path), cgroup_v1=False)[-1:])
    assert failure.value.errno == errno.EBUSY
    assert calls == [("cgroup2", "nsdelegate,favordynmods")]


def test_a_step_without_fallback_raises_einval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording_mount(monkeypatch, {"mode=0755": errno.EINVAL})
    with pytest.raises(OSError):
        execute([MountStep("tmpfs", str(tmp_path / "run"), "tmpfs", 0, "mode=0755")])
    assert calls == [("tmpfs", "mode=0755")]


def test_v1_plan_mounts_each_controller_on_a_tmpfs(tmp_path: Path) -> None:
    steps = boot_mounts(HostPaths(tmp_path), cgroup_v1=True, v1_controllers=("cpuset", "memory"))
    tail = [(s.fstype, s.data, os.path.basename(s.target)) for s in steps[-3:] if isinstance(s, MountStep)]
    assert tail == [("tmpfs", "mode=0755", "cgroup"), ("cgroup", "cpuset", "cpuset"), ("cgroup", "memory", "memory")]


def test_v1_is_chosen_by_config_or_systemd_option() -> None:
    assert not cgroup_v1_requested("quiet", AgentConfig())
    assert cgroup_v1_requested("quiet systemd.unified_cgroup_hierarchy=0", AgentConfig())
    assert cgroup_v1_requested("", build_config("agent.unified_cgroup_hierarchy=false"))


def test_module_list_in_order_with_params(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    (tmp_path / "etc/pykata").mkdir(parents=True)
    (tmp_path / "etc/pykata/modules.load").write_text(
        "# load order\nkernel/drivers/virtio/virtio.ko\n\nkernel/net/vmw_vsock/vsock.ko\nkernel/fs/9p/9p.ko debug=1\n"
    )
    base = tmp_path / "lib/modules" / os.uname().release
    assert modules_to_load(paths) == [
        (str(base / "kernel/drivers/virtio/virtio.ko"), ""),
        (str(base / "kernel/net/vmw_vsock/vsock.ko"), ""),
        (str(base / "kernel/fs/9p/9p.ko"), "debug=1"),
    ]


def test_no_module_list_means_nothing_to_load(tmp_path: Path) -> None:
    assert modules_to_load(HostPaths(tmp_path)) == []


def _wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return
        time.sleep(0.01)
    raise AssertionError(f"{pid} never became a zombie")


def test_reaper_reaps_orphans_but_not_owned_children() -> None:
    orphan = subprocess.Popen([sys.executable, "-c", "pass"])
    with children.spawning() as own:
        mine = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
        own(mine.pid)
    _wait_zombie(orphan.pid)
    _wait_zombie(mine.pid)
    reaped = dict(children.reap_orphans(Path("/proc")))
    assert orphan.pid in reaped
    assert mine.pid not in reaped
    assert mine.wait() == 7  # the owner still gets the real status
    children.release(mine.pid)
    orphan.returncode = 0  # reaped by the reaper; keep Popen from waiting again


def test_stop_ends_a_process_with_sigterm_or_sigkill() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    children.stop(polite)
    assert polite.returncode == -signal.SIGTERM
    deaf = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert deaf.stdout is not None and deaf.stdout.readline() == b"ready\n"
    children.stop(deaf, timeout=0.2)
    assert deaf.returncode == -signal.SIGKILL
    deaf.stdout.close()
