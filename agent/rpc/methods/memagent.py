"""RPC handlers: the memory agent's settings (MemAgentMemcgSet, MemAgentCompactSet).

Both messages' fields are proto3 ``optional``: a field the client did not set stays as it is, one set
to zero is a zero. The domain checks the values (agent/memagent/config.py); the mem-agent is imported
only when one of these calls arrives.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2

from agent.rpc.pb import agent_pb2
from agent.rpc.registry import CallContext, rpc

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from agent.services import Services

log = logging.getLogger(__name__)

AGENT = "grpc.AgentService"


def set_fields(message: Message) -> dict[str, Any]:
    """The fields of ``message`` the client set, by name."""
    return {
        field.name: getattr(message, field.name) for field in message.DESCRIPTOR.fields if message.HasField(field.name)
    }


@rpc(AGENT, "MemAgentMemcgSet")
def mem_agent_memcg_set(
    services: Services, request: agent_pb2.MemAgentMemcgConfig, ctx: CallContext
) -> empty_pb2.Empty:
    from agent.memagent.config import MemcgUpdate

    fields = set_fields(request)
    log.info("MemAgentMemcgSet %s", fields)
    services.memagent.memcg_set(MemcgUpdate(**fields))
    return empty_pb2.Empty()


@rpc(AGENT, "MemAgentCompactSet")
def mem_agent_compact_set(
    services: Services, request: agent_pb2.MemAgentCompactConfig, ctx: CallContext
) -> empty_pb2.Empty:
    from agent.memagent.config import CompactUpdate

    fields = set_fields(request)
    log.info("MemAgentCompactSet %s", fields)
    services.memagent.compact_set(CompactUpdate(**fields))
    return empty_pb2.Empty()
