"""The settings table: command line, TOML, environment, precedence and errors, as a table of cases."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import DEFAULT_SERVER_ADDR, SETTINGS, AgentConfig, build_config, help_table
from agent.errors import InvalidArgument

CMDLINE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    ("console=ttyS0 quiet", {}),
    ("agent.log=debug", {"log": "debug"}),
    ("agent.log=WARN", {"log": "warning"}),
    ("agent.debug_console", {"debug_console": True}),
    ("agent.debug_console=false", {"debug_console": False}),
    ("agent.debug_console agent.debug_console_vport=2000", {"debug_console": True, "debug_console_vport": 2000}),
    ("agent.devmode", {"devmode": True}),
    ("agent.server_addr=unix:///tmp/a.sock", {"server_addr": "unix:///tmp/a.sock"}),
    ("agent.server_addr=vsock://3:1024", {"server_addr": "vsock://3:1024"}),
    ("agent.hotplug_timeout=10", {"hotplug_timeout": 10.0}),
    ("agent.log_vport=1025", {"log_vport": 1025}),
    (
        "agent.cpu_online_timeout=30 agent.cpu_online_retries=300",
        {"cpu_online_timeout": 30.0, "cpu_online_retries": 300},
    ),
    ("agent.mem_online_interval_ms=50", {"mem_online_interval_ms": 50}),
    ("agent.unified_cgroup_hierarchy=0", {"unified_cgroup_hierarchy": False}),
    ("agent.hotplug_uevents=false", {"hotplug_uevents": False}),
    ("agent.hotplug_uevents", {"hotplug_uevents": True}),
    ("agent.log=info agent.log=debug", {"log": "debug"}),  # the last one wins, as in the kernel
]


@pytest.mark.parametrize(("cmdline", "expected"), CMDLINE_CASES)
def test_cmdline(cmdline: str, expected: dict[str, Any]) -> None:
    config = build_config(cmdline)
    for name, value in expected.items():
        assert getattr(config, name) == value
    untouched = {s.name for s in SETTINGS} - set(expected)
    for name in untouched:
        assert getattr(config, name) == getattr(AgentConfig(), name), name


BAD_CMDLINES = [
    ("agent.log=loud", "log", "'loud'"),
    ("agent.debug_console=maybe", "debug_console", "'maybe'"),
    ("agent.debug_console_vport=-1", "debug_console_vport", "'-1'"),
    ("agent.hotplug_timeout=soon", "hotplug_timeout", "'soon'"),
    ("agent.cpu_online_timeout=-5", "cpu_online_timeout", "'-5'"),
    ("agent.server_addr=http://x", "server_addr", "http://x"),
    ("agent.server_addr=vsock://x:1024", "server_addr", "vsock://x:1024"),
    ("agent.log", "agent.log", "needs a value"),
]


@pytest.mark.parametrize(("cmdline", "option", "value"), BAD_CMDLINES)
def test_malformed_value_names_option_and_value(cmdline: str, option: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        build_config(cmdline)
    assert option in str(err.value)
    assert value in str(err.value)


def test_unknown_options_are_kept_for_logging_and_ignored() -> None:
    config = build_config("agent.no_such_thing=1 agent.log=debug agent.trace")
    assert config.ignored == ("agent.no_such_thing=1", "agent.trace")
    assert config.log == "debug"


def test_config_file_replaces_command_line_options() -> None:
    toml = 'log_level = "debug"\ndebug_console = true\nserver_addr = "unix:///run/a.sock"\ncpu_online_timeout = 25\n'
    config = build_config("agent.config_file=/etc/agent.toml agent.log=error agent.devmode", toml_text=toml)
    assert config.log == "debug"
    assert config.debug_console is True
    assert config.server_addr == "unix:///run/a.sock"
    assert config.cpu_online_timeout == 25.0
    assert config.devmode is False  # only the file counts once it is named
    assert config.config_file == "/etc/agent.toml"


def test_environment_overrides_file_and_command_line() -> None:
    env = {"KATA_AGENT_SERVER_ADDR": "tcp://127.0.0.1:5000", "KATA_AGENT_LOG_LEVEL": "error", "OTHER": "x"}
    config = build_config("agent.server_addr=unix:///a agent.log=debug", env=env)
    assert config.server_addr == "tcp://127.0.0.1:5000"
    assert config.log == "error"


def test_bad_environment_value_names_variable() -> None:
    with pytest.raises(InvalidArgument, match="KATA_AGENT_LOG_LEVEL"):
        build_config("", env={"KATA_AGENT_LOG_LEVEL": "chatty"})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("log_level = ", "not valid TOML"),
        ("debug_console = [1, 2]", "expected a scalar"),
        ("hotplug_timeout = 'x'", "hotplug_timeout"),
    ],
)
def test_bad_toml(toml: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_config("", toml_text=toml)


def test_explicit_overrides_win() -> None:
    config = build_config("agent.log=debug", env={"KATA_AGENT_LOG_LEVEL": "error"}, overrides={"log": "info"})
    assert config.log == "info"


def test_console_port_defaults_to_1026_only_when_enabled() -> None:
    assert build_config("").console_vport == 0
    assert build_config("agent.debug_console_vport=2000").console_vport == 0
    assert build_config("agent.debug_console").console_vport == 1026
    assert build_config("agent.debug_console agent.debug_console_vport=2000").console_vport == 2000


def test_defaults_and_help_list_every_setting() -> None:
    config = AgentConfig()
    assert config.server_addr == DEFAULT_SERVER_ADDR == "vsock://-1:1024"
    text = help_table()
    for setting in SETTINGS:
        assert f"agent.{setting.name}=" in text
        assert getattr(config, setting.name) == setting.default


def test_config_is_an_immutable_record_with_replace() -> None:
    config = AgentConfig(log="debug", ignored=("agent.nope",))
    assert config.log == "debug" and config.server_addr == AgentConfig().server_addr
    changed = config.replace(hotplug_timeout=7.5)
    assert (changed.hotplug_timeout, changed.log, config.hotplug_timeout) == (7.5, "debug", 3.0)
    assert config == AgentConfig(log="debug")  # ``ignored`` is not compared
    with pytest.raises(AttributeError):
        config.log = "info"  # type: ignore[misc]
    with pytest.raises(TypeError, match="no setting 'nonsense'"):
        AgentConfig(nonsense=1)
    with pytest.raises(TypeError):
        config.replace(nonsense=1)
