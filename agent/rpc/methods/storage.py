"""RPC handlers: storage volumes. ``storage_from_pb`` is also what the container handlers use."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2

from agent.rpc.pb import agent_pb2, csi_pb2, types_pb2
from agent.rpc.registry import CallContext, rpc
from agent.storage.types import POLICY_ALWAYS, POLICY_ON_ROOT_MISMATCH, FSGroup, Storage
from agent.storage.volume import Usage

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

AGENT = "grpc.AgentService"

_POLICIES = {types_pb2.Always: POLICY_ALWAYS, types_pb2.OnRootMismatch: POLICY_ON_ROOT_MISMATCH}


def storage_from_pb(pb: agent_pb2.Storage) -> Storage:
    fs_group = None
    if pb.HasField("fs_group"):
        fs_group = FSGroup(pb.fs_group.group_id, _POLICIES.get(pb.fs_group.group_change_policy, POLICY_ALWAYS))
    return Storage(
        driver=pb.driver,
        source=pb.source,
        mount_point=pb.mount_point,
        fstype=pb.fstype,
        options=tuple(pb.options),
        driver_options=tuple(pb.driver_options),
        fs_group=fs_group,
    )


def storage_to_pb(storage: Storage) -> agent_pb2.Storage:
    """The inverse of ``storage_from_pb`` (host tools and tests build requests with it)."""
    pb = agent_pb2.Storage(
        driver=storage.driver,
        source=storage.source,
        mount_point=storage.mount_point,
        fstype=storage.fstype,
        options=list(storage.options),
        driver_options=list(storage.driver_options),
    )
    if storage.fs_group is not None:
        on_mismatch = storage.fs_group.change_policy == POLICY_ON_ROOT_MISMATCH
        policy = types_pb2.OnRootMismatch if on_mismatch else types_pb2.Always
        pb.fs_group.group_id = storage.fs_group.gid
        pb.fs_group.group_change_policy = policy
    return pb


def _usage(usage: Usage, unit: Any) -> csi_pb2.VolumeUsage:
    return csi_pb2.VolumeUsage(available=usage.available, total=usage.total, used=usage.used, unit=unit)


@rpc(AGENT, "UpdateEphemeralMounts")
def update_ephemeral_mounts(
    services: Services, request: agent_pb2.UpdateEphemeralMountsRequest, ctx: CallContext
) -> empty_pb2.Empty:
    services.storage.update_ephemeral_mounts([storage_from_pb(s) for s in request.storages])
    return empty_pb2.Empty()


@rpc(AGENT, "AddSwap")
def add_swap(services: Services, request: agent_pb2.AddSwapRequest, ctx: CallContext) -> empty_pb2.Empty:
    # Kata's PCI path: the slot of each bridge on the way, then the device's, as "02/01"
    pci_path = "/".join(f"{slot:02x}" for slot in request.PCIPath)
    log.info("AddSwap: PCI path %s", pci_path or "(empty)")
    services.storage.add_swap(pci_path)
    return empty_pb2.Empty()


@rpc(AGENT, "GetVolumeStats")
def get_volume_stats(
    services: Services, request: agent_pb2.VolumeStatsRequest, ctx: CallContext
) -> csi_pb2.VolumeStatsResponse:
    stats = services.storage.volume_stats(request.volume_guest_path)
    return csi_pb2.VolumeStatsResponse(
        usage=[_usage(stats.bytes, csi_pb2.VolumeUsage.BYTES), _usage(stats.inodes, csi_pb2.VolumeUsage.INODES)],
        volume_condition=csi_pb2.VolumeCondition(abnormal=False, message=""),
    )


@rpc(AGENT, "ResizeVolume")
def resize_volume(services: Services, request: agent_pb2.ResizeVolumeRequest, ctx: CallContext) -> empty_pb2.Empty:
    services.storage.resize_volume(request.volume_guest_path, request.size)
    return empty_pb2.Empty()


@rpc(AGENT, "RemoveStaleVirtiofsShareMounts")
def remove_stale_virtiofs_share_mounts(
    services: Services, request: agent_pb2.RemoveStaleVirtiofsShareMountsRequest, ctx: CallContext
) -> empty_pb2.Empty:
    services.storage.remove_stale_virtiofs_share_mounts()
    return empty_pb2.Empty()
