"""Capability names to numbers, as the container process's capset and bounding-set drop use them."""

from __future__ import annotations

from agent.container import capabilities


def test_names_map_to_the_kernel_numbers() -> None:
    # linux/capability.h: CAP_CHOWN 0, CAP_KILL 5, CAP_NET_BIND_SERVICE 10, CAP_SYS_ADMIN 21
    names = ["CAP_CHOWN", "cap_kill", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]
    assert capabilities.cap_numbers(names) == [0, 5, 10, 21]


def test_unknown_names_and_set_names_are_skipped() -> None:
    # runc skips capabilities it does not know; the set names are not capabilities
    names = ["CAP_NOT_A_CAPABILITY", "CAP_EFFECTIVE", "CAP_PERMITTED", "CAP_LAST_CAP", "KILL", ""]
    assert capabilities.cap_numbers(names) == []
    assert capabilities.cap_numbers(None) == []


def test_every_capability_number_up_to_the_last_is_known() -> None:
    assert capabilities.ALL_CAPS[0] == 0
    assert list(capabilities.ALL_CAPS) == list(range(len(capabilities.ALL_CAPS)))
    assert len(capabilities.ALL_CAPS) >= 38  # CAP_AUDIT_READ (37) and all before it
