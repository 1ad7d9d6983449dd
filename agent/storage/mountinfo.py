"""Parse /proc/self/mountinfo (proc(5)): one ``MountInfo`` per line."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    fstype: str
    source: str
    options: str


def _unescape(text: str) -> str:
    # The kernel writes space, tab, newline and backslash as octal escapes.
    for raw, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(raw, char)
    return text


def parse_mountinfo(text: str) -> list[MountInfo]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        tail = right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        mounts.append(MountInfo(_unescape(fields[4]), tail[0], _unescape(tail[1]), fields[5]))
    return mounts


def read_mountinfo(path: str | os.PathLike[str]) -> list[MountInfo]:
    with open(path) as stream:
        return parse_mountinfo(stream.read())
