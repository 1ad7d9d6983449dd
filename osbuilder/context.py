"""One build workspace: every cache and output path derives from ``workdir`` and ``output``."""

from __future__ import annotations

import fcntl
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from osbuilder.progress import Progress

DEFAULT_WORKDIR = Path("build/cache")
# 2026-01-01T00:00:00Z: used when SOURCE_DATE_EPOCH is not set, so builds are reproducible by default.
DEFAULT_EPOCH = 1767225600


def source_date_epoch(environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    text = env.get("SOURCE_DATE_EPOCH", "")
    if not text:
        return DEFAULT_EPOCH
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, not {text!r}") from None


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


_HELD_LOCKS: dict[str, int] = {}


@dataclass(frozen=True)
class BuildContext:
    workdir: Path
    output: Path
    epoch: int = DEFAULT_EPOCH
    arch: str = field(default_factory=platform.machine)
    progress: Progress = field(default_factory=Progress)
    source: Path = field(default_factory=repo_root)

    @property
    def kernel_cache(self) -> Path:
        return self.workdir / "kernel"

    @property
    def wheels_dir(self) -> Path:
        return self.workdir / "wheels"

    @property
    def rootfs_cache(self) -> Path:
        return self.workdir / "rootfs"

    @property
    def mkosi_cache(self) -> Path:
        return self.workdir / "mkosi-packages"

    @property
    def initrd_work(self) -> Path:
        return self.workdir / "initrd"

    @property
    def kernel_config_dir(self) -> Path:
        return self.source / "kernel-config"

    def env(self) -> dict[str, str]:
        """Environment for build subprocesses: SOURCE_DATE_EPOCH and a C locale for stable output."""
        env = dict(os.environ)
        env["SOURCE_DATE_EPOCH"] = str(self.epoch)
        env["LC_ALL"] = "C.UTF-8"
        return env

    def ensure(self) -> None:
        """Create the work and output directories and take the workdir's lock for this process.

        Builds share caches in the workdir (the rootfs tree, the unpacked kernel): two at once would
        replace each other's files, so a second build waits for the first."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.output.mkdir(parents=True, exist_ok=True)
        lock_path = self.workdir / ".lock"
        key = str(lock_path.resolve())
        if key in _HELD_LOCKS:
            return
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.progress.say("build", f"waiting for another build using {self.workdir} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD_LOCKS[key] = fd  # held until the process exits
