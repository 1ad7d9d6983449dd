"""Step lines for long builds: "[initrd] tracing imports ... done in 2.1 s"."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import click


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def say(self, area: str, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{area}] {message}", err=True)

    @contextlib.contextmanager
    def step(self, area: str, message: str) -> Iterator[None]:
        self.say(area, f"{message} ...")
        started = time.monotonic()
        yield
        self.say(area, f"{message}: done in {time.monotonic() - started:.1f} s")
