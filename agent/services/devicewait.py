"""Waking device waits (blk and scsi storages, NICs by PCI path) on kernel uevents.

A waker subscribes when it is made, so a device that appears between the first look at sysfs and
the wait still wakes it; it also re-checks at a short interval, so a missed event costs only that.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.hotplug.uevent import Subscription, UeventListener, match, shared_listener
from agent.system.paths import HostPaths
from agent.system.pcipath import Waker

RECHECK_INTERVAL = 0.1


class UeventWaker:
    def __init__(self, listener: UeventListener, subsystem: str) -> None:
        self._subscription: Subscription = listener.subscribe(match(action="add", subsystem=subsystem))

    def wait(self, timeout: float) -> None:
        self._subscription.get(timeout=max(0.0, min(timeout, RECHECK_INTERVAL)))

    def close(self) -> None:
        self._subscription.close()


def waker_factory(paths: HostPaths, subsystem: str) -> Callable[[], Waker | None]:
    """Wakers on the agent's uevent listener; None (plain polling) for a test tree, whose devices the
    kernel does not announce."""
    if paths.root != "/":
        return lambda: None
    return lambda: UeventWaker(shared_listener(), subsystem)
