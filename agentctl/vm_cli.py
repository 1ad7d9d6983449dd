"""agentctl commands that drive a booted guest (boot, stop, hotplug, console, logs).

``register(group)`` adds them to agentctl's click group.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the VM commands to ``group``. Nothing yet: the VM harness adds boot, stop, hotplug,
    console and logs here."""
