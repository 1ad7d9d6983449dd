"""config.json as a careless or hostile writer leaves it: runc's default spec, made to use every
part of the engine a spec reaches before anything is made (resources, rlimits, hooks, seccomp with
argument checks, devices, idmapped and plain mounts, memory policy, time offsets), with one or two
values anywhere replaced by another JSON value. Parsing, validation, the mount plan and the seccomp
compiler must answer each with a named error (AgentError: InvalidArgument, Unsupported), never a
TypeError or AttributeError from inside. This found resource sections that were not objects and
seccomp rules of the wrong shape (both raised from deep inside). Seeded: a failure names its seed."""

from __future__ import annotations

import random
import traceback
from typing import Any

import pytest

from agent.container.cli import default_spec
from agent.container.rootfs import plan_rootfs
from agent.container.seccomp import compile_profile
from agent.container.spec import parse_spec
from agent.container.validate import validate_spec
from agent.errors import AgentError
from agent.system.paths import HostPaths
from tests.helpers.fuzz import mutated_document

MUTATIONS = 4000


def rich_spec() -> dict[str, Any]:
    spec = default_spec()
    spec["root"]["path"] = "/"
    linux = spec["linux"]
    cpu = {"shares": 512, "cpus": "0", "period": 100000}
    linux["resources"].update(memory={"limit": 1 << 30, "swap": 2 << 30}, pids={"limit": 100}, cpu=cpu,
                              unified={"memory.high": "max"})  # fmt: skip
    rule = {"names": ["read", "write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
            "args": [{"index": 0, "value": 1, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}  # fmt: skip
    linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [rule]}
    linux["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}]
    linux["memoryPolicy"] = {"mode": "MPOL_BIND", "nodes": "0"}
    linux["namespaces"].append({"type": "time"})
    linux["timeOffsets"] = {"monotonic": {"secs": 1}}
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    spec["hooks"] = {"prestart": [{"path": "/bin/true", "args": ["true"], "env": ["A=b"], "timeout": 5}]}
    spec["mounts"] += [
        {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]},
        {"destination": "/idmapped", "type": "bind", "source": "/tmp", "options": ["bind"],
         "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}],
         "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}]},
    ]  # fmt: skip
    return spec


def engine_reading(document: Any) -> None:
    """What the engine does with a config.json before it makes anything."""
    spec = parse_spec(document)
    validate_spec(spec)
    plan_rootfs(HostPaths("/nonexistent-root"), spec, "/r", "/bundle", no_pivot=False)
    if spec.linux.seccomp:
        compile_profile(spec.linux.seccomp)


def test_the_rich_spec_itself_is_accepted() -> None:
    engine_reading(rich_spec())  # else every mutation below would stop at the same first error


@pytest.mark.parametrize("seed", range(4))
def test_mutated_specs_get_named_errors(seed: int) -> None:
    rng = random.Random(seed)
    base = rich_spec()
    accepted = 0
    for index in range(MUTATIONS // 4):
        document, changed = mutated_document(rng, base)
        try:
            engine_reading(document)
            accepted += 1
        except AgentError:
            pass
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            pytest.fail(f"seed {seed} mutation {index} (changed {changed}): {type(exc).__name__}: {exc} "
                        f"at {where.filename}:{where.lineno}")  # fmt: skip
    assert accepted > MUTATIONS // 40, "the mutations should also make specs the engine accepts"
