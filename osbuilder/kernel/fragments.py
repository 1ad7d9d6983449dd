"""Kernel config fragments: parse, select by architecture, merge with conflict detection.

A fragment is a ``.conf`` file of ``CONFIG_X=value`` and ``# CONFIG_X is not set`` lines. Fragments
under ``fragments/common`` apply to every architecture, those under ``fragments/<arch>`` to that one
only. Merging fails when two fragments set one symbol to different values, naming both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

COMMON_TAG = "common"
NOT_SET = "n"

_ASSIGN = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


class FragmentError(ValueError):
    """A fragment is malformed, or two fragments disagree."""


@dataclass(frozen=True)
class Setting:
    symbol: str
    value: str  # "y", "m", "n" (not set), a number or a quoted string
    origin: str  # "fragments/common/vsock.conf:3"


def parse_config_text(text: str, origin: str) -> list[Setting]:
    """Parse fragment or .config text. Comments and blank lines are skipped; anything else is an error."""
    settings = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{origin}:{number}"
        if not line:
            continue
        unset = _UNSET.match(line)
        if unset:
            settings.append(Setting(unset.group(1), NOT_SET, where))
            continue
        if line.startswith("#"):
            continue
        assign = _ASSIGN.match(line)
        if not assign:
            raise FragmentError(f"{where}: cannot parse {line!r} (expected CONFIG_X=value)")
        settings.append(Setting(assign.group(1), assign.group(2), where))
    return settings


def select_fragments(fragments_dir: Path, arch: str) -> list[Path]:
    """The fragments that apply to ``arch``: common ones, then the arch's own, each group sorted by name."""
    chosen: list[Path] = []
    for tag in (COMMON_TAG, arch):
        folder = fragments_dir / tag
        if folder.is_dir():
            chosen += sorted(folder.glob("*.conf"))
    return chosen


def merge(paths: list[Path], relative_to: Path | None = None) -> dict[str, Setting]:
    """Merge fragments in order. A symbol set twice to the same value is fine; to different values, an error."""
    merged: dict[str, Setting] = {}
    for path in paths:
        origin = str(path.relative_to(relative_to)) if relative_to else str(path)
        for setting in parse_config_text(path.read_text(), origin):
            previous = merged.get(setting.symbol)
            if previous is not None and previous.value != setting.value:
                raise FragmentError(
                    f"{setting.symbol} is set to {previous.value} in {previous.origin} "
                    f"and to {setting.value} in {setting.origin}"
                )
            merged.setdefault(setting.symbol, setting)
    return merged


def render(settings: dict[str, Setting]) -> str:
    """Fragment text in symbol order, for appending to a .config before olddefconfig."""
    lines = []
    for symbol in sorted(settings):
        value = settings[symbol].value
        lines.append(f"# {symbol} is not set" if value == NOT_SET else f"{symbol}={value}")
    return "\n".join(lines) + "\n"
