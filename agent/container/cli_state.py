"""What a later pykata-runc call needs to find a container again: ``<root>/<id>/state.json``."""

from __future__ import annotations

import os
import time

from agent.container.cli_args import CliError
from agent.system import jsonlite

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.0.2-dev"  # the runtime-spec version runc 1.1 reports; tools compare it
STATE_FILE = "state.json"


def format_time(ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, as Go's time.RFC3339Nano prints (runc's ``created``)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


STATUS_CREATED = "created"
STATUS_RUNNING = "running"
STATUS_PAUSED = "paused"
STATUS_STOPPED = "stopped"


class Record:
    """What state.json holds about one container."""

    FIELDS = ("id", "bundle", "rootfs", "created", "pid", "pid_start", "started", "paused", "oci_version",
              "annotations", "hooks", "engine")  # fmt: skip

    def __init__(
        self,
        id: str,
        bundle: str,
        rootfs: str,
        created: str,
        pid: int = 0,
        pid_start: int = 0,
        started: bool = False,
        paused: bool = False,
        oci_version: str = OCI_VERSION,
        annotations: dict[str, str] | None = None,
        hooks: dict[str, list[dict[str, Any]]] | None = None,
        engine: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = created
        self.pid = pid
        self.pid_start = pid_start  # the init's start time (clock ticks since boot) guards against pid reuse
        self.started = started
        self.paused = paused
        self.oci_version = oci_version
        self.annotations = annotations or {}
        self.hooks = hooks or {}  # unused since the engine runs the hooks; read from older state files
        self.engine = engine or {}  # the spec and the shim: what cli_backend needs to find it again

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(**{k: v for k, v in data.items() if k in cls.FIELDS})


def validate_id(container_id: str) -> None:
    """runc's rule: letters, digits, ``_ + - .``; never ``.`` or ``..``; no ``/``."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")
    if not container_id or container_id in (".", "..") or not set(container_id) <= allowed:
        raise CliError(f"invalid container id {container_id!r}: use letters, digits and _+-. only")
    if len(container_id) > 1024:
        raise CliError("invalid container id: longer than 1024 characters")


class Store:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = os.fspath(root)
        self.root = root.rstrip("/") or root  # as a Path names it: no trailing slash unless it is "/"

    def dir(self, container_id: str) -> str:
        validate_id(container_id)
        return os.path.join(self.root, container_id)

    def reserve(self, container_id: str) -> str:
        """Make the container's state directory; an existing one means a duplicate id."""
        path = self.dir(container_id)
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            raise CliError(f"container with id {container_id!r} already exists") from None
        return path

    def load(self, container_id: str) -> Record:
        path = f"{self.dir(container_id)}/{STATE_FILE}"
        try:
            with open(path, encoding="utf-8") as stream:
                data = jsonlite.loads(stream.read())
        except FileNotFoundError:
            raise CliError(f"container {container_id!r} does not exist") from None
        except (OSError, ValueError) as exc:
            raise CliError(f"container {container_id!r}: unreadable state {path}: {exc}") from None
        return Record.from_json(data)

    def save(self, record: Record) -> None:
        directory = self.dir(record.id)
        temporary = f"{directory}/.{STATE_FILE}.{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(jsonlite.dumps(record.to_json()))
        os.replace(temporary, f"{directory}/{STATE_FILE}")

    def remove(self, container_id: str) -> None:
        """Remove the state directory (flat: state.json, the exec fifo, temporary files)."""
        directory = self.dir(container_id)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
        os.rmdir(directory)

    def ids(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root) if os.path.exists(f"{e.path}/{STATE_FILE}"))
        except FileNotFoundError:
            return []


def process_start_time(proc_pid: str) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when the process is gone or a zombie."""
    try:
        with open(f"{proc_pid}/stat", "rb") as stream:
            stat = stream.read()  # bytes: the command name in it may be any bytes
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])
