"""Boot a guest under QEMU for development and tests.

``boot(kernel=..., initrd=..., image=None, share=DIR, cmdline=...)`` starts the hybrid vsock
back-end (``python -m agentctl.hvsock``), then QEMU with a ``vhost-user-vsock-pci`` device on shared
guest memory, a QMP socket, a 9p share, and the serial console in a log file; it waits until the
guest is ready and returns a ``Guest``. ``Guest`` is a context manager: leaving it ends QEMU and the
back-end by PID. ``agentctl boot`` detaches instead and leaves a state file in the run directory,
which ``agentctl stop`` reads.

KVM is tried first (``-accel kvm -cpu host``); when /dev/kvm is missing, or QEMU fails, or the guest
does not come up in ``kvm_grace`` seconds, the guest is booted again under TCG.

With ``netns``, the guest's virtio-net NIC is wired into that network namespace the way Kata's runtime
does (``agentctl.netns``: a tap next to the namespace's eth0, tc redirects both ways); QEMU gets the tap
as an inherited fd and stays in the host's namespace. The tap is removed when the guest ends.
``pcie_root_ports`` adds empty PCIe root ports, the slots ``agentctl hotplug blk`` plugs disks into.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from agentctl import hvsock, netns
from agentctl.qmp import ROOT_PORT_PREFIX, QMPClient, QMPError

DEFAULT_RUN_DIR = Path("/run/pykata/vm")
DEFAULT_CMDLINE = "console=ttyS0 panic=-1"
AGENT_READY_MARKER = "agent ready"
AGENT_PORT = 1024
# Under /run/pykata: KVM failed on this host, so "auto" goes straight to TCG.
KVM_VERDICT = "kvm-unusable"
QEMU = "qemu-system-x86_64"
UNIX_PATH_MAX = 107

Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BootError(RuntimeError):
    """The guest did not come up; the message names the phase and points at the logs."""


class GuestPoweredOff(BootError):
    """The guest ran and powered itself off before it was ready: the accelerator worked, the guest
    failed (so there is no point in trying another accelerator)."""


@dataclass
class GuestConfig:
    kernel: Path | None = None
    initrd: Path | None = None
    image: Path | None = None  # a raw disk image with the root filesystem (virtio-blk, /dev/vda)
    image_writable: bool = False  # keep the guest's writes in the image (default: a snapshot)
    share: Path | None = None  # 9p share, mount tag "kataShared"
    cmdline: str = ""
    cpus: int = 1
    max_cpus: int = 4
    memory: str = "512M"
    max_memory: str = "2G"
    slots: int = 4
    guest_cid: int = hvsock.DEFAULT_GUEST_CID
    accel: str = "auto"  # "auto" (KVM, else TCG), "kvm" or "tcg"
    name: str = "default"
    run_dir: Path | None = None
    ready_marker: str = AGENT_READY_MARKER  # console line that means ready ("" to skip)
    ready_port: int | None = AGENT_PORT  # vsock port that answers when ready (None to skip)
    ready_all: bool = False  # need both the marker and the port (else either one)
    ready_timeout: float = 120.0
    kvm_grace: float = 12.0
    extra_args: list[str] = field(default_factory=list)
    backend_debug: bool = False  # log every vhost-user message and vsock packet to hvsock.log
    netns: str | None = None  # wire a virtio-net NIC into this network namespace (it must hold eth0)
    pcie_root_ports: int = 0  # empty hot-plug slots for disks (agentctl hotplug blk)


@dataclass
class GuestState:
    """What ``agentctl stop`` and the other commands need to find a detached guest."""

    name: str
    run_dir: str
    qemu_pid: int
    backend_pid: int
    uds: str
    qmp: str
    console_log: str
    accel: str
    netns: str = ""  # the namespace whose tap ``stop`` removes
    mac: str = ""  # the guest NIC's MAC address (the namespace's eth0)

    @property
    def address(self) -> str:
        return f"hvsock://{self.uds}:{AGENT_PORT}"

    def save(self) -> None:
        path = Path(self.run_dir) / "state.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> GuestState:
        path = run_dir / "state.json"
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise BootError(f"no guest state in {path}; is a guest booted? (agentctl boot)") from None


def run_dir_for(name: str, base: Path | None = None) -> Path:
    return (base or DEFAULT_RUN_DIR) / name


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def root_port_args(count: int) -> list[str]:
    """``count`` PCIe root ports on the root complex, named ``hp0``, ``hp1``...; QEMU picks their slots
    (``agentctl.qmp.hotplug_blk`` finds them through query-pci)."""
    argv: list[str] = []
    for index in range(count):
        argv += ["-device", f"pcie-root-port,id={ROOT_PORT_PREFIX}{index},bus=pcie.0,chassis={index + 1}"]
    return argv


def qemu_argv(config: GuestConfig, paths: dict[str, Path], accel: str, net_args: list[str] | None = None) -> list[str]:
    if config.kernel is None and config.image is None:
        raise BootError("nothing to boot: give a kernel (with an initrd or an image)")
    argv = [QEMU, "-name", f"pykata-{config.name}", "-nodefaults", "-nographic", "-no-reboot"]
    if accel == "kvm":
        argv += ["-machine", "q35", "-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-machine", "q35,accel=tcg", "-cpu", "max"]
    argv += [
        "-smp",
        f"{config.cpus},maxcpus={config.max_cpus}",
        "-m",
        f"{config.memory},slots={config.slots},maxmem={config.max_memory}",
        "-object",
        f"memory-backend-memfd,id=mem0,size={config.memory},share=on",
        "-numa",
        "node,memdev=mem0",
        "-chardev",
        f"socket,id=vsock0,path={paths['vhost']}",
        "-device",
        "vhost-user-vsock-pci,chardev=vsock0",
        "-qmp",
        f"unix:{paths['qmp']},server=on,wait=off",
        "-chardev",
        f"file,id=console0,path={paths['console']}",
        "-serial",
        "chardev:console0",
    ]
    if config.share is not None:
        argv += [
            "-fsdev",
            f"local,id=fs0,path={config.share},security_model=none",
            "-device",
            "virtio-9p-pci,fsdev=fs0,mount_tag=kataShared",
        ]
    if config.image is not None:
        # snapshot=on: the guest's writes go to a throw-away overlay, so a built image stays as built.
        keep = "" if config.image_writable else ",snapshot=on"
        argv += ["-drive", f"file={config.image},if=virtio,format=raw,cache=unsafe{keep}"]
    argv += list(net_args or [])
    argv += root_port_args(config.pcie_root_ports)
    if config.kernel is not None:
        argv += ["-kernel", str(config.kernel)]
        if config.initrd is not None:
            argv += ["-initrd", str(config.initrd)]
        argv += ["-append", f"{DEFAULT_CMDLINE} {config.cmdline}".strip()]
    return argv + list(config.extra_args)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, one process by PID."""
    if pid <= 0 or not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid) or _reaped(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child; True when it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not _alive(pid)
    return done == pid


class Guest:
    """A booted (or booting) guest. Use as a context manager, or ``detach()`` to leave it running."""

    def __init__(self, config: GuestConfig, progress: Progress = _stderr_progress) -> None:
        self.config = config
        self.progress = progress
        self.run_dir = config.run_dir or run_dir_for(config.name)
        self.paths = {
            "vhost": self.run_dir / "vhost-user.sock",
            "uds": self.run_dir / "hvsock.sock",
            "qmp": self.run_dir / "qmp.sock",
            "console": self.run_dir / "console.log",
            "backend_log": self.run_dir / "hvsock.log",
            "qemu_log": self.run_dir / "qemu.log",
        }
        self.qemu: subprocess.Popen[bytes] | None = None
        self.backend: subprocess.Popen[bytes] | None = None
        self.accel = ""
        self.timings: dict[str, float] = {}
        self._t0 = 0.0
        self._detached = False
        self.tap: netns.TapAttachment | None = None

    # --- addresses
    @property
    def uds(self) -> Path:
        return self.paths["uds"]

    @property
    def address(self) -> str:
        return f"hvsock://{self.uds}:{AGENT_PORT}"

    @property
    def console_log(self) -> Path:
        return self.paths["console"]

    @property
    def qmp_path(self) -> Path:
        return self.paths["qmp"]

    def connect(self, port: int, timeout: float = hvsock.CONNECT_TIMEOUT) -> socket.socket:
        """A socket joined to the guest's vsock ``port`` through the back-end."""
        return hvsock.connect(self.uds, port, timeout)

    def run_in_console(self, command: str, port: int = 1026, timeout: float = 60.0) -> str:
        """Run ``command`` in the agent's debug console (``agent.debug_console`` on the guest's command
        line) and return what the terminal showed up to the end marker. The marker is typed with quotes
        inside it, so the pty's echo of the command line never matches it."""
        marker = b"__pykata_console_done__"
        with self.connect(port) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"{command}; echo __pykata_console_''done__\n".encode())
            data = b""
            deadline = time.monotonic() + timeout
            while marker not in data and time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
        text = data.decode(errors="replace")
        if marker not in data:
            raise TimeoutError(f"the debug console did not finish {command!r} in {timeout} s: {text[-500:]!r}")
        return text

    def qmp(self, timeout: float = 30.0) -> QMPClient:
        return QMPClient(self.paths["qmp"], timeout)

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- lifecycle
    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._detached:
            self.kill()

    def start(self) -> Guest:
        """Start the back-end and QEMU and wait until the guest is ready (KVM, then TCG)."""
        # sun_path holds 107 bytes; guest listeners add "_<port>" to the hybrid vsock path.
        if len(os.fsencode(self.uds)) + len("_4294967295") > UNIX_PATH_MAX:
            raise BootError(f"run directory {self.run_dir} is too long for unix socket paths; use a shorter one")
        wanted = self.config.accel
        accels = ["kvm", "tcg"] if wanted == "auto" else [wanted]
        if wanted == "auto" and not kvm_usable():
            accels = ["tcg"]
        verdict = DEFAULT_RUN_DIR.parent / KVM_VERDICT
        if wanted == "auto" and verdict.is_file():
            accels = ["tcg"]  # KVM failed here before; do not wait for it again
        for attempt, accel in enumerate(accels):
            last = attempt == len(accels) - 1
            try:
                self.timings = {}
                self._launch(accel)
                self._wait_ready(self.config.ready_timeout if last else self.config.kvm_grace)
                return self
            except BootError as exc:
                self.kill()
                if last or isinstance(exc, GuestPoweredOff):
                    raise
                self.progress(f"{accel} did not boot the guest ({str(exc)[:200]}); trying {accels[attempt + 1]}")
                with contextlib.suppress(OSError):
                    verdict.parent.mkdir(parents=True, exist_ok=True)
                    verdict.write_text(f"KVM did not boot a guest: {exc}\n")
        raise BootError("no accelerator to try")

    def _mark(self, phase: str) -> None:
        self.timings[phase] = time.monotonic() - self._t0

    def _launch(self, accel: str) -> None:
        self._t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in self.paths.values():
            path.unlink(missing_ok=True)
        self.accel = accel
        self._start_backend()
        tap_fd = self._attach_netns()
        try:
            net_args = self.tap.qemu_args(tap_fd) if self.tap is not None and tap_fd >= 0 else []
            argv = qemu_argv(self.config, self.paths, accel, net_args)
            self.progress(
                f"starting QEMU ({accel}, {self.config.cpus}/{self.config.max_cpus} CPUs, {self.config.memory})"
            )
            with open(self.paths["qemu_log"], "wb") as qemu_log:
                self.qemu = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=qemu_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(tap_fd,) if tap_fd >= 0 else (),
                )
        finally:
            if tap_fd >= 0:
                os.close(tap_fd)  # QEMU holds its own copy
        self._mark("qemu_started")

    def _attach_netns(self) -> int:
        """Create the tap in the configured namespace and open it; -1 without a namespace."""
        if not self.config.netns:
            return -1
        try:
            self.tap = netns.attach_tap(self.config.netns)
            self._mark("tap_attached")
            return self.tap.open_fd()
        except netns.NetnsError as exc:
            self._detach_netns()
            raise BootError(f"--netns {self.config.netns}: {exc}") from exc

    def _detach_netns(self) -> None:
        if self.config.netns:
            netns.detach_tap(self.config.netns)
        self.tap = None

    def _start_backend(self) -> None:
        read_fd, write_fd = os.pipe()
        with open(self.paths["backend_log"], "wb") as log_file:
            self.backend = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agentctl.hvsock",
                    "--vhost-socket",
                    str(self.paths["vhost"]),
                    "--uds",
                    str(self.paths["uds"]),
                    "--cid",
                    str(self.config.guest_cid),
                    "--ready-fd",
                    str(write_fd),
                    "-vv" if self.config.backend_debug else "-v",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as ready:
            line = ready.readline()
        if line.strip() != b"ready":
            raise BootError(f"the hvsock back-end did not start; see {self.paths['backend_log']}")
        self._mark("backend_ready")

    def _wait_ready(self, timeout: float) -> None:
        config = self.config
        deadline = time.monotonic() + timeout
        next_probe = 0.0
        next_note = time.monotonic() + 5
        assert self.qemu is not None
        while True:
            code = self.qemu.poll()
            if code is not None:
                qemu_said = self.paths["qemu_log"].read_text(errors="replace").strip()[-1500:]
                console = self.console_text().strip()[-1500:]
                what = "the guest powered off" if code == 0 else f"QEMU exited with status {code}"
                error = GuestPoweredOff if code == 0 else BootError
                raise error(
                    f"{what} while booting; QEMU: {qemu_said or '(no output)'}; "
                    f"console ({self.console_log}): {console or '(empty)'}"
                )
            text = self.console_text()
            if text and "console_first_line" not in self.timings:
                self._mark("console_first_line")
            if config.ready_marker and config.ready_marker in text and "marker" not in self.timings:
                self._mark("marker")
            now = time.monotonic()
            marker_seen = "marker" in self.timings
            if config.ready_port is not None and now >= next_probe and (marker_seen or not config.ready_all):
                next_probe = now + 0.5
                try:
                    self.connect(config.ready_port, timeout=2.0).close()
                except OSError:
                    pass
                else:
                    self._mark("port")
            port_seen = "port" in self.timings
            wanted = [seen for seen, on in ((marker_seen, config.ready_marker), (port_seen, config.ready_port)) if on]
            if wanted and (all(wanted) if config.ready_all else any(wanted)):
                self._mark("ready")
                self.progress(f"guest ready in {self.timings['ready']:.1f} s ({self.accel}); {self.address}")
                return
            if now >= deadline:
                raise BootError(
                    f"guest not ready after {timeout:.0f} s; console log {self.console_log}: "
                    f"{text.strip()[-1500:] or '(empty)'}"
                )
            if now >= next_note:
                next_note = now + 5
                lines = text.strip().splitlines()
                self.progress(f"  waiting for the guest ({now - self._t0:.0f} s): {lines[-1] if lines else '...'}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit (the guest powered off); its exit status."""
        assert self.qemu is not None
        code = self.qemu.wait(timeout)
        self._mark("qemu_exited")
        if self.tap is not None:
            self._detach_netns()
        if self.backend is not None:
            try:
                self.backend.wait(5)
            except subprocess.TimeoutExpired:
                kill_pid(self.backend.pid)
                self.backend.wait()
        return code

    def kill(self) -> None:
        """End QEMU and the back-end by PID (QMP quit first when QEMU still runs)."""
        if self.qemu is not None and self.qemu.poll() is None:
            asked = False
            with contextlib.suppress(OSError, ValueError, QMPError), self.qmp(timeout=3) as qmp:
                qmp.execute("quit")
                asked = True
            try:
                self.qemu.wait(5 if asked else 0.1)
            except subprocess.TimeoutExpired:
                kill_pid(self.qemu.pid)
                self.qemu.wait()
        if self.backend is not None and self.backend.poll() is None:
            kill_pid(self.backend.pid)
            self.backend.wait()
        if self.tap is not None and (self.qemu is None or self.qemu.poll() is not None):
            self._detach_netns()

    def detach(self) -> GuestState:
        """Leave the guest running after this process exits; write its state file."""
        assert self.qemu is not None and self.backend is not None
        self._detached = True
        state = GuestState(
            name=self.config.name,
            run_dir=str(self.run_dir),
            qemu_pid=self.qemu.pid,
            backend_pid=self.backend.pid,
            uds=str(self.uds),
            qmp=str(self.paths["qmp"]),
            console_log=str(self.console_log),
            accel=self.accel,
            netns=self.tap.netns if self.tap is not None else "",
            mac=self.tap.mac if self.tap is not None else "",
        )
        state.save()
        return state


def boot(
    kernel: Path | None = None,
    initrd: Path | None = None,
    image: Path | None = None,
    share: Path | None = None,
    cmdline: str = "",
    progress: Progress = _stderr_progress,
    **options: object,
) -> Guest:
    """Boot a guest and wait until it is ready; the caller ends it (``with boot(...) as guest``)."""
    config = GuestConfig(kernel=kernel, initrd=initrd, image=image, share=share, cmdline=cmdline)
    for key, value in options.items():
        if not hasattr(config, key):
            raise TypeError(f"boot() got an unknown option {key!r}")
        setattr(config, key, value)
    guest = Guest(config, progress)
    try:
        return guest.start()
    except BaseException:
        guest.kill()
        raise


def guest_process(pid: int, run_dir: str) -> bool:
    """Is ``pid`` still one of this guest's processes? Its command line names the run directory, so
    a PID that was reused by something else is never signalled."""
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(run_dir in arg for arg in argv)


def is_running(state: GuestState) -> bool:
    return guest_process(state.qemu_pid, state.run_dir)


def stop(state: GuestState, timeout: float = 10.0) -> None:
    """End a detached guest: QMP quit, then SIGTERM/SIGKILL by PID; remove its run directory."""
    if is_running(state):
        with contextlib.suppress(OSError, ValueError, QMPError), QMPClient(state.qmp, timeout=3) as qmp:
            qmp.execute("quit")
        deadline = time.monotonic() + timeout
        while is_running(state) and not _reaped(state.qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    for pid in (state.qemu_pid, state.backend_pid):
        if guest_process(pid, state.run_dir):
            kill_pid(pid)
    if state.netns and not is_running(state):
        netns.detach_tap(state.netns)
    shutil.rmtree(state.run_dir, ignore_errors=True)


@contextlib.contextmanager
def booted(config: GuestConfig, progress: Progress = _stderr_progress) -> Iterator[Guest]:
    """``with booted(config) as guest``: boot, yield, and always end QEMU and the back-end."""
    guest = Guest(config, progress)
    try:
        guest.start()
        yield guest
    finally:
        guest.kill()
