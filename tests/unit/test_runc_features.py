"""``pykata-runc features``: the runtime-spec features document claims only what the engine does.

Each list in the document is checked against the engine itself: a listed mount option is taken by the
option parser (not passed to the filesystem as data), a listed seccomp action and operator compile, a
listed namespace passes validation, a listed hook is parsed, a listed capability has a number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.container import seccomp
from agent.container.capabilities import cap_numbers
from agent.container.features import features
from agent.container.spec import parse_spec
from agent.container.validate import validate_spec
from agent.errors import InvalidArgument
from agent.system.mountopts import parse_mount_options
from tests.conftest import REPO

DOCUMENT = features()


def _minimal_spec(root: str = "/rootfs", **extra: Any) -> dict[str, Any]:
    return {"ociVersion": DOCUMENT["ociVersionMax"], "process": {"args": ["/bin/true"], "cwd": "/"},
            "root": {"path": root}, **extra}  # fmt: skip


def test_the_command_prints_the_document() -> None:
    done = subprocess.run([sys.executable, "-m", "agent.container.cli", "features"], cwd=REPO, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert json.loads(done.stdout) == DOCUMENT


def test_versions_and_the_runtime_spec_shape() -> None:
    assert DOCUMENT["ociVersionMin"] == "1.0.0"
    assert [int(part) for part in DOCUMENT["ociVersionMin"].split(".")] <= [
        int(part.split("-")[0]) for part in DOCUMENT["ociVersionMax"].split(".")
    ]
    linux = DOCUMENT["linux"]
    assert set(linux) == {"namespaces", "capabilities", "cgroup", "seccomp", "apparmor", "selinux"}
    assert linux["cgroup"] == {"v1": True, "v2": True, "systemd": True, "systemdUser": True}
    # implemented (agent/container/procattrs.py), whatever this host's kernel enforces: features.md
    # describes the runtime, not the host
    assert linux["apparmor"] == {"enabled": True}
    assert linux["selinux"] == {"enabled": True}


def test_every_listed_mount_option_is_taken_by_the_parser() -> None:
    options = DOCUMENT["mountOptions"]
    assert {"rbind", "ro", "rro", "rnosuid", "rnoatime", "tmpcopyup", "nosymfollow", "rslave", "idmap",
            "ridmap"} <= set(options)  # fmt: skip
    for word in options:
        assert parse_mount_options([word]).data == (), f"{word} would reach the filesystem as data"
    # and a word it does not list does reach the filesystem
    assert parse_mount_options(["size=64k"]).data == ("size=64k",)


def test_every_listed_seccomp_action_and_operator_compiles() -> None:
    listed = DOCUMENT["linux"]["seccomp"]
    assert listed["enabled"] is True
    assert listed["archs"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    for action in listed["actions"]:
        seccomp.action_value(action, None)
    for operator in listed["operators"]:
        rule = {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": operator, "value": 1}]}
        assert seccomp.compile_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]})
    # what it leaves out is refused
    with pytest.raises(InvalidArgument, match="SCMP_ACT_BOGUS"):
        seccomp.action_value("SCMP_ACT_BOGUS", None)
    assert "SCMP_ACT_NOTIFY" in listed["actions"]  # (with a listenerPath: tests/unit/test_container_seccomp.py)


def test_every_listed_namespace_validates(tmp_path: Path) -> None:
    assert {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"} <= set(DOCUMENT["linux"]["namespaces"])
    for kind in DOCUMENT["linux"]["namespaces"]:
        spec = parse_spec(_minimal_spec(str(tmp_path), linux={"namespaces": [{"type": kind}]}))
        validate_spec(spec)
    with pytest.raises(InvalidArgument, match="nonsense"):
        validate_spec(parse_spec(_minimal_spec(str(tmp_path), linux={"namespaces": [{"type": "nonsense"}]})))


def test_every_listed_hook_is_parsed() -> None:
    hook = {"path": "/bin/true"}
    spec = parse_spec(_minimal_spec(hooks={name: [hook] for name in DOCUMENT["hooks"]}))
    parsed = [getattr(spec.hooks, field) for field in spec.hooks._fields]
    assert len(DOCUMENT["hooks"]) == len(parsed) == 6
    assert all(len(hooks) == 1 for hooks in parsed)


def test_every_listed_capability_has_a_number() -> None:
    names = DOCUMENT["linux"]["capabilities"]
    assert {"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"} <= set(names)
    numbers = cap_numbers(names)
    assert len(numbers) == len(set(numbers)) == len(names)
    assert numbers == sorted(numbers)  # in the kernel's order
