"""HostPaths: every location is a str, the root joined with a fixed relative path."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from agent.system.paths import HostPaths, normal_path
from tests.conftest import REPO


def test_production_root_gives_the_absolute_locations() -> None:
    paths = HostPaths()
    assert paths.root == "/"
    assert paths.proc == "/proc"
    assert paths.cgroup_root == "/sys/fs/cgroup"
    assert paths.memory_block_size == "/sys/devices/system/memory/block_size_bytes"
    assert paths.proc_pid(5) == "/proc/5"
    assert paths.thread_ns("ipc") == "/proc/thread-self/ns/ipc"
    assert paths.named_netns("n1") == "/run/netns/n1"
    assert paths.inside("/a/b") == "/a/b"
    assert paths.inside("a/b") == "/a/b"
    assert paths.inside("/") == "/"


def test_a_test_root_prefixes_every_location(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    root = str(tmp_path)
    assert paths.root == root
    assert paths.proc_pid(5) == f"{root}/proc/5"
    assert paths.memory_probe == str(tmp_path / "sys/devices/system/memory/probe")
    assert paths.shared_containers == str(tmp_path / "run/kata-containers/shared/containers")
    assert paths.inside("/a/b") == f"{root}/a/b"
    assert paths.inside(Path("/a/b")) == f"{root}/a/b"
    assert paths.inside("/") == root


def test_every_location_is_a_str(tmp_path: Path) -> None:
    for paths in (HostPaths(), HostPaths(tmp_path)):
        for name in dir(HostPaths):
            if isinstance(getattr(HostPaths, name), property):
                value = getattr(paths, name)
                assert type(value) is str, name
                assert value.startswith(paths.root), name
        assert type(paths.root) is str


@pytest.mark.parametrize(
    ("given", "root"),
    [("/", "/"), ("//", "/"), ("/tmp/x", "/tmp/x"), ("/tmp/x/", "/tmp/x"), (Path("/tmp/x"), "/tmp/x")],
)
def test_root_is_spelled_one_way(given: str | Path, root: str) -> None:
    assert HostPaths(given).root == root


def test_equal_hashed_copied_and_pickled_by_root(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    assert paths == HostPaths(str(tmp_path)) == HostPaths(f"{tmp_path}/")
    assert hash(paths) == hash(HostPaths(str(tmp_path)))
    assert paths != HostPaths()
    assert repr(paths) == f"HostPaths(root={str(tmp_path)!r})"
    assert copy.copy(paths) == paths
    assert copy.deepcopy(paths) == paths
    assert pickle.loads(pickle.dumps(paths)) == paths
    assert pickle.loads(pickle.dumps(paths)).proc == paths.proc


def test_immutable() -> None:
    paths = HostPaths()
    with pytest.raises(AttributeError, match="immutable"):
        paths.root = "/x"  # type: ignore[misc]


def test_importing_paths_loads_no_pathlib() -> None:
    code = "import sys; import agent.system.paths; print('pathlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("path", "spelt"),
    [("", "."), (".", "."), ("./", "."), ("a", "a"), ("a/", "a"), ("./a/./b//", "a/b"), ("a/../b", "a/../b"),
     ("/", "/"), ("//", "//"), ("///", "/"), ("//a//b/", "//a/b"), ("///a", "/a"), ("/./a/.", "/a"),
     ("a/.", "a"), ("a/.b", "a/.b"), (".a/b", ".a/b")],
)  # fmt: skip
def test_normal_path_spells_paths_as_pathlib(path: str, spelt: str) -> None:
    assert normal_path(path) == spelt == str(PurePosixPath(path))
    assert normal_path(PurePosixPath(path)) == spelt  # a path-like too
