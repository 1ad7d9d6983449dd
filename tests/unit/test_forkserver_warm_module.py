"""agent/container/warm.py without forking: the messages a pair gets (marshal'd dicts with descriptors
over SOCK_SEQPACKET), the hand-over on plain socketpairs standing in for a parked pair, which requests a
pair serves, and what the module costs a cold pykata-runc to import."""

from __future__ import annotations

import _socket
import os
import subprocess
import sys
from typing import Any

import pytest

from agent.container import warm
from agent.container.cli import _namespace_request
from agent.container.events import ProcessEvents
from agent.errors import ResourceError
from tests.conftest import REPO


def _pair() -> tuple[_socket.socket, _socket.socket]:
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)


def test_a_message_arrives_with_its_descriptors_close_on_exec() -> None:
    ours, theirs = _pair()
    read_end, write_end = os.pipe()
    try:
        warm.send_message(ours, {"op": "create", "seccomp": b"\0\1", "n": [1, 2]}, [read_end, write_end])
        message, fds = warm.receive_message(theirs)
        assert message == {"op": "create", "seccomp": b"\0\1", "n": [1, 2]}
        assert len(fds) == 2 and not any(os.get_inheritable(fd) for fd in fds)
        os.write(fds[1], b"same pipe")
        assert os.read(read_end, 64) == b"same pipe"
        for fd in fds:
            os.close(fd)
        ours.close()
        assert warm.receive_message(theirs) == (None, [])  # EOF
    finally:
        os.close(read_end)
        os.close(write_end)
        ours.close()
        theirs.close()


def test_nothing_waiting_is_blocking_io_and_too_big_is_refused() -> None:
    ours, theirs = _pair()
    try:
        with pytest.raises(BlockingIOError):
            warm.receive_raw_nowait(theirs)
        with pytest.raises(ResourceError):
            warm.send_raw(ours, b"x" * (warm.MAX_MESSAGE + 1))
    finally:
        ours.close()
        theirs.close()


def test_a_failure_report_is_an_event_the_engine_reads() -> None:
    read_end, write_end = os.pipe()
    try:
        warm.report_failure(write_end, "fork failed")
        events = ProcessEvents(read_end, None, "test")
        for event in events._events(os.read(read_end, 4096)):
            events._apply(event)
        assert (events.error, events.exit_code) == ("fork failed", 255)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_hand_over_gives_the_process_its_request_and_the_shim_its_status_pipe() -> None:
    shim_ours, shim_theirs = _pair()
    child_ours, child_theirs = _pair()
    status_r, status_w = os.pipe()
    control_r, control_w = os.pipe()
    try:
        assert warm.hand_over(shim_ours, child_ours, b"request", [status_w, control_r])
        assert shim_ours.fileno() == -1 and child_ours.fileno() == -1  # closed either way
        data, fds = warm.receive_raw(child_theirs)
        assert data == b"request" and len(fds) == 2
        message, shim_fds = warm.receive_message(shim_theirs)
        assert message == {"go": True} and len(shim_fds) == 1
        for fd in (*fds, *shim_fds):
            os.close(fd)
    finally:
        for fd in (status_r, status_w, control_r, control_w):
            os.close(fd)
        shim_theirs.close()
        child_theirs.close()


def test_hand_over_to_a_pair_that_is_gone_sends_nothing() -> None:
    shim_ours, shim_theirs = _pair()
    child_ours, child_theirs = _pair()
    status_r, status_w = os.pipe()
    try:
        child_theirs.close()  # the container process ended
        assert not warm.hand_over(shim_ours, child_ours, b"request", [status_w])
        assert shim_ours.fileno() == -1 and child_ours.fileno() == -1
        assert warm.receive_raw_nowait(shim_theirs) == (b"", [])  # the shim sees the end, no message
    finally:
        os.close(status_r)
        os.close(status_w)
        shim_theirs.close()


@pytest.mark.parametrize(
    ("request_", "fits"),
    [
        ({"op": "create", "unshare": ["pid", "mount"], "join": {}}, True),
        ({"op": "create", "unshare": ["mount"], "join": {}}, False),  # no pid namespace of its own
        ({"op": "create", "unshare": ["mount"], "join": {"pid": "/proc/1/ns/pid"}}, False),
        ({"op": "create", "unshare": ["pid", "user"], "join": {}}, False),
        ({"op": "create", "unshare": ["pid"], "join": {"user": "/proc/1/ns/user"}}, False),
        ({"op": "exec", "unshare": ["pid"], "join": {}}, False),
    ],
)
def test_which_requests_a_pair_serves(request_: dict[str, Any], fits: bool) -> None:
    assert warm.fits_warm_pair(request_) is fits


def test_the_cli_reads_a_spec_s_namespaces_as_the_engine_requests_them() -> None:
    spec = {"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "uts"}]}}
    assert _namespace_request(spec) == {
        "op": "create",
        "unshare": ["pid", "uts"],
        "join": {"network": "/proc/1/ns/net"},
    }
    assert _namespace_request({"linux": {"namespaces": [{"path": "/x"}]}}) is None  # no type: the engine says
    assert _namespace_request({"linux": {"namespaces": "pid"}}) is None
    assert _namespace_request({}) is None


def test_importing_it_costs_a_cold_command_none_of_the_costly_modules() -> None:
    probe = f"import sys; sys.path[0:0] = [{str(REPO)!r}]; import agent.container.warm; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in eval(done.stdout)}
    costly = {"json", "logging", "socket", "subprocess", "signal", "typing", "select", "array", "threading"}
    assert not loaded & costly, f"agent.container.warm imports {sorted(loaded & costly)}"
