"""ProcessHandle: the status pipe is read by a waiting thread while it waits, by the reactor otherwise."""

from __future__ import annotations

import json
import os
import threading
import time

from agent.container.forkserver import ProcessHandle


def _write(fd: int, **event: object) -> None:
    os.write(fd, json.dumps(event).encode() + b"\n")


def _until(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_waiter_reads_the_events_itself_and_gives_the_pipe_back_to_the_reactor() -> None:
    read_end, write_end = os.pipe()
    handle = ProcessHandle(read_end, None, "test process")
    threading.Timer(0.05, _write, (write_end,), {"pid": 42, "shim": 41}).start()
    assert handle.wait_for("pid", 10)
    assert (handle.pid, handle.shim_pid) == (42, 41)
    assert not handle.wait_for("created", 0.05)  # a timeout hands the pipe back
    _write(write_end, created=True)
    assert _until(lambda: handle.created)  # read by the reactor, with nobody waiting
    os.close(write_end)
    assert _until(lambda: handle.exit_code is not None)
    assert handle.wait_closed(10)
    assert handle.exit_code == 255  # the end without an exit report


def test_every_waiter_sees_the_events_one_of_them_reads() -> None:
    read_end, write_end = os.pipe()
    handle = ProcessHandle(read_end, None, "test process")
    results: list[object] = []
    waiters = [threading.Thread(target=lambda: results.append(handle.wait(10))) for _ in range(3)]
    closers = [threading.Thread(target=lambda: results.append(handle.wait_closed(10))) for _ in range(2)]
    for thread in waiters + closers:
        thread.start()
    time.sleep(0.05)
    _write(write_end, pid=7, shim=6)
    _write(write_end, exit=3)
    os.close(write_end)
    for thread in waiters + closers:
        thread.join(10)
        assert not thread.is_alive()
    assert sorted(results, key=str) == sorted([3, 3, 3, True, True], key=str)
    assert handle.wait_closed(0)


def test_a_wait_after_the_end_returns_at_once() -> None:
    read_end, write_end = os.pipe()
    handle = ProcessHandle(read_end, None, "test process")
    _write(write_end, pid=9, shim=8)
    _write(write_end, exit=0)
    os.close(write_end)
    assert handle.wait_closed(10)
    assert handle.wait(0) == 0
    assert handle.wait_for("created", 0)  # the process ended: nothing more will come


def test_mounted_waits_for_the_pid_the_shim_reports_after_it() -> None:
    read_end, write_end = os.pipe()
    handle = ProcessHandle(read_end, None, "test process")
    _write(write_end, mounted=True)  # the process's line first, the shim's later
    threading.Timer(0.1, _write, (write_end,), {"pid": 42, "shim": 41}).start()
    assert handle.wait_for("mounted", 10)
    assert handle.mounted and handle.pid == 42
    os.close(write_end)
    assert handle.wait_closed(10)


def test_pykata_runcs_handle_waits_for_the_pid_with_mounted_too() -> None:
    from agent.container.cli_backend import LocalProcessHandle

    read_end, write_end = os.pipe()
    handle = LocalProcessHandle(read_end, None, "test process")
    _write(write_end, mounted=True)  # the process's line first, the shim's later
    assert not handle.wait_for("mounted", 0.05)  # no pid yet: not mounted as the hooks need it
    _write(write_end, pid=42, shim=41)
    assert handle.wait_for("mounted", 10)
    assert handle.mounted and handle.pid == 42
    os.close(write_end)
    assert handle.wait_closed(10)
