"""RPC handlers: sandbox and containers. Each converts, delegates to the service, converts back."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from agent.rpc.convert_oci import _is_map as is_map_field
from agent.rpc.convert_oci import _map_value as map_value_field
from agent.rpc.convert_oci import process_to_dict, resources_to_dict, spec_to_dict
from agent.rpc.pb import agent_pb2
from agent.rpc.registry import CallContext, rpc
from agent.services.container_devices import Device
from agent.services.shared_mounts import SharedMount

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)
SERVICE = "grpc.AgentService"


def _storages(pbs: Any) -> list[Any]:
    if not pbs:
        return []
    from agent.rpc.methods.storage import storage_from_pb

    return [storage_from_pb(pb) for pb in pbs]


def fill_message(message: Message, data: dict[str, Any]) -> Message:
    """Copy a dict with the proto's own field names (a dataclass's asdict) into ``message``."""
    descriptor = message.DESCRIPTOR
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None or value is None:
            continue
        target: Any = getattr(message, key)
        if is_map_field(field):
            value_type = map_value_field(field)
            for k, v in value.items():
                if value_type.message_type is not None:
                    fill_message(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated:
            for item in value:
                if field.message_type is not None:
                    fill_message(target.add(), item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            fill_message(target, value)
        else:
            setattr(message, key, value)
    return message


@rpc(SERVICE, "CreateSandbox")
def create_sandbox(services: Services, request: agent_pb2.CreateSandboxRequest, ctx: CallContext) -> empty_pb2.Empty:
    log.info("CreateSandbox %s", request.sandbox_id)
    services.sandbox.create_sandbox(
        sandbox_id=request.sandbox_id,
        hostname=request.hostname,
        dns=list(request.dns),
        storages=_storages(request.storages),
        guest_hook_path=request.guest_hook_path,
        sandbox_pidns=request.sandbox_pidns,
        kernel_modules=[(m.name, list(m.parameters)) for m in request.kernel_modules],
        guest_userns=request.guest_userns,
    )
    return empty_pb2.Empty()


@rpc(SERVICE, "DestroySandbox")
def destroy_sandbox(services: Services, request: agent_pb2.DestroySandboxRequest, ctx: CallContext) -> empty_pb2.Empty:
    log.info("DestroySandbox")
    services.sandbox.destroy_sandbox()
    return empty_pb2.Empty()


@rpc(SERVICE, "CreateContainer")
def create_container(
    services: Services, request: agent_pb2.CreateContainerRequest, ctx: CallContext
) -> empty_pb2.Empty:
    log.info("CreateContainer %s", request.container_id)
    services.containers.create_container(
        request.container_id,
        spec_to_dict(request.OCI),
        storages=_storages(request.storages),
        sandbox_pidns=request.sandbox_pidns,
        stdio_ports=_stdio_ports(request),
        deadline=ctx.deadline,
        shared_mounts=[
            SharedMount(m.name, m.src_ctr, m.src_path, m.dst_ctr, m.dst_path) for m in request.shared_mounts
        ],
        devices=[Device(d.id, d.type, d.vm_path, d.container_path, list(d.options)) for d in request.devices],
    )
    return empty_pb2.Empty()


@rpc(SERVICE, "StartContainer")
def start_container(services: Services, request: agent_pb2.StartContainerRequest, ctx: CallContext) -> empty_pb2.Empty:
    services.containers.start_container(request.container_id)
    return empty_pb2.Empty()


@rpc(SERVICE, "RemoveContainer")
def remove_container(
    services: Services, request: agent_pb2.RemoveContainerRequest, ctx: CallContext
) -> empty_pb2.Empty:
    log.info("RemoveContainer %s (timeout %d s)", request.container_id, request.timeout)
    services.containers.remove_container(request.container_id, float(request.timeout))
    return empty_pb2.Empty()


@rpc(SERVICE, "ExecProcess")
def exec_process(services: Services, request: agent_pb2.ExecProcessRequest, ctx: CallContext) -> empty_pb2.Empty:
    log.info("ExecProcess %s/%s", request.container_id, request.exec_id)
    services.containers.exec_process(
        request.container_id,
        request.exec_id,
        process_to_dict(request.process),
        stdio_ports=_stdio_ports(request),
        deadline=ctx.deadline,
    )
    return empty_pb2.Empty()


def _stdio_ports(request: agent_pb2.CreateContainerRequest | agent_pb2.ExecProcessRequest) -> dict[str, int]:
    """The passfd streams' host ports the request names (0: that stream is a pipe)."""
    return {"stdin": request.stdin_port, "stdout": request.stdout_port, "stderr": request.stderr_port}


@rpc(SERVICE, "SignalProcess")
def signal_process(services: Services, request: agent_pb2.SignalProcessRequest, ctx: CallContext) -> empty_pb2.Empty:
    services.containers.signal_process(request.container_id, request.exec_id, request.signal)
    return empty_pb2.Empty()


@rpc(SERVICE, "WaitProcess")
def wait_process(
    services: Services, request: agent_pb2.WaitProcessRequest, ctx: CallContext
) -> agent_pb2.WaitProcessResponse:
    status = services.containers.wait_process(request.container_id, request.exec_id, ctx.deadline)
    return agent_pb2.WaitProcessResponse(status=status)


@rpc(SERVICE, "WriteStdin")
def write_stdin(
    services: Services, request: agent_pb2.WriteStreamRequest, ctx: CallContext
) -> agent_pb2.WriteStreamResponse:
    written = services.containers.write_stdin(request.container_id, request.exec_id, request.data, ctx.deadline)
    return agent_pb2.WriteStreamResponse(len=written)


@rpc(SERVICE, "ReadStdout")
def read_stdout(
    services: Services, request: agent_pb2.ReadStreamRequest, ctx: CallContext
) -> agent_pb2.ReadStreamResponse:
    data = services.containers.read_stream(
        request.container_id, request.exec_id, request.len, stderr=False, deadline=ctx.deadline
    )
    return agent_pb2.ReadStreamResponse(data=data)


@rpc(SERVICE, "ReadStderr")
def read_stderr(
    services: Services, request: agent_pb2.ReadStreamRequest, ctx: CallContext
) -> agent_pb2.ReadStreamResponse:
    data = services.containers.read_stream(
        request.container_id, request.exec_id, request.len, stderr=True, deadline=ctx.deadline
    )
    return agent_pb2.ReadStreamResponse(data=data)


@rpc(SERVICE, "CloseStdin")
def close_stdin(services: Services, request: agent_pb2.CloseStdinRequest, ctx: CallContext) -> empty_pb2.Empty:
    services.containers.close_stdin(request.container_id, request.exec_id)
    return empty_pb2.Empty()


@rpc(SERVICE, "TtyWinResize")
def tty_win_resize(services: Services, request: agent_pb2.TtyWinResizeRequest, ctx: CallContext) -> empty_pb2.Empty:
    services.containers.tty_win_resize(request.container_id, request.exec_id, request.row, request.column)
    return empty_pb2.Empty()


@rpc(SERVICE, "UpdateContainer")
def update_container(
    services: Services, request: agent_pb2.UpdateContainerRequest, ctx: CallContext
) -> empty_pb2.Empty:
    services.containers.update_container(request.container_id, resources_to_dict(request.resources))
    return empty_pb2.Empty()


@rpc(SERVICE, "StatsContainer")
def stats_container(
    services: Services, request: agent_pb2.StatsContainerRequest, ctx: CallContext
) -> agent_pb2.StatsContainerResponse:
    stats = services.containers.stats_container(request.container_id)
    response = agent_pb2.StatsContainerResponse()
    data = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) and not isinstance(stats, type) else stats
    fill_message(response.cgroup_stats, data)
    return response


@rpc(SERVICE, "PauseContainer")
def pause_container(services: Services, request: agent_pb2.PauseContainerRequest, ctx: CallContext) -> empty_pb2.Empty:
    services.containers.pause_container(request.container_id)
    return empty_pb2.Empty()


@rpc(SERVICE, "ResumeContainer")
def resume_container(
    services: Services, request: agent_pb2.ResumeContainerRequest, ctx: CallContext
) -> empty_pb2.Empty:
    services.containers.resume_container(request.container_id)
    return empty_pb2.Empty()


@rpc(SERVICE, "GetOOMEvent")
def get_oom_event(services: Services, request: agent_pb2.GetOOMEventRequest, ctx: CallContext) -> agent_pb2.OOMEvent:
    return agent_pb2.OOMEvent(container_id=services.containers.get_oom_event(ctx.deadline))
