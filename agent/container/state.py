"""Container status, as the OCI runtime-spec names it, and which calls each status allows."""

from __future__ import annotations

import enum

from agent.errors import IncorrectState


class Status(enum.Enum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"

    def can_start(self) -> bool:
        return self is Status.CREATED

    def can_exec(self) -> bool:
        return self is Status.RUNNING

    def can_signal(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING, Status.PAUSED)

    def can_pause(self) -> bool:
        return self is Status.RUNNING

    def can_resume(self) -> bool:
        return self is Status.PAUSED

    def can_update(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING, Status.PAUSED)

    def can_delete(self) -> bool:
        """Without force: only a container that never ran or has ended."""
        return self in (Status.CREATED, Status.STOPPED)


def require(container_id: str, status: Status, allowed: bool, call: str, needs: str) -> None:
    """Raise IncorrectState naming the container, its status and what ``call`` needs."""
    if not allowed:
        raise IncorrectState(f"container {container_id} is {status.value}; {call} needs {needs}")
