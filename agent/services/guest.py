"""Guest-wide RPCs in domain terms: details, clock, entropy, CopyFile, metrics.

CopyFile writes only below the shared containers directory. Every request is checked before anything
is written (absolute path, no "..", below the shared directory, no symlink in an existing parent that
leads outside, sizes and offsets in range), a regular file is assembled under a hidden temporary name in
its destination directory and renamed into place only when its last chunk arrives, so no partial file
is ever visible at the destination.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from agent import __version__, metrics
from agent.errors import InvalidArgument, ResourceError, Unsupported
from agent.system import libc, sysfs
from agent.system.paths import KATA_SHARED_SUBDIR, HostPaths

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

# Used when agent.storage does not publish its own lists (STORAGE_HANDLERS / DEVICE_HANDLERS).
DEFAULT_STORAGE_HANDLERS = ("9p", "virtio-fs", "blk", "scsi", "ephemeral", "local", "overlayfs", "bind")
DEFAULT_DEVICE_HANDLERS = ("blk", "scsi", "mmioblk", "nvdimm")  # agent/services/container_devices.py

# Largest file CopyFile accepts. Kata copies config and small bundle files this way; 1 GiB bounds the
# guest memory or disk a single request sequence can claim.
MAX_COPY_FILE_SIZE = 1 << 30
TEMP_SUFFIX = ".pykata-copy"
USECS_PER_SEC = 1_000_000


@dataclass(frozen=True)
class AgentDetails:
    version: str
    init_daemon: bool
    device_handlers: tuple[str, ...]
    storage_handlers: tuple[str, ...]
    supports_seccomp: bool


@dataclass(frozen=True)
class GuestDetails:
    mem_block_size_bytes: int
    support_mem_hotplug_probe: bool
    agent: AgentDetails


@dataclass(frozen=True)
class CopyFileRequest:
    path: str
    file_size: int
    file_mode: int
    dir_mode: int
    uid: int
    gid: int
    offset: int
    data: bytes = field(repr=False)


def _mem_agent_metrics(services: Services) -> list[metrics.Metric]:
    """The mem-agent's counts, when it runs (its service is built at boot with agent.mem_agent_enable)."""
    memagent = services.built().get("memagent")
    return memagent.metrics() if memagent is not None else []


def _published(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    try:
        storage = importlib.import_module("agent.storage")
    except ImportError:
        return default
    value = getattr(storage, name, None)
    return tuple(value) if value else default


class GuestService:
    def __init__(
        self,
        paths: HostPaths,
        init_daemon: bool = False,
        set_clock: Callable[[int, int], None] | None = None,
        extra_metrics: Callable[[], list[metrics.Metric]] | None = None,
    ) -> None:
        self.paths = paths
        self.init_daemon = init_daemon
        self._set_clock = set_clock
        self._extra_metrics = extra_metrics

    @classmethod
    def from_services(cls, services: Services) -> GuestService:
        return cls(services.paths, services.init_daemon, extra_metrics=lambda: _mem_agent_metrics(services))

    # --- details
    def details(self, want_block_size: bool, want_probe: bool) -> GuestDetails:
        block_size = 0
        if want_block_size:
            try:
                block_size = int(sysfs.read_text(self.paths.memory_block_size), 16)
            except FileNotFoundError:
                block_size = 0  # no memory hotplug support in this kernel
            except (OSError, ValueError) as exc:
                raise ResourceError(f"reading {self.paths.memory_block_size}: {exc}") from exc
        probe = want_probe and os.path.exists(self.paths.memory_probe)
        return GuestDetails(block_size, probe, self.agent_details())

    def agent_details(self) -> AgentDetails:
        return AgentDetails(
            version=__version__,
            init_daemon=self.init_daemon,
            device_handlers=_published("DEVICE_HANDLERS", DEFAULT_DEVICE_HANDLERS),
            storage_handlers=_published("STORAGE_HANDLERS", DEFAULT_STORAGE_HANDLERS),
            supports_seccomp=self.supports_seccomp(),
        )

    def supports_seccomp(self) -> bool:
        try:
            status = (Path(self.paths.proc) / "self" / "status").read_text()
        except OSError:
            return False
        return any(line.startswith("Seccomp:") for line in status.splitlines())

    # --- clock and entropy
    def set_date_time(self, sec: int, usec: int) -> None:
        if sec < 0 or not 0 <= usec < USECS_PER_SEC:
            raise InvalidArgument(f"SetGuestDateTime: sec={sec} usec={usec} out of range (sec >= 0, 0 <= usec < 1e6)")
        try:
            (self._set_clock or libc.settimeofday)(sec, usec)
        except PermissionError as exc:
            raise Unsupported(f"setting the guest clock needs CAP_SYS_TIME: {exc}") from exc
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOVERFLOW, errno.ERANGE):
                raise InvalidArgument(
                    f"SetGuestDateTime: the kernel refuses the time sec={sec}: {exc.strerror}"
                ) from exc
            raise ResourceError(f"settimeofday({sec}, {usec}) failed: {exc}") from exc

    def reseed_random(self, data: bytes) -> None:
        if not data:
            return  # as Kata's agent: nothing to mix in is not an error
        device = self.paths.random_device
        try:
            fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ResourceError(f"opening {device}: {exc.strerror}") from exc
        try:
            os.write(fd, data)
            if os.geteuid() == 0 and stat.S_ISCHR(os.fstat(fd).st_mode):
                libc.add_entropy(fd, data, device)
        except OSError as exc:
            raise ResourceError(f"reseeding {device}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    # --- metrics
    def metrics(self) -> str:
        try:
            return metrics.collect(self.paths, self._extra_metrics() if self._extra_metrics else ())
        except (OSError, ValueError, IndexError) as exc:
            raise ResourceError(f"collecting metrics: {exc}") from exc

    # --- CopyFile
    def copy_file(self, request: CopyFileRequest) -> None:
        target = self._copy_target(request)
        kind = stat.S_IFMT(request.file_mode)
        self._make_parents(target.parent, request.dir_mode or 0o755)
        if kind == stat.S_IFDIR:
            self._copy_directory(target, request)
        elif kind == stat.S_IFLNK:
            self._copy_symlink(target, request)
        elif kind in (0, stat.S_IFREG):
            self._copy_chunk(target, request)
        else:
            raise InvalidArgument(f"CopyFile {request.path}: unsupported file type {kind:#o} in file_mode")

    def _copy_target(self, request: CopyFileRequest) -> Path:
        """Check the request's numbers and path; return the host path to write."""
        name = request.path
        if request.file_size < 0 or request.offset < 0:
            raise InvalidArgument(f"CopyFile {name}: negative file_size or offset")
        if request.uid < -1 or request.gid < -1:
            raise InvalidArgument(f"CopyFile {name}: uid and gid must be >= -1")
        if request.file_size > MAX_COPY_FILE_SIZE:
            raise InvalidArgument(f"CopyFile {name}: file_size {request.file_size} exceeds {MAX_COPY_FILE_SIZE}")
        if request.offset + len(request.data) > request.file_size and stat.S_IFMT(request.file_mode) in (
            0,
            stat.S_IFREG,
        ):
            raise InvalidArgument(
                f"CopyFile {name}: offset {request.offset} + {len(request.data)} bytes exceeds "
                f"file_size {request.file_size}"
            )
        if "\0" in name:
            raise InvalidArgument(f"CopyFile {name!r}: NUL in path")
        guest = PurePosixPath(name)
        if not guest.is_absolute():
            raise InvalidArgument(f"CopyFile {name}: path must be absolute")
        if ".." in guest.parts:
            raise InvalidArgument(f"CopyFile {name}: '..' is not allowed in the path")
        base = PurePosixPath("/") / KATA_SHARED_SUBDIR
        try:
            relative = guest.relative_to(base)
        except ValueError:
            raise InvalidArgument(f"CopyFile {name}: only paths below {base}/ may be written") from None
        if not relative.parts or relative.parts == (".",):
            raise InvalidArgument(f"CopyFile {name}: names the shared directory itself")
        target = Path(self.paths.shared_containers).joinpath(*relative.parts)
        self._check_no_escape(target.parent, name)
        return target

    def _check_no_escape(self, directory: Path, name: str) -> None:
        """The deepest existing ancestor of ``directory``, with symlinks resolved, stays in the share."""
        shared = Path(os.path.realpath(self.paths.shared_containers))
        top = Path(self.paths.shared_containers)
        existing = directory
        while not os.path.lexists(existing) and existing != top:
            existing = existing.parent
        resolved = Path(os.path.realpath(existing))
        if resolved != shared and shared not in resolved.parents:
            raise InvalidArgument(f"CopyFile {name}: a symlink in the path leads outside {KATA_SHARED_SUBDIR}")

    def _make_parents(self, directory: Path, dir_mode: int) -> None:
        missing: list[Path] = []
        current = directory
        while not os.path.lexists(current):
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, dir_mode & 0o7777)
            except FileExistsError:
                pass
            except OSError as exc:
                raise ResourceError(f"CopyFile: creating {path}: {exc.strerror}") from exc
        if not directory.is_dir():
            raise InvalidArgument(f"CopyFile: {directory} exists and is not a directory")
        # Checked again now that it exists: a directory swapped for a symlink meanwhile is refused.
        self._check_no_escape(directory, str(directory))

    def _chown(self, path: Path, request: CopyFileRequest) -> None:
        if request.uid == -1 and request.gid == -1:
            return
        try:
            os.lchown(path, request.uid, request.gid)
        except OSError as exc:
            raise ResourceError(f"CopyFile: chown {path} to {request.uid}:{request.gid}: {exc.strerror}") from exc

    def _copy_directory(self, target: Path, request: CopyFileRequest) -> None:
        if os.path.islink(target):
            raise InvalidArgument(f"CopyFile {request.path}: exists and is a symlink")
        try:
            os.mkdir(target, 0o700)
        except FileExistsError:
            if not target.is_dir():
                raise InvalidArgument(f"CopyFile {request.path}: exists and is not a directory") from None
        os.chmod(target, request.file_mode & 0o7777)
        self._chown(target, request)

    def _copy_symlink(self, target: Path, request: CopyFileRequest) -> None:
        link_target = os.fsdecode(request.data)
        if not link_target or "\0" in link_target:
            raise InvalidArgument(f"CopyFile {request.path}: a symlink needs its target in data")
        temporary = target.with_name(f".{target.name}{TEMP_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.symlink(link_target, temporary)
        self._chown(temporary, request)
        self._rename(temporary, target, request)

    def _copy_chunk(self, target: Path, request: CopyFileRequest) -> None:
        temporary = target.with_name(f".{target.name}{TEMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        if request.offset == 0:
            flags |= os.O_TRUNC
        elif not os.path.lexists(temporary):
            raise InvalidArgument(f"CopyFile {request.path}: offset {request.offset} but no earlier chunk")
        try:
            fd = os.open(temporary, flags, 0o600)
        except OSError as exc:
            raise InvalidArgument(f"CopyFile {request.path}: cannot open {temporary.name}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if request.offset > size:
                raise InvalidArgument(
                    f"CopyFile {request.path}: offset {request.offset} is past the {size} bytes received so far"
                )
            os.pwrite(fd, request.data, request.offset)
            end = request.offset + len(request.data)
            if end != request.file_size:
                return
            os.ftruncate(fd, end)
            os.fchmod(fd, request.file_mode & 0o7777)
            if request.uid != -1 or request.gid != -1:
                os.fchown(fd, request.uid, request.gid)
            os.fsync(fd)
        except OSError as exc:
            raise ResourceError(f"CopyFile {request.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self._rename(temporary, target, request)

    def _rename(self, temporary: Path, target: Path, request: CopyFileRequest) -> None:
        try:
            os.replace(temporary, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise InvalidArgument(f"CopyFile {request.path}: cannot replace the destination: {exc.strerror}") from exc
