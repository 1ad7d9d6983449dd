"""A test program that makes a 32-bit system call from a 64-bit process (``int $0x80``, as a 32-bit
program on an x86_64 kernel calls): mkdir by i386's number, for the seccomp compiler's SCMP_ARCH_X86
rules. Built with the machine's gcc (scripts/setup.sh installs it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

# mkdir(argv[1], 0755) as a 32-bit process calls it: int $0x80, i386's number 39. The path is copied to
# a static buffer of a program linked statically, at no PIE address: 32-bit calls see 32-bit pointers.
I386_MKDIR = """#include <stdio.h>
#include <string.h>
static char path[4096];
int main(int argc, char **argv) {
    long result;
    strncpy(path, argv[1], sizeof path - 1);
    __asm__ volatile ("int $0x80" : "=a"(result) : "a"(39), "b"(path), "c"(0755) : "memory");
    printf("%ld\\n", result);
    return 0;
}
"""


def build_mkdir32(directory: Path) -> Path:
    """``directory``/mkdir32: prints what mkdir(argv[1], 0755) by int $0x80 returned (0, or -errno)."""
    source = directory / "mkdir32.c"
    source.write_text(I386_MKDIR)
    program = directory / "mkdir32"
    subprocess.run(["gcc", "-O2", "-static", "-no-pie", "-o", str(program), str(source)], check=True)
    return program
