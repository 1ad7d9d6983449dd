"""Budgets from the agent.* options: what counts as a retry, when the deadline falls, the fallbacks."""

from __future__ import annotations

from agent.config import build_config
from agent.hotplug.budget import MIN_INTERVAL, Budget, BudgetTracker


def test_budget_from_the_command_line_and_toml() -> None:
    config = build_config("agent.cpu_online_timeout=90 agent.cpu_online_retries=7 agent.cpu_online_interval_ms=250")
    assert Budget.for_cpus(config) == Budget("cpu_online", 90.0, 7, 0.25)
    assert Budget.for_memory(config) == Budget("mem_online", 60.0, 0, 0.1)
    toml = build_config(toml_text="mem_online_timeout = 5\nmem_online_interval_ms = 20\n")
    assert Budget.for_memory(toml) == Budget("mem_online", 5.0, 0, 0.02)
    assert Budget.for_cpus(config).describe() == (
        "agent.cpu_online_timeout=90 agent.cpu_online_retries=7 agent.cpu_online_interval_ms=250"
    )


def test_both_zero_falls_back_to_the_default_timeout_and_zero_interval_is_clamped() -> None:
    config = build_config("agent.cpu_online_timeout=0 agent.cpu_online_retries=0 agent.cpu_online_interval_ms=0")
    assert Budget.for_cpus(config) == Budget("cpu_online", 60.0, 0, MIN_INTERVAL)
    only_retries = build_config("agent.cpu_online_timeout=0 agent.cpu_online_retries=3")
    assert Budget.for_cpus(only_retries) == Budget("cpu_online", 0.0, 3, 0.1)


def test_only_interval_driven_scans_count_as_retries() -> None:
    tracker = BudgetTracker(Budget("cpu_online", 0.0, 2, 1.0), start=10.0)
    tracker.scanned(10.0)  # the first scan
    tracker.scanned(10.4)  # woken by a uevent
    tracker.scanned(10.7)  # woken by a uevent
    assert tracker.rescans == 0 and not tracker.exhausted(10.7)
    assert tracker.wait_until() == 11.0
    tracker.scanned(11.0)
    assert tracker.rescans == 1 and tracker.wait_until() == 12.0
    tracker.scanned(12.0)
    assert tracker.exhausted(12.0)


def test_the_deadline_caps_the_wait_and_a_restart_gives_a_fresh_budget() -> None:
    tracker = BudgetTracker(Budget("mem_online", 2.5, 0, 1.0), start=0.0)
    tracker.scanned(1.0)
    tracker.scanned(2.0)
    assert tracker.wait_until() == 2.5  # not 3.0: the deadline comes first
    assert not tracker.exhausted(2.4)
    assert tracker.exhausted(2.5)
    tracker.restart(2.5)
    assert (tracker.rescans, tracker.elapsed(3.0), tracker.exhausted(3.0)) == (0, 0.5, False)
