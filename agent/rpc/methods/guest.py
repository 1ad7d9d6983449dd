"""RPC handlers: health, guest details, clock, entropy, CopyFile, metrics.

This module is imported before the agent serves (it holds grpc.Health), so it imports the guest
service only when a guest call arrives.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from agent.rpc.pb import agent_pb2, health_pb2
from agent.rpc.registry import CallContext, rpc

# The agent API version we implement: Kata's agent.proto as of Kata Containers 3.x.
API_VERSION = "0.0.1"

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)


@rpc("grpc.Health", "Check")
def check(services: Services, request: health_pb2.CheckRequest, ctx: CallContext) -> health_pb2.HealthCheckResponse:
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@rpc("grpc.Health", "Version")
def version(services: Services, request: health_pb2.CheckRequest, ctx: CallContext) -> health_pb2.VersionCheckResponse:
    from agent import __version__

    return health_pb2.VersionCheckResponse(grpc_version=API_VERSION, agent_version=__version__)


@rpc("grpc.AgentService", "GetGuestDetails")
def get_guest_details(
    services: Services, request: agent_pb2.GuestDetailsRequest, ctx: CallContext
) -> agent_pb2.GuestDetailsResponse:
    details = services.guest.details(request.mem_block_size, request.mem_hotplug_probe)
    agent = details.agent
    return agent_pb2.GuestDetailsResponse(
        mem_block_size_bytes=details.mem_block_size_bytes,
        support_mem_hotplug_probe=details.support_mem_hotplug_probe,
        agent_details=agent_pb2.AgentDetails(
            version=agent.version,
            init_daemon=agent.init_daemon,
            device_handlers=list(agent.device_handlers),
            storage_handlers=list(agent.storage_handlers),
            supports_seccomp=agent.supports_seccomp,
        ),
    )


@rpc("grpc.AgentService", "SetGuestDateTime")
def set_guest_date_time(
    services: Services, request: agent_pb2.SetGuestDateTimeRequest, ctx: CallContext
) -> empty_pb2.Empty:
    log.info("setting the guest clock", extra={"sec": request.Sec, "usec": request.Usec})
    services.guest.set_date_time(request.Sec, request.Usec)
    return empty_pb2.Empty()


@rpc("grpc.AgentService", "ReseedRandomDev")
def reseed_random_dev(
    services: Services, request: agent_pb2.ReseedRandomDevRequest, ctx: CallContext
) -> empty_pb2.Empty:
    services.guest.reseed_random(request.data)
    return empty_pb2.Empty()


@rpc("grpc.AgentService", "CopyFile")
def copy_file(services: Services, request: agent_pb2.CopyFileRequest, ctx: CallContext) -> empty_pb2.Empty:
    from agent.services.guest import CopyFileRequest

    log.debug("CopyFile", extra={"path": request.path, "offset": request.offset, "size": len(request.data)})
    services.guest.copy_file(
        CopyFileRequest(
            path=request.path,
            file_size=request.file_size,
            file_mode=request.file_mode,
            dir_mode=request.dir_mode,
            uid=request.uid,
            gid=request.gid,
            offset=request.offset,
            data=request.data,
        )
    )
    return empty_pb2.Empty()


@rpc("grpc.AgentService", "GetMetrics")
def get_metrics(services: Services, request: agent_pb2.GetMetricsRequest, ctx: CallContext) -> agent_pb2.Metrics:
    return agent_pb2.Metrics(metrics=services.guest.metrics())
