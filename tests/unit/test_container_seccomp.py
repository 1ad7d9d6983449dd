"""The seccomp compiler, checked by running its BPF on a small classic-BPF interpreter."""

from __future__ import annotations

import errno
import json
import os
import struct
from typing import Any

import pytest

from agent.container import seccomp
from agent.container.syscalls_x86_64 import AUDIT_ARCH_X86_64, SYSCALLS_X86_64
from agent.errors import InvalidArgument
from agent.system import libc
from tests.helpers.i386 import build_mkdir32
from tests.helpers.processes import exit_code_in_child


def run_bpf(program: bytes, nr: int, args: tuple[int, ...] = (0,) * 6, arch: int = AUDIT_ARCH_X86_64) -> int:
    """Evaluate a seccomp program on one seccomp_data; return the action word."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    insns = [seccomp.INSTRUCTION.unpack_from(program, i) for i in range(0, len(program), 8)]
    a = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == seccomp.BPF_LD_W_ABS:
            a = struct.unpack_from("<I", data, k)[0]
        elif code == seccomp.BPF_LD_IMM:
            a = k
        elif code == seccomp.BPF_ALU_AND_K:
            a &= k
        elif code == seccomp.BPF_RET_K:
            return k
        elif code == seccomp.BPF_JMP_JA:
            pc += k
        elif code in (seccomp.BPF_JMP_JEQ_K, seccomp.BPF_JMP_JGT_K, seccomp.BPF_JMP_JGE_K):
            taken = {seccomp.BPF_JMP_JEQ_K: a == k, seccomp.BPF_JMP_JGT_K: a > k, seccomp.BPF_JMP_JGE_K: a >= k}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unknown opcode {code:#x}")


NR = SYSCALLS_X86_64
PR_SET_NO_NEW_PRIVS = 38
EPERM = seccomp.SECCOMP_RET_ERRNO | errno.EPERM


def profile(*rules: dict[str, Any], default: str = "SCMP_ACT_ALLOW") -> bytes:
    return seccomp.compile_profile({"defaultAction": default, "syscalls": list(rules)})


def test_names_and_actions() -> None:
    program = profile(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
        {"names": ["no_such_call"], "action": "SCMP_ACT_TRAP"},
    )
    assert run_bpf(program, NR["mkdir"]) == EPERM
    assert run_bpf(program, NR["mkdirat"]) == EPERM
    assert run_bpf(program, NR["reboot"]) == seccomp.SECCOMP_RET_KILL_PROCESS
    assert run_bpf(program, NR["ptrace"]) == seccomp.SECCOMP_RET_ERRNO | errno.EACCES
    assert run_bpf(program, NR["read"]) == seccomp.SECCOMP_RET_ALLOW


def test_default_deny_with_allow_list_and_foreign_arch() -> None:
    program = profile({"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}, default="SCMP_ACT_ERRNO")
    assert run_bpf(program, NR["read"]) == seccomp.SECCOMP_RET_ALLOW
    assert run_bpf(program, NR["open"]) == EPERM
    assert run_bpf(program, NR["read"], arch=0x40000003) == EPERM  # i386
    assert run_bpf(program, NR["read"] | seccomp.X32_SYSCALL_BIT) == EPERM


@pytest.mark.parametrize(
    ("op", "value", "value_two", "passing", "failing"),
    [
        ("SCMP_CMP_EQ", 5, 0, [5], [4, 6, 5 | 1 << 32]),
        ("SCMP_CMP_NE", 5, 0, [4, 5 | 1 << 32], [5]),
        ("SCMP_CMP_GT", 1 << 32, 0, [(1 << 32) + 1, 2 << 32], [1 << 32, 5]),
        ("SCMP_CMP_GE", 1 << 32, 0, [1 << 32, 3 << 32], [(1 << 32) - 1]),
        ("SCMP_CMP_LT", (1 << 32) + 5, 0, [(1 << 32) + 4, 7], [(1 << 32) + 5, 2 << 32]),
        ("SCMP_CMP_LE", (1 << 32) + 5, 0, [(1 << 32) + 5, 0], [(1 << 32) + 6]),
        ("SCMP_CMP_MASKED_EQ", 0xFF00, 0x1200, [0x1234, 0xFF1200], [0x1334]),
    ],
)
def test_argument_compares(op: str, value: int, value_two: int, passing: list[int], failing: list[int]) -> None:
    program = profile(
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 1, "op": op, "value": value, "valueTwo": value_two}],
        }
    )
    for arg in passing:
        assert run_bpf(program, NR["personality"], (0, arg, 0, 0, 0, 0)) == EPERM, hex(arg)
    for arg in failing:
        assert run_bpf(program, NR["personality"], (0, arg, 0, 0, 0, 0)) == seccomp.SECCOMP_RET_ALLOW, hex(arg)


def test_several_args_must_all_match_and_later_rules_still_apply() -> None:
    program = profile(
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1}, {"index": 2, "op": "SCMP_CMP_EQ", "value": 3}],
        },
        {"names": ["clone"], "action": "SCMP_ACT_LOG"},
    )
    assert run_bpf(program, NR["clone"], (1, 0, 3, 0, 0, 0)) == EPERM
    assert run_bpf(program, NR["clone"], (1, 0, 4, 0, 0, 0)) == seccomp.SECCOMP_RET_LOG
    assert run_bpf(program, NR["clone"], (2, 0, 3, 0, 0, 0)) == seccomp.SECCOMP_RET_LOG


@pytest.mark.parametrize(
    ("profile_dict", "message"),
    [
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "SCMP_ACT_MAYBE"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 7, "op": "SCMP_CMP_EQ", "value": 1}]}]}, "index 7"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 0, "op": "SCMP_CMP_LIKE", "value": 1}]}]}, "SCMP_CMP_LIKE"),
        # shapes that raised TypeError or AttributeError from inside the compiler before
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {"names": ["read"]}},
         r"^linux\.seccomp\.syscalls must be a list of rules$"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [["read"]]},
         r"^linux\.seccomp\.syscalls\[0\] must be an object$"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read", "action": "SCMP_ACT_ERRNO"}]},
         r"^linux\.seccomp\.syscalls\[0\]\.names must be a list of syscall names$"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": "0", "op": "SCMP_CMP_EQ", "value": 1}]}]},
         r"^linux\.seccomp\.syscalls\[0\]\.args\[0\]\.index must be a non-negative integer, not '0'$"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 0, "value": 1}]}]}, r"args\[0\]\.op must be a string, not None$"),
        ({"defaultAction": 5}, r"^linux\.seccomp\.defaultAction must be a string, not 5$"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": "SCMP_ARCH_X86_64"},
         r"^linux\.seccomp\.architectures must be a list of strings$"),
    ],
)  # fmt: skip
def test_bad_profiles(profile_dict: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        seccomp.compile_profile(profile_dict)


def test_load_installs_the_filter_in_the_kernel() -> None:
    program = seccomp.compile_profile(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV}],
        }
    )

    def work() -> int:
        os.getcwd()  # allowed before the filter
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)  # what lets a process without CAP_SYS_ADMIN load a filter
        seccomp.load(program)
        try:
            os.getcwd()
        except OSError as exc:
            return 0 if exc.errno == errno.EXDEV else 2
        return 3  # the filter did not answer

    assert exit_code_in_child(work) == 0


def test_a_refused_filter_names_it() -> None:
    def work() -> int:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
        try:
            seccomp.load(b"")  # no instructions: the kernel refuses the program
        except OSError as exc:
            return 0 if (exc.errno, exc.filename) == (errno.EINVAL, "seccomp filter") else 2
        return 3

    assert exit_code_in_child(work) == 0


def test_filter_flags_are_known_by_name() -> None:
    from agent.container.seccomp import FILTER_FLAGS, check_profile, filter_flags

    flags = ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": flags}
    check_profile(profile)
    assert filter_flags(profile) == 2 | 4
    assert filter_flags({"defaultAction": "SCMP_ACT_ALLOW"}) == 0
    assert set(FILTER_FLAGS) == {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", *flags}
    with pytest.raises(InvalidArgument, match=r"linux\.seccomp\.flags: 'LOG' is not a filter flag"):
        check_profile({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["LOG"]})
    with pytest.raises(InvalidArgument, match="WAIT_KILLABLE_RECV needs a SCMP_ACT_NOTIFY rule"):
        check_profile({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]})


NOTIFY_RULE = {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}


@pytest.mark.parametrize(
    ("profile", "problem"),
    [
        ({"syscalls": [NOTIFY_RULE]}, r"listenerPath: a profile with SCMP_ACT_NOTIFY rules needs the absolute path"),
        ({"syscalls": [NOTIFY_RULE], "listenerPath": "agent.sock"}, r"absolute path .* not 'agent\.sock'"),
        ({"syscalls": [NOTIFY_RULE], "listenerPath": "/a", "listenerMetadata": 7}, "listenerMetadata must be a string"),
        ({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/a"}, "cannot be the default action"),
        (
            {"syscalls": [{"names": ["sendmsg"], "action": "SCMP_ACT_NOTIFY"}], "listenerPath": "/a"},
            r"syscalls\[0\]: SCMP_ACT_NOTIFY for sendmsg would stop",
        ),
    ],
)
def test_notify_profiles_are_checked(profile: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        seccomp.check_profile({"defaultAction": "SCMP_ACT_ALLOW", **profile})


def test_a_notify_rule_returns_user_notif_and_asks_for_a_listener() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock", "syscalls": [NOTIFY_RULE]}
    seccomp.check_profile(profile)
    assert seccomp.uses_notify(profile)
    assert seccomp.filter_flags(profile) == seccomp.SECCOMP_FILTER_FLAG_NEW_LISTENER
    program = seccomp.compile_profile(profile)
    returns = [k for code, _jt, _jf, k in struct.iter_unpack("<HBBI", program) if code == seccomp.BPF_RET_K]
    assert seccomp.SECCOMP_RET_USER_NOTIF in returns
    # listenerPath means nothing without a notify rule (runtime-spec): no listener then
    assert not seccomp.uses_notify({**profile, "syscalls": []})
    message = json.loads(seccomp.process_state({**profile, "listenerMetadata": "m"}, 42, {"ociVersion": "1.0.2"}))
    assert message == {"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": 42, "metadata": "m",
                       "state": {"ociVersion": "1.0.2"}}  # fmt: skip


def test_notify_with_start_container_hooks_is_refused(tmp_path: Any) -> None:
    from agent.container.spec import parse_spec
    from agent.container.validate import validate_spec
    from agent.errors import Unsupported

    profile = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock", "syscalls": [NOTIFY_RULE]}
    spec = {
        "ociVersion": "1.0.2",
        "root": {"path": str(tmp_path)},
        "process": {"args": ["/bin/true"], "cwd": "/"},
        "linux": {"seccomp": profile},
    }
    validate_spec(parse_spec(spec))
    spec["hooks"] = {"startContainer": [{"path": "/bin/true"}]}
    with pytest.raises(Unsupported, match="SCMP_ACT_NOTIFY with startContainer hooks"):
        validate_spec(parse_spec(spec))


def test_a_profile_listing_x86_gets_its_rules_for_32_bit_calls() -> None:
    from agent.container.syscalls_i386 import AUDIT_ARCH_I386, SYSCALLS_I386

    rules = [{"names": ["mkdir", "socket"], "action": "SCMP_ACT_ERRNO"}]
    both = seccomp.compile_profile({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64",
                                    "SCMP_ARCH_X86"], "syscalls": rules})  # fmt: skip
    assert run_bpf(both, SYSCALLS_I386["mkdir"], arch=AUDIT_ARCH_I386) == EPERM
    assert run_bpf(both, SYSCALLS_I386["socket"], arch=AUDIT_ARCH_I386) == EPERM
    assert run_bpf(both, SYSCALLS_I386["getpid"], arch=AUDIT_ARCH_I386) == seccomp.SECCOMP_RET_ALLOW
    assert run_bpf(both, NR["mkdir"]) == EPERM  # and the x86_64 numbers, as before
    assert run_bpf(both, SYSCALLS_I386["mkdir"]) == seccomp.SECCOMP_RET_ALLOW  # (39 is getpid on x86_64)
    # not listed: 32-bit calls get the default action, whatever they are
    native = seccomp.compile_profile({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"}]})  # fmt: skip
    assert run_bpf(native, SYSCALLS_I386["mkdir"], arch=AUDIT_ARCH_I386) == EPERM
    assert run_bpf(native, NR["mkdir"]) == seccomp.SECCOMP_RET_ALLOW


def test_a_32_bit_calls_arguments_are_compared_as_32_bits() -> None:
    from agent.container.syscalls_i386 import AUDIT_ARCH_I386, SYSCALLS_I386

    rule = {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "SCMP_CMP_EQ",
            "value": 8}]}  # fmt: skip
    program = seccomp.compile_profile({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                                       "syscalls": [rule]})  # fmt: skip
    i386 = SYSCALLS_I386["personality"]
    assert run_bpf(program, i386, (8, 0, 0, 0, 0, 0), arch=AUDIT_ARCH_I386) == EPERM
    # whatever a register held above its lower half, a 32-bit call's argument is the lower half
    assert run_bpf(program, i386, (1 << 32 | 8, 0, 0, 0, 0, 0), arch=AUDIT_ARCH_I386) == EPERM
    assert run_bpf(program, i386, (9, 0, 0, 0, 0, 0), arch=AUDIT_ARCH_I386) == seccomp.SECCOMP_RET_ALLOW
    # a 64-bit call's argument is all 64 bits
    assert run_bpf(program, NR["personality"], (1 << 32 | 8, 0, 0, 0, 0, 0)) == seccomp.SECCOMP_RET_ALLOW
    assert run_bpf(program, NR["personality"], (8, 0, 0, 0, 0, 0)) == EPERM


def test_the_32_bit_section_is_reached_past_a_long_native_one() -> None:
    from agent.container.syscalls_i386 import AUDIT_ARCH_I386, SYSCALLS_I386

    # an allow list of every x86_64 call: some 700 instructions before the i386 section begins
    allowed = [{"names": sorted(NR), "action": "SCMP_ACT_ALLOW"}]
    program = seccomp.compile_profile({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86"],
                                       "syscalls": allowed})  # fmt: skip
    assert len(program) // 8 > 2 * 255
    assert run_bpf(program, SYSCALLS_I386["read"], arch=AUDIT_ARCH_I386) == seccomp.SECCOMP_RET_ALLOW
    assert run_bpf(program, 1000, arch=AUDIT_ARCH_I386) == EPERM
    assert run_bpf(program, NR["set_mempolicy_home_node"]) == seccomp.SECCOMP_RET_ALLOW


@pytest.mark.parametrize("listed", [True, False])
def test_the_kernel_applies_the_32_bit_rules(tmp_path: Any, listed: bool) -> None:
    """A 64-bit program that calls mkdir the 32-bit way (int $0x80), under the compiled filter."""
    import subprocess

    mkdir32 = build_mkdir32(tmp_path)
    arches = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"] if listed else ["SCMP_ARCH_X86_64"]
    # (the mode argument is checked too: the kernel takes the 32-bit comparison, A loaded with 0 for its upper half)
    mode = {"index": 1, "op": "SCMP_CMP_EQ", "value": 0o755}
    program = seccomp.compile_profile({"defaultAction": "SCMP_ACT_ALLOW", "architectures": arches, "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS, "args": [mode]}]})  # fmt: skip

    def under_the_filter() -> None:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
        seccomp.load(program)

    target = tmp_path / "made"
    done = subprocess.run([str(mkdir32), str(target)], preexec_fn=under_the_filter,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip() == (str(-errno.EROFS) if listed else "0")
    assert target.is_dir() is not listed
