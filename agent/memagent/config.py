"""The two parts' settings, and the partial updates MemAgentMemcgSet and MemAgentCompactSet carry.

The defaults are Kata's (src/mem-agent: memcg.rs, compact.rs); the boot values come from the
``agent.mem_agent_*`` options (agent/config.py). An update names only the fields a request set; it is
checked whole before anything changes, so a rejected request changes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from agent.config import I64_MAX, U64_MAX
from agent.errors import InvalidArgument

# compact_force_times at this value means "never force" (Kata's u64::MAX).
NEVER = U64_MAX
# The kernel's page block order (PAGE_REPORTING_MIN_ORDER in Kata): the default compact_order.
PAGE_REPORTING_MIN_ORDER = 9
# The highest page order when the kernel does not say (x86-64: MAX_ORDER 11, orders 0 to 10).
DEFAULT_MAX_PAGE_ORDER = 10


@dataclass(frozen=True)
class MemcgConfig:
    disabled: bool = False
    swap: bool = False  # may eviction swap anon pages out (needs free swap)
    swappiness_max: int = 50
    period_secs: int = 10 * 60
    period_psi_percent_limit: int = 1  # skip a memcg that stalled more than this over the last period
    eviction_psi_percent_limit: int = 1  # stop evicting a memcg that stalls more than this between steps
    eviction_run_aging_count_min: int = 3  # agings of a memcg before its first eviction


@dataclass(frozen=True)
class CompactConfig:
    disabled: bool = False
    period_secs: int = 10 * 60
    period_psi_percent_limit: int = 1  # no compaction after a period that stalled more than this
    compact_psi_percent_limit: int = 5  # kill a compaction that stalls the guest more than this
    compact_sec_max: int = 30 * 60  # kill a compaction that runs longer
    compact_order: int = PAGE_REPORTING_MIN_ORDER  # free pages below this order count as fragmented
    # Compact when the free movable pages below compact_order grew by more than this many pages since the
    # last compaction, or MemFree fell by as many pages.
    compact_threshold: int = 2 << PAGE_REPORTING_MIN_ORDER
    compact_force_times: int = NEVER  # compact anyway after this many periods without (0: every period)


# field -> (lowest, highest, what it is), for the integer fields; bools are checked by type.
_MEMCG_RANGES: dict[str, tuple[int, int, str]] = {
    "swappiness_max": (0, 200, "a swappiness"),
    "period_secs": (1, U64_MAX, "a number of seconds"),
    "period_psi_percent_limit": (0, 100, "a percentage"),
    "eviction_psi_percent_limit": (0, 100, "a percentage"),
    "eviction_run_aging_count_min": (0, U64_MAX, "a count"),
}
_COMPACT_RANGES: dict[str, tuple[int, int, str]] = {
    "period_secs": (1, U64_MAX, "a number of seconds"),
    "period_psi_percent_limit": (0, 100, "a percentage"),
    "compact_psi_percent_limit": (0, 100, "a percentage"),
    "compact_sec_max": (0, I64_MAX, "a number of seconds"),
    "compact_order": (0, DEFAULT_MAX_PAGE_ORDER, "a page order"),  # the top is the kernel's, see below
    "compact_threshold": (0, U64_MAX, "a number of pages"),
    "compact_force_times": (0, U64_MAX, "a count"),
}


def _check(part: str, changes: dict[str, Any], ranges: dict[str, tuple[int, int, str]]) -> None:
    for name, value in changes.items():
        if name == "disabled" or name == "swap":
            if not isinstance(value, bool):
                raise InvalidArgument(f"mem-agent {part} {name}={value!r}: expected true or false")
            continue
        low, high, what = ranges[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidArgument(f"mem-agent {part} {name}={value!r}: expected {what} from {low} to {high}")


@dataclass(frozen=True)
class MemcgUpdate:
    """The fields of a MemAgentMemcgSet that were set (None: leave as it is)."""

    disabled: bool | None = None
    swap: bool | None = None
    swappiness_max: int | None = None
    period_secs: int | None = None
    period_psi_percent_limit: int | None = None
    eviction_psi_percent_limit: int | None = None
    eviction_run_aging_count_min: int | None = None

    def changes(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def validate(self) -> None:
        _check("memcg", self.changes(), _MEMCG_RANGES)

    def apply(self, config: MemcgConfig) -> MemcgConfig:
        self.validate()
        return dataclasses.replace(config, **self.changes())


@dataclass(frozen=True)
class CompactUpdate:
    """The fields of a MemAgentCompactSet that were set (None: leave as it is)."""

    disabled: bool | None = None
    period_secs: int | None = None
    period_psi_percent_limit: int | None = None
    compact_psi_percent_limit: int | None = None
    compact_sec_max: int | None = None
    compact_order: int | None = None
    compact_threshold: int | None = None
    compact_force_times: int | None = None

    def changes(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def validate(self, max_order: int = DEFAULT_MAX_PAGE_ORDER) -> None:
        """``max_order``: the kernel's highest page order (MAX_ORDER - 1)."""
        ranges = dict(_COMPACT_RANGES)
        ranges["compact_order"] = (0, max_order, "a page order of this kernel")
        _check("compact", self.changes(), ranges)

    def apply(self, config: CompactConfig, max_order: int = DEFAULT_MAX_PAGE_ORDER) -> CompactConfig:
        self.validate(max_order)
        return dataclasses.replace(config, **self.changes())
