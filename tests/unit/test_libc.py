"""agent.system.libc: its calls reach libc (and the kernel), with their errno and path (no root)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from agent.system import libc
from tests.conftest import REPO
from tests.helpers.processes import exit_code_in_child


@pytest.mark.parametrize("family", [socket.AF_UNIX, socket.AF_VSOCK])
def test_send_timeout_is_set_on_every_socket_family(family: int) -> None:
    # Python's setsockopt refuses a struct timeval on AF_VSOCK sockets: the agent's listener family.
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        pytest.fail(f"cannot create a socket of family {family}: {exc}")
    with sock:
        libc.set_send_timeout(sock.fileno(), 2.5)
        if family == socket.AF_UNIX:
            assert struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)) == (2, 500000)


def test_errors_name_the_path() -> None:
    with pytest.raises(FileNotFoundError) as err:
        libc.mount("none", "/nonexistent/pykata/target", "tmpfs")
    assert err.value.filename == "/nonexistent/pykata/target"


def test_load_module_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nosuch.ko"
    with pytest.raises(FileNotFoundError) as caught:
        libc.load_module(str(missing))
    assert caught.value.filename == str(missing)


def test_process_name_reaches_the_kernel() -> None:
    def work() -> int:
        libc.set_process_name("pykata-name-longer-than-15")
        with open("/proc/self/comm") as comm:
            first = comm.read()
        name = bytearray(b"by-address\0")  # alive until prctl has read it
        libc.prctl(libc.PR_SET_NAME, libc.buffer_address(name))
        with open("/proc/self/comm") as comm:
            second = comm.read()
        return 0 if (first, second) == ("pykata-name-lon\n", "by-address\n") else 2

    assert exit_code_in_child(work) == 0


def test_prctl_returns_what_the_kernel_answers() -> None:
    pr_get_child_subreaper = 37

    def work() -> int:
        flag = bytearray(4)
        libc.prctl(pr_get_child_subreaper, libc.buffer_address(flag))
        before = struct.unpack("i", flag)[0]
        libc.set_child_subreaper()
        libc.prctl(pr_get_child_subreaper, libc.buffer_address(flag))
        return 0 if (before, struct.unpack("i", flag)[0]) == (0, 1) else 2

    assert exit_code_in_child(work) == 0


def test_errno_and_path_of_a_failed_call(tmp_path: Path) -> None:
    fd = libc.inotify_init1()
    try:
        missing = str(tmp_path / "missing")
        with pytest.raises(FileNotFoundError) as caught:
            libc.inotify_add_watch(fd, missing, libc.IN_MODIFY)
        assert (caught.value.errno, caught.value.filename) == (errno.ENOENT, missing)
        assert caught.value.strerror == os.strerror(errno.ENOENT)
        watched = tmp_path / "watched"
        watched.write_text("")
        wd = libc.inotify_add_watch(fd, str(watched), libc.IN_MODIFY)
        assert wd == libc.inotify_add_watch(fd, str(watched), libc.IN_MODIFY) > 0
        libc.inotify_rm_watch(fd, wd)
        with pytest.raises(OSError) as removed:
            libc.inotify_rm_watch(fd, wd)
        assert removed.value.errno == errno.EINVAL and removed.value.filename is None
    finally:
        os.close(fd)
    with pytest.raises(OSError) as bad:
        libc.setns(-1, 0, "the namespace")
    assert (bad.value.errno, bad.value.filename) == (errno.EBADF, "the namespace")


def test_madvise_passes_address_and_length() -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    area = bytearray(3 * page)
    address = libc.buffer_address(area)
    assert address == ctypes.addressof(ctypes.c_char.from_buffer(area))
    aligned = (address + page - 1) // page * page
    libc.madvise(aligned, page, 0)  # MADV_NORMAL on memory that is there
    with pytest.raises(OSError) as caught:
        libc.madvise(aligned + 1, page, 0)  # not page-aligned
    assert caught.value.errno == errno.EINVAL


def test_a_time_out_of_range_is_refused_before_the_call() -> None:
    with pytest.raises(OSError) as caught:
        libc.settimeofday(1 << 70, 0)
    assert caught.value.errno == errno.EINVAL


def test_reset_all_signals_reaches_every_signal() -> None:
    def work() -> int:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGRTMIN + 3, signal.SIG_IGN)
        before = _signal_masks()
        libc.reset_all_signals()
        # the kernel's view (Python's signal.getsignal answers from its own table): nothing ignored or
        # caught any more, the signals glibc keeps for itself (32, 33) included
        return 0 if before[0] and before[1] and _signal_masks() == (0, 0) else 2

    assert exit_code_in_child(work) == 0


def _signal_masks() -> tuple[int, int]:
    """This process's ignored and caught signals (SigIgn, SigCgt in /proc/self/status)."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["SigIgn"], 16), int(fields["SigCgt"], 16)


def test_every_libc_name_the_code_uses_is_there() -> None:
    used = set()
    for tree in ("agent", "agentctl", "osbuilder", "bench"):
        for directory, _, files in os.walk(REPO / tree):
            for name in files:
                if name.endswith(".py"):
                    text = Path(directory, name).read_text()
                    if re.search(r"\bfrom agent\.system import [\w, ]*\blibc\b|import agent\.system\.libc", text):
                        used.update(re.findall(r"\blibc\.([A-Za-z]\w*)", text))
    assert used, "no use of libc found: the scan is wrong"
    assert sorted(name for name in used if not hasattr(libc, name)) == []


def test_the_binding_loads_neither_ctypes_nor_struct() -> None:
    modules = ("agent.system.libc", "agent.container.seccomp", "agent.container.cgroups.devices_v2",
               "agent.system.prefault", "agent.system.polling")  # fmt: skip
    program = (
        f"import sys; sys.path[:0] = [{str(REPO)!r}]\n"
        f"for name in {modules!r}: __import__(name)\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(subprocess.run([sys.executable, "-S", "-c", program], check=True, capture_output=True,
                                text=True).stdout.split())  # fmt: skip
    assert set(modules) <= loaded
    assert sorted(loaded & {"ctypes", "struct", "pathlib", "collections", "typing", "re", "enum"}) == []
