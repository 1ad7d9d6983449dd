"""Container status, as the OCI runtime-spec names it, and which calls each status allows.

``Status`` is a plain class with one shared instance per status (compare with ``is``), each with its
runtime-spec name in ``.value``: an ``enum.Enum`` would cost every cold ``pykata-runc`` command the
enum module's import.
"""

from __future__ import annotations

from agent.errors import IncorrectState


class Status:
    __slots__ = ("value",)

    CREATING: Status
    CREATED: Status
    RUNNING: Status
    PAUSED: Status
    STOPPED: Status

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<Status.{self.value.upper()}: {self.value!r}>"

    def __reduce__(self) -> tuple[object, tuple[type[Status], str]]:
        return getattr, (Status, self.value.upper())  # pickled by name: unpickling gives the same instance

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


Status.CREATING = Status("creating")
Status.CREATED = Status("created")
Status.RUNNING = Status("running")
Status.PAUSED = Status("paused")
Status.STOPPED = Status("stopped")


def require(container_id: str, status: Status, allowed: bool, call: str, needs: str) -> None:
    """Raise IncorrectState naming the container, its status and what ``call`` needs."""
    if not allowed:
        raise IncorrectState(f"container {container_id} is {status.value}; {call} needs {needs}")
