"""The debug console (a shell on a pty per connection, in-band resize) and the log stream handler,
over unix sockets standing in for vsock."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import build_config
from agent.console import ConsoleServer, ResizeFilter, resize_message, start_console
from agent.logstream import StreamLogHandler, install_log_stream
from agent.system.paths import HostPaths


def test_resize_message_is_an_apc_string() -> None:
    assert resize_message(24, 80) == b"\x1b_pykata-resize;24;80\x1b\\"


def test_filter_removes_resize_and_keeps_keystrokes() -> None:
    out, sizes = ResizeFilter().feed(b"ls\r" + resize_message(50, 132) + b"pwd\r")
    assert out == b"ls\rpwd\r" and sizes == [(50, 132)]


def test_filter_handles_a_message_split_anywhere() -> None:
    stream = b"a" + resize_message(40, 100) + b"b" + resize_message(41, 101) + b"\x1b[A"
    for cut in range(1, len(stream)):
        filter_ = ResizeFilter()
        out1, sizes1 = filter_.feed(stream[:cut])
        out2, sizes2 = filter_.feed(stream[cut:])
        assert out1 + out2 == b"ab\x1b[A", cut
        assert sizes1 + sizes2 == [(40, 100), (41, 101)], cut


def test_filter_passes_malformed_messages_through() -> None:
    bad = b"\x1b_pykata-resize;x;80\x1b\\"
    out, sizes = ResizeFilter().feed(bad)
    assert out == bad and sizes == []
    endless = b"\x1b_pykata-resize;" + b"9" * 100
    out, sizes = ResizeFilter().feed(endless)
    assert out == endless and sizes == []


def test_console_is_off_by_default() -> None:
    assert start_console(build_config(""), HostPaths()) is None


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    server = ConsoleServer(listener, "/bin/sh").start()
    try:
        yield path
    finally:
        server.close()
        for thread in list(server.sessions):
            thread.join(10)
            assert not thread.is_alive(), "a console session outlived its client"


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 20.0) -> bytes:
    sock.settimeout(timeout)
    seen = b""
    while marker not in seen:
        chunk = sock.recv(4096)
        if not chunk:
            break
        seen += chunk
    return seen


def test_console_runs_a_shell_on_a_tty(console: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(console))
        sock.sendall(resize_message(33, 121))
        sock.sendall(b"tty; stty size; echo $((6*7))-done\n")
        out = _read_until(sock, b"42-done\r\n")
    assert b"/dev/pts/" in out
    assert b"33 121" in out  # the resize reached the pty
    assert b"42-done" in out


def test_console_session_ends_when_the_shell_exits(console: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(console))
        sock.sendall(b"exit 3\n")
        sock.settimeout(20)
        while sock.recv(4096):
            pass  # EOF: the agent closed the connection after the shell left


def test_console_has_a_controlling_terminal_in_its_own_session(console: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(console))
        sock.sendall(b"ps -o sid=,pid=,tty= -p $$; echo ps-$((1+1))-done\n")
        out = _read_until(sock, b"ps-2-done\r\n")
    found = re.search(r"(\d+)\s+(\d+)\s+(\S+)\r\n", out.decode(errors="replace"))
    assert found, out
    sid, pid, tty = found.groups()
    assert sid == pid, "the shell leads its own session"
    assert tty.startswith("pts/"), "the pty is its controlling terminal"


def test_log_stream_sends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(20)

    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        return sock

    config = build_config("agent.log_vport=1027")
    handler = install_log_stream(config, dial)
    assert handler is not None
    logger = logging.getLogger("pykata.test.logstream")
    logger.setLevel(logging.INFO)
    try:
        logger.info("hello %s", "host", extra={"container": "c1"})
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            line = _read_until(conn, b"\n").split(b"\n")[0]
        record = json.loads(line)
        assert record["msg"] == "hello host" and record["level"] == "info" and record["container"] == "c1"
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        listener.close()


def test_log_stream_is_off_without_a_port() -> None:
    assert install_log_stream(build_config("")) is None


def test_log_stream_drops_oldest_lines_while_nobody_listens(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"

    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        return sock

    handler = StreamLogHandler(dial, limit=5, retry_interval=0.05)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        for i in range(12):
            handler.emit(logging.LogRecord("t", logging.INFO, __file__, 1, f"line {i}", None, None))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listener.settimeout(20)
        with listener:
            conn, _ = listener.accept()
            with conn:
                assert handler.drain(20)
                data = _read_until(conn, b"line 11\n")
        lines = data.decode().splitlines()
        assert json.loads(lines[0])["msg"] == "7 log lines dropped"
        assert lines[1:] == [f"line {i}" for i in range(7, 12)]
    finally:
        handler.close()


def test_attach_relays_a_pipe_until_the_guest_closes() -> None:
    """agentctl console without a terminal: stdin goes to the guest, EOF half-closes, output comes back."""
    from agentctl.vm_cli import attach

    host, guest = socket.socketpair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"echo hi\n")
    os.close(in_w)

    def guest_side() -> None:
        with guest:
            assert _read_until(guest, b"\n") == b"echo hi\n"
            assert guest.recv(10) == b""  # the client's EOF arrived as a half-close
            guest.sendall(b"hi\r\n")

    thread = threading.Thread(target=guest_side)
    thread.start()
    try:
        with host:
            attach(host, stdin=in_r, stdout=out_w)
        thread.join(20)
        os.close(out_w)
        assert os.read(out_r, 100) == b"hi\r\n"
    finally:
        os.close(in_r)
        os.close(out_r)


def test_busybox_setsid_is_used_when_there_is_no_setsid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from agent import console as console_module

    bindir = tmp_path / "bin"
    bindir.mkdir()
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox-static is part of the development setup"
    (bindir / "busybox").symlink_to(busybox)
    monkeypatch.setitem(console_module.SHELL_ENV, "PATH", str(bindir))
    assert console_module.setsid_command() == [str(bindir / "busybox"), "setsid"]
    (bindir / "setsid").symlink_to(busybox)
    assert console_module.setsid_command() == [str(bindir / "setsid")]
