"""The runtime-spec features document (features.md, features-linux.md): what this engine implements.

``pykata-runc features`` prints it, as ``runc features`` does; a runtime caller (containerd, for one)
reads it to learn, before it writes a config.json, which hooks, mount options, namespaces,
capabilities and seccomp actions the runtime recognises. Every list comes from the table the engine
itself works from, so the document cannot claim what the engine does not do:

- hooks: spec.HOOK_NAMES, the hooks parse_spec reads;
- mountOptions: the words mountopts.parse_mount_options takes (mount flags, propagation, recursive
  attributes, tmpcopyup, idmap and ridmap); any other word is passed to the filesystem as data, which the document is
  not to list;
- linux.namespaces: spec.NAMESPACE_TYPES; linux.capabilities: those python-prctl knows by name;
- linux.seccomp: the compiler's actions, operators and architectures (seccomp.py);
- linux.cgroup: v1 and v2 through cgroupfs; systemd (a transient scope per container, on v1 and v2:
  cgroups/systemd.py), and systemdUser (a rootless container's scope from the user's own systemd, v2);
- AppArmor and SELinux: implemented (procattrs.py: a profile or label is applied where the host's LSM
  is on, and refused where it is off).

As features.md asks, the document says what the runtime implements, not what this host's kernel
offers. ociVersionMax is the version ``state`` reports (OCI_VERSION, runc 1.1's), and the document
holds the properties runc 1.1 prints for that version: none of runtime-spec 1.1's later ones (seccomp
filter flags, rdma, intelRdt), which a document for 1.0.2 is not to contain.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION_MIN = "1.0.0"


def features() -> dict[str, Any]:
    from agent.container import capabilities, seccomp
    from agent.container.cli_state import OCI_VERSION
    from agent.container.spec import HOOK_NAMES, NAMESPACE_TYPES
    from agent.system.mountopts import recognized_words

    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_NAMES),
        "mountOptions": recognized_words(),
        "linux": {
            "namespaces": sorted(NAMESPACE_TYPES),
            "capabilities": capabilities.capability_names(),
            "cgroup": {"v1": True, "v2": True, "systemd": True, "systemdUser": True},
            "seccomp": {
                "enabled": True,
                "actions": sorted(seccomp.ACTIONS),
                "operators": sorted(seccomp.OPERATORS),
                "archs": list(seccomp.ARCHITECTURES),
            },
            "apparmor": {"enabled": True},
            "selinux": {"enabled": True},
        },
    }
