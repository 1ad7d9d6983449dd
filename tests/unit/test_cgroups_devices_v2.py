"""The cgroup v2 device program, run by a small interpreter of the instructions it uses (no root).

The interpreter follows the eBPF instruction set for exactly the opcodes the assembler emits and fails
on any other, so a change in the assembler that the kernel would run differently shows up here; the
privileged v2 test loads the same programs into the kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agent.container.cgroups import devices_v2 as dv

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF


def run(program: bytes, kind: str, major: int, minor: int, access: str) -> int:
    """The program's verdict for one request (1 allow, 0 deny)."""
    bits = 0
    for letter in access:
        bits |= dv.ACCESS_BITS[letter]
    context = struct.pack("<III", (bits << 16) | dv.TYPE_CODES[kind], major, minor)
    regs = [0] * 11
    pc = 0
    count = len(program) // dv.INSTRUCTION.size
    for _step in range(10_000):
        assert 0 <= pc < count, f"jumped out of the program to {pc}"
        opcode, registers, off, imm = dv.INSTRUCTION.unpack_from(program, pc * dv.INSTRUCTION.size)
        dst, src = registers & 0xF, registers >> 4
        if opcode == dv.LDX_MEM_W:
            # r1 points at the context only until it is used as scratch: loads belong to the prologue
            assert src == dv.R1 and pc < 3, f"load at {pc} not from the context"
            regs[dst] = struct.unpack_from("<I", context, off)[0]
        elif opcode == dv.MOV32_REG:
            regs[dst] = regs[src] & MASK32
        elif opcode == dv.RSH32_IMM:
            regs[dst] = (regs[dst] & MASK32) >> imm
        elif opcode == dv.AND32_IMM:
            regs[dst] = regs[dst] & imm & MASK32
        elif opcode == dv.JNE_IMM:
            if regs[dst] != imm & MASK64:
                pc += off
        elif opcode == dv.JNE_REG:
            if regs[dst] != regs[src]:
                pc += off
        elif opcode == dv.MOV64_IMM:
            regs[dst] = imm & MASK64
        elif opcode == dv.EXIT:
            return regs[0]
        else:
            pytest.fail(f"unexpected opcode {opcode:#x}")
        pc += 1
    pytest.fail("the program did not end")


def verdicts(rules: Sequence[Mapping[str, Any]], requests: list[tuple[str, int, int, str]]) -> list[int]:
    program = dv.device_program(rules)
    return [run(program, *request) for request in requests]


OCI_DEFAULT = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # /dev/null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"},  # /dev/zero, read only
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # any pty
]


def test_whitelist_after_deny_all() -> None:
    requests = [
        ("c", 1, 3, "rw"),
        ("c", 1, 5, "r"),
        ("c", 1, 5, "w"),
        ("c", 1, 5, "rw"),
        ("c", 136, 7, "rw"),
        ("c", 1, 7, "r"),
        ("b", 1, 3, "r"),
        ("b", 8, 0, "m"),
    ]
    assert verdicts(OCI_DEFAULT, requests) == [1, 1, 0, 0, 1, 0, 0, 0]


def test_no_rules_allows_everything() -> None:
    assert verdicts([], [("c", 1, 3, "rwm"), ("b", 8, 0, "r")]) == [1, 1]


def test_last_matching_rule_wins() -> None:
    rules = [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": False, "type": "c", "major": 1, "access": "w"},
    ]
    assert verdicts(rules, [("c", 1, 3, "w"), ("c", 1, 3, "r"), ("c", 2, 0, "w")]) == [0, 1, 1]


def test_unreachable_rules_are_not_emitted() -> None:
    # a deny-all as the last rule makes every earlier rule dead code, which the verifier refuses
    ends_with_deny_all = dv.device_program([{"allow": True, "type": "c", "major": 1}, {"allow": False}])
    assert len(ends_with_deny_all) // dv.INSTRUCTION.size == 6 + 2
    assert verdicts([{"allow": True, "type": "c", "major": 1}, {"allow": False}], [("c", 1, 3, "r")]) == [0]


def test_instruction_encoding() -> None:
    program = dv.device_program([{"allow": False, "type": "b", "access": "rwm"}])
    first = dv.INSTRUCTION.unpack_from(program, 0)
    assert first == (0x61, (dv.R1 << 4) | dv.R2, 0, 0)  # r2 = *(u32 *)(r1 + 0)
    assert program[-8:] == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])
