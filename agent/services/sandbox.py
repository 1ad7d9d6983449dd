"""CreateSandbox and DestroySandbox: the guest-wide part of a pod.

CreateSandbox records the sandbox id, sets the hostname, writes the DNS servers to the sandbox's
resolv.conf, mounts the sandbox storages (owned by "sandbox") and remembers the guest hook path.
DestroySandbox removes every container, releases the storages and, when the agent is the init
daemon (PID 1), sets ``shutdown_requested``: agent/__main__.py powers the guest off after the reply
has gone out.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import AlreadyExists, IncorrectState

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


class SandboxService:
    def __init__(self, services: Services) -> None:
        self._services = services
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
    ) -> SandboxInfo:
        with self._lock:
            if self.sandbox is not None:
                raise AlreadyExists(f"sandbox {self.sandbox.sandbox_id} exists already; destroy it first")
            info = SandboxInfo(sandbox_id, hostname, list(dns or []), guest_hook_path, sandbox_pidns)
            network = self._services.network
            if hostname:
                network.set_hostname(hostname)
            if dns:
                network.write_resolv_conf(list(dns))
            if storages:
                info.storages = self._services.storage.mount_all(list(storages), SANDBOX_STORAGE_OWNER)
            if sandbox_pidns:
                self._services.containers.start_sandbox_pidns()
            self.sandbox = info
            log.info("sandbox %s created", sandbox_id)
            return info

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
            self.sandbox = None
        if self._services.init_daemon:
            self.shutdown_requested.set()
