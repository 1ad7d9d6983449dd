"""The mem-agent's options (Kata's names and defaults) and the partial updates of its two RPCs."""

from __future__ import annotations

import dataclasses

import pytest

from agent.config import AgentConfig, build_config
from agent.errors import InvalidArgument
from agent.memagent.config import NEVER, CompactConfig, CompactUpdate, MemcgConfig, MemcgUpdate
from agent.services.memagent import boot_configs

KATA_OPTIONS = (
    "mem_agent_enable",
    "mem_agent_memcg_disable",
    "mem_agent_memcg_swap",
    "mem_agent_memcg_swappiness_max",
    "mem_agent_memcg_period_secs",
    "mem_agent_memcg_period_psi_percent_limit",
    "mem_agent_memcg_eviction_psi_percent_limit",
    "mem_agent_memcg_eviction_run_aging_count_min",
    "mem_agent_compact_disable",
    "mem_agent_compact_period_secs",
    "mem_agent_compact_period_psi_percent_limit",
    "mem_agent_compact_psi_percent_limit",
    "mem_agent_compact_sec_max",
    "mem_agent_compact_order",
    "mem_agent_compact_threshold",
    "mem_agent_compact_force_times",
)


def test_the_defaults_are_katas() -> None:
    config = AgentConfig()
    assert config.mem_agent_enable is False
    memcg, compact = boot_configs(config)
    assert memcg == MemcgConfig(
        disabled=False,
        swap=False,
        swappiness_max=50,
        period_secs=600,
        period_psi_percent_limit=1,
        eviction_psi_percent_limit=1,
        eviction_run_aging_count_min=3,
    )
    assert compact == CompactConfig(
        disabled=False,
        period_secs=600,
        period_psi_percent_limit=1,
        compact_psi_percent_limit=5,
        compact_sec_max=1800,
        compact_order=9,
        compact_threshold=1024,
        compact_force_times=2**64 - 1,
    )


def test_every_kata_option_is_read_from_the_command_line() -> None:
    cmdline = (
        "quiet agent.mem_agent_enable agent.mem_agent_memcg_disable=true agent.mem_agent_memcg_swap=1 "
        "agent.mem_agent_memcg_swappiness_max=120 agent.mem_agent_memcg_period_secs=5 "
        "agent.mem_agent_memcg_period_psi_percent_limit=7 agent.mem_agent_memcg_eviction_psi_percent_limit=8 "
        "agent.mem_agent_memcg_eviction_run_aging_count_min=0 agent.mem_agent_compact_disable "
        "agent.mem_agent_compact_period_secs=9 agent.mem_agent_compact_period_psi_percent_limit=10 "
        "agent.mem_agent_compact_psi_percent_limit=11 agent.mem_agent_compact_sec_max=0 "
        "agent.mem_agent_compact_order=3 agent.mem_agent_compact_threshold=0 agent.mem_agent_compact_force_times=4"
    )
    config = build_config(cmdline)
    assert config.ignored == ()
    assert config.mem_agent_enable is True
    memcg, compact = boot_configs(config)
    assert memcg == MemcgConfig(True, True, 120, 5, 7, 8, 0)
    assert compact == CompactConfig(True, 9, 10, 11, 0, 3, 0, 4)


def test_the_options_have_katas_names() -> None:
    values = build_config(" ".join(f"agent.{name}=1" for name in KATA_OPTIONS))
    assert values.ignored == ()


def test_a_toml_file_sets_them_too() -> None:
    toml = "mem_agent_enable = true\nmem_agent_memcg_period_secs = 30\nmem_agent_compact_disable = true\n"
    config = build_config("agent.config_file=/etc/agent.toml", toml_text=toml)
    assert (config.mem_agent_enable, config.mem_agent_memcg_period_secs, config.mem_agent_compact_disable) == (
        True,
        30,
        True,
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("mem_agent_memcg_period_psi_percent_limit", "101", "percentage between 0 and 100"),
        ("mem_agent_compact_psi_percent_limit", "-1", "percentage between 0 and 100"),
        ("mem_agent_memcg_swappiness_max", "201", "swappiness between 0 and 200"),
        ("mem_agent_memcg_period_secs", "0", "number of seconds between 1 and"),
        ("mem_agent_compact_period_secs", "soon", "number of seconds between 1 and .*decimal integer"),
        ("mem_agent_compact_sec_max", "-5", "number of seconds between 0 and"),
        ("mem_agent_compact_order", "64", "page order between 0 and 63"),
        ("mem_agent_compact_force_times", str(2**64), "integer between 0 and"),
        ("mem_agent_memcg_swap", "maybe", "expected a boolean"),
    ],
)
def test_bad_values_are_refused_by_name(option: str, value: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=f"for {option}: .*{expected}"):
        build_config(f"agent.mem_agent_enable agent.{option}={value}")


# --- the RPCs' updates
def test_an_update_changes_only_the_fields_it_sets() -> None:
    before = MemcgConfig(swap=True, period_secs=100)
    after = MemcgUpdate(period_secs=5, eviction_run_aging_count_min=0).apply(before)
    assert after == dataclasses.replace(before, period_secs=5, eviction_run_aging_count_min=0)
    assert MemcgUpdate().apply(before) == before
    compact = CompactUpdate(compact_force_times=0, disabled=True).apply(CompactConfig())
    assert compact == dataclasses.replace(CompactConfig(), compact_force_times=0, disabled=True)


@pytest.mark.parametrize(
    ("update", "field"),
    [
        (MemcgUpdate(period_psi_percent_limit=101), "period_psi_percent_limit=101"),
        (MemcgUpdate(eviction_psi_percent_limit=1000), "eviction_psi_percent_limit=1000"),
        (MemcgUpdate(swappiness_max=201), "swappiness_max=201"),
        (MemcgUpdate(period_secs=0), "period_secs=0"),
        (MemcgUpdate(swap=1), "swap=1"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_memcg_update_names_the_field_and_changes_nothing(update: MemcgUpdate, field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"mem-agent memcg {field}"):
        update.apply(MemcgConfig())


@pytest.mark.parametrize(
    ("update", "field"),
    [
        (CompactUpdate(period_secs=0), "period_secs=0"),
        (CompactUpdate(period_psi_percent_limit=101), "period_psi_percent_limit=101"),
        (CompactUpdate(compact_psi_percent_limit=200), "compact_psi_percent_limit=200"),
        (CompactUpdate(compact_sec_max=-1), "compact_sec_max=-1"),
        (CompactUpdate(compact_order=11), "compact_order=11"),
        (CompactUpdate(compact_threshold=2**64), "compact_threshold="),
    ],
)
def test_a_bad_compact_update_names_the_field(update: CompactUpdate, field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"mem-agent compact {field}"):
        update.validate(max_order=10)


def test_compact_order_follows_the_kernels_range() -> None:
    CompactUpdate(compact_order=12).validate(max_order=12)
    with pytest.raises(InvalidArgument, match="page order of this kernel from 0 to 10"):
        CompactUpdate(compact_order=12).validate(max_order=10)
    assert CompactUpdate(compact_force_times=NEVER).apply(CompactConfig()).compact_force_times == NEVER
