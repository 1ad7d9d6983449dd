"""agentctl: talk to a pykata (or any Kata) agent from the host.

    agentctl --addr unix:///tmp/a.sock [--proto grpc|ttrpc] [--timeout S] check | version |
             guest-details | metrics | call METHOD --json '{...}'

Output is JSON with the proto's field names. A failed call prints "ERROR <CODE>: message" on stderr
and exits non-zero.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from google.protobuf.json_format import ParseError
from google.protobuf.message import Message

from agent.errors import InvalidArgument

EXIT_CALL_FAILED = 1
EXIT_USAGE = 2


class Session:
    def __init__(self, addr: str | None, proto: str, timeout: float) -> None:
        self.addr = addr
        self.proto = proto
        self.timeout = timeout

    def call(self, method: str, request: Message | None = None) -> Message:
        from agentctl.client import connect

        if not self.addr:
            raise click.UsageError("this command talks to an agent: give --addr (or set AGENTCTL_ADDR)")
        with connect(self.addr, self.proto, self.timeout) as client:
            return client.call(method, request)


def _print(message: Message) -> None:
    from agent.rpc.convert import to_dict

    click.echo(json.dumps(to_dict(message), indent=2, sort_keys=True))


def _run(ctx: click.Context, action: Callable[[Session], Any]) -> None:
    from agentctl.client import AgentCallError

    session: Session = ctx.obj
    try:
        action(session)
    except AgentCallError as exc:
        click.echo(f"ERROR {exc.code_name}: {exc.message}", err=True)
        ctx.exit(EXIT_CALL_FAILED)
    except InvalidArgument as exc:
        click.echo(f"ERROR INVALID_ARGUMENT: {exc}", err=True)
        ctx.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--addr",
    envvar="AGENTCTL_ADDR",
    help="agent address: unix://PATH, vsock://CID:PORT, tcp://HOST:PORT or hvsock://UDS_PATH:PORT "
    "(needed by the agent commands, not by boot/stop)",
)
@click.option("--proto", type=click.Choice(["ttrpc", "grpc"]), default="ttrpc", show_default=True)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds per call")
@click.pass_context
def main_group(ctx: click.Context, addr: str | None, proto: str, timeout: float) -> None:
    """Talk to a Kata-compatible guest agent."""
    ctx.obj = Session(addr, proto, timeout)


@main_group.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """grpc.Health/Check: is the agent serving?"""
    _run(ctx, lambda s: _print(s.call("grpc.Health/Check")))


@main_group.command()
@click.pass_context
def version(ctx: click.Context) -> None:
    """grpc.Health/Version: agent and API versions."""
    _run(ctx, lambda s: _print(s.call("grpc.Health/Version")))


@main_group.command("guest-details")
@click.pass_context
def guest_details(ctx: click.Context) -> None:
    """GetGuestDetails: memory block size, hotplug probe, agent details."""
    from agent.rpc.pb import agent_pb2

    request = agent_pb2.GuestDetailsRequest(mem_block_size=True, mem_hotplug_probe=True)
    _run(ctx, lambda s: _print(s.call("grpc.AgentService/GetGuestDetails", request)))


@main_group.command()
@click.option("--raw", is_flag=True, help="print the Prometheus text itself instead of JSON")
@click.pass_context
def metrics(ctx: click.Context, raw: bool) -> None:
    """GetMetrics: the agent's Prometheus metrics."""

    def action(session: Session) -> None:
        response = session.call("grpc.AgentService/GetMetrics")
        if raw:
            click.echo(response.metrics, nl=False)  # type: ignore[attr-defined]
        else:
            _print(response)

    _run(ctx, action)


@main_group.command()
@click.argument("method")
@click.option("--json", "json_text", default="{}", show_default=True, help="request message as JSON")
@click.pass_context
def call(ctx: click.Context, method: str, json_text: str) -> None:
    """Call METHOD ("CreateContainer" or "grpc.AgentService/CreateContainer") with a JSON request."""
    from agent.rpc.convert import from_json, resolve_method

    try:
        info = resolve_method(method)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="METHOD") from None
    try:
        request = from_json(json_text, info.request_class)
    except ParseError as exc:
        raise click.BadParameter(f"not a valid {info.request_class.__name__}: {exc}", param_hint="--json") from None
    _run(ctx, lambda s: _print(s.call(info.full_name, request)))


def _register_vm_commands() -> None:
    from agentctl import vm_cli

    vm_cli.register(main_group)


_register_vm_commands()


def main() -> None:
    main_group(prog_name="agentctl")
    sys.exit(0)


if __name__ == "__main__":
    main()
