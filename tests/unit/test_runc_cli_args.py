"""pykata-runc's argument parsing, state store and format, spec and errors, without root (no containers run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.container import cli, cli_args, cli_state


def test_global_and_command_flags_in_runc_styles() -> None:
    inv = cli_args.parse_args(
        ["--root", "/tmp/r", "--log=/tmp/l", "--log-format", "json", "create", "-b", "/b", "--pid-file=/p", "c1"]
    )
    assert inv.options["root"] == "/tmp/r" and inv.options["log"] == "/tmp/l" and inv.options["log_format"] == "json"
    assert inv.command is not None and inv.command.name == "create"
    assert inv.flags["bundle"] == "/b" and inv.flags["pid_file"] == "/p"
    assert inv.args == ["c1"]


def test_single_dash_long_flags_and_flags_after_the_id() -> None:
    inv = cli_args.parse_args(["-root", "/r", "delete", "c1", "-force"])
    assert inv.options["root"] == "/r"
    assert inv.flags["force"] is True and inv.args == ["c1"]


def test_exec_keeps_the_command_flags_for_the_command() -> None:
    inv = cli_args.parse_args(["exec", "-e", "A=1", "--env", "B=2", "-t", "c1", "ls", "-l", "--all"])
    assert inv.flags["env"] == ["A=1", "B=2"] and inv.flags["tty"] is True
    assert inv.args == ["c1", "ls", "-l", "--all"]


def test_kill_takes_an_optional_signal() -> None:
    assert cli_args.parse_args(["kill", "c1"]).args == ["c1"]
    assert cli_args.parse_args(["kill", "--all", "c1", "KILL"]).args == ["c1", "KILL"]
    with pytest.raises(cli_args.UsageError, match="at most 2"):
        cli_args.parse_args(["kill", "c1", "KILL", "extra"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create"], "needs a container id"),
        (["create", "--bogus", "c1"], "flag provided but not defined: --bogus"),
        (["--nope", "list"], "flag provided but not defined: --nope"),
        (["frobnicate", "c1"], "no such command"),
        (["create", "c1", "--bundle"], "flag needs an argument"),
    ],
)
def test_usage_errors_name_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(cli_args.UsageError, match=message):
        cli_args.parse_args(argv)


@pytest.mark.parametrize(
    "argv", [["create", "--help"], ["create", "-h"], ["help", "create"], ["create", "-b", "x", "-h"]]
)
def test_each_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """As runc's: the usage line and every flag (all their names, whether they take a value), exit 0,
    without the arguments the command itself would need."""
    assert cli.run_cli(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "usage: pykata-runc create [flags] ID"
    flags = {line.split()[0].rstrip(",") for line in out[3:]}
    assert flags == {"--bundle", "--console-socket", "--pid-file", "--no-pivot", "--no-new-keyring", "--preserve-fds",
                     "--help"}  # fmt: skip
    assert "  --bundle VALUE, -b VALUE" in "\n".join(out)


def test_help_without_a_command_and_for_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run_cli(["help"]) == 0
    assert "  help [COMMAND]" in capsys.readouterr().out
    assert cli.run_cli(["help", "nope"]) == 1
    assert "no such command: 'nope'" in capsys.readouterr().err
    # after exec's ID the words are the process's: -h goes to it, as with runc
    parsed = cli_args.parse_args(["exec", "c1", "ls", "-h"])
    assert parsed.args == ["c1", "ls", "-h"] and not parsed.options.get("help")


def test_errors_exit_1_with_the_program_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.run_cli(["--root", str(tmp_path), "state", "missing"]) == 1
    err = capsys.readouterr().err
    assert err == "pykata-runc: container 'missing' does not exist\n"


def test_rootless_spec_is_what_runc_spec_rootless_writes(tmp_path: Path) -> None:
    """``spec --rootless`` against Debian's runc's, both run by this user (its ids in the maps)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    assert cli.run_cli(["spec", "--rootless", "--bundle", str(ours)]) == 0
    subprocess.run(["runc", "spec", "--rootless", "--bundle", str(theirs)], check=True)
    assert json.loads((ours / "config.json").read_text()) == json.loads((theirs / "config.json").read_text())


def test_rootless_needs_a_user_namespace_and_the_mapping_tools_for_more_than_the_users_ids(tmp_path: Path) -> None:
    spec = cli.rootless_spec(cli.default_spec(), 1000, 1001)
    cli.check_rootless(spec, 1000, 1001, search_path="")  # its own ids: written without any tool
    with pytest.raises(cli_args.CliError, match="only make a container in a new user namespace"):
        cli.check_rootless(cli.default_spec(), 1000, 1001, search_path="")
    with pytest.raises(
        cli_args.CliError,
        match=r"linux\.uidMappings maps uids other than the user's own \(1002\): writing that map takes newuidmap "
        r"\(Debian's uidmap package\), which is not on PATH, and ranges for the user in /etc/subuid",
    ):
        cli.check_rootless(spec, 1002, 1001, search_path=str(tmp_path))
    wide = cli.rootless_spec(cli.default_spec(), 1000, 1001)
    wide["linux"]["gidMappings"].append({"containerID": 1, "hostID": 200000, "size": 65536})
    with pytest.raises(cli_args.CliError, match=r"linux\.gidMappings maps gids other than .* takes newgidmap"):
        cli.check_rootless(wide, 1000, 1001, search_path=str(tmp_path))
    # with the tools on the search path, ranges are the tools' (and /etc/subgid's) to allow
    for tool in ("newuidmap", "newgidmap"):
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    cli.check_rootless(wide, 1000, 1001, search_path=f"/nonexistent:{tmp_path}")
    (tmp_path / "newgidmap").chmod(0o644)  # not executable: not a tool
    with pytest.raises(cli_args.CliError, match="takes newgidmap"):
        cli.check_rootless(wide, 1000, 1001, search_path=str(tmp_path))
    wide["linux"]["uidMappings"] = []
    with pytest.raises(cli_args.CliError, match=r"linux\.uidMappings: a rootless container's user namespace needs"):
        cli.check_rootless(wide, 1000, 1001, search_path=str(tmp_path))
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": "/d", "options": ["rbind", "ridmap"]})
    with pytest.raises(cli_args.CliError, match=r"mounts\[\d+\] \(/data\): an idmapped mount takes privilege"):
        cli.check_rootless(spec, 1000, 1001, search_path="")


def test_a_user_other_than_root_keeps_state_in_its_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert cli.default_root() == "/run/pykata-runc"  # root
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.default_root() == "/run/user/1000/pykata-runc"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert cli.default_root() == "/run/pykata-runc"


def test_log_file_gets_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.json"
    assert cli.run_cli(["--root", str(tmp_path), "--log", str(log), "--log-format", "json", "state", "x"]) == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"] and entry["time"].endswith("Z")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "sp ace"])
def test_invalid_ids_are_refused(bad: str) -> None:
    with pytest.raises(cli_args.CliError, match="invalid container id"):
        cli_state.validate_id(bad)


def test_created_is_rfc3339_nano_utc() -> None:
    assert cli_state.format_time(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert cli_state.format_time(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert cli_state.format_time(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def test_state_and_list_read_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = cli_state.Store(tmp_path)
    store.reserve("c1")
    store.save(cli_state.Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="2026-01-01T00:00:00Z", pid=0))
    assert cli.run_cli(["--root", str(tmp_path), "state", "c1"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert list(state) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"]
    assert state["status"] == "stopped" and state["pid"] == 0

    assert cli.run_cli(["--root", str(tmp_path), "list", "-q"]) == 0
    assert capsys.readouterr().out == "c1\n"
    assert cli.run_cli(["--root", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ID          PID         STATUS      BUNDLE      CREATED")
    assert lines[1].split()[:4] == ["c1", "0", "stopped", "/b"]
    with pytest.raises(cli_args.CliError, match="already exists"):
        store.reserve("c1")


def test_table_pads_like_tabwriter() -> None:
    text = cli._table([("ID", "PID", "OWNER"), ("a-long-container-id", "1", "root")])
    assert text.splitlines() == [
        "ID" + " " * 20 + "PID" + " " * 9 + "OWNER",
        "a-long-container-id" + " " * 3 + "1" + " " * 11 + "root",
    ]


def test_spec_writes_what_runc_spec_writes(tmp_path: Path) -> None:
    assert cli.run_cli(["spec", "--bundle", str(tmp_path)]) == 0
    ours = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "r").mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(tmp_path / "r")], check=True)  # Debian's runc
    assert ours == json.loads((tmp_path / "r" / "config.json").read_text())
    assert cli.run_cli(["spec", "--bundle", str(tmp_path)]) == 1  # refuses to overwrite


def test_update_flags_become_oci_resources(tmp_path: Path) -> None:
    argv = ["update", "--memory", "64m", "--cpu-quota", "50000", "--cpu-period", "100000"]
    argv += ["--cpu-shares", "512", "--cpuset-cpus", "0-1", "--pids-limit", "20", "c1"]
    inv = cli_args.parse_args(argv)
    assert cli.resources_from_flags(inv.flags) == {
        "memory": {"limit": 64 << 20},
        "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0-1"},
        "pids": {"limit": 20},
    }
    resources = tmp_path / "r.json"
    resources.write_text(json.dumps({"pids": {"limit": 5}, "memory": {"limit": 1}}))
    inv = cli_args.parse_args(["update", "-r", str(resources), "--memory", "1g", "c1"])
    assert cli.resources_from_flags(inv.flags) == {"pids": {"limit": 5}, "memory": {"limit": 1 << 30}}
    with pytest.raises(cli_args.CliError, match="--pids-limit"):
        cli.resources_from_flags(cli_args.parse_args(["update", "--pids-limit", "lots", "c1"]).flags)


RUNC_ONLY = {"checkpoint", "restore"}  # CRIU's: not offered


def _runc_help(*command: str) -> str:
    return subprocess.run(["runc", *command, "--help"], check=True, capture_output=True, text=True).stdout


def test_every_command_and_flag_of_debians_runc_is_known() -> None:
    """What drives runc may pass any of runc's flags: each one Debian's runc lists is parsed here
    (a flag that means nothing to this engine is accepted and says so in its help, or refused by name
    when used). The commands are runc's, CRIU's checkpoint and restore aside."""
    import re

    listed = _runc_help().split("COMMANDS:")[1].split("GLOBAL OPTIONS:")
    commands = set(re.findall(r"^\s{3,}([a-z]+)(?:,\s*\w+)?\s", listed[0], re.M)) - {"help", "h"}
    assert {"create", "run", "exec", "events", "features"} <= commands
    assert sorted(commands - RUNC_ONLY - set(cli_args.COMMANDS)) == []

    def names(flags: tuple[cli_args.Flag, ...]) -> set[str]:
        return {name for flag in flags for name in flag.names}

    global_flags = set(re.findall(r"^\s+--([a-z0-9-]+)", listed[1], re.M)) - {"help", "version"}
    assert sorted(global_flags - names(cli_args.GLOBAL_FLAGS)) == []
    for command in sorted(commands - RUNC_ONLY):
        flags = set(re.findall(r"^\s+--([a-z0-9-]+)", _runc_help(command).split("OPTIONS:")[-1], re.M))
        assert sorted(flags - {"help"} - names(cli_args.COMMANDS[command].flags)) == [], command


def test_exec_cgroup_flags_as_runc_takes_them() -> None:
    inv = cli_args.parse_args(["exec", "--cgroup", "work", "--cgroup", "memory,pids:hog", "c1", "true"])
    assert cli.parse_sub_cgroups(inv.flags["cgroup"]) == {"": "work", "memory": "hog", "pids": "hog"}
    assert cli.parse_sub_cgroups([]) == {}
    with pytest.raises(cli_args.CliError, match="memory is given twice"):
        cli.parse_sub_cgroups(["memory:a", "memory:b"])
    with pytest.raises(cli_args.CliError, match="the path for every controller is given twice"):
        cli.parse_sub_cgroups(["a", "b"])


def test_every_runc_update_flag_is_taken() -> None:
    argv = ["update", "--blkio-weight", "300", "--cpu-rt-period", "1000000", "--cpu-rt-runtime", "9500", "c1"]
    assert cli.resources_from_flags(cli_args.parse_args(argv).flags) == {
        "cpu": {"realtimePeriod": 1000000, "realtimeRuntime": 9500},
        "blockIO": {"weight": 300},
    }
    for flag in ("--l3-cache-schema", "--mem-bw-schema"):
        flags = cli_args.parse_args(["update", flag, "L3:0=ff", "c1"]).flags
        with pytest.raises(cli_args.CliError, match=f"{flag}: Intel RDT is not supported"):
            cli.resources_from_flags(flags)


@pytest.mark.parametrize(("text", "number"), [("KILL", 9), ("SIGKILL", 9), ("9", 9), ("term", 15)])
def test_signal_names(text: str, number: int) -> None:
    assert cli.parse_signal(text) == number


def test_unknown_signal() -> None:
    with pytest.raises(cli_args.CliError, match="unknown signal"):
        cli.parse_signal("NOPE")


def test_forced_delete_of_a_missing_container_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run_cli(["--root", str(tmp_path), "delete", "--force", "gone"]) == 0
    assert cli.run_cli(["--root", str(tmp_path), "delete", "gone"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_update_resources_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO('{"memory": {"limit": 1048576}}'))
    flags = cli_args.parse_args(["update", "-r", "-", "c1"]).flags
    assert cli.resources_from_flags(flags) == {"memory": {"limit": 1048576}}
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2]"))
    with pytest.raises(cli_args.CliError, match="expected an object"):
        cli.resources_from_flags(flags)
