"""The import rules of ARCHITECTURE.md, checked on the source (AST scan of agent/, lazy imports included):

1. Only agent/rpc imports grpc, google.protobuf or the generated agent.rpc.pb.
2. Imports flow rpc -> services -> {container, hotplug, network, storage} -> system; nothing imports
   agent.__main__. Modules directly in agent/ (config, errors, init, metrics, ...) are shared below
   services: they may not import rpc or services.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
PROTOCOL_PREFIXES = ("grpc", "google.protobuf", "agent.rpc.pb")
# higher may import lower, never the reverse
RANKS = {"rpc": 3, "services": 2, "container": 1, "hotplug": 1, "memagent": 1, "network": 1, "storage": 1, "system": 0}
SHARED_RANK = 1  # modules directly in agent/, and packages the architecture does not name yet


def module_name(path: Path) -> str:
    parts = path.relative_to(AGENT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    return imports_in_source(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def imports_in_source(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # "from agent import rpc" names a subpackage through the alias
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return found


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) < 2:
        return "agent", SHARED_RANK
    name = parts[1]
    if (AGENT / name).is_dir():
        return name, RANKS.get(name, SHARED_RANK)
    return name, SHARED_RANK


SOURCES = sorted(p for p in AGENT.rglob("*.py") if "pb" not in p.relative_to(AGENT).parts)


def test_sources_found() -> None:
    assert any(p.name == "servicer.py" for p in SOURCES)


def violations(me: str, imports: list[tuple[int, str]]) -> list[str]:
    my_area, my_rank = layer(me)
    in_rpc = me == "agent.rpc" or me.startswith("agent.rpc.")
    problems = []
    for line, target in imports:
        if not in_rpc and any(target == p or target.startswith(p + ".") for p in PROTOCOL_PREFIXES):
            problems.append(f"line {line}: imports {target}; only agent/rpc may use grpc or generated code")
        if target == "agent.__main__":
            problems.append(f"line {line}: imports agent.__main__")
        if me == "agent.__main__" or not target.startswith("agent."):
            continue
        area, rank = layer(target)
        if area == my_area or area in ("errors", "config", "address", "__init__"):
            continue
        if rank > my_rank or (rank == my_rank and area in ("rpc", "services")):
            problems.append(f"line {line}: {me} ({my_area}) imports {target} ({area}): against the layer order")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(AGENT.parent)) for p in SOURCES])
def test_import_rules(path: Path) -> None:
    problems = violations(module_name(path), imports_of(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "allowed"),
    [
        ("agent.system.paths", "from agent.services import Services", False),
        ("agent.system.paths", "from agent.container import spec", False),
        ("agent.services.guest", "import grpc", False),
        ("agent.services.guest", "from agent.rpc.status import Code", False),
        ("agent.services.guest", "from google.protobuf import empty_pb2", False),
        ("agent.hotplug.cpu", "def f():\n    from agent.rpc.pb import agent_pb2", False),
        ("agent.rpc.methods.guest", "from ..pb import agent_pb2", True),
        ("agent.hotplug.cpu", "from ..rpc import servicer", False),
        ("agent.metrics", "from agent.services import Services", False),
        ("agent.rpc.servicer", "import grpc\nfrom agent.services import Services", True),
        ("agent.services.guest", "from agent.system import libc\nfrom agent import metrics", True),
        ("agent.hotplug.cpu", "from agent.system.sysfs import write", True),
        ("agent.init", "from agent.__main__ import main", False),
    ],
)
def test_the_rules_catch_violations(module: str, source: str, allowed: bool) -> None:
    assert (not violations(module, imports_in_source(source, module))) is allowed
