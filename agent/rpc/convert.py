"""Generic protobuf helpers shared by the servicer and the host client.

The method table comes from the generated descriptors, so a handler only names its method and the
request and response classes follow from the proto files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from google.protobuf import message_factory
from google.protobuf.message import Message

from agent.rpc.pb import agent_pb2, health_pb2

# The services the agent serves, by their full proto names.
SERVICES = ("grpc.AgentService", "grpc.Health")


@dataclass(frozen=True)
class MethodInfo:
    service: str  # "grpc.AgentService"
    name: str  # "CreateContainer"
    request_class: type[Message]
    response_class: type[Message]

    @property
    def full_name(self) -> str:
        return f"{self.service}/{self.name}"


@cache
def method_table() -> dict[str, MethodInfo]:
    """Every method of every served service: "grpc.AgentService/CreateContainer" -> MethodInfo."""
    table: dict[str, MethodInfo] = {}
    for file in (agent_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            for method in service.methods:
                info = MethodInfo(
                    service.full_name,
                    method.name,
                    message_factory.GetMessageClass(method.input_type),
                    message_factory.GetMessageClass(method.output_type),
                )
                table[info.full_name] = info
    return table


def resolve_method(name: str) -> MethodInfo:
    """Accept "CreateContainer", "grpc.AgentService/CreateContainer" or "/grpc.Health/Check"."""
    table = method_table()
    text = name.strip("/")
    if "/" in text:
        if text in table:
            return table[text]
    else:
        for service in SERVICES:
            if f"{service}/{text}" in table:
                return table[f"{service}/{text}"]
    raise KeyError(f"unknown method {name!r}; expected e.g. CreateContainer or grpc.AgentService/CreateContainer")


def to_dict(message: Message) -> dict:
    """A message as JSON-ready data with the proto's own field names."""
    from google.protobuf import json_format  # host-side tools only; the agent never loads it

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def from_json(text: str, message_class: type[Message]) -> Message:
    from google.protobuf import json_format

    return json_format.Parse(text, message_class())
