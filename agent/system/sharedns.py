"""The sandbox's shared IPC and UTS namespaces, kept alive by bind mounts instead of a process.

A short-lived thread unshares new IPC and UTS namespaces (only that thread moves; both kinds may be
unshared by one thread of a multi-threaded process), sets the sandbox hostname inside the new UTS
namespace, and bind-mounts its ``/proc/thread-self/ns/{ipc,uts}`` onto files in the sandbox directory.
The thread then ends; the mounts keep the namespaces. Containers join them with setns(2) on those
files (``SharedNamespaces.path(kind)``). A PID namespace needs a living process (its first process is
its init), so ``sandbox_pidns`` is served by the container engine's pause process, not here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

from agent.system import libc
from agent.system.paths import HostPaths

KINDS = {"ipc": libc.CLONE_NEWIPC, "uts": libc.CLONE_NEWUTS}


@dataclass(frozen=True)
class SharedNamespaces:
    directory: str
    kinds: tuple[str, ...] = field(default=tuple(KINDS))

    def path(self, kind: str) -> str:
        """The file a container opens and passes to setns(2) to join the sandbox's ``kind`` namespace."""
        return os.path.join(self.directory, kind)

    def clone_flag(self, kind: str) -> int:
        return KINDS[kind]


def create_shared_namespaces(
    paths: HostPaths, hostname: str = "", directory: str | os.PathLike[str] | None = None
) -> SharedNamespaces:
    """New IPC and UTS namespaces pinned under ``directory`` (default: the sandbox dir's ``ns/``),
    with ``hostname`` set in the UTS one. Raises OSError naming the step that failed; nothing is left
    behind then."""
    target = f"{paths.sandbox_dir}/ns" if directory is None else os.fspath(directory)
    shared = SharedNamespaces(target)
    failure: list[BaseException] = []

    def pin() -> None:
        try:
            libc.unshare(libc.CLONE_NEWIPC | libc.CLONE_NEWUTS)
            if hostname:
                libc.sethostname(hostname)
            os.makedirs(target, exist_ok=True)
            for kind in shared.kinds:
                holder = shared.path(kind)
                _touch(holder)
                libc.mount(paths.thread_ns(kind), holder, None, libc.MS_BIND)
        except BaseException as exc:
            failure.append(exc)

    # The thread's namespaces die with it; only the bind mounts keep them.
    thread = threading.Thread(target=pin, name="pykata-sandbox-ns")
    thread.start()
    thread.join()
    if failure:
        release_shared_namespaces(shared)
        raise failure[0]
    return shared


def _touch(path: str) -> None:
    """Make ``path`` exist as a file (a bind mount's target), as ``touch`` does."""
    try:
        os.utime(path)
        return
    except OSError:
        pass
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))


def release_shared_namespaces(shared: SharedNamespaces) -> None:
    """Unpin the namespaces (they end when the last container in them exits) and remove the files."""
    for kind in shared.kinds:
        holder = shared.path(kind)
        with contextlib.suppress(OSError):
            libc.umount2(holder, libc.MNT_DETACH)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(holder)
    with contextlib.suppress(OSError):
        os.rmdir(shared.directory)
