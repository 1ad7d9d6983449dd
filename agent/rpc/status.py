"""Status codes and the one table from domain errors (agent.errors) to them.

The numbers are gRPC's (google.rpc.Code), which ttrpc uses as well; both of the agent's servers (ttrpc.py
and h2grpc.py) send them as they are.

``ResourceError`` maps to RESOURCE_EXHAUSTED: it means the kernel refused or ran out of something
(memory that did not come online, ENOSPC, a cgroup limit), which a client may retry or report as a
capacity problem; INTERNAL is kept for agent bugs, so the two stay distinguishable in the host's logs.
"""

from __future__ import annotations

import enum
import logging

from agent import errors

log = logging.getLogger(__name__)


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


ERROR_CODES: dict[type[errors.AgentError], Code] = {
    errors.NotFound: Code.NOT_FOUND,
    errors.AlreadyExists: Code.ALREADY_EXISTS,
    errors.InvalidArgument: Code.INVALID_ARGUMENT,
    errors.IncorrectState: Code.FAILED_PRECONDITION,
    errors.Unsupported: Code.UNIMPLEMENTED,
    errors.ResourceError: Code.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: Code.DEADLINE_EXCEEDED,
}


class RpcError(Exception):
    """A call ends with this status (raised by the RPC layer itself: unknown method, bad payload)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return f"CODE_{code}"


def status_for(exc: BaseException, method: str = "") -> tuple[Code, str]:
    """The status a client sees for ``exc``. Unexpected exceptions are logged with their traceback
    and become INTERNAL carrying the message."""
    if isinstance(exc, RpcError):
        return exc.code, exc.message
    for cls in type(exc).__mro__:
        code = ERROR_CODES.get(cls)
        if code is not None:
            return code, str(exc) or cls.__name__
    where = f" in {method}" if method else ""
    log.error("unexpected error%s: %s", where, exc, exc_info=exc)
    return Code.INTERNAL, f"{method}: {type(exc).__name__}: {exc}" if method else f"{type(exc).__name__}: {exc}"
