"""Make an OCI bundle for tests and benchmarks: a busybox rootfs and runc's own default config.json.

The rootfs holds Debian's static busybox (package ``busybox-static``) with a symlink per applet, so
``/bin/sh``, ``/bin/true`` and friends exist. ``config.json`` comes from ``runc spec`` (Debian's runc),
with only ``root.path`` and ``process.args`` changed, unless the caller asks for more edits: that is the
spec every runc-driving tool starts from, so our engine must accept it as it is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
ROOTFS_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root", "run", "var")


class BundleError(RuntimeError):
    pass


def _require(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise BundleError(f"{program} not found; install it with: apt-get install {package}")
    return found


def make_rootfs(rootfs: Path) -> Path:
    """Fill ``rootfs`` with busybox, one symlink per applet, and a minimal /etc."""
    if not BUSYBOX.exists():
        raise BundleError(f"{BUSYBOX} not found; install it with: apt-get install busybox-static")
    for name in ROOTFS_DIRS:
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    listing = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True).stdout
    for applet in listing.split():
        link = rootfs / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    (rootfs / "etc" / "hostname").write_text("busybox\n")
    return rootfs


def runc_default_spec() -> dict[str, Any]:
    """The config.json that Debian's ``runc spec`` writes, parsed."""
    runc = _require("runc", "runc")
    with tempfile.TemporaryDirectory(prefix="pykata-spec-") as workdir:
        subprocess.run([runc, "spec"], cwd=workdir, check=True, capture_output=True)
        spec: dict[str, Any] = json.loads((Path(workdir) / "config.json").read_text())
    return spec


def make_bundle(
    bundle: Path,
    args: Sequence[str] = ("/bin/true",),
    *,
    rootfs_name: str = "rootfs",
    terminal: bool | None = False,
    edit: Callable[[dict[str, Any]], None] | None = None,
    spec: dict[str, Any] | None = None,
) -> Path:
    """Create ``bundle`` with a busybox rootfs and runc's default spec running ``args``.

    ``runc spec`` asks for a terminal, which needs a controlling tty (or ``--console-socket``) that tests
    and benchmarks lack, so ``terminal`` defaults to False, as runc's own integration tests do; pass
    None to keep runc's value. ``edit`` may change the parsed spec further.
    Pass ``spec`` to reuse one ``runc spec`` output for many bundles.
    """
    bundle.mkdir(parents=True, exist_ok=True)
    make_rootfs(bundle / rootfs_name)
    config = json.loads(json.dumps(spec)) if spec is not None else runc_default_spec()
    config["root"]["path"] = rootfs_name
    config["process"]["args"] = list(args)
    if terminal is not None:
        config["process"]["terminal"] = terminal
    if edit is not None:
        edit(config)
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return bundle


def set_args(bundle: Path, args: Sequence[str], **process: Any) -> None:
    """Rewrite ``process.args`` (and any other ``process`` fields given) in an existing bundle."""
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    config["process"]["args"] = list(args)
    config["process"].update(process)
    path.write_text(json.dumps(config, indent=2))
