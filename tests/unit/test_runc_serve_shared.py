"""pykata-runc serve: what one worker's create taught the fork server is known to the later workers.

Each worker is a fresh fork of the server; the facts live in a page the server and its workers
share, so a later worker neither asks its create to report pages again nor forgets which
namespaces the warm processes make ahead.
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
