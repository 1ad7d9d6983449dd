"""pykata-runc's command line: runc's global flags, commands and per-command flags, parsed the way
runc (urfave/cli) parses them, and the errors a user reads."""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PROGRAM = "pykata-runc"
DEFAULT_ROOT = "/run/pykata-runc"


class CliError(Exception):
    """A failure the user should read: printed as ``pykata-runc: <message>``, exit status 1."""


class UsageError(CliError):
    pass


# Argument parsing with runc's (urfave/cli) conventions: ``-flag``, ``--flag``, ``--flag=value``,
# ``-f value``; boolean flags take no value; ``--`` ends the flags. ``exec`` stops parsing flags at
# its first argument so ``exec ID ls -l`` passes ``-l`` to ls, as runc does.


# Plain classes rather than NamedTuples or dataclasses: building either costs a millisecond or two
# at import (they generate code), and this module's import is on the path of every short command.
class Flag:
    __slots__ = ("dest", "help", "names", "repeated", "takes_value")

    def __init__(
        self, names: tuple[str, ...], dest: str, takes_value: bool = True, repeated: bool = False, help: str = ""
    ) -> None:
        self.names = names
        self.dest = dest
        self.takes_value = takes_value
        self.repeated = repeated
        self.help = help


class Command:
    __slots__ = ("flags", "flags_end_at_first_arg", "max_args", "min_args", "name", "usage")

    def __init__(
        self,
        name: str,
        usage: str,
        flags: tuple[Flag, ...] = (),
        min_args: int = 1,
        max_args: int | None = 1,
        flags_end_at_first_arg: bool = False,
    ) -> None:
        self.name = name
        self.usage = usage
        self.flags = flags
        self.min_args = min_args
        self.max_args = max_args
        self.flags_end_at_first_arg = flags_end_at_first_arg


def _bool(names: str, dest: str, help: str = "") -> Flag:
    return Flag(tuple(names.split(",")), dest, takes_value=False, help=help)


def _value(names: str, dest: str, help: str = "", repeated: bool = False) -> Flag:
    return Flag(tuple(names.split(",")), dest, takes_value=True, repeated=repeated, help=help)


GLOBAL_FLAGS = (
    _value("root", "root", f"where container state is kept (default {DEFAULT_ROOT})"),
    _value("log", "log", "also write log lines to this file"),
    _value("log-format", "log_format", "text or json"),
    _bool("debug", "debug", "log debug lines"),
    _bool("systemd-cgroup", "systemd_cgroup", "cgroups as systemd scopes (cgroupsPath slice:prefix:name)"),
    _value("criu", "criu", "accepted for compatibility; checkpointing is not supported"),
    _value("rootless", "rootless", "accepted for compatibility: rootless mode follows the user (not root: rootless)"),
    _bool("help,h", "help"),
    _bool("version,v", "version"),
)

_BUNDLE = _value("bundle,b", "bundle", "the bundle directory (default: the current directory)")
_CONSOLE_SOCKET = _value("console-socket", "console_socket", "unix socket that receives the pty master")
_PID_FILE = _value("pid-file", "pid_file", "write the process's pid to this file")
_NO_PIVOT = _bool("no-pivot", "no_pivot", "move the root with MS_MOVE instead of pivot_root")
_NO_NEW_KEYRING = _bool("no-new-keyring", "no_new_keyring", "keep the session keyring (no new one for the container)")
_PRESERVE_FDS = _value("preserve-fds", "preserve_fds", "pass this many more descriptors (from 3) to the process")
_DETACH = _bool("detach,d", "detach", "do not wait for the process")

COMMANDS = {
    c.name: c
    for c in (
        Command(
            "create",
            "create [flags] ID",
            (_BUNDLE, _CONSOLE_SOCKET, _PID_FILE, _NO_PIVOT, _NO_NEW_KEYRING, _PRESERVE_FDS),
        ),
        Command("start", "start ID"),
        Command("state", "state ID"),
        Command("kill", "kill [--all] ID [SIGNAL]", (_bool("all,a", "all", "signal every process"),), 1, 2),
        Command("delete", "delete [--force] ID", (_bool("force,f", "force", "kill a running container first"),)),
        Command(
            "run",
            "run [flags] ID",
            (
                _BUNDLE,
                _CONSOLE_SOCKET,
                _PID_FILE,
                _DETACH,
                _NO_PIVOT,
                _NO_NEW_KEYRING,
                _PRESERVE_FDS,
                _bool("no-subreaper", "no_subreaper", "accepted for compatibility"),
                _bool("keep", "keep", "keep the container's state after it exits"),
            ),
        ),
        Command(
            "exec",
            "exec [flags] ID [COMMAND [ARG...]]",
            (
                _value("process,p", "process", "a process.json (runtime-spec process object)"),
                _CONSOLE_SOCKET,
                _PID_FILE,
                _DETACH,
                _bool("tty,t", "tty", "allocate a pseudo-TTY"),
                _value("cwd", "cwd", "working directory in the container"),
                _value("env,e", "env", "KEY=VALUE to add to the environment", repeated=True),
                _value("user,u", "user", "UID[:GID]"),
                _value("additional-gids,g", "additional_gids", "an additional gid", repeated=True),
                _value("cap,c", "cap", "add a capability", repeated=True),
                _bool("no-new-privs", "no_new_privs", "set no_new_privileges"),
                _value("process-label", "process_label", "accepted for compatibility"),
                _value("apparmor", "apparmor", "accepted for compatibility"),
                _PRESERVE_FDS,
                _bool("ignore-paused", "ignore_paused", "exec even if the container is paused"),
                _value("cgroup", "cgroup", "[CONTROLLER,...:]PATH: run in this sub-cgroup", repeated=True),
            ),
            1,
            None,
            flags_end_at_first_arg=True,
        ),
        Command(
            "ps",
            "ps [--format table|json] ID [PS_OPTIONS...]",
            (_value("format,f", "format", "table or json"),),
            1,
            None,
            flags_end_at_first_arg=True,
        ),
        Command("pause", "pause ID"),
        Command("resume", "resume ID"),
        Command(
            "update",
            "update [flags] ID",
            (
                _value("resources,r", "resources", "a linux.resources JSON file, or - for stdin"),
                _value("memory", "memory", "memory limit in bytes (k, m, g suffixes allowed)"),
                _value("memory-reservation", "memory_reservation", "memory soft limit"),
                _value("memory-swap", "memory_swap", "memory plus swap limit"),
                _value("cpu-quota", "cpu_quota", "CFS quota in microseconds"),
                _value("cpu-period", "cpu_period", "CFS period in microseconds"),
                _value("cpu-share,cpu-shares", "cpu_shares", "CPU shares (relative weight)"),
                _value("cpuset-cpus", "cpuset_cpus", "CPUs to run on (0-3,7)"),
                _value("cpuset-mems", "cpuset_mems", "memory nodes to use"),
                _value("pids-limit", "pids_limit", "maximum number of tasks"),
                _value("blkio-weight", "blkio_weight", "block IO weight (10..1000)"),
                _value("cpu-rt-period", "cpu_rt_period", "realtime period in microseconds"),
                _value("cpu-rt-runtime", "cpu_rt_runtime", "realtime runtime in microseconds"),
                _value("l3-cache-schema", "l3_cache_schema", "Intel RDT: not supported"),
                _value("mem-bw-schema", "mem_bw_schema", "Intel RDT: not supported"),
            ),
        ),
        Command(
            "spec",
            "spec [--bundle DIR]",
            (_BUNDLE, _bool("rootless", "rootless", "a spec for a user other than root")),
            0,
            0,
        ),
        Command(
            "events",
            "events [--stats] [--interval DURATION] ID",
            (
                _bool("stats", "stats", "print the container's stats once and exit"),
                _value("interval", "interval", "time between stats events (Go duration, default 5s)"),
            ),
        ),
        Command("features", "features", (), 0, 0),
        Command(
            "serve",
            "serve --socket PATH",
            (_value("socket", "socket", "unix socket to serve commands on (default $PYKATA_RUNC_SERVER)"),),
            0,
            0,
        ),
        Command(
            "list",
            "list [--format table|json] [--quiet]",
            (_value("format,f", "format", "table or json"), _bool("quiet,q", "quiet", "print only ids")),
            0,
            0,
        ),
    )
}


HELP_FLAG = _bool("help,h", "help", "show this command's usage and flags")


def command_help(command: Command) -> str:
    """``PROGRAM COMMAND --help``: the usage line and every flag, with its other names and help."""
    lines = [f"usage: {PROGRAM} {command.usage}"]
    if command.flags:
        lines += ["", "flags:"]
        for flag in (*command.flags, HELP_FLAG):
            spelled = ", ".join(("-" if len(n) == 1 else "--") + n + (" VALUE" if flag.takes_value else "")
                                for n in flag.names)  # fmt: skip
            lines.append(f"  {spelled:<32} {flag.help}{' (may be repeated)' if flag.repeated else ''}")
    return "\n".join(lines)


class Invocation:
    def __init__(
        self,
        options: dict[str, Any],
        command: Command | None,
        flags: dict[str, Any] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.options = options  # global flags
        self.command = command
        self.flags = flags if flags is not None else {}
        self.args = args if args is not None else []


def _find_flag(flags: Sequence[Flag], name: str) -> Flag | None:
    for flag in flags:
        if name in flag.names:
            return flag
    return None


def _parse_flags(
    argv: list[str], flags: Sequence[Flag], *, stop_at_arg: bool, where: str
) -> tuple[dict[str, Any], list[str]]:
    """Parse ``argv`` against ``flags``; return the flag values and the positional arguments."""
    values: dict[str, Any] = {f.dest: ([] if f.repeated else None) for f in flags}
    positional: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if word == "--":
            positional.extend(argv[index:])
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
            if stop_at_arg:
                positional.extend(argv[index:])
                break
            continue
        name, has_inline, inline = word.lstrip("-").partition("=")
        flag = _find_flag(flags, name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: {word} ({where})")
        value: Any
        if not flag.takes_value:
            value = inline.lower() not in ("false", "0") if has_inline else True
        elif has_inline:
            value = inline
        elif index < len(argv):
            value = argv[index]
            index += 1
        else:
            raise UsageError(f"flag needs an argument: {word} ({where})")
        if flag.repeated:
            values[flag.dest].append(value)
        else:
            values[flag.dest] = value
    return values, positional


def parse_args(argv: Sequence[str]) -> Invocation:
    """Split ``argv`` (without the program name) into global flags, a command, its flags and args."""
    words = list(argv)
    split = 0
    # Global flags come before the command name.
    while split < len(words) and words[split].startswith("-"):
        name = words[split].lstrip("-").partition("=")[0]
        flag = _find_flag(GLOBAL_FLAGS, name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: {words[split]}")
        split += 1
        if flag.takes_value and "=" not in words[split - 1]:
            split += 1
    options, rest = _parse_flags(words[:split], GLOBAL_FLAGS, stop_at_arg=False, where="global")
    words = words[split:]
    if rest:
        raise UsageError(f"unexpected argument before the command: {rest[0]}")
    if not words:
        return Invocation(options, None)
    name, words = words[0], words[1:]
    if name == "help":  # urfave/cli's: help [COMMAND]
        if words and words[0] not in COMMANDS:
            raise UsageError(f"no such command: {words[0]!r}; commands: {', '.join(COMMANDS)}")
        return Invocation({**options, "help": True}, COMMANDS[words[0]] if words else None, {"help": True})
    command = COMMANDS.get(name)
    if command is None:
        raise UsageError(f"no such command: {name!r}; commands: {', '.join(COMMANDS)}")
    flags, args = _parse_flags(
        words, (*command.flags, HELP_FLAG), stop_at_arg=command.flags_end_at_first_arg, where=name
    )
    if flags.pop("help"):
        return Invocation({**options, "help": True}, command, {"help": True})
    if len(args) < command.min_args:
        what = "a container id" if command.min_args == 1 else f"{command.min_args} arguments"
        raise UsageError(f"{name} needs {what}; usage: {PROGRAM} {command.usage}")
    if command.max_args is not None and len(args) > command.max_args:
        raise UsageError(f"{name} takes at most {command.max_args} argument(s); usage: {PROGRAM} {command.usage}")
    return Invocation(options, command, flags, args)
