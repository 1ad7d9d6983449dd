"""pykata-runc serve: what one worker learned is known to the later workers.

Each worker is a fresh fork of the server. What its create taught the fork server lives in a page the
server and its workers share, so a later worker neither asks its create to report pages again nor
forgets which namespaces the warm processes make ahead; and the pages a worker's own command wrote
reach the server, whose later spare workers fault them in while they wait.
"""

from __future__ import annotations

import os

from agent.container.cli_serve import SharedForkServer


def _in_a_worker(server: SharedForkServer, kinds: tuple[str, ...]) -> None:
    worker = os.fork()
    if worker == 0:
        code = 1
        try:
            server._pages_known = True
            server.preunshare = kinds
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(worker, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_worker_learns_for_the_server_and_the_next_workers() -> None:
    server = SharedForkServer()  # its fork server process starts on first use: none here
    try:
        assert not server._pages_known and server.preunshare == ()
        kinds = ("network", "uts")  # of agent.container.init.PREUNSHARE_KINDS
        _in_a_worker(server, kinds)
        assert server._pages_known
        assert server.preunshare == kinds
        _in_a_worker(server, ())  # a later create that makes none of them
        assert server.preunshare == ()
    finally:
        server.close()


def test_the_command_of_an_argument_list() -> None:
    from agent.container.cli_serve import command_of

    assert command_of(["--root", "/run/x", "--debug", "run", "-b", "/b", "id"]) == "run"
    assert command_of(["create", "--bundle", "/b", "c1"]) == "create"
    assert command_of(["--log", "/tmp/log", "state", "c1"]) == "state"
    assert command_of(["--version"]) == ""


def test_a_workers_report_of_its_written_pages_reaches_the_server() -> None:
    import socket

    from agent.container import cli_serve

    server_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = os.fork()
    if worker == 0:
        code = 1
        try:
            written = bytearray(256 * 1024)  # a command's work: new pages of its own
            written[::4096] = b"x" * len(written[::4096])
            cli_serve._report_pages(worker_end)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(worker, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    runs = cli_serve._learned(server_end)
    server_end.close()
    worker_end.close()
    assert runs and sum(length for _, length in runs) >= 256 * 1024
    assert all(address % 4096 == 0 and length % 4096 == 0 for address, length in runs)


def test_a_bad_report_teaches_nothing() -> None:
    import marshal
    import socket

    from agent.container import cli_serve

    server_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        worker_end.send(b"not marshal")
        assert cli_serve._learned(server_end) == []
        worker_end.send(marshal.dumps([[4096, -1], "x", [0, 4096], [8192, 4096]]))
        assert cli_serve._learned(server_end) == [(8192, 4096)]
    finally:
        server_end.close()
        worker_end.close()
