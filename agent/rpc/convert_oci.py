"""Kata's ``grpc.Spec`` (protos/oci.proto, Go-style capitalised field names) to and from the OCI
runtime-spec dict that the engine takes (config.json's own names).

The walk is generic over the message descriptors: a field's JSON name is its proto name with the
first letter lowered, except the acronyms in ``JSON_NAMES``. proto3 cannot tell an unset number
from 0, so inside ``linux.resources`` a 0 means "not set" (as Kata's agent reads it) and is left
out; -1 for a device rule's major or minor means "any" (OCI's missing value).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agent.rpc.pb import oci_pb2

JSON_NAMES = {
    "Version": "ociVersion",
    "UID": "uid",
    "GID": "gid",
    "UIDMappings": "uidMappings",
    "GIDMappings": "gidMappings",
    "HostID": "hostID",
    "ContainerID": "containerID",
    "OOMScoreAdj": "oomScoreAdj",
    "CPU": "cpu",
    "BlockIO": "blockIO",
    "KernelTCP": "kernelTCP",
    "DisableOOMKiller": "disableOOMKiller",
    "ClassID": "classID",
    "ThrottleReadIOPSDevice": "throttleReadIOPSDevice",
    "ThrottleWriteIOPSDevice": "throttleWriteIOPSDevice",
    "L3CacheSchema": "l3CacheSchema",
    "IntelRdt": "intelRdt",
    "errnoret": "errnoRet",
}
_PROTO_NAMES = {v: k for k, v in JSON_NAMES.items()}
# messages whose zero numbers mean "unset"
_ZERO_IS_UNSET = {"LinuxMemory", "LinuxCPU", "LinuxPids", "LinuxBlockIO", "LinuxHugepageLimit"}
_SKIP = {"Solaris", "Windows"}


def json_name(proto_name: str) -> str:
    if proto_name in JSON_NAMES:
        return JSON_NAMES[proto_name]
    return proto_name[:1].lower() + proto_name[1:]


def _map_value(field: Any) -> Any:
    """The value field of a map field's entry message."""
    return field.message_type.fields_by_name["value"]


def _is_map(field: Any) -> bool:
    """A map<K, V> field: a repeated synthetic "...Entry" message with exactly key and value.
    (Asking the options for map_entry would import descriptor_pb2, a large module, at run time.)"""
    entry = field.message_type
    return (
        entry is not None
        and field.is_repeated
        and entry.name.endswith("Entry")
        and entry.containing_type is field.containing_type
        and set(entry.fields_by_name) == {"key", "value"}
    )


# What message_to_dict needs of each field, worked out once per message type:
# (proto name, JSON name, kind, the map value's type is a message); kinds below.
_SCALAR, _MESSAGE, _REPEATED, _REPEATED_MESSAGE, _MAP, _ONEOF = range(6)
_layouts: dict[str, tuple[bool, bool, tuple[tuple[str, str, int, bool], ...]]] = {}


def _layout(descriptor: Any) -> tuple[bool, bool, tuple[tuple[str, str, int, bool], ...]]:
    """(zero means unset, is LinuxDeviceCgroup, fields) for a message type."""
    known = _layouts.get(descriptor.full_name)
    if known is not None:
        return known
    fields = []
    for field in descriptor.fields:
        if field.name in _SKIP:
            continue
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        map_of_messages = False
        if _is_map(field):
            kind = _MAP
            map_of_messages = _map_value(field).type == FieldDescriptor.TYPE_MESSAGE
        elif field.is_repeated:
            kind = _REPEATED_MESSAGE if is_message else _REPEATED
        elif is_message:
            kind = _MESSAGE
        elif field.containing_oneof is not None:
            kind = _ONEOF
        else:
            kind = _SCALAR
        fields.append((field.name, json_name(field.name), kind, map_of_messages))
    layout = (descriptor.name in _ZERO_IS_UNSET, descriptor.name == "LinuxDeviceCgroup", tuple(fields))
    _layouts[descriptor.full_name] = layout
    return layout


def message_to_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    zero_unset, device_rule, fields = _layout(message.DESCRIPTOR)
    for name, key, kind, map_of_messages in fields:
        value = getattr(message, name)
        if kind == _SCALAR:
            if zero_unset and value in (0, ""):
                continue
            if device_rule and value == -1 and name in ("Major", "Minor"):
                continue  # -1: any
            out[key] = value
        elif kind == _MESSAGE:
            if message.HasField(name):
                out[key] = message_to_dict(value)
        elif kind == _REPEATED:
            out[key] = list(value)
        elif kind == _REPEATED_MESSAGE:
            out[key] = [message_to_dict(item) for item in value]
        elif kind == _MAP:
            out[key] = {k: message_to_dict(v) for k, v in value.items()} if map_of_messages else dict(value)
        elif message.HasField(name):  # a oneof member
            out[key] = value
    return out


def spec_to_dict(spec: oci_pb2.Spec) -> dict[str, Any]:
    """The OCI runtime-spec dict for a Kata ``grpc.Spec``."""
    return message_to_dict(spec)


def resources_to_dict(resources: oci_pb2.LinuxResources) -> dict[str, Any]:
    return message_to_dict(resources)


def process_to_dict(process: oci_pb2.Process) -> dict[str, Any]:
    return message_to_dict(process)


def dict_to_message(data: dict[str, Any], message: Message) -> Message:
    """Fill ``message`` from an OCI dict (the inverse, for host tools and tests)."""
    descriptor = message.DESCRIPTOR
    if descriptor.name == "LinuxDeviceCgroup":
        # OCI leaves major/minor out for "any"; on the wire that is -1 (see _unset)
        data = {"major": -1, "minor": -1, **data}
    for key, value in data.items():
        if value is None:
            continue
        # Most of Kata's names are the JSON name capitalised; Mount's are the JSON names as they are.
        proto_name = _PROTO_NAMES.get(key, key[:1].upper() + key[1:])
        field = descriptor.fields_by_name.get(proto_name) or descriptor.fields_by_name.get(key)
        if field is None:
            continue
        proto_name = field.name
        if _is_map(field):
            target = getattr(message, proto_name)
            value_field = _map_value(field)
            for k, v in value.items():
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    dict_to_message(v, target[k])
                else:
                    target[k] = v
        elif field.is_repeated:
            target = getattr(message, proto_name)
            for item in value:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    dict_to_message(item, target.add())
                else:
                    target.append(item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            dict_to_message(value, getattr(message, proto_name))
            getattr(message, proto_name).SetInParent()
        else:
            setattr(message, proto_name, value)
    return message


def dict_to_spec(data: dict[str, Any]) -> oci_pb2.Spec:
    spec = oci_pb2.Spec()
    dict_to_message(data, spec)
    return spec
