"""cgroup v2 device access: OCI device rules as an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE.

cgroup v2 has no devices.allow/deny files; the kernel asks a program attached to the cgroup instead.
Semantics match a v1 devices cgroup that starts allowing everything and then takes the rules in order:
the last rule that matches a request decides it, and a request no rule matches is allowed (OCI specs
start with a deny-all rule, which makes the rest a list of exceptions). A rule matches when the device
type, major and minor match (``a`` and -1/None are wildcards) and the requested access is within the
rule's access letters.

``device_program(rules)`` assembles the instructions (data, testable without root); ``attach(dir,
program)`` loads and attaches them to a cgroup directory, replacing a program attached before.
"""

from __future__ import annotations

import _struct
import os

from agent.errors import ResourceError

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

# bpf(2) commands, program and attach types (include/uapi/linux/bpf.h)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
# struct bpf_cgroup_dev_ctx { u32 access_type (access << 16 | type); u32 major; u32 minor; }
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
TYPE_CODES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}

# instruction opcodes used (class | op | source)
LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
MOV32_REG = 0xBC  # dst = (u32) src
RSH32_IMM = 0x74  # dst >>= imm (32-bit)
AND32_IMM = 0x54  # dst &= imm (32-bit)
JNE_IMM = 0x55  # if dst != imm goto +off
JNE_REG = 0x5D  # if dst != src goto +off
MOV64_IMM = 0xB7  # dst = imm
EXIT = 0x95

INSTRUCTION = _struct.Struct("<BBhi")
# registers: r1 context, then r2 type, r3 access, r4 major, r5 minor; r1 is scratch after the loads
R0, R1, R2, R3, R4, R5 = range(6)


def _insn(opcode: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return INSTRUCTION.pack(opcode, (src << 4) | dst, off, imm)


def _rule_block(rule: Mapping[str, Any]) -> list[tuple[int, int, int, int, int]]:
    """Instructions of one rule; jumps to the next rule use off = -1, patched by the caller."""
    block: list[tuple[int, int, int, int, int]] = []
    kind = rule.get("type") or "a"
    if kind != "a":
        block.append((JNE_IMM, R2, 0, -1, TYPE_CODES[kind]))
    access = 0
    for letter in rule.get("access") or "rwm":
        access |= ACCESS_BITS[letter]
    if access != 0b111:
        # requested access must be within the rule's: (access & rule) == access
        block += [(MOV32_REG, R1, R3, 0, 0), (AND32_IMM, R1, 0, 0, access), (JNE_REG, R1, R3, -1, 0)]
    for register, key in ((R4, "major"), (R5, "minor")):
        number = rule.get(key)
        if number is not None and number != -1:
            block.append((JNE_IMM, register, 0, -1, int(number)))
    block += [(MOV64_IMM, R0, 0, 0, 1 if rule["allow"] else 0), (EXIT, 0, 0, 0, 0)]
    return block


def device_program(rules: Sequence[Mapping[str, Any]]) -> bytes:
    """The program for OCI ``linux.resources.devices`` rules (already validated)."""
    code = [
        _insn(LDX_MEM_W, R2, R1, 0),
        _insn(LDX_MEM_W, R4, R1, 4),
        _insn(LDX_MEM_W, R5, R1, 8),
        _insn(MOV32_REG, R3, R2),
        _insn(RSH32_IMM, R3, imm=16),
        _insn(AND32_IMM, R2, imm=0xFFFF),
    ]
    for rule in reversed(rules):  # the last matching rule decides: test it first
        block = _rule_block(rule)
        for index, (opcode, dst, src, off, imm) in enumerate(block):
            if off == -1:
                off = len(block) - index - 1  # to the first instruction after this block
            code.append(_insn(opcode, dst, src, off, imm))
        if len(block) == 2:
            # a rule for every device and access ends the program: the verifier refuses code that
            # cannot be reached, and no earlier rule could be reached anyway
            return b"".join(code)
    code += [_insn(MOV64_IMM, R0, imm=1), _insn(EXIT)]
    return b"".join(code)


def load(program: bytes) -> int:
    """BPF_PROG_LOAD; returns the program fd. The verifier's log is in the error when it refuses."""
    from agent.system import libc  # here: the cgroup manager imports this module on every path, a delete's too

    insns = bytearray(program)
    license_text = bytearray(b"Apache-2.0\0")
    log = bytearray(65536)
    attr = bytearray(128)
    _struct.pack_into(
        "<IIQQIIQ",
        attr,
        0,
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(program) // INSTRUCTION.size,
        libc.buffer_address(insns),
        libc.buffer_address(license_text),
        1,
        len(log),
        libc.buffer_address(log),
    )
    _struct.pack_into("<16s", attr, 48, b"pykata_devices")
    _struct.pack_into("<I", attr, 68, BPF_CGROUP_DEVICE)  # expected_attach_type
    try:
        return libc.bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        text = log.split(b"\0", 1)[0].decode(errors="replace").strip()
        raise ResourceError(f"the kernel refused the device-access program: {exc.strerror}: {text[-1000:]}") from exc


def attach(directory: str | os.PathLike[str], program: bytes) -> None:
    """Load ``program`` and attach it to the cgroup ``directory`` (single-program mode: it replaces a
    program attached there before, so an update swaps the rules in one step)."""
    from agent.system import libc

    directory = os.fspath(directory)
    prog_fd = load(program)
    try:
        cgroup_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(prog_fd)
        raise ResourceError(f"cannot open cgroup {directory}: {exc.strerror}") from exc
    try:
        attr = bytearray(_struct.pack("<IIII", cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, 0) + bytes(112))
        libc.bpf(BPF_PROG_ATTACH, attr, directory)
    except OSError as exc:
        raise ResourceError(f"cannot attach the device-access program to {directory}: {exc.strerror}") from exc
    finally:
        os.close(cgroup_fd)
        os.close(prog_fd)  # the attachment keeps the program
