"""pykata-agent: build the objects and serve. The only place that exits the process.

When the agent is PID 1 (the initrd's /init) it runs agent.init.boot() before any thread starts, and
it never lets an exception end the process: it logs it and powers the guest off instead, so the kernel
does not panic. Under systemd (the rootfs image) the same entry point skips the init steps.

Start-up imports only what serving needs: in a small guest under TCG every module costs milliseconds
before the first Check. argparse is imported only when there are arguments to parse (the initrd's
/init passes none).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from agent import __version__
from agent.config import AgentConfig, build_config, config_file_from_cmdline, setting
from agent.errors import AgentError
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    import argparse

    from agent.services import Services

log = logging.getLogger("agent")


class Options:
    """The command line's options; None for each one not given."""

    def __init__(
        self,
        server_addr: str | None = None,
        config: str | None = None,
        log: str | None = None,
        devmode: bool | None = None,
    ) -> None:
        self.server_addr = server_addr
        self.config = config
        self.log = log
        self.devmode = devmode


def parse_options(argv: Sequence[str]) -> Options:
    """The options in ``argv`` (without the program name); argparse handles --help and errors."""
    if not argv:
        return Options()
    args = _parser().parse_args(argv)
    return Options(args.server_addr, args.config, args.log, args.devmode)


def _parser() -> argparse.ArgumentParser:
    import argparse

    from agent.config import help_table

    parser = argparse.ArgumentParser(
        prog="pykata-agent",
        description="pykata guest agent: serves Kata's agent API (gRPC and ttrpc on one port).",
        epilog="Settings (kernel command line agent.NAME=VALUE, TOML file keys, defaults shown):\n" + help_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server-addr", help="listen address (overrides agent.server_addr)")
    parser.add_argument("--config", help="TOML config file (overrides agent.config_file)")
    parser.add_argument("--log", help="log level (overrides agent.log)")
    parser.add_argument("--devmode", action="store_true", default=None, help="developer mode (agent.devmode)")
    parser.add_argument("--version", action="version", version=f"pykata-agent {__version__}")
    return parser


def load_config(args: Options, paths: HostPaths) -> AgentConfig:
    """Read /proc/cmdline and the TOML file, then let agent.config combine them with the options."""
    cmdline_file = Path(paths.cmdline)
    cmdline = cmdline_file.read_text() if cmdline_file.exists() else ""
    config_file = args.config or config_file_from_cmdline(cmdline)
    toml_text = None
    if config_file:
        try:
            toml_text = Path(config_file).read_text()
        except OSError as exc:
            raise AgentError(f"cannot read config file {config_file}: {exc.strerror}") from exc
    raw = {"server_addr": args.server_addr, "log": args.log, "config_file": args.config}
    if args.devmode:
        raw["devmode"] = "true"
    overrides: dict[str, Any] = {}
    for name, text in raw.items():
        if text is None:
            continue
        try:  # option values pass through the same parsers as every other source
            overrides[name] = setting(name).parse(text)
        except (ValueError, AgentError) as exc:
            raise AgentError(f"--{name.replace('_', '-')}: invalid value {text!r}: {exc}") from exc
    return build_config(cmdline, toml_text, os.environ, overrides)


def serve(config: AgentConfig, paths: HostPaths, pid1: bool) -> str:
    """Serve until SIGTERM or SIGINT; returns the reason it stopped."""
    from agent.address import parse_address
    from agent.rpc.server import AgentServer
    from agent.rpc.servicer import Servicer
    from agent.services import Services

    stop = threading.Event()
    reason = ["stopped"]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        reason[0] = f"received {signal.Signals(signum).name}"
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Threads may start from here on (boot is done).
    log_stream = None
    if config.log_vport:
        from agent.logstream import install_log_stream

        log_stream = install_log_stream(config)
    console = None
    if config.console_vport:
        from agent.console import start_console

        console = start_console(config, paths)

    reaper = None
    if pid1:
        from agent import init

        reaper = init.Reaper(paths)
        reaper.start()

    services = Services(config, paths, init_daemon=pid1)
    if config.passfd_listener_port:
        from agent.services.passfd import PassfdStreams

        try:
            services.passfd = PassfdStreams.listen_vsock(config.passfd_listener_port).start()
            log.info("passfd streams listening", extra={"vport": config.passfd_listener_port})
        except OSError as exc:
            log.error("passfd streams: cannot listen on vsock port %d: %s", config.passfd_listener_port, exc)
    server = AgentServer(
        parse_address(config.server_addr), Servicer(services, background_load=True), run_dir=paths.agent_run
    )
    server.bind()
    server.start()
    if config.mem_agent_enable:
        # after the server: the first Check does not wait for the mem-agent's imports
        threading.Thread(target=_start_mem_agent, args=(services,), name="mem-agent-start", daemon=True).start()
    log.info(
        "agent ready",
        extra={"address": server.bound, "version": __version__, "pid": os.getpid(), "uptime": _uptime(paths)},
    )
    try:
        while not stop.wait(0.2):
            sandbox = services.built().get("sandbox")
            if sandbox is not None and sandbox.shutdown_requested.is_set():
                reason[0] = "the sandbox was destroyed"
                break
    finally:
        log.info("stopping: %s", reason[0])
        server.shutdown()
        close_services(services)
        if services.passfd is not None:
            services.passfd.close()
        if console is not None:
            console.close()
        if log_stream is not None:
            log_stream.drain(2.0)  # the host sees the last lines before the guest goes
        if reaper is not None:
            reaper.stop()
    return reason[0]


def _uptime(paths: HostPaths) -> float | None:
    """Seconds since the kernel started (the boot benchmark compares it with a busybox /init's)."""
    try:
        return float((Path(paths.proc) / "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _start_mem_agent(services: Services) -> None:
    try:
        services.memagent.start()
    except Exception:  # the agent serves on without it
        log.exception("starting the mem-agent failed")


def close_services(services: Services) -> None:
    """Close every service built so far, the last built first (containers stop before storage)."""
    for name, service in reversed(list(services.built().items())):
        close = getattr(service, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception:
            log.exception("closing the %s service failed", name)


def _power_off(reason: str, paths: HostPaths) -> NoReturn:
    from agent import init

    init.power_off(reason, paths)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parse_options(sys.argv[1:] if argv is None else list(argv))
    paths = HostPaths()
    pid1 = os.getpid() == 1
    from agent import log as agent_log

    agent_log.setup(logging.INFO)
    try:
        config = load_config(args, paths)
    except AgentError as exc:
        log.critical("bad configuration: %s", exc)
        if pid1:
            # A bad kernel command line must not stop the guest from serving: fall back to defaults.
            config = AgentConfig()
        else:
            sys.exit(2)
    agent_log.setup(config.log_level)
    for option in config.ignored:
        log.warning("ignoring unknown option %s", option)
    try:
        if pid1:
            from agent import init

            init.boot(config, paths)  # before any thread starts
        reason = serve(config, paths, pid1)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not pid1:
            raise
        log.critical("agent failed: %s", exc, exc_info=exc)
        if pid1:
            _power_off(f"agent failed: {type(exc).__name__}: {exc}", paths)
        _exit(1)
    if pid1:
        _power_off(reason, paths)
    log.info("agent stopped")
    _exit(0)


def _exit(status: int) -> NoReturn:
    """End the process now. A normal exit would join the RPC pool's threads, and a call still
    blocked in a long poll (WaitProcess, ReadStdout) would hold the agent up indefinitely."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
