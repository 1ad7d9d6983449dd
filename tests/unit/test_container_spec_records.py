"""The spec's records behave as the frozen dataclasses they replaced; the cgroups package's lazy names."""

from __future__ import annotations

import copy
import pickle

import pytest

import agent.container.cgroups as cgroups
from agent.container.spec import Hooks, Linux, Mount, Process, Spec, User, parse_spec

CONFIG = {
    "ociVersion": "1.0.2",
    "root": {"path": "rootfs"},
    "process": {"args": ["/bin/true"], "user": {"uid": 1, "gid": 2}},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {"namespaces": [{"type": "pid"}], "resources": {"pids": {"limit": 5}}},
}


def test_equal_by_value_and_not_to_other_types() -> None:
    assert parse_spec(CONFIG) == parse_spec(copy.deepcopy(CONFIG))
    assert Mount("/proc", "proc", "proc") == Mount(destination="/proc", type="proc", source="proc")
    assert Mount("/proc") != Mount("/sys")
    assert Mount("/proc") != ("/proc", "", "", ())
    assert hash(Mount("/proc", options=("ro",))) == hash(Mount("/proc", options=("ro",)))
    assert len({Mount("/proc"), Mount("/proc"), Mount("/sys")}) == 2


def test_raw_is_neither_compared_nor_shown() -> None:
    a = Spec("1.0.2", "rootfs", False, None, raw={"a": 1})
    b = Spec("1.0.2", "rootfs", False, None, raw={"b": 2})
    assert a == b
    assert "raw" not in repr(a)


def test_repr_names_the_fields_in_order() -> None:
    assert repr(Mount("/proc", "proc")) == (
        "Mount(destination='/proc', type='proc', source='', options=(), uid_mappings=(), gid_mappings=())"
    )


def test_immutable() -> None:
    user = User(uid=1)
    with pytest.raises(AttributeError, match="User is immutable: cannot set 'uid'"):
        user.uid = 2
    with pytest.raises(AttributeError):
        del user.gid
    with pytest.raises(AttributeError):
        user.extra = 3


def test_defaults_are_not_shared() -> None:
    first, second = Linux(), Linux()
    first.resources["cpu"] = {}
    assert second.resources == {}
    assert Process(("/bin/true",)).user == User()
    assert Spec("1", "r", False, None).hooks == Hooks()


def test_copy_and_pickle_rebuild_equal_records() -> None:
    spec = parse_spec(CONFIG)
    assert copy.deepcopy(spec) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.copy(spec.process) == spec.process


def test_cgroups_names_load_on_first_use() -> None:
    for name in cgroups.__all__:
        assert getattr(cgroups, name) is not None
    from agent.container.cgroups.manager import manager_for

    assert cgroups.manager_for is manager_for
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        cgroups.no_such_name  # noqa: B018
