"""Domain errors. Code below agent/rpc raises these; agent/rpc/status.py maps them to status codes.

Each carries a message that names the thing that was wrong, so the client sees what to fix.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports to a client on purpose."""


class NotFound(AgentError):
    """A container, process, device or file the request names does not exist."""


class AlreadyExists(AgentError):
    """The request would create something that exists already (a container id, a sandbox)."""


class InvalidArgument(AgentError):
    """The request is malformed: a bad path, an out-of-range value, a spec that fails validation."""


class IncorrectState(AgentError):
    """The object exists but its state does not allow the call (start a running container)."""


class Unsupported(AgentError):
    """The guest or the agent cannot do this (a missing kernel feature, a missing tool)."""


class ResourceError(AgentError):
    """The kernel refused or ran out of something (onlining timed out, ENOSPC, cgroup write failed)."""


class DeadlineExceeded(AgentError):
    """The operation did not finish within the time the client or the config allowed."""
