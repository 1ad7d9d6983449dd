"""Seccomp for containers: a small compiler from the OCI ``linux.seccomp`` profile to classic BPF,
and the loader.

How it works: the profile is compiled in the engine (before any fork) to one flat BPF program:

    load arch; if it is not x86_64, return the default action
    load nr;   if it is an x32 call (bit 30), return the default action
    for each rule, for each syscall name in it:
        [reload nr;] if nr != N goto next; [for each arg: 64-bit compare as two 32-bit halves,
        goto next on mismatch;] return the rule's action
    return the default action

Actions map to SECCOMP_RET_* (SCMP_ACT_ERRNO uses errnoRet, or EPERM; SCMP_ACT_TRACE uses it as
the tracer's message). The program travels to the container process as bytes (8 per instruction,
``struct sock_filter``) and is installed with ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)``
right before execve when the process has no_new_privileges; without it, the kernel wants
CAP_SYS_ADMIN, so the filter goes in before the capabilities are dropped (what runc does too).
Names this kernel's table lacks are skipped, as libseccomp does for unknown names. The host must be
x86_64 (other machines raise Unsupported at create); a profile that lists SCMP_ARCH_X86 (Docker's
and containerd's default profiles do) gets the same rules for 32-bit processes, by the i386 numbers
(``syscalls_i386``), in a section of their own the arch check jumps to:

    load arch; if x86_64, jump to the x86_64 rules; [if i386, jump to the i386 rules;] return default

Calls of any other architecture (x32's range among them: it is not compiled) get the default action.

The profile's ``flags`` (runtime-spec 1.0.2; runc's) are the filter's: SECCOMP_FILTER_FLAG_LOG (the
actions other than allow go to the audit log), SECCOMP_FILTER_FLAG_SPEC_ALLOW (no speculative store
bypass mitigation forced by the filter), SECCOMP_FILTER_FLAG_TSYNC (every thread; the process has
one) and, with SCMP_ACT_NOTIFY, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV; a filter with flags is
installed with ``seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog)``. Any other flag is refused by name.

SCMP_ACT_NOTIFY (seccomp user notification) hands the calls a rule names to a seccomp agent, which
answers them for the process: the filter is installed with SECCOMP_FILTER_FLAG_NEW_LISTENER, the
process passes the listener descriptor back to the runtime (``hand_over``), and the runtime sends it
to the agent at the spec's ``listenerPath`` (a unix stream socket) with the container process state
(``process_state``), one connection per process, as runc does. So the filter of such a profile is
installed before the create returns (the process waits for start under it, as runc's does). As in
runc, SCMP_ACT_NOTIFY may not be the default action, nor the action for ``sendmsg`` (the call that
passes the descriptor back), and the profile must give ``listenerPath``.
"""

from __future__ import annotations

import _struct
import errno
import os

from agent.errors import InvalidArgument, ResourceError, Unsupported
from agent.system import libc

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
# The profile's filter flags this runtime applies (<linux/seccomp.h>).
FILTER_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32,  # (a notify listener's: only with SCMP_ACT_NOTIFY)
}
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
NOTIFY = "SCMP_ACT_NOTIFY"
SECCOMP_FD_NAME = "seccompFd"  # runtime-spec's name for the listener in a container process state

# classic BPF opcodes
BPF_LD_W_ABS = 0x20
BPF_JMP_JEQ_K = 0x15
BPF_JMP_JGT_K = 0x25
BPF_JMP_JGE_K = 0x35
BPF_ALU_AND_K = 0x54
BPF_RET_K = 0x06
BPF_JMP_JA = 0x05  # unconditional, by k (the conditional jumps reach 255 instructions at most)
BPF_LD_IMM = 0x00  # A = k

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000
X32_SYSCALL_BIT = 0x40000000

OFFSET_NR = 0
OFFSET_ARCH = 4
MAX_JUMP = 255
INSTRUCTION = _struct.Struct("<HBBI")


# The profile's actions this compiler knows, as the SECCOMP_RET_* value they return; ERRNO and TRACE
# carry errnoRet (EPERM when absent) in the low 16 bits.
ACTIONS: dict[str, int] = {
    NOTIFY: SECCOMP_RET_USER_NOTIF,
    "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": SECCOMP_RET_TRAP,
    "SCMP_ACT_ERRNO": SECCOMP_RET_ERRNO,
    "SCMP_ACT_TRACE": SECCOMP_RET_TRACE,
    "SCMP_ACT_LOG": SECCOMP_RET_LOG,
    "SCMP_ACT_ALLOW": SECCOMP_RET_ALLOW,
}
_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
# The argument comparisons _arg_check compiles, and the one architecture the filters are for.
OPERATORS = ("SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_GT", "SCMP_CMP_GE", "SCMP_CMP_LT",
             "SCMP_CMP_LE")  # fmt: skip
ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")


def check_profile(profile: Any, where: str = "linux.seccomp") -> None:
    """The profile's shape, each problem named by its field (compile_profile then trusts it):
    actions and operators are strings, names a list of strings, numbers non-negative integers."""
    if not isinstance(profile, dict):
        raise InvalidArgument(f"{where} must be an object")
    _string(profile, "defaultAction", where)
    _count(profile, "defaultErrnoRet", where)
    for key in ("architectures", "flags"):
        if not _strings(profile.get(key)):
            raise InvalidArgument(f"{where}.{key} must be a list of strings")
    for flag in profile.get("flags") or []:
        if flag not in FILTER_FLAGS:
            known = ", ".join(FILTER_FLAGS)
            raise InvalidArgument(f"{where}.flags: {flag!r} is not a filter flag this runtime applies ({known})")
    for at, rule in _objects(profile.get("syscalls"), f"{where}.syscalls", "rules"):
        if not _strings(rule.get("names")):
            raise InvalidArgument(f"{at}.names must be a list of syscall names")
        _string(rule, "action", at)
        _count(rule, "errnoRet", at)
        for arg_at, arg in _objects(rule.get("args"), f"{at}.args", "argument checks"):
            for key in ("index", "value", "valueTwo"):
                _count(arg, key, arg_at)
            _string(arg, "op", arg_at)
    _check_notify(profile, where)


def uses_notify(profile: dict[str, Any]) -> bool:
    """Whether a rule of the (checked) profile hands calls to a seccomp agent (SCMP_ACT_NOTIFY)."""
    return any(rule.get("action") == NOTIFY for rule in profile.get("syscalls") or [])


def _check_notify(profile: dict[str, Any], where: str) -> None:
    if profile.get("defaultAction") == NOTIFY:
        raise InvalidArgument(f"{where}.defaultAction: {NOTIFY} cannot be the default action (as with runc)")
    if not uses_notify(profile):
        if "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" in (profile.get("flags") or []):
            raise InvalidArgument(f"{where}.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a {NOTIFY} rule")
        return  # (listenerPath is ignored then, as runtime-spec says)
    path = profile.get("listenerPath")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(
            f"{where}.listenerPath: a profile with {NOTIFY} rules needs the absolute path of the seccomp "
            f"agent's unix socket, not {path!r}"
        )
    if not isinstance(profile.get("listenerMetadata", ""), str):
        raise InvalidArgument(f"{where}.listenerMetadata must be a string")
    for index, rule in enumerate(profile.get("syscalls") or []):
        if rule.get("action") == NOTIFY and "sendmsg" in (rule.get("names") or []):
            raise InvalidArgument(
                f"{where}.syscalls[{index}]: {NOTIFY} for sendmsg would stop the process handing its "
                "listener to the runtime (the call that hands it over); leave sendmsg out of the rule"
            )


def _objects(value: Any, where: str, what: str) -> list[tuple[str, dict[str, Any]]]:
    """A list of objects (None: empty), each with the field name it is checked under."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a list of {what}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where}[{index}] must be an object")
    return [(f"{where}[{index}]", item) for index, item in enumerate(value)]


def _strings(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(item, str) for item in value))


def _string(entry: dict[str, Any], key: str, where: str) -> None:
    if not isinstance(entry.get(key), str):
        raise InvalidArgument(f"{where}.{key} must be a string, not {entry.get(key)!r}")


def _count(entry: dict[str, Any], key: str, where: str) -> None:
    value = entry.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64):
        raise InvalidArgument(f"{where}.{key} must be a non-negative integer, not {value!r}")


def action_value(action: str, errno_ret: int | None) -> int:
    value = ACTIONS.get(action)
    if value is None:
        raise InvalidArgument(f"linux.seccomp: action {action!r} is not supported")
    if action in _WITH_ERRNO:
        return value | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    return value


# An instruction before its jumps are resolved: jumps name labels ("next" = the rule's end,
# "ok" = the end of the current argument check) or are plain ints.
_Pending = tuple[int, int | str, int | str, int]


def _arg_check(index: int, op: str, value: int, value_two: int, wide: bool = True) -> list[_Pending]:
    """Instructions that fall through when arg ``index`` passes and jump to "next" when not. A 32-bit
    process's arguments are 32 bits (``wide`` False): their upper half is taken as 0, whatever the
    register held above it (libseccomp compares only the lower half on a 32-bit architecture)."""
    hi_offset = 16 + 8 * index + 4
    lo_offset = 16 + 8 * index
    hi, lo = (value >> 32) & 0xFFFFFFFF, value & 0xFFFFFFFF
    load_hi: _Pending = (BPF_LD_W_ABS, 0, 0, hi_offset) if wide else (BPF_LD_IMM, 0, 0, 0)
    load_lo: _Pending = (BPF_LD_W_ABS, 0, 0, lo_offset)
    if op == "SCMP_CMP_EQ":
        return [load_hi, (BPF_JMP_JEQ_K, 0, "next", hi), load_lo, (BPF_JMP_JEQ_K, 0, "next", lo)]
    if op == "SCMP_CMP_NE":
        return [load_hi, (BPF_JMP_JEQ_K, 0, "ok", hi), load_lo, (BPF_JMP_JEQ_K, "next", 0, lo)]
    if op == "SCMP_CMP_MASKED_EQ":
        want_hi, want_lo = (value_two >> 32) & 0xFFFFFFFF, value_two & 0xFFFFFFFF
        return [
            load_hi, (BPF_ALU_AND_K, 0, 0, hi), (BPF_JMP_JEQ_K, 0, "next", want_hi),
            load_lo, (BPF_ALU_AND_K, 0, 0, lo), (BPF_JMP_JEQ_K, 0, "next", want_lo),
        ]  # fmt: skip
    if op in ("SCMP_CMP_GT", "SCMP_CMP_GE"):
        low_jump = BPF_JMP_JGT_K if op == "SCMP_CMP_GT" else BPF_JMP_JGE_K
        return [
            load_hi, (BPF_JMP_JGT_K, "ok", 0, hi), (BPF_JMP_JEQ_K, 0, "next", hi),
            load_lo, (low_jump, 0, "next", lo),
        ]  # fmt: skip
    if op in ("SCMP_CMP_LT", "SCMP_CMP_LE"):
        low_jump = BPF_JMP_JGE_K if op == "SCMP_CMP_LT" else BPF_JMP_JGT_K
        return [
            load_hi, (BPF_JMP_JGT_K, "next", 0, hi), (BPF_JMP_JEQ_K, 0, "ok", hi),
            load_lo, (low_jump, "next", 0, lo),
        ]  # fmt: skip
    raise InvalidArgument(f"linux.seccomp: argument operator {op!r} is not supported")


def _resolve(block: list[_Pending], labels: dict[str, int], base: int) -> list[tuple[int, int, int, int]]:
    out = []
    for position, (code, jt, jf, k) in enumerate(block):
        here = base + position + 1
        out.append((code, _jump(jt, labels, here), _jump(jf, labels, here), k))
    return out


def _jump(jump: int | str, labels: dict[str, int], here: int) -> int:
    if isinstance(jump, int):
        return jump
    offset = labels[jump] - here
    if not 0 <= offset <= MAX_JUMP:
        raise InvalidArgument("linux.seccomp: a rule is too long for a BPF jump")
    return offset


def _rule_block(
    number: int, action: int, args: list[dict[str, Any]], wide: bool = True
) -> list[tuple[int, int, int, int]]:
    pending: list[_Pending] = [(BPF_LD_W_ABS, 0, 0, OFFSET_NR), (BPF_JMP_JEQ_K, 0, "next", number)]
    resolved: list[tuple[int, int, int, int]] = []
    checks = []
    for arg in args:
        index = int(arg.get("index") or 0)  # (check_profile let only non-negative integers or null through)
        if not 0 <= index <= 5:
            raise InvalidArgument(f"linux.seccomp: argument index {index} is outside 0..5")
        value, value_two = int(arg.get("value") or 0), int(arg.get("valueTwo") or 0)
        checks.append(_arg_check(index, str(arg["op"]), value, value_two, wide))
    total = len(pending) + sum(len(c) for c in checks) + 1
    base = 0
    labels = {"next": total}
    resolved += _resolve(pending, labels, base)
    base += len(pending)
    for check in checks:
        labels["ok"] = base + len(check)
        resolved += _resolve(check, labels, base)
        base += len(check)
    resolved.append((BPF_RET_K, 0, 0, action))
    return resolved


def compile_profile(profile: dict[str, Any]) -> bytes:
    """The BPF program for an OCI seccomp profile, as the bytes of a ``struct sock_filter`` array."""
    check_profile(profile)
    machine = os.uname().machine
    if machine != "x86_64":
        raise Unsupported(f"seccomp profiles are compiled for x86_64 only, not {machine}")
    # the tables load only for a spec that has a profile (most container starts have none)
    from agent.container.syscalls_x86_64 import AUDIT_ARCH_X86_64, SYSCALLS_X86_64

    default = action_value(str(profile.get("defaultAction", "")), profile.get("defaultErrnoRet"))
    sections = [(AUDIT_ARCH_X86_64, _section(profile, SYSCALLS_X86_64, default, native=True))]
    if "SCMP_ARCH_X86" in (profile.get("architectures") or []):
        from agent.container.syscalls_i386 import AUDIT_ARCH_I386, SYSCALLS_I386

        sections.append((AUDIT_ARCH_I386, _section(profile, SYSCALLS_I386, default, native=False)))
    # the arch checks, each followed by its jump to its section, then the default for any other arch
    program: list[tuple[int, int, int, int]] = [(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH)]
    header = 1 + 2 * len(sections) + 1
    start = header
    for arch, section in sections:
        program += [(BPF_JMP_JEQ_K, 0, 1, arch), (BPF_JMP_JA, 0, 0, start - (len(program) + 2))]
        start += len(section)
    program.append((BPF_RET_K, 0, 0, default))
    for _arch, section in sections:
        program += section
    if len(program) > 4096:
        raise InvalidArgument(f"linux.seccomp compiles to {len(program)} instructions; the kernel takes 4096")
    return b"".join(INSTRUCTION.pack(*insn) for insn in program)


def _section(
    profile: dict[str, Any], table: dict[str, int], default: int, *, native: bool
) -> list[tuple[int, int, int, int]]:
    """One architecture's rules, by the numbers of its ``table``, ending in the default action. The
    ``native`` (x86_64) section first gives calls in the x32 range (x86_64's numbers with bit 30 set)
    the default, and compares arguments as 64 bits; the i386 one as 32 (``_arg_check``)."""
    section: list[tuple[int, int, int, int]] = []
    if native:
        section += [
            (BPF_LD_W_ABS, 0, 0, OFFSET_NR),
            (BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
            (BPF_RET_K, 0, 0, default),
        ]
    for i, rule in enumerate(profile.get("syscalls") or []):
        action = action_value(str(rule.get("action", "")), rule.get("errnoRet"))
        if action == default and not rule.get("args"):
            continue
        for name in rule.get("names") or []:
            number = table.get(name)
            if number is None:
                import logging  # not at the top: logging is not on the path of a container start

                logging.getLogger(__name__).debug("seccomp: syscall %s (rule %d) is unknown here; skipped", name, i)
                continue
            section += _rule_block(number, action, list(rule.get("args") or []), wide=native)
    section.append((BPF_RET_K, 0, 0, default))
    return section


def filter_flags(profile: dict[str, Any]) -> int:
    """The SECCOMP_FILTER_FLAG_* bits of a checked profile's ``flags``, with NEW_LISTENER for a
    profile that notifies."""
    bits = SECCOMP_FILTER_FLAG_NEW_LISTENER if uses_notify(profile) else 0
    for flag in profile.get("flags") or []:
        bits |= FILTER_FLAGS[flag]
    return bits


# struct sock_fprog { unsigned short len; struct sock_filter *filter; }
SOCK_FPROG = _struct.Struct("@HP")


def load(program: bytes, flags: int = 0) -> int | None:
    """Install a compiled filter for this process (inherited by its children and kept across exec),
    with the filter ``flags`` (filter_flags) when there are any; the notify listener's descriptor
    when ``flags`` asks for one (SECCOMP_FILTER_FLAG_NEW_LISTENER), else None."""
    instructions = bytearray(program)  # alive, and unresized, until the kernel has copied it
    fprog = bytearray(SOCK_FPROG.pack(len(program) // INSTRUCTION.size, libc.buffer_address(instructions)))
    try:
        if flags:
            result = libc.seccomp(SECCOMP_SET_MODE_FILTER, flags, libc.buffer_address(fprog))
            return result if flags & SECCOMP_FILTER_FLAG_NEW_LISTENER else None
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, libc.buffer_address(fprog))
        return None
    except OSError as exc:
        what = "seccomp filter" + (f" (flags {flags:#x})" if flags else "")
        raise OSError(exc.errno, exc.strerror, what) from None


def hand_over(channel: int, listener: int) -> None:
    """Pass the notify ``listener`` to the runtime over the unix socket ``channel`` (one byte, with the
    descriptor: warm.send_raw), then close both here."""
    import _socket

    from agent.container.warm import send_raw  # (loaded with the process's code, before its root changed)

    try:
        sock = _socket.socket(fileno=channel)
        try:
            send_raw(sock, b"L", [listener])
        finally:
            sock.close()
    finally:
        os.close(listener)


def receive(channel: Any, timeout: float) -> int:
    """The notify listener a container process passed over ``channel`` (a socket object): its
    descriptor here. TimeoutError when none comes within ``timeout`` seconds, EOFError when the process
    closed the channel without one (it failed before: its own report says why)."""
    from agent.container.warm import receive_raw

    channel.settimeout(timeout)
    try:
        _data, fds = receive_raw(channel)
    except TimeoutError:
        raise TimeoutError(f"no seccomp listener came from the container process within {timeout:g} s") from None
    for extra in fds[1:]:
        os.close(extra)
    if not fds:
        raise EOFError("the container process ended before it passed its seccomp listener")
    return fds[0]


def process_state(profile: dict[str, Any], pid: int, state: dict[str, Any]) -> bytes:
    """runtime-spec's container process state for a seccomp agent: the process ``pid`` (as the
    runtime sees it), the profile's listenerMetadata and the container's ``state``; its one
    descriptor (``fds``) is the listener, sent with it."""
    from agent.system import jsonlite

    message = {
        "ociVersion": state.get("ociVersion", ""),
        "fds": [SECCOMP_FD_NAME],
        "pid": pid,
        "metadata": profile.get("listenerMetadata", ""),
        "state": state,
    }
    return jsonlite.dumps(message).encode()


def send_to_agent(profile: dict[str, Any], listener: int, message: bytes) -> None:
    """Send ``message`` and the notify ``listener`` to the seccomp agent at the profile's
    listenerPath: one connection, closed after it (runtime-spec). ResourceError naming the path when
    the agent cannot be reached or refuses it."""
    import _socket

    from agent.container.warm import send_raw

    path = profile["listenerPath"]
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(10.0)
        sock.connect(path)
        send_raw(sock, message, [listener])
    except OSError as exc:
        raise ResourceError(
            f"cannot hand the seccomp listener to the agent at linux.seccomp.listenerPath {path}: "
            f"{exc.strerror or exc}; is the seccomp agent listening there?"
        ) from exc
    finally:
        sock.close()
