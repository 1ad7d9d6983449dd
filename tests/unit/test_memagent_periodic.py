"""The mem-agent's periodic loop keeps running whatever period a client sets, up to Kata's u64 maximum."""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.config import U64_MAX
from agent.memagent.periodic import PeriodicPart


@dataclass(frozen=True)
class Settings:
    disabled: bool = False
    period_secs: int = U64_MAX


class Counting(PeriodicPart[Settings]):
    name = "counting"

    def run_period(self, config: Settings) -> None:
        pass


def test_a_period_of_u64_max_seconds_leaves_the_loop_alive() -> None:
    part = Counting(Settings())
    part.start()
    try:
        assert part.wait_for(lambda status: status.periods == 1 and not status.busy, 10)
        # the loop now waits about 2**64 s for the next period, longer than any timeout the platform takes
        part.reconfigure(lambda config: replace(config, period_secs=1))
        assert part.wait_for(lambda status: status.periods >= 2, 10), part.status()
        assert part.status().errors == 0
    finally:
        assert part.stop()
