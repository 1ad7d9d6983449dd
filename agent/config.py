"""Agent configuration: one table of settings, parsed from the kernel command line, a TOML file and
the environment.

Precedence follows Kata's agent: the defaults, then either the TOML file named by
``agent.config_file=`` (which then replaces the other ``agent.*`` options of the command line) or
the command line's ``agent.*`` options, then the environment (``KATA_AGENT_SERVER_ADDR``,
``KATA_AGENT_LOG_LEVEL``). Parsing takes text and returns a config; it reads no files itself:
``__main__`` reads /proc/cmdline and the TOML file and hands their text in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import InvalidArgument
from agent.system.records import Record

log = logging.getLogger(__name__)

DEFAULT_SERVER_ADDR = "vsock://-1:1024"
DEFAULT_DEBUG_CONSOLE_VPORT = 1026
LOG_LEVELS = ("critical", "error", "warning", "warn", "info", "debug", "trace")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on", "y"):
        return True
    if lowered in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError("expected a boolean (true/false, 1/0, yes/no, on/off)")


def _parse_port(text: str) -> int:
    value = int(text, 10)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError("expected a vsock port between 0 and 4294967295")
    return value


def _parse_non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0 or value != value:
        raise ValueError("expected a number of seconds >= 0")
    return value


def _parse_non_negative_int(text: str) -> int:
    value = int(text, 10)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _parse_log_level(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return "warning" if lowered == "warn" else lowered


def _parse_server_addr(text: str) -> str:
    from agent.address import parse_address  # local: address has no deps on config

    parse_address(text)
    return text


def _parse_str(text: str) -> str:
    return text


# The memory agent's options (Kata's mem-agent): ranges as its RPCs check them (agent/memagent/config.py).
U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1
# The highest page order a kernel has (MAX_ORDER - 1) is checked when the mem-agent starts; this bound
# only refuses what no kernel has.
COMPACT_ORDER_LIMIT = 63


def _ranged_int(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"expected {what} between {low} and {high}, as a decimal integer") from None
        if not low <= value <= high:
            raise ValueError(f"expected {what} between {low} and {high}")
        return value

    return parse


_parse_percent = _ranged_int(0, 100, "a percentage")
_parse_swappiness = _ranged_int(0, 200, "a swappiness")
_parse_period_secs = _ranged_int(1, U64_MAX, "a number of seconds")
_parse_u64 = _ranged_int(0, U64_MAX, "an integer")
_parse_sec_max = _ranged_int(0, I64_MAX, "a number of seconds")
_parse_compact_order = _ranged_int(0, COMPACT_ORDER_LIMIT, "a page order")


class Setting(Record):
    _fields = ("name", "parse", "default", "help", "aliases", "flag")
    __slots__ = _fields
    name: str  # attribute name and the option after "agent."
    parse: Callable[[str], Any]
    default: Any
    help: str
    aliases: tuple[str, ...]  # other spellings accepted (Kata's TOML keys)
    flag: bool  # a bare "agent.NAME" means true

    def __init__(self, name: str, parse: Callable[[str], Any], default: Any, help: str,
                 aliases: tuple[str, ...] = (), flag: bool = False) -> None:  # fmt: skip
        self._assign(name, parse, default, help, aliases, flag)


SETTINGS: tuple[Setting, ...] = (
    Setting("log", _parse_log_level, "info", "log level: error, warning, info, debug", ("log_level",)),
    Setting(
        "server_addr",
        _parse_server_addr,
        DEFAULT_SERVER_ADDR,
        "listen address: vsock://CID:PORT (-1 is any CID), unix://PATH, tcp://HOST:PORT (development only)",
    ),
    Setting("debug_console", _parse_bool, False, "serve a shell on a pty over vsock", flag=True),
    Setting(
        "debug_console_vport",
        _parse_port,
        0,
        f"vsock port of the debug console (0 means {DEFAULT_DEBUG_CONSOLE_VPORT} when the console is on)",
    ),
    Setting("log_vport", _parse_port, 0, "also stream JSON log lines to this vsock port (0: off)"),
    Setting(
        "passfd_listener_port",
        _parse_port,
        0,
        "vsock port where the runtime opens process stdio streams, named by their host-side port in "
        "CreateContainer and ExecProcess (stdin_port, stdout_port, stderr_port); 0: off",
    ),
    Setting(
        "hotplug_timeout",
        _parse_non_negative_float,
        3.0,
        "seconds to wait for a hot-plugged device (block, network) to appear",
    ),
    Setting("config_file", _parse_str, "", "TOML file with these settings; replaces the command line's"),
    Setting("devmode", _parse_bool, False, "developer mode: debug logging, core dumps", ("dev_mode",), flag=True),
    Setting(
        "cpu_online_timeout",
        _parse_non_negative_float,
        60.0,
        "overall seconds OnlineCPUMem waits for CPUs to come online (0: no deadline; with "
        "cpu_online_retries also 0 the default applies)",
    ),
    Setting(
        "cpu_online_retries",
        _parse_non_negative_int,
        0,
        "interval-driven re-scans of sysfs before OnlineCPUMem gives up on CPUs (0: bounded by the "
        "timeout only; scans woken by uevents do not count)",
    ),
    Setting(
        "cpu_online_interval_ms",
        _parse_non_negative_int,
        100,
        "milliseconds between sysfs re-scans for CPUs (uevents wake the loop earlier)",
    ),
    Setting(
        "mem_online_timeout",
        _parse_non_negative_float,
        60.0,
        "overall seconds OnlineCPUMem waits for memory blocks to come online (0: no deadline; with "
        "mem_online_retries also 0 the default applies)",
    ),
    Setting(
        "mem_online_retries",
        _parse_non_negative_int,
        0,
        "interval-driven re-scans of sysfs before OnlineCPUMem gives up on memory (0: bounded by the "
        "timeout only; scans woken by uevents do not count)",
    ),
    Setting(
        "mem_online_interval_ms",
        _parse_non_negative_int,
        100,
        "milliseconds between sysfs re-scans for memory blocks (uevents wake the loop earlier)",
    ),
    Setting(
        "hotplug_uevents",
        _parse_bool,
        True,
        "wake the CPU and memory online loop on kernel uevents (false: only the *_online_interval_ms "
        "re-scans, the way to measure or work around a kernel without uevents)",
        flag=True,
    ),
    Setting(
        "unified_cgroup_hierarchy",
        _parse_bool,
        True,
        "mount cgroup v2 on /sys/fs/cgroup when PID 1 (false: the v1 controllers)",
        flag=True,
    ),
    Setting(
        "container_pipe_size",
        _parse_non_negative_int,
        0,
        "pipe size in bytes for container stdio (0: the kernel default)",
    ),
    Setting(
        "output_buffer_limit",
        _parse_non_negative_int,
        8 * 1024 * 1024,
        "bytes of unread stdout/stderr kept per process before the process is paused on its pipe",
    ),
    # The memory agent (Kata's mem-agent): MGLRU reclaim of cold memory per memory cgroup, and
    # compaction, each periodic and gated by PSI; changed at run time by MemAgentMemcgSet and
    # MemAgentCompactSet. The other mem_agent_* options count only with mem_agent_enable.
    Setting("mem_agent_enable", _parse_bool, False, "start the memory agent (mem-agent)", flag=True),
    Setting("mem_agent_memcg_disable", _parse_bool, False, "mem-agent: no memcg reclaim", flag=True),
    Setting("mem_agent_memcg_swap", _parse_bool, False, "mem-agent: memcg reclaim may swap anon pages out", flag=True),
    Setting("mem_agent_memcg_swappiness_max", _parse_swappiness, 50, "mem-agent: highest swappiness (0-200)"),
    Setting("mem_agent_memcg_period_secs", _parse_period_secs, 600, "mem-agent: seconds between memcg reclaims"),
    Setting(
        "mem_agent_memcg_period_psi_percent_limit",
        _parse_percent,
        1,
        "mem-agent: a memcg whose memory+io stall over the last period is above this % is not reclaimed",
    ),
    Setting(
        "mem_agent_memcg_eviction_psi_percent_limit",
        _parse_percent,
        1,
        "mem-agent: eviction of a memcg stops when its stall between two eviction steps is above this %",
    ),
    Setting(
        "mem_agent_memcg_eviction_run_aging_count_min",
        _parse_u64,
        3,
        "mem-agent: agings of a memcg before it is first evicted",
    ),
    Setting("mem_agent_compact_disable", _parse_bool, False, "mem-agent: no compaction", flag=True),
    Setting("mem_agent_compact_period_secs", _parse_period_secs, 600, "mem-agent: seconds between compactions"),
    Setting(
        "mem_agent_compact_period_psi_percent_limit",
        _parse_percent,
        1,
        "mem-agent: no compaction when the guest's memory+io stall over the last period is above this %",
    ),
    Setting(
        "mem_agent_compact_psi_percent_limit",
        _parse_percent,
        5,
        "mem-agent: a running compaction is stopped when the stall rises above this %",
    ),
    Setting("mem_agent_compact_sec_max", _parse_sec_max, 30 * 60, "mem-agent: seconds a compaction may run"),
    Setting(
        "mem_agent_compact_order",
        _parse_compact_order,
        9,
        "mem-agent: free pages of orders below this count towards compact_threshold (at most MAX_ORDER - 1)",
    ),
    Setting(
        "mem_agent_compact_threshold",
        _parse_u64,
        2 << 9,
        "mem-agent: compact when free movable pages below compact_order grew by more than this many pages "
        "since the last compaction (or free memory fell by as much)",
    ),
    Setting(
        "mem_agent_compact_force_times",
        _parse_u64,
        U64_MAX,
        "mem-agent: compact anyway after this many periods without one (0: every period; the default: never)",
    ),
)

_BY_NAME: dict[str, Setting] = {}
for _setting in SETTINGS:
    _BY_NAME[_setting.name] = _setting
    for _alias in _setting.aliases:
        _BY_NAME[_alias] = _setting

ENV_OVERRIDES: Mapping[str, str] = {
    "KATA_AGENT_SERVER_ADDR": "server_addr",
    "KATA_AGENT_LOG_LEVEL": "log",
}


# Every field of AgentConfig with its default (the settings' defaults, and ``ignored``).
_CONFIG_DEFAULTS: dict[str, Any] = {
    "log": "info",
    "server_addr": DEFAULT_SERVER_ADDR,
    "debug_console": False,
    "debug_console_vport": 0,
    "log_vport": 0,
    "passfd_listener_port": 0,
    "hotplug_timeout": 3.0,
    "config_file": "",
    "devmode": False,
    "cpu_online_timeout": 60.0,
    "cpu_online_retries": 0,
    "cpu_online_interval_ms": 100,
    "mem_online_timeout": 60.0,
    "mem_online_retries": 0,
    "mem_online_interval_ms": 100,
    "hotplug_uevents": True,
    "unified_cgroup_hierarchy": True,
    "container_pipe_size": 0,
    "output_buffer_limit": 8 * 1024 * 1024,
    "mem_agent_enable": False,
    "mem_agent_memcg_disable": False,
    "mem_agent_memcg_swap": False,
    "mem_agent_memcg_swappiness_max": 50,
    "mem_agent_memcg_period_secs": 600,
    "mem_agent_memcg_period_psi_percent_limit": 1,
    "mem_agent_memcg_eviction_psi_percent_limit": 1,
    "mem_agent_memcg_eviction_run_aging_count_min": 3,
    "mem_agent_compact_disable": False,
    "mem_agent_compact_period_secs": 600,
    "mem_agent_compact_period_psi_percent_limit": 1,
    "mem_agent_compact_psi_percent_limit": 5,
    "mem_agent_compact_sec_max": 30 * 60,
    "mem_agent_compact_order": 9,
    "mem_agent_compact_threshold": 2 << 9,
    "mem_agent_compact_force_times": U64_MAX,
    # Options we did not recognise, kept so they can be logged once the logger is up (not compared).
    "ignored": (),
}


class AgentConfig(Record):
    """The agent's settings (immutable; ``replace`` makes a changed copy). A plain record, not a
    dataclass: importing dataclasses pulls inspect, ast and dis into the agent's start."""

    _fields = tuple(_CONFIG_DEFAULTS)
    __slots__ = _fields
    _compared = tuple(name for name in _fields if name != "ignored")
    log: str
    server_addr: str
    debug_console: bool
    debug_console_vport: int
    log_vport: int
    passfd_listener_port: int
    hotplug_timeout: float
    config_file: str
    devmode: bool
    cpu_online_timeout: float
    cpu_online_retries: int
    cpu_online_interval_ms: int
    mem_online_timeout: float
    mem_online_retries: int
    mem_online_interval_ms: int
    hotplug_uevents: bool
    unified_cgroup_hierarchy: bool
    container_pipe_size: int
    output_buffer_limit: int
    mem_agent_enable: bool
    mem_agent_memcg_disable: bool
    mem_agent_memcg_swap: bool
    mem_agent_memcg_swappiness_max: int
    mem_agent_memcg_period_secs: int
    mem_agent_memcg_period_psi_percent_limit: int
    mem_agent_memcg_eviction_psi_percent_limit: int
    mem_agent_memcg_eviction_run_aging_count_min: int
    mem_agent_compact_disable: bool
    mem_agent_compact_period_secs: int
    mem_agent_compact_period_psi_percent_limit: int
    mem_agent_compact_psi_percent_limit: int
    mem_agent_compact_sec_max: int
    mem_agent_compact_order: int
    mem_agent_compact_threshold: int
    mem_agent_compact_force_times: int
    ignored: tuple[str, ...]

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(_CONFIG_DEFAULTS))
        if unknown:
            raise TypeError(f"AgentConfig has no setting {unknown[0]!r}")
        self._assign(*(values.get(name, default) for name, default in _CONFIG_DEFAULTS.items()))

    @property
    def console_vport(self) -> int:
        """The debug console port, or 0 when the console is off."""
        if not self.debug_console:
            return 0
        return self.debug_console_vport or DEFAULT_DEBUG_CONSOLE_VPORT

    @property
    def log_level(self) -> int:
        return logging.DEBUG if self.devmode else _LEVELS[self.log]


_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def _convert(setting: Setting, raw: str, source: str) -> Any:
    try:
        return setting.parse(raw)
    except (ValueError, InvalidArgument) as exc:
        raise InvalidArgument(f"{source}: invalid value {raw!r} for {setting.name}: {exc}") from exc


def parse_cmdline(text: str) -> dict[str, Any]:
    """The ``agent.*`` options of a kernel command line, as {name: value}. Unknown ones go to
    ``"ignored"``. A bare flag means true; a non-flag option without a value is an error."""
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for word in text.split():
        if not word.startswith("agent."):
            continue
        key, has_value, raw = word[len("agent.") :].partition("=")
        setting = _BY_NAME.get(key)
        if setting is None:
            ignored.append(word)
            continue
        if not has_value:
            if not setting.flag:
                raise InvalidArgument(f"kernel command line: agent.{key} needs a value (agent.{key}=...)")
            raw = "true"
        values[setting.name] = _convert(setting, raw, "kernel command line")
    if ignored:
        values["ignored"] = tuple(ignored)
    return values


def parse_toml(text: str, source: str = "config file") -> dict[str, Any]:
    """Settings from TOML text. Keys are the option names (or Kata's aliases); values may be TOML
    scalars or strings. Unknown keys are ignored and reported."""
    import tomllib  # only when a config file is given: start-up does not pay for it

    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{source}: not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, raw in table.items():
        setting = _BY_NAME.get(key)
        if setting is None:
            ignored.append(key)
            continue
        if isinstance(raw, bool):
            raw_text = "true" if raw else "false"
        elif isinstance(raw, (int, float, str)):
            raw_text = str(raw)
        else:
            raise InvalidArgument(f"{source}: invalid value {raw!r} for {key}: expected a scalar")
        values[setting.name] = _convert(setting, raw_text, source)
    if ignored:
        values["ignored"] = tuple(ignored)
    return values


def parse_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable, name in ENV_OVERRIDES.items():
        if variable in env:
            values[name] = _convert(_BY_NAME[name], env[variable], f"environment {variable}")
    return values


def build_config(
    cmdline: str = "",
    toml_text: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Combine the sources with Kata's precedence.

    ``toml_text`` is the content of the file that ``agent.config_file`` (or ``--config``) names;
    when given it replaces the command line's other options. ``overrides`` are explicit
    ``pykata-agent --option`` values and win over everything.
    """
    values: dict[str, Any] = {}
    from_cmdline = parse_cmdline(cmdline)
    if toml_text is not None:
        values.update(parse_toml(toml_text, from_cmdline.get("config_file") or "config file"))
        if "config_file" in from_cmdline:
            values["config_file"] = from_cmdline["config_file"]
    else:
        values.update(from_cmdline)
    values.update(parse_env(env or {}))
    values.update(overrides or {})
    return AgentConfig(**values)


def config_file_from_cmdline(cmdline: str) -> str:
    """The path ``agent.config_file=`` names, or "" (so the caller knows what to read)."""
    for word in cmdline.split():
        if word.startswith("agent.config_file="):
            return word.split("=", 1)[1]
    return ""


def setting(name: str) -> Setting:
    return _BY_NAME[name]


def help_table() -> str:
    """Every option with its default, for ``pykata-agent --help``."""
    rows = []
    for s in SETTINGS:
        default = "true" if s.default is True else "false" if s.default is False else str(s.default)
        rows.append((f"agent.{s.name}={default}", s.help))
    width = max(len(left) for left, _ in rows) + 2
    return "\n".join(f"  {left:<{width}}{text}" for left, text in rows)
