"""ctypes wrappers that can run without root."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from agent.system import libc


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
