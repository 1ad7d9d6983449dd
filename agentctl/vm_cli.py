"""agentctl commands that drive a booted guest (boot, stop, hotplug, console, logs).

``register(group)`` adds them to agentctl's click group. A guest is found by ``--name`` under the
run directory (``/run/pykata/vm/NAME``), where ``boot`` leaves its state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import termios
import time
import tty
from pathlib import Path
from types import FrameType
from typing import Any

import click

from agent.console import resize_message
from agent.errors import InvalidArgument
from agentctl import hvsock, vm
from agentctl.qmp import QMPClient, QMPError, hotplug_blk, hotplug_cpus, hotplug_memory, parse_size

DEFAULT_CONSOLE_PORT = 1026
DEFAULT_LOG_PORT = 1025
DETACH_KEY = b"\x1d"  # Ctrl-]

name_option = click.option("--name", default="default", show_default=True, help="which booted guest")
run_dir_option = click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=vm.DEFAULT_RUN_DIR,
    show_default=True,
    help="where guests keep their sockets and state",
)


def _state(name: str, run_dir: Path) -> vm.GuestState:
    try:
        return vm.GuestState.load(vm.run_dir_for(name, run_dir))
    except vm.BootError as exc:
        raise click.ClickException(str(exc)) from None


def _extra(state: vm.GuestState) -> dict[str, Any]:
    path = Path(state.run_dir) / "ports.json"
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    except (FileNotFoundError, ValueError):
        return {}


@click.command()
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="guest kernel")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="initrd")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="root disk image")
@click.option("--cpus", type=int, default=1, show_default=True)
@click.option("--max-cpus", type=int, default=4, show_default=True)
@click.option("--memory", default="512M", show_default=True)
@click.option("--max-memory", default="2G", show_default=True)
@click.option("--share", type=click.Path(exists=True, file_okay=False, path_type=Path), help="9p share (kataShared)")
@click.option("--cmdline", default="", help="extra kernel command line")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True)
@click.option("--debug-console/--no-debug-console", default=False, help="agent.debug_console on port 1026")
@click.option("--log-port", type=int, default=DEFAULT_LOG_PORT, show_default=True, help="agent.log_vport (0: off)")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="seconds to wait for the agent")
@click.option("--foreground", is_flag=True, help="stay attached; Ctrl-C ends the guest")
@click.option(
    "--netns",
    default=None,
    help="network namespace holding eth0: the guest NIC is wired to it through a tap (tap0_kata), Kata-style",
)
@click.option(
    "--pcie-ports", type=click.IntRange(0, 16), default=2, show_default=True, help="free slots for hotplug blk"
)
@name_option
@run_dir_option
def boot(
    kernel: Path | None,
    initrd: Path | None,
    image: Path | None,
    cpus: int,
    max_cpus: int,
    memory: str,
    max_memory: str,
    share: Path | None,
    cmdline: str,
    accel: str,
    debug_console: bool,
    log_port: int,
    timeout: float,
    foreground: bool,
    netns: str | None,
    pcie_ports: int,
    name: str,
    run_dir: Path,
) -> None:
    """Boot a guest under QEMU and print its hybrid vsock address (for --addr)."""
    if kernel is None and image is None:
        raise click.UsageError("give --kernel with --initrd (and/or --image), or a bootable --image")
    if kernel is not None and initrd is None and image is None:
        raise click.UsageError("--kernel needs --initrd or --image")
    words = [cmdline] if cmdline else []
    if debug_console:
        words.append(f"agent.debug_console agent.debug_console_vport={DEFAULT_CONSOLE_PORT}")
    if log_port:
        words.append(f"agent.log_vport={log_port}")
    target = vm.run_dir_for(name, run_dir)
    with contextlib.suppress(vm.BootError):
        old = vm.GuestState.load(target)
        if vm.is_running(old):
            raise click.ClickException(f"guest {name!r} runs already (QEMU pid {old.qemu_pid}); agentctl stop first")
    config = vm.GuestConfig(
        kernel=kernel,
        initrd=initrd,
        image=image,
        share=share.resolve() if share else None,
        cmdline=" ".join(words),
        cpus=cpus,
        max_cpus=max_cpus,
        memory=memory,
        max_memory=max_memory,
        accel=accel,
        name=name,
        run_dir=target,
        ready_timeout=timeout,
        netns=netns,
        pcie_root_ports=pcie_ports,
    )
    guest = vm.Guest(config, lambda line: click.echo(line, err=True))
    try:
        guest.start()
    except vm.BootError as exc:
        guest.kill()
        raise click.ClickException(str(exc)) from None
    except BaseException:
        guest.kill()
        raise
    state = guest.detach()
    (target / "ports.json").write_text(
        json.dumps({"console": DEFAULT_CONSOLE_PORT if debug_console else 0, "log": log_port}) + "\n"
    )
    if guest.tap is not None:
        click.echo(
            f"guest NIC in netns {guest.tap.netns}: mac {guest.tap.mac}, "
            f"addresses to give it (UpdateInterface): {', '.join(guest.tap.addresses) or 'none'}",
            err=True,
        )
    click.echo(state.address)
    if foreground:
        try:
            assert guest.qemu is not None
            guest.qemu.wait()
        except KeyboardInterrupt:
            pass
        vm.stop(state)


@click.command()
@name_option
@run_dir_option
def stop(name: str, run_dir: Path) -> None:
    """End a booted guest (QEMU and its vsock back-end) and remove its run directory."""
    state = _state(name, run_dir)
    vm.stop(state)
    click.echo(f"stopped {name}", err=True)


@click.group()
def hotplug() -> None:
    """Hot-add CPUs, memory (the agent's OnlineCPUMem brings them online) or disks through QMP."""


@hotplug.command("cpu")
@click.argument("count", type=click.IntRange(1, 256))
@name_option
@run_dir_option
def hotplug_cpu(count: int, name: str, run_dir: Path) -> None:
    """Add COUNT CPUs into free slots."""
    state = _state(name, run_dir)
    try:
        with QMPClient(state.qmp) as qmp:
            for device in hotplug_cpus(qmp, count):
                click.echo(device)
    except (QMPError, OSError) as exc:
        raise click.ClickException(f"CPU hotplug failed: {exc}") from None


@hotplug.command("mem")
@click.argument("size")
@name_option
@run_dir_option
def hotplug_mem(size: str, name: str, run_dir: Path) -> None:
    """Add a memory DIMM of SIZE (e.g. 256M, 1G)."""
    state = _state(name, run_dir)
    try:
        amount = parse_size(size)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        with QMPClient(state.qmp) as qmp:
            click.echo(hotplug_memory(qmp, amount))
    except (QMPError, OSError) as exc:
        raise click.ClickException(f"memory hotplug failed: {exc}") from None


@hotplug.command("blk")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--read-only", is_flag=True, help="the guest may not write to the disk")
@name_option
@run_dir_option
def hotplug_blk_command(image: Path, read_only: bool, name: str, run_dir: Path) -> None:
    """Plug the raw disk IMAGE in as a virtio-blk device; print its PCI path ("bus/slot", the source of
    a blk storage) and the QEMU device id."""
    state = _state(name, run_dir)
    try:
        with QMPClient(state.qmp) as qmp:
            disk = hotplug_blk(qmp, image, read_only)
    except (QMPError, OSError) as exc:
        raise click.ClickException(f"disk hotplug failed: {exc}") from None
    click.echo(f"{disk.pci_path} {disk.device_id}")


def _window_size(fd: int) -> tuple[int, int]:
    size = os.get_terminal_size(fd)
    return size.lines, size.columns


def attach(sock: socket.socket, stdin: int = 0, stdout: int = 1) -> None:
    """Join a terminal to a console stream: raw mode, resize messages on SIGWINCH, Ctrl-] detaches."""
    tty_fd = stdin
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    wake_r, wake_w = os.pipe()
    previous: Any = None

    def on_winch(signum: int, frame: FrameType | None) -> None:
        os.write(wake_w, b"w")

    try:
        if is_tty:
            tty.setraw(stdin)
            sock.sendall(resize_message(*_window_size(stdin)))
            previous = signal.signal(signal.SIGWINCH, on_winch)
        while True:
            watch = [sock.fileno(), wake_r] + ([stdin] if stdin >= 0 else [])
            readable, _, _ = select.select(watch, [], [])
            if wake_r in readable:
                os.read(wake_r, 64)
                sock.sendall(resize_message(*_window_size(stdin)))
            if stdin >= 0 and stdin in readable:
                data = os.read(stdin, 4096)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    stdin = -1
                    continue
                elif is_tty and DETACH_KEY in data:
                    sock.sendall(data.split(DETACH_KEY)[0])
                    return
                else:
                    sock.sendall(data)
            if sock.fileno() in readable:
                data = sock.recv(65536)
                if not data:
                    return
                os.write(stdout, data)
    finally:
        if saved is not None:
            termios.tcsetattr(tty_fd, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        os.close(wake_r)
        os.close(wake_w)


@click.command()
@click.option("--port", type=int, default=0, help=f"debug console vsock port (default {DEFAULT_CONSOLE_PORT})")
@name_option
@run_dir_option
def console(port: int, name: str, run_dir: Path) -> None:
    """Attach to the agent's debug console (a shell on a pty). Ctrl-] detaches."""
    state = _state(name, run_dir)
    port = port or _extra(state).get("console") or DEFAULT_CONSOLE_PORT
    try:
        sock = hvsock.connect(state.uds, port)
    except OSError as exc:
        raise click.ClickException(
            f"no debug console on vsock port {port}: {exc} (boot with --debug-console)"
        ) from None
    with sock:
        if os.isatty(0):
            click.echo("connected; Ctrl-] detaches\r", err=True)
        attach(sock)


def format_log_line(line: str) -> str:
    """A JSON log line as "time level source: msg key=value ..."; other lines unchanged."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    head = f"{record.pop('time', '')} {record.pop('level', '').upper():7} {record.pop('source', '')}:"
    message = record.pop("msg", "")
    rest = " ".join(f"{k}={v}" for k, v in record.items())
    return f"{head} {message} {rest}".rstrip()


@click.command()
@click.option("--port", type=int, default=0, help="the agent's log vport (default: what boot set)")
@click.option("--json", "raw", is_flag=True, help="print the JSON lines as they come")
@click.option("--console", "from_console", is_flag=True, help="print the serial console log instead")
@click.option("-f", "--follow", is_flag=True, help="with --console: keep printing new lines")
@name_option
@run_dir_option
def logs(port: int, raw: bool, from_console: bool, follow: bool, name: str, run_dir: Path) -> None:
    """Follow the agent's log lines (it connects to the host on its log vport)."""
    state = _state(name, run_dir)
    if from_console:
        _tail(Path(state.console_log), follow, raw)
        return
    port = port or _extra(state).get("log") or DEFAULT_LOG_PORT
    path = f"{state.uds}_{port}"
    signal.signal(signal.SIGTERM, _interrupt)  # end as on Ctrl-C: remove the listener
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener.bind(path)
        listener.listen(4)
        click.echo(f"waiting for the agent on vsock port {port} ({path}); Ctrl-C ends", err=True)
        while True:
            conn, _ = listener.accept()
            with conn, conn.makefile("r", encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    click.echo(line.rstrip("\n") if raw else format_log_line(line.rstrip("\n")))
            click.echo("agent closed the log stream; waiting for it again", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _tail(path: Path, follow: bool, raw: bool) -> None:
    with open(path, errors="replace") as console_log:
        while True:
            line = console_log.readline()
            if line:
                click.echo(line.rstrip("\n") if raw else format_log_line(line.rstrip("\r\n")))
                continue
            if not follow:
                return
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                return


def register(group: click.Group) -> None:
    """Add the VM commands to ``group``."""
    for command in (boot, stop, hotplug, console, logs):
        group.add_command(command)


if __name__ == "__main__":  # python -m agentctl.vm_cli: the VM commands on their own
    cli = click.Group(help="pykata VM commands")
    register(cli)
    cli(sys.argv[1:])
