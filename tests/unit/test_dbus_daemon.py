"""agent/system/dbus.py against a real dbus-daemon that each test starts on a socket in its tmp_path
(the reference peer: it checks every message we send and disconnects us on a malformed one)."""

from __future__ import annotations

import os
import select
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.system.dbus import (
    BUS_INTERFACE,
    BUS_NAME,
    BUS_PATH,
    SIGNAL,
    UNKNOWN_METHOD,
    Connection,
    DBusError,
    Message,
    Variant,
)

DBUS_DAEMON = "/usr/bin/dbus-daemon"
pytestmark = pytest.mark.skipif(
    not os.path.exists(DBUS_DAEMON), reason=f"{DBUS_DAEMON} is not installed (scripts/setup.sh installs dbus-daemon)"
)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    """The address of a private session bus, killed (by its pid) and reaped after the test."""
    log = tmp_path / "dbus-daemon.log"
    with log.open("wb") as stderr:
        daemon = subprocess.Popen(
            [
                DBUS_DAEMON,
                "--session",
                "--nofork",
                "--nopidfile",
                f"--address=unix:path={tmp_path / 'bus'}",
                "--print-address=1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert daemon.stdout is not None
        ready, _, _ = select.select([daemon.stdout], [], [], 10)
        address = daemon.stdout.readline().decode().strip() if ready else ""
        if not address.startswith("unix:path="):
            pytest.fail(f"dbus-daemon printed no address within 10 s: {log.read_text(errors='replace')}")
        yield address
    finally:
        daemon.kill()
        daemon.wait(10)
        if daemon.stdout is not None:
            daemon.stdout.close()


def bus_call(conn: Connection, member: str, signature: str = "", args: tuple[Any, ...] = ()) -> list[Any]:
    return conn.call(BUS_NAME, BUS_PATH, BUS_INTERFACE, member, signature, args, timeout=5)


def test_hello_gives_a_unique_name(bus: str) -> None:
    with Connection.open(bus, hello=True) as conn:
        assert conn.unique_name.startswith(":")
        assert bus.endswith(f"guid={conn.guid}")
        assert BUS_NAME in bus_call(conn, "ListNames")[0]
        assert conn.unique_name in bus_call(conn, "ListNames")[0]


def test_a_name_without_owner(bus: str) -> None:
    with Connection.open(bus, hello=True) as conn:
        with pytest.raises(DBusError) as caught:
            bus_call(conn, "GetNameOwner", "s", ("org.example.Missing",))
        assert caught.value.name == "org.freedesktop.DBus.Error.NameHasNoOwner"
        assert "org.example.Missing" in caught.value.message
        assert bus_call(conn, "GetNameOwner", "s", (BUS_NAME,)) == [BUS_NAME]


def test_request_name_and_name_acquired(bus: str) -> None:
    with Connection.open(bus, hello=True) as conn:
        assert bus_call(conn, "RequestName", "su", ("org.pykata.Test", 0)) == [1]
        acquired = conn.wait_signal(lambda m: m.member == "NameAcquired" and m.body == ["org.pykata.Test"], 5)
        assert acquired is not None
        assert (acquired.type, acquired.sender, acquired.destination) == (SIGNAL, BUS_NAME, conn.unique_name)
        assert bus_call(conn, "GetNameOwner", "s", ("org.pykata.Test",)) == [conn.unique_name]


def test_an_unknown_method_of_the_bus(bus: str) -> None:
    with Connection.open(bus, hello=True) as conn:
        with pytest.raises(DBusError) as caught:
            bus_call(conn, "NoSuchMethod", "u", (1,))
        assert caught.value.name == UNKNOWN_METHOD
        assert conn.unique_name in bus_call(conn, "ListNames")[0]  # the error left the connection usable


def test_dict_of_variants_from_the_bus(bus: str) -> None:
    with Connection.open(bus, hello=True) as conn:
        [credentials] = bus_call(conn, "GetConnectionCredentials", "s", (conn.unique_name,))
        assert isinstance(credentials, dict)
        assert credentials["UnixUserID"] == Variant("u", os.geteuid())
        assert credentials["ProcessID"] == Variant("u", os.getpid())


def test_a_second_connection_sees_name_owner_changed(bus: str) -> None:
    socket_path = bus.removeprefix("unix:path=").split(",")[0]  # the plain path form of the address
    with Connection.open(bus, hello=True) as first, Connection.open(socket_path, hello=True) as second:
        assert first.unique_name != second.unique_name
        assert bus_call(second, "AddMatch", "s", ("type='signal',member='NameOwnerChanged'",)) == []
        assert bus_call(first, "RequestName", "su", ("org.pykata.Watched", 0)) == [1]
        changed = second.wait_signal(lambda m: m.member == "NameOwnerChanged" and m.body[0] == "org.pykata.Watched", 5)
        assert changed is not None
        assert changed.body == ["org.pykata.Watched", "", first.unique_name]
        assert changed.signature == "sss" and changed.sender == BUS_NAME


def test_a_call_to_a_client_is_answered_unknown_method(bus: str) -> None:
    with Connection.open(bus, hello=True) as server, Connection.open(bus, hello=True) as client:
        stopped: list[Message | None] = []
        waiting = threading.Thread(target=lambda: stopped.append(server.wait_signal(lambda m: m.member == "Stop", 10)))
        waiting.start()
        try:
            with pytest.raises(DBusError) as caught:
                client.call(server.unique_name, "/org/pykata", "org.pykata.Nothing", "Do", "s", ["x"], timeout=5)
            assert caught.value.name == UNKNOWN_METHOD
            assert "org.pykata.Nothing.Do" in caught.value.message
        finally:
            stop = Message(SIGNAL, path="/org/pykata", interface="org.pykata.Test", member="Stop")
            stop.destination = server.unique_name
            client.send(stop)
            waiting.join(15)
        assert not waiting.is_alive()
        [signal] = stopped
        assert signal is not None and signal.sender == client.unique_name


def test_large_and_nested_bodies_pass_the_bus_intact(bus: str) -> None:
    properties = [("Delegate", Variant("b", True)), ("PIDs", Variant("au", [123])), ("MemoryMax", Variant("t", 2**30))]
    bodies: list[tuple[str, list[object]]] = [
        ("ssa(sv)a(sa(sv))", ["pykata-abc.scope", "fail", properties, []]),
        ("ay", [list(os.urandom(300_000))]),
        ("a{sv}d", [{"x": Variant("a(td)", [(1, 2.5)]), "y": Variant("v", Variant("g", "a{sv}"))}, -0.5]),
    ]
    with Connection.open(bus, hello=True) as sender, Connection.open(bus, hello=True) as receiver:
        for number, (signature, body) in enumerate(bodies):
            sender.send(
                Message(
                    SIGNAL,
                    path="/org/pykata",
                    interface="org.pykata.Test",
                    member=f"Body{number}",
                    destination=receiver.unique_name,
                    signature=signature,
                    body=body,
                )
            )
            member = f"Body{number}"
            received = receiver.wait_signal(lambda m, member=member: m.member == member, 5)
            assert received is not None, f"{member} did not arrive"
            assert (received.signature, received.body) == (signature, body)
