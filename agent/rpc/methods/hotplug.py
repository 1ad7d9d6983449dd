"""RPC handlers: CPU and memory hotplug (OnlineCPUMem, MemHotplugByProbe)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from agent.rpc.pb import agent_pb2
from agent.rpc.registry import CallContext, rpc

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

AGENT = "grpc.AgentService"


@rpc(AGENT, "OnlineCPUMem")
def online_cpu_mem(services: Services, request: agent_pb2.OnlineCPUMemRequest, ctx: CallContext) -> empty_pb2.Empty:
    log.info("OnlineCPUMem nb_cpus=%d wait=%s cpu_only=%s", request.nb_cpus, request.wait, request.cpu_only)
    services.resources.online_cpu_mem(
        request.nb_cpus, wait=request.wait, cpu_only=request.cpu_only, deadline=ctx.deadline
    )
    return empty_pb2.Empty()


@rpc(AGENT, "MemHotplugByProbe")
def mem_hotplug_by_probe(
    services: Services, request: agent_pb2.MemHotplugByProbeRequest, ctx: CallContext
) -> empty_pb2.Empty:
    addresses = list(request.memHotplugProbeAddr)
    log.info("MemHotplugByProbe %s", ", ".join(f"{a:#x}" for a in addresses))
    services.resources.mem_hotplug_by_probe(addresses, deadline=ctx.deadline)
    return empty_pb2.Empty()
