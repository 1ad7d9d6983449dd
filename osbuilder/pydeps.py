"""The agent's Python dependencies for the guest: the host's pinned versions, as cp311 wheels.

Binary wheels come from PyPI with ``pip download`` (manylinux, cp311/abi3/pure); packages with no
wheel there (python-prctl) are built on the host with ``pip wheel``. Wheels are cached per pin.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
import zipfile
from pathlib import Path

from agent.system.run import run
from osbuilder import config
from osbuilder.context import BuildContext

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
# Headers a source build needs, with the Debian package that ships them.
BUILD_HEADERS = {"libcap-dev": Path("/usr/include/sys/capability.h")}


def _name(requirement: str) -> str:
    return requirement.split("==", 1)[0].strip()


def _pip(*args: str | Path) -> list[str | Path]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]


def _normalized(name: str) -> str:
    return name.lower().replace("-", "_")


def fetch_wheels(ctx: BuildContext, requirements: list[str]) -> list[Path]:
    """One wheel per requirement under the workdir's wheel cache."""
    wheels: list[Path] = []
    for requirement in requirements:
        name = _name(requirement)
        version = requirement.split("==", 1)[1].strip()
        target = ctx.wheels_dir / f"{_normalized(name)}-{version}"
        found = sorted(target.glob("*.whl"))
        if not found:
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            if name in config.BUILD_FROM_SOURCE:
                for package in config.BUILD_FROM_SOURCE[name]:
                    header = BUILD_HEADERS.get(package)
                    if header is not None and not header.exists():
                        raise FileNotFoundError(
                            f"building {name} needs {header}; install it with: apt-get install {package}"
                        )
                with ctx.progress.step("wheels", f"building {requirement} from source"):
                    run(_pip("wheel", "--no-deps", "--no-binary", name, "-w", target, requirement), env=ctx.env())
            else:
                platform_args: list[str | Path] = []
                for platform in PLATFORMS:
                    platform_args += ["--platform", platform]
                with ctx.progress.step("wheels", f"downloading {requirement}"):
                    run(
                        _pip(
                            "download",
                            "--no-deps",
                            "--only-binary=:all:",
                            *platform_args,
                            "--python-version",
                            config.PYTHON_VERSION,
                            "--implementation",
                            "cp",
                            "-d",
                            target,
                            requirement,
                        ),
                        env=ctx.env(),
                        hint="PyPI must be reachable",
                    )
            found = sorted(target.glob("*.whl"))
            if not found:
                raise FileNotFoundError(f"no wheel for {requirement} in {target}")
        wheels.append(found[0])
    return wheels


# PEP 508 environment of the guest's interpreter.
GUEST_MARKERS = {
    "python_version": config.PYTHON_VERSION,
    "python_full_version": config.PYTHON_VERSION + ".2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def guest_marker(marker: str) -> bool:
    """Whether an environment marker holds in the guest (``extra`` markers never do)."""
    try:
        from packaging import markers
    except ImportError:
        from pip._vendor.packaging import markers  # type: ignore[no-redef]
    return bool(markers.Marker(marker).evaluate(dict(GUEST_MARKERS)))


def wheel_requires(wheel: Path) -> list[str]:
    """Names of a wheel's unconditional runtime dependencies (Requires-Dist without an extra)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    names = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        spec = line.split(":", 1)[1].strip()
        requirement, _, marker = spec.partition(";")
        if marker.strip() and not guest_marker(marker.strip()):
            continue
        name = re.split(r"[\s<>=!~\[(]", requirement.strip(), maxsplit=1)[0]
        if name:
            names.append(name)
    return names


def with_dependencies(ctx: BuildContext, requirements: list[str]) -> list[Path]:
    """Wheels for the pins and for their own dependencies, pinned to the versions the host has installed."""
    pinned = {_normalized(_name(r)): r for r in requirements}
    wheels: dict[str, Path] = {}
    pending = list(pinned)
    while pending:
        key = pending.pop(0)
        (wheel,) = fetch_wheels(ctx, [pinned[key]])
        wheels[key] = wheel
        for dep in wheel_requires(wheel):
            dep_key = _normalized(dep)
            if dep_key in pinned:
                continue
            try:
                version = importlib.metadata.version(dep)
            except importlib.metadata.PackageNotFoundError:
                raise FileNotFoundError(
                    f"{pinned[key]} needs {dep}, which the host does not have: install it (pip install {dep})"
                ) from None
            pinned[dep_key] = f"{dep}=={version}"
            pending.append(dep_key)
    return [wheels[key] for key in sorted(wheels)]


def install(wheels: list[Path], target: Path, ctx: BuildContext) -> None:
    """Unpack the wheels into ``target`` (one flat directory on the guest's sys.path)."""
    target.mkdir(parents=True, exist_ok=True)
    run(
        _pip(
            "install",
            "--no-deps",
            "--no-index",
            "--no-compile",
            "--no-warn-script-location",
            "--target",
            target,
            *wheels,
        ),
        env=ctx.env(),
    )
    bin_dir = target / "bin"  # console scripts with host paths in their shebangs: not for the guest
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
