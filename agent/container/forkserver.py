"""The fork server: a single-threaded helper process that forks every container process.

The agent runs threads, so it must never fork() (a child could inherit a lock another thread held).
``ForkServerClient`` spawns ``python3 -m agent.container.forkserver`` on first use (subprocess, i.e.
fork+exec, which is safe) and talks to it over a SOCK_SEQPACKET socketpair: each request is one
message with the process's file descriptors attached (SCM_RIGHTS), fds[0] being the status pipe.
Messages are dicts in ``marshal`` form (the same interpreter is at both ends; a freshly forked
process reads one in about three quarters of the time JSON takes).
The server never answers a request: the engine goes on (making the cgroup) while the server works,
and everything about the new process arrives on its status pipe, a failed fork included.

For each request the server forks a *shim* and forgets it (SIGCHLD is ignored in the server, so the
kernel reaps shims). The shim is a child subreaper; it enters or unshares the user and pid namespaces
(pid namespaces apply to children only), forks the container process, reports
``{"pid": N, "shim": its own pid}`` on the status pipe, then waits: when the process ends it reports
``{"exit": code}`` (the shell's convention: 128+N for signal N) and reaps every orphan left to it.
The container process itself reports ``{"created": true}`` (and ``mounted``/``started`` around the
hooks) or ``{"error": "..."}`` on the same pipe; its copy is close-on-exec, so the pipe's EOF means
the shim and the process are both gone.

Warm pairs (agent/container/warm.py): once idle for WARM_DELAY the server forks a shim that has done
its setup and unshared a pid namespace, with its container process already forked (pid 1 there) and waiting. A
create that wants exactly that (a new pid namespace, no user namespace) is handed to the pair
instead of forking: by the server, or, when the client asked for ``direct`` (the agent does), by the
client itself, to which the server offers the pair's two sockets (the only message the server ever
sends); the client says ``consumed`` so the server forks the next one. Idle pair processes are named
``pykata-parked`` in ps and exit when their sockets close.

While a warm container process waits it also faults in the pages a container's setup wrote the last
time (agent.system.prefault): the client asks creates to report them (``learn_pages``) until one has,
and passes them on (``{"op": "prefault", "runs": [[address, length], ...]}``). The process's setup
then runs without the copy-on-write faults that otherwise cost it 1.5-2 ms on a virtual machine.

The control pipe goes the other way: the engine writes ``g`` once the process's cgroup is ready (the
process then joins it itself, or the engine has moved it already), ``h`` once prestart and
createRuntime hooks ran, and ``s`` to start the user's program (see agent/container/init.py).
"""

from __future__ import annotations

import logging
import marshal
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.container.events import ProcessEvents
from agent.container.warm import PARKED_NAME as PARKED_NAME  # the name tests and tools look for
from agent.container.warm import (
    WarmPair,
    fits_warm_pair,
    hand_over,
    receive_raw,
    receive_raw_nowait,
    report_failure,
    send_message,
)
from agent.errors import ResourceError
from agent.system import children, prefault
from agent.system.polling import readable
from agent.system.reactor import default_reactor

log = logging.getLogger(__name__)

WARM_DELAY = 0.01  # seconds of idleness before the server forks the next warm pair


class ProcessHandle(ProcessEvents):
    """The engine's view of one forked process (agent/container/events.py), its status pipe read on
    the agent's reactor thread from the first wait on (``start``).

    A thread that waits for an event reads the pipe itself meanwhile, the reactor letting go of it
    (other waiters wait on a condition): the shim's write then wakes the waiting thread, where
    through the reactor it would wake the reactor's thread, which would have to wake the waiting
    one in turn (each wake-up of a thread on an idle CPU is about 0.1 ms on a virtual machine)."""

    def __init__(self, status_fd: int, control_fd: int | None, description: str) -> None:
        super().__init__(status_fd, control_fd, description)
        self._cond = threading.Condition()
        self._closed = threading.Event()
        # the pages the process's setup wrote (agent.system.prefault), given to on_pages once it is created
        self.on_pages: Callable[[list[tuple[int, int]]], None] | None = None
        self._pages: list[tuple[int, int]] = []
        self._reading = False
        self._direct = False  # a waiting thread reads the pipe, not the reactor
        self._handler = self._readable  # one bound method: the reactor knows its handlers by identity

    def start(self) -> None:
        """Start reading the status pipe (on the agent's reactor thread), once; every wait does it."""
        with self._cond:
            if self._reading:
                return
            self._reading = True
        os.set_blocking(self._status_fd, False)
        default_reactor().add(self._status_fd, self._handler)

    def _readable(self) -> bool:
        """On the reactor's thread: the events the pipe has; at its end, what the end means."""
        return self._read_events(on_reactor=True)

    def _read_events(self, on_reactor: bool) -> bool:
        """As the pipe's reader (the reactor, or a waiting thread): take its events in; False at its
        end, when it is closed."""
        try:
            chunk = os.read(self._status_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            log.warning("%s: status pipe: %s", self.description, exc)
            chunk = b""
        if chunk:
            try:
                for event in self._events(chunk):
                    self._event(event)
                return True
            except ValueError as exc:
                log.warning("%s: status pipe: %s", self.description, exc)
        if on_reactor:
            default_reactor().remove(self._status_fd, self._handler)
        os.close(self._status_fd)
        with self._cond:
            self._ended()
            self._closed.set()
            self._cond.notify_all()
        return False

    def _event(self, event: dict[str, Any]) -> None:
        if "pages" in event:
            self._pages += [(int(address), int(length)) for address, length in event["pages"]]
        if event.get("created") and self._pages and self.on_pages is not None:
            try:
                self.on_pages(self._pages)
            except Exception as exc:  # a hint for the next warm process; the container is fine
                log.warning("%s: passing on its written pages: %s", self.description, exc)
            self._pages = []
        with self._cond:
            self._apply(event)
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Until ``ready()`` (True) or ``timeout`` (False): read the pipe while nobody else waits on it
        so, else wait for the thread that does."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while True:
                    if ready():
                        return True
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    if not self._direct and not self._closed.is_set():
                        break
                    self._cond.wait(remaining)
                self._direct = True
            try:
                self._read_while_waiting(ready, deadline)
            finally:
                with self._cond:
                    self._direct = False
                    self._cond.notify_all()  # another waiter reads on

    def _read_while_waiting(self, ready: Callable[[], bool], deadline: float | None) -> None:
        """Take the pipe from the reactor, read it on this thread until ``ready()``, the pipe's end or
        the deadline, then give it back."""
        reactor = default_reactor()
        reactor.remove(self._status_fd, self._handler)  # when it returns, the reactor's handler has finished
        if self._closed.is_set():
            return  # the reactor read the end (and closed the pipe) just before
        poller = select.poll()
        poller.register(self._status_fd, select.POLLIN)
        try:
            while True:
                with self._cond:
                    if ready():
                        return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                wait_ms = None if remaining is None else max(1, math.ceil(remaining * 1000))
                if poller.poll(wait_ms) and not self._read_events(on_reactor=False):
                    return
        finally:
            if not self._closed.is_set():
                reactor.add(self._status_fd, self._handler)

    def wait_for(self, what: str, timeout: float | None = None) -> bool:
        """Wait until ``pid``, ``mounted``, ``created``, ``started`` (or an error) or ``exit`` is known
        (agent/container/events.py: ``mounted`` and ``created`` include the shim's pid)."""
        return self._wait(lambda: self._ready(what), timeout)

    def wait(self, timeout: float | None = None) -> int | None:
        self.wait_for("exit", timeout)
        return self.exit_code

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the shim and the process are gone (the status pipe's EOF) and our end is closed."""
        return self._wait(self._closed.is_set, timeout)


class ForkServerClient:
    """Starts the fork server on first use and sends it requests (thread-safe)."""

    def __init__(self, python: str | None = None, *, direct: bool = True) -> None:
        self._python = python or sys.executable
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # With ``direct`` the server gives us its warm pair's sockets and a fitting request goes
        # straight to the pair, one process hop (about a millisecond here) shorter.
        self._direct = direct
        self._warm: tuple[socket.socket, socket.socket] | None = None
        # Until a container's setup has told us which pages it wrote, creates are asked to (see
        # agent.system.prefault): the server's warm processes fault those in while they wait.
        self._pages_known = False
        self.prefault_runs: list[tuple[int, int]] = []  # what the server's warm processes fault in
        self.preunshare: tuple[str, ...] = ()  # the namespaces they make ahead (init.prepare_warm_child)

    def start(self) -> None:
        """Spawn the server now (the agent may do this before it starts serving)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with children.spawning() as own:
                self._proc = subprocess.Popen(
                    # the agent's own interpreter flags (-S, -I, -O...) so the server starts as the agent did
                    [self._python, *_interpreter_flags(), "-m", "agent.container.forkserver", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    cwd="/",
                    env=_server_env(),
                )
                own(self._proc.pid)
        finally:
            theirs.close()
        self._sock = ours
        if self._direct:
            send_message(ours, {"op": "direct"})
        return ours

    def _take_warm(self, sock: socket.socket) -> tuple[socket.socket, socket.socket] | None:
        """The warm pair the server offered last (its shim's and process's sockets), if any."""
        while True:
            try:
                data, fds = receive_raw_nowait(sock)
            except BlockingIOError:
                break
            if not data:
                break
            if len(fds) == 2:
                self._drop_warm()
                self._warm = (socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1]))
            else:
                for fd in fds:
                    os.close(fd)
        warm, self._warm = self._warm, None
        return warm

    def _drop_warm(self) -> None:
        if self._warm is not None:
            for end in self._warm:
                end.close()
            self._warm = None

    def send(self, payload: dict[str, Any], fds: list[int]) -> None:
        with self._lock:
            sock = self._ensure()
            try:
                if self._direct and fds and fits_warm_pair(payload):
                    self._follow_namespaces(sock, payload)
                    warm = self._take_warm(sock)
                    if warm is not None:
                        handed = hand_over(warm[0], warm[1], marshal.dumps(payload), fds)
                        send_message(sock, {"op": "consumed"})  # the server forks the next pair
                        if handed:
                            return
                send_message(sock, payload, fds)
            except OSError as exc:
                self._drop()
                raise ResourceError(f"fork server failed: {exc}; it will be restarted on the next request") from exc

    def _follow_namespaces(self, sock: socket.socket, payload: dict[str, Any]) -> None:
        """The namespaces a create asks to make, of those a warm process can make ahead: when they
        change, the server's next warm processes make these (the pair at hand serves this one anyway)."""
        from agent.container.init import PREUNSHARE_KINDS

        joins = payload.get("join") or {}
        wanted = tuple(k for k in PREUNSHARE_KINDS if k in (payload.get("unshare") or []) and k not in joins)
        if wanted != self.preunshare:
            send_message(sock, {"op": "preunshare", "kinds": list(wanted)})
            self.preunshare = wanted

    def spawn(self, payload: dict[str, Any], fds: list[int], description: str, control_fd: int | None,
              status_fd: int) -> ProcessHandle:  # fmt: skip
        """Send a request whose fds[0] is the status pipe's write end; our ends are given. Returns at
        once: the pid (or the failure) arrives on the status pipe."""
        handle = ProcessHandle(status_fd, control_fd, description)
        if payload.get("op") == "create" and not self._pages_known:
            payload = {**payload, "learn_pages": True}
            handle.on_pages = self._learned_pages
        # The status pipe is watched from the first wait for an event on: the engine makes the
        # cgroup first, the process's setup does not wait for us.
        self.send(payload, fds)  # when it raises, the caller closes our ends (no thread reads them)
        return handle

    def _learned_pages(self, runs: list[tuple[int, int]]) -> None:
        """A create's setup reported the pages it wrote: the server's next warm processes fault them in."""
        with self._lock:
            if self._pages_known or self._sock is None:
                return
            send_message(self._sock, {"op": "prefault", "runs": runs})
            self._pages_known = True
            self.prefault_runs = list(runs)

    def release(self, handle: ProcessHandle) -> None:
        """Let a created container run its program."""
        handle.control(b"s")
        handle.close_control()

    def forget_all(self, handles: Iterable[ProcessHandle]) -> None:
        for handle in handles:
            handle.close_control()

    def _drop(self) -> None:
        self._drop_warm()
        self._pages_known = False  # a new server learns again
        self.preunshare = ()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.kill()
                self._proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            children.release(self._proc.pid)
            self._proc = None

    @property
    def server_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        with self._lock:
            self._drop_warm()  # EOF for a warm pair we held: it exits
            if self._sock is not None:
                self._sock.close()  # EOF: the server exits
                self._sock = None
            if self._proc is not None:
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                children.release(self._proc.pid)
                self._proc = None


def _interpreter_flags() -> list[str]:
    """The agent's interpreter flags, less those that would make the server ignore PYTHONPATH."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [flag for flag in flags if flag not in ("-I", "-E")]


def _server_env() -> dict[str, str]:
    """The agent's environment, with the agent's own module path as PYTHONPATH: the server then
    finds exactly the modules the agent found (an initrd may start the agent with -S and its own
    sys.path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    return env


def _fork_shim(sock: socket.socket, run: Any, request: dict[str, Any], fds: list[int]) -> None:
    try:
        pid = os.fork()
    except OSError as exc:
        if fds:  # fds[0] is the status pipe: the engine learns of the failure there
            report_failure(fds[0], f"fork server: fork failed: {exc}")
        return
    if pid == 0:
        code = 1
        try:
            sock.close()
            code = run(request, fds)
        finally:
            os._exit(code)


def serve(sock: socket.socket) -> None:
    """The server loop: one request, one shim. Runs single-threaded."""
    from agent.container import init  # preloaded here so each fork starts with it imported
    from agent.system import libc

    libc.resolve_ahead()

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims report through pipes; the kernel reaps them
    warm: WarmPair | None = None
    direct = False  # the client takes warm pairs itself (ForkServerClient(direct=True))
    offered = False  # a pair is with the client and not used yet
    # what the next warm pairs do ahead: fault in the pages a container's setup wrote
    # (agent.system.prefault), make the namespaces creates asked for (init.prepare_warm_child)
    settings: dict[str, Any] = {"prefault": [], "preunshare": []}
    while True:
        # The next warm pair is forked once the server has been idle for a moment, not right after a
        # hand-over: the fork would compete for the CPU with the container being set up.
        if warm is None and not offered and not readable(sock, WARM_DELAY):
            try:
                warm = WarmPair(settings, [sock])
            except OSError as exc:
                log.warning("fork server: cannot fork a warm shim: %s", exc)
            if warm is not None and direct:
                try:
                    warm.offer(sock)
                    offered = True
                except OSError as exc:
                    log.warning("fork server: cannot offer a warm shim: %s", exc)
                warm = None
        try:
            data, fds = receive_raw(sock)
            request = marshal.loads(data) if data else None
        except InterruptedError:
            continue
        except ConnectionResetError:  # the client closed with our offer unread: it is gone
            data, fds, request = b"", [], None
        except (OSError, ValueError, EOFError, TypeError) as exc:
            log.error("fork server: bad request: %s", exc)
            continue
        if request is None:
            if warm is not None:
                warm.close()  # EOF: the warm pair exits
            return
        if request.get("op") == "direct":
            direct = True
            if warm is not None:
                warm.close()  # forked before we knew: the next one is offered
                warm = None
            continue
        if request.get("op") == "consumed":
            offered = False
            continue
        if request.get("op") == "prefault":
            settings["prefault"] = prefault.checked_runs(request.get("runs"))
            continue
        if request.get("op") == "preunshare":
            kinds = request.get("kinds")
            kinds = kinds if isinstance(kinds, list | tuple) else ()
            settings["preunshare"] = [kind for kind in init.PREUNSHARE_KINDS if kind in kinds]
            continue
        handed = False
        if warm is not None and fds and fits_warm_pair(request):
            handed = warm.hand_over(data, fds)
            warm = None
        if not handed:
            _fork_shim(sock, init.run_shim, request, fds)
        for fd in fds:
            os.close(fd)


def main() -> None:
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="forkserver: %(message)s")
    serve(sock)


if __name__ == "__main__":
    main()
