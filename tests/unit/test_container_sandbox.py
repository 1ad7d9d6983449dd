"""CreateSandbox/DestroySandbox on fakes of the services they use (no host changes)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import AlreadyExists, IncorrectState
from agent.services.sandbox import SANDBOX_STORAGE_OWNER, SandboxInfo, SandboxService, sandbox_spec
from agent.system.sharedns import SharedNamespaces


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def set_hostname(self, name: str) -> None:
        self.calls.append(("hostname", name))

    def loopback_up(self) -> None:
        self.calls.append(("lo", "up"))

    def pin(self, paths: Any, hostname: str) -> SharedNamespaces:
        self.calls.append(("pin", hostname))
        return SharedNamespaces("/run/kata-containers/sandbox/ns")

    def unpin(self, shared: SharedNamespaces) -> None:
        self.calls.append(("unpin", str(shared.directory)))

    def write_resolv_conf(self, dns: list[str]) -> str:
        self.calls.append(("dns", dns))
        return "/run/kata-containers/sandbox/resolv.conf"

    def mount_all(self, storages: list[Any], owner: str) -> list[str]:
        self.calls.append(("mount", (storages, owner)))
        return [f"/mnt/{s}" for s in storages]

    def release(self, owner: str) -> None:
        self.calls.append(("release", owner))

    def remove_all(self) -> None:
        self.calls.append(("remove_all", None))

    def start_sandbox_pidns(self) -> int:
        self.calls.append(("pidns", "start"))
        return 4242

    def stop_sandbox_pidns(self) -> None:
        self.calls.append(("pidns", "stop"))


class FakeServices:
    def __init__(self, init_daemon: bool) -> None:
        self.recorder = Recorder()
        self.network = self.recorder
        self.storage = self.recorder
        self.containers = self.recorder
        self.init_daemon = init_daemon
        self.paths = None

    def built(self) -> dict[str, Any]:
        return {"containers": self.recorder}


@pytest.mark.parametrize("init_daemon", [True, False])
def test_create_then_destroy(init_daemon: bool) -> None:
    services = FakeServices(init_daemon)
    sandbox = SandboxService(services, services.recorder.pin, services.recorder.unpin)  # type: ignore[arg-type]
    info = sandbox.create_sandbox(
        sandbox_id="sb", hostname="pod", dns=["nameserver 10.0.0.1"], storages=["s1"], sandbox_pidns=True
    )
    assert info.storages == ["/mnt/s1"]
    with pytest.raises(AlreadyExists, match="sandbox sb exists already"):
        sandbox.create_sandbox(sandbox_id="sb2")
    sandbox.destroy_sandbox()
    assert services.recorder.calls == [
        ("hostname", "pod"),
        ("dns", ["nameserver 10.0.0.1"]),
        ("pin", "pod"),
        ("mount", (["s1"], SANDBOX_STORAGE_OWNER)),
        ("pidns", "start"),
        ("remove_all", None),
        ("pidns", "stop"),
        ("release", SANDBOX_STORAGE_OWNER),
        ("unpin", "/run/kata-containers/sandbox/ns"),
    ]
    # only an agent that is PID 1 powers the guest off after DestroySandbox
    assert sandbox.shutdown_requested.is_set() is init_daemon
    sandbox.create_sandbox(sandbox_id="again")  # a destroyed sandbox frees the slot


def test_destroy_without_anything_is_refused() -> None:
    services = FakeServices(False)
    services.built = lambda: {}  # type: ignore[method-assign]
    sandbox = SandboxService(services, services.recorder.pin, services.recorder.unpin)  # type: ignore[arg-type]
    with pytest.raises(IncorrectState, match="no sandbox"):
        sandbox.destroy_sandbox()


def test_guest_hooks_are_appended(tmp_path: Any) -> None:
    from agent.container.hooks import add_guest_hooks

    for kind, name in (("prestart", "b-net"), ("prestart", "a-log"), ("poststop", "cleanup")):
        (tmp_path / kind).mkdir(exist_ok=True)
        hook = tmp_path / kind / name
        hook.write_text("#!/bin/sh\n")
        hook.chmod(0o755)
    (tmp_path / "prestart" / "not-executable").write_text("")
    spec: dict[str, Any] = {"hooks": {"prestart": [{"path": "/usr/bin/own"}]}, "process": {"args": ["x"]}}
    merged = add_guest_hooks(spec, tmp_path)
    assert [h["path"] for h in merged["hooks"]["prestart"]] == [
        "/usr/bin/own",
        str(tmp_path / "prestart" / "a-log"),
        str(tmp_path / "prestart" / "b-net"),
    ]
    assert merged["hooks"]["poststop"] == [{"path": str(tmp_path / "poststop" / "cleanup"), "args": ["cleanup"]}]
    assert spec["hooks"]["prestart"] == [{"path": "/usr/bin/own"}]  # the caller's dict is not changed
    assert add_guest_hooks(spec, tmp_path / "missing") is spec


def test_a_failed_storage_mount_unpins_the_namespaces() -> None:
    services = FakeServices(False)

    def refuse(storages: list[Any], owner: str) -> list[str]:
        raise OSError("mount failed")

    services.storage = type("Storage", (), {"mount_all": staticmethod(refuse)})()
    sandbox = SandboxService(services, services.recorder.pin, services.recorder.unpin)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="mount failed"):
        sandbox.create_sandbox(sandbox_id="sb", hostname="pod", storages=["s1"])
    assert services.recorder.calls[-1] == ("unpin", "/run/kata-containers/sandbox/ns")
    assert sandbox.sandbox is None


def test_containers_join_the_sandbox_ipc_and_uts_and_get_its_resolv_conf() -> None:
    shared = SharedNamespaces("/run/sb/ns")
    info = SandboxInfo("sb", "pod", shared_namespaces=shared, resolv_conf="/run/sb/resolv.conf")
    spec = {
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "net", "path": "/x"}]},
    }
    out = sandbox_spec(spec, info)
    assert out["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "ipc", "path": "/run/sb/ns/ipc"},
        {"type": "uts", "path": "/run/sb/ns/uts"},
        {"type": "net", "path": "/x"},
    ]
    assert out["mounts"][-1]["destination"] == "/etc/resolv.conf"
    assert out["mounts"][-1]["source"] == "/run/sb/resolv.conf"
    assert "ro" in out["mounts"][-1]["options"]
    assert spec["linux"]["namespaces"][1] == {"type": "ipc"}  # the caller's spec is not changed
    own = {**spec, "mounts": [{"destination": "/etc/resolv.conf", "type": "bind", "source": "/mine"}]}
    assert sandbox_spec(own, info)["mounts"] == own["mounts"]  # the spec's own resolv.conf wins
