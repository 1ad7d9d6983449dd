"""After ``olddefconfig``: every requested symbol must have its requested value in ``.config``.

Kconfig drops a request silently when a dependency is missing, so this check is what turns "the guest
has no vsock" into a build error. Symbols on the allow-list may be dropped (they do not exist on every
version or architecture).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from osbuilder.kernel.fragments import NOT_SET, FragmentError, Setting, parse_config_text


@dataclass(frozen=True)
class Mismatch:
    setting: Setting
    actual: str  # the value in .config; "n" when absent

    def describe(self) -> str:
        setting = self.setting
        return f"{setting.symbol}: requested {setting.value} ({setting.origin}), .config has {self.actual}"


def read_allow_list(path: Path) -> set[str]:
    """One symbol per line (with or without the CONFIG_ prefix); '#' starts a comment."""
    if not path.exists():
        return set()
    symbols = set()
    for raw in path.read_text().splitlines():
        word = raw.split("#", 1)[0].strip()
        if word:
            symbols.add(word if word.startswith("CONFIG_") else f"CONFIG_{word}")
    return symbols


def config_values(dot_config: str) -> dict[str, str]:
    return {s.symbol: s.value for s in parse_config_text(dot_config, ".config")}


def mismatches(requested: dict[str, Setting], dot_config: str, allowed: set[str]) -> list[Mismatch]:
    actual = config_values(dot_config)
    problems = []
    for symbol in sorted(requested):
        setting = requested[symbol]
        value = actual.get(symbol, NOT_SET)
        if value != setting.value and symbol not in allowed:
            problems.append(Mismatch(setting, value))
    return problems


def verify(requested: dict[str, Setting], dot_config: str, allowed: set[str]) -> None:
    problems = mismatches(requested, dot_config, allowed)
    if problems:
        listing = "\n  ".join(p.describe() for p in problems)
        raise FragmentError(
            f"{len(problems)} requested kernel options did not survive olddefconfig "
            f"(fix their dependencies or add them to the allow-list):\n  {listing}"
        )
