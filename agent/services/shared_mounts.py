"""CreateContainer's ``shared_mounts``: mounts one container of the sandbox makes (a sidecar's FUSE
mount, a tmpfs it fills) that another container of the sandbox sees, as Kata's agent does.

Kata's runtime-rs sends, for the container it creates (``dst_ctr``), each shared mount whose source
container (``src_ctr``, by its Kubernetes container name: the CRI's container-name annotation) the
sandbox already runs. Once the new container exists (its process waits for StartContainer), the agent
waits up to READY_WAIT seconds for ``src_path`` to be a mount point in the source container, clones
that mount tree and attaches it at ``dst_path`` in the new container (agent/system/mountns.py): the
same filesystems, so what either side writes later the other sees. As in Kata, a source container the
sandbox does not have, or whose path never becomes a mount point, is passed over (with a warning);
a mount that fails fails the create, which then leaves nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from agent.errors import InvalidArgument, ResourceError
from agent.storage.mountinfo import read_mountinfo
from agent.system import mountns
from agent.system.paths import HostPaths

log = logging.getLogger(__name__)

READY_WAIT = 10.0  # seconds the source's mount point is waited for (Kata's)
POLL = 0.1
# The container's name as the CRI gives it: containerd's, then CRI-O's annotation.
NAME_ANNOTATIONS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")


@dataclass(frozen=True)
class SharedMount:
    name: str
    src_ctr: str
    src_path: str
    dst_ctr: str
    dst_path: str

    def validate(self) -> None:
        if not self.src_ctr:
            raise InvalidArgument(f"shared mount {self.name!r}: src_ctr is empty")
        for field in ("src_path", "dst_path"):
            value = getattr(self, field)
            if not value.startswith("/") or "\0" in value:
                raise InvalidArgument(f"shared mount {self.name!r}: {field} {value!r} is not an absolute path")


def container_name(annotations: dict[str, str]) -> str:
    """The Kubernetes container name the runtime's annotations give ("" without one)."""
    for key in NAME_ANNOTATIONS:
        if annotations.get(key):
            return annotations[key]
    return ""


def is_mount_point(paths: HostPaths, pid: int, path: str) -> bool:
    """``path`` is a mount point as the mount namespace of ``pid`` sees it."""
    try:
        return any(mount.mount_point == path for mount in read_mountinfo(f"{paths.proc_pid(pid)}/mountinfo"))
    except OSError:
        return False


def setup(
    paths: HostPaths, target_pid: int, sources: dict[str, int], mounts: list[SharedMount], wait: float = READY_WAIT
) -> list[str]:
    """Attach each of ``mounts`` whose source container is in ``sources`` (name -> its init's pid) in
    the mount namespace of ``target_pid``; the dst paths attached. ResourceError names a failed one."""
    done = []
    for mount in mounts:
        source_pid = sources.get(mount.src_ctr)
        if source_pid is None:
            log.warning("shared mount %r: no container is named %r; passed over", mount.name, mount.src_ctr)
            continue
        deadline = time.monotonic() + wait
        while not is_mount_point(paths, source_pid, mount.src_path):
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        else:
            try:
                mountns.copy_mount(
                    f"{paths.proc_pid(source_pid)}/ns/mnt",
                    mount.src_path,
                    f"{paths.proc_pid(target_pid)}/ns/mnt",
                    mount.dst_path,
                )
            except OSError as exc:
                raise ResourceError(
                    f"shared mount {mount.name!r}: {mount.src_ctr}:{mount.src_path} -> {mount.dst_path}: {exc}"
                ) from exc
            done.append(mount.dst_path)
            continue
        log.warning(
            "shared mount %r: %s is not a mount point in container %r after %.0f s; passed over",
            mount.name, mount.src_path, mount.src_ctr, wait,
        )  # fmt: skip
    return done
