"""CreateSandbox and DestroySandbox: the guest-wide part of a pod.

CreateSandbox records the sandbox id, sets the hostname, brings ``lo`` up, writes the DNS servers to
the sandbox's resolv.conf, pins the sandbox's shared IPC and UTS namespaces, mounts the sandbox storages
(owned by "sandbox") and remembers the guest hook path. Containers created in the sandbox join its IPC
and UTS namespaces and get its resolv.conf bind-mounted read-only (``sandbox_spec``), as Kata's do.
DestroySandbox removes every container, releases the storages and, when the agent is the init
daemon (PID 1), sets ``shutdown_requested``: agent/__main__.py powers the guest off after the reply
has gone out.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import AlreadyExists, IncorrectState, Unsupported
from agent.system import netdev
from agent.system.sharedns import SharedNamespaces, create_shared_namespaces, release_shared_namespaces

if TYPE_CHECKING:
    from agent.services import Services

log = logging.getLogger(__name__)

SANDBOX_STORAGE_OWNER = "sandbox"


@dataclass
class SandboxInfo:
    sandbox_id: str
    hostname: str
    dns: list[str] = field(default_factory=list)
    guest_hook_path: str = ""
    sandbox_pidns: bool = False
    storages: list[str] = field(default_factory=list)  # mount points
    shared_namespaces: SharedNamespaces | None = None
    resolv_conf: str | None = None


def sandbox_spec(spec: dict[str, Any], sandbox: SandboxInfo) -> dict[str, Any]:
    """The spec a container of ``sandbox`` runs with: its new IPC and UTS namespaces become the
    sandbox's shared ones, and the sandbox's resolv.conf is bind-mounted at /etc/resolv.conf unless the
    spec mounts something there itself. A namespace the spec joins by path is left as it is."""
    linux = dict(spec.get("linux") or {})
    shared = sandbox.shared_namespaces
    if shared is not None:
        linux["namespaces"] = [
            {**ns, "path": shared.path(ns["type"])} if ns.get("type") in shared.kinds and not ns.get("path") else ns
            for ns in linux.get("namespaces") or []
        ]
    mounts = list(spec.get("mounts") or [])
    if sandbox.resolv_conf is not None and not any(m.get("destination") == "/etc/resolv.conf" for m in mounts):
        mounts.append(
            {
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": sandbox.resolv_conf,
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
            }
        )
    return {**spec, "linux": linux, "mounts": mounts}


class SandboxService:
    def __init__(
        self,
        services: Services,
        pin_namespaces: Callable[..., SharedNamespaces] = create_shared_namespaces,
        unpin_namespaces: Callable[[SharedNamespaces], None] = release_shared_namespaces,
    ) -> None:
        self._services = services
        self._pin_namespaces = pin_namespaces
        self._unpin_namespaces = unpin_namespaces
        self._lock = threading.Lock()
        self.sandbox: SandboxInfo | None = None
        self.shutdown_requested = threading.Event()

    @classmethod
    def from_services(cls, services: Services) -> SandboxService:
        return cls(services)

    def create_sandbox(
        self,
        *,
        sandbox_id: str,
        hostname: str = "",
        dns: list[str] | None = None,
        storages: list[Any] | None = None,
        guest_hook_path: str = "",
        sandbox_pidns: bool = False,
        kernel_modules: list[tuple[str, list[str]]] | None = None,
        guest_userns: bool = False,
    ) -> SandboxInfo:
        """``kernel_modules``: (name, ``key=value`` parameters) to load first, as Kata's agent does; the
        ones loaded before a failing one stay loaded (a module cannot safely be taken out again)."""
        with self._lock:
            if self.sandbox is not None:
                raise AlreadyExists(f"sandbox {self.sandbox.sandbox_id} exists already; destroy it first")
            if guest_userns:
                raise Unsupported("guest_userns: a user namespace shared by the sandbox's containers is not supported")
            for name, parameters in kernel_modules or ():
                log.info("kernel module %s", self._load_module(name, parameters))
            info = SandboxInfo(sandbox_id, hostname, list(dns or []), guest_hook_path, sandbox_pidns)
            network = self._services.network
            if hostname:
                network.set_hostname(hostname)
            netdev.set_link_up("lo")  # an ioctl: CreateSandbox does not pay for a netlink library
            if dns:
                info.resolv_conf = network.write_resolv_conf(list(dns))
            info.shared_namespaces = self._pin_namespaces(self._services.paths, hostname)
            try:
                if storages:
                    info.storages = self._services.storage.mount_all(list(storages), SANDBOX_STORAGE_OWNER)
                if sandbox_pidns:
                    self._services.containers.start_sandbox_pidns()
            except BaseException:
                if info.storages:
                    self._services.storage.release(SANDBOX_STORAGE_OWNER)
                self._unpin_namespaces(info.shared_namespaces)
                raise
            self.sandbox = info
            log.info("sandbox %s created", sandbox_id)
            return info

    def _load_module(self, name: str, parameters: list[str]) -> str:
        from agent.storage.fsmodules import load_named

        paths = self._services.paths
        depmod_ran = os.path.exists(f"{paths.modules_dir}/{os.uname().release}/modules.dep")
        return load_named(paths, name, parameters, shutil.which("modprobe") if depmod_ran else None)

    def destroy_sandbox(self) -> None:
        with self._lock:
            if self.sandbox is None and not self._services.built().get("containers"):
                raise IncorrectState("there is no sandbox to destroy")
            containers = self._services.built().get("containers")
            if containers is not None:
                containers.remove_all()
                containers.stop_sandbox_pidns()
            if self.sandbox is not None and self.sandbox.storages:
                self._services.storage.release(SANDBOX_STORAGE_OWNER)
            if self.sandbox is not None and self.sandbox.shared_namespaces is not None:
                self._unpin_namespaces(self.sandbox.shared_namespaces)
            self.sandbox = None
        if self._services.init_daemon:
            self.shutdown_requested.set()

    def close(self) -> None:
        """The agent is stopping: undo a sandbox that was never destroyed (its storages and the
        namespaces pinned by bind mounts would otherwise outlive the agent)."""
        with self._lock:
            sandbox, self.sandbox = self.sandbox, None
        if sandbox is None:
            return
        if sandbox.storages:
            self._services.storage.release(SANDBOX_STORAGE_OWNER)
        if sandbox.shared_namespaces is not None:
            self._unpin_namespaces(sandbox.shared_namespaces)
