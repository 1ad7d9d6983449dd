"""Copy a mount from one process's mount namespace into another's, from the agent (which runs threads).

setns(CLONE_NEWNS) refuses a thread that shares its filesystem attributes with others, as every thread
of a process does; so the work runs on a thread of its own that first unshares its mount namespace
(which also gives it its own root and cwd), joins the source namespace, clones the mount tree there
(open_tree with OPEN_TREE_CLONE | AT_RECURSIVE: the same filesystems, so later changes show on both
sides), joins the target namespace, makes the mount point and attaches the tree (move_mount). The
thread then ends, and its namespaces with it: no other thread of the agent ever changes namespace.
"""

from __future__ import annotations

import os
import threading

from agent.system import libc


def copy_mount(source_ns: str, source_path: str, target_ns: str, target_path: str) -> None:
    """Attach a clone of the mount tree at ``source_path`` (as the mount namespace ``source_ns``, a
    /proc/PID/ns/mnt path, sees it) at ``target_path`` in ``target_ns`` (made if missing). Raises the
    OSError of the step that failed, naming its path."""
    failure: list[BaseException] = []
    source_fd = os.open(source_ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target_fd = os.open(target_ns, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(source_fd)
        raise

    def work() -> None:
        try:
            libc.unshare(libc.CLONE_NEWNS)
            libc.setns(source_fd, libc.CLONE_NEWNS, source_ns)
            tree = libc.open_tree(source_path, recursive=True)
            try:
                libc.setns(target_fd, libc.CLONE_NEWNS, target_ns)
                os.makedirs(target_path, exist_ok=True)
                libc.move_mount(tree, target_path)
            finally:
                os.close(tree)
        except BaseException as exc:
            failure.append(exc)

    try:
        thread = threading.Thread(target=work, name="mount-copy", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(source_fd)
        os.close(target_fd)
    if failure:
        raise failure[0]
