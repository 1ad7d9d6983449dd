"""What each RPC does, in domain types. No grpc or generated code here.

``Services`` is the one object the RPC layer holds. Each service is built on first use (so the
agent starts fast and a guest that never runs a container never imports the engine), through the
service class's ``from_services(services)`` classmethod, which may ask for the other services it
needs (containers asks for storage; resources asks for containers to find cpuset targets).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.system.paths import HostPaths

if TYPE_CHECKING:
    from agent.services.containers import ContainerService
    from agent.services.guest import GuestService
    from agent.services.memagent import MemAgentService
    from agent.services.network import NetworkService
    from agent.services.resources import ResourceService
    from agent.services.sandbox import SandboxService
    from agent.services.storage import StorageService


class Services:
    def __init__(self, config: AgentConfig, paths: HostPaths, *, init_daemon: bool = False) -> None:
        self.config = config
        self.paths = paths
        self.init_daemon = init_daemon  # the agent is PID 1
        self.passfd: Any = None  # the passfd streams' listener (agent.passfd_listener_port), set by the agent
        self._lock = threading.RLock()
        self._built: dict[str, Any] = {}

    def _get(self, name: str, module: str, cls: str) -> Any:
        with self._lock:
            if name not in self._built:
                import importlib

                service_class = getattr(importlib.import_module(module), cls)
                self._built[name] = service_class.from_services(self)
            return self._built[name]

    def built(self) -> dict[str, Any]:
        """The services constructed so far (for shutdown: only these need stopping)."""
        with self._lock:
            return dict(self._built)

    @property
    def guest(self) -> GuestService:
        return self._get("guest", "agent.services.guest", "GuestService")

    @property
    def sandbox(self) -> SandboxService:
        return self._get("sandbox", "agent.services.sandbox", "SandboxService")

    @property
    def containers(self) -> ContainerService:
        return self._get("containers", "agent.services.containers", "ContainerService")

    @property
    def resources(self) -> ResourceService:
        return self._get("resources", "agent.services.resources", "ResourceService")

    @property
    def network(self) -> NetworkService:
        return self._get("network", "agent.services.network", "NetworkService")

    @property
    def storage(self) -> StorageService:
        return self._get("storage", "agent.services.storage", "StorageService")

    @property
    def memagent(self) -> MemAgentService:
        return self._get("memagent", "agent.services.memagent", "MemAgentService")
