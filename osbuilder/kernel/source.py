"""The source kernel: Debian's linux-source with the kernel-config/ fragments, everything built in.

defconfig, then the merged fragments appended, then olddefconfig; every requested symbol must survive
(verify.py) unless it is on the allow-list. Then bzImage. The build time is printed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from agent.system.run import run
from osbuilder.context import BuildContext
from osbuilder.kernel import fragments, verify

LINUX_SOURCE_GLOB = "/usr/src/linux-source-*.tar.xz"
# Host tools a kernel build needs, with their Debian packages.
BUILD_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc", "xz": "xz-utils"}
# Headers the build compiles host tools against (objtool, extract-cert), with their Debian packages.
BUILD_HEADERS = {"/usr/include/gelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}
ARCH_DIRS = {"x86_64": "x86"}


def check_tools() -> None:
    missing = [f"{tool} (apt-get install {package})" for tool, package in BUILD_TOOLS.items() if not shutil.which(tool)]
    missing += [f"{header} (apt-get install {package})" for header, package in BUILD_HEADERS.items()
                if not os.path.exists(header)]  # fmt: skip
    if missing:
        raise FileNotFoundError("building the kernel needs: " + ", ".join(missing))


def configure(build_dir: Path, config_dir: Path, arch: str, env: dict[str, str]) -> dict[str, fragments.Setting]:
    """Merge the fragments into .config and verify; returns the requested settings."""
    chosen = fragments.select_fragments(config_dir / "fragments", arch)
    requested = fragments.merge(chosen, relative_to=config_dir)
    karch = ARCH_DIRS.get(arch, arch)
    run(["make", f"ARCH={karch}", "defconfig"], cwd=build_dir, env=env, package="make")
    dot_config = build_dir / ".config"
    dot_config.write_text(dot_config.read_text() + fragments.render(requested))
    run(["make", f"ARCH={karch}", "olddefconfig"], cwd=build_dir, env=env, package="make")
    verify.verify(requested, dot_config.read_text(), verify.read_allow_list(config_dir / "allow-list"))
    return requested


def find_tarball() -> Path:
    tarballs = sorted(Path("/").glob(LINUX_SOURCE_GLOB.lstrip("/")))
    if not tarballs:
        raise FileNotFoundError("no /usr/src/linux-source-*.tar.xz; install it with: apt-get install linux-source")
    return tarballs[-1]


def describe(ctx: BuildContext) -> dict[str, object]:
    """What the manifest records of a source kernel: the tarball, its release and the fragments."""
    tarball = find_tarball()
    build_dir = ctx.workdir / "kernel-source" / tarball.name.removesuffix(".tar.xz")
    release = run(["make", "-s", "kernelrelease"], cwd=build_dir, package="make").stdout.decode().strip()
    chosen = fragments.select_fragments(ctx.kernel_config_dir / "fragments", ctx.arch)
    return {"source": tarball.name, "release": release,
            "fragments": [str(p.relative_to(ctx.kernel_config_dir)) for p in chosen]}  # fmt: skip


def build(ctx: BuildContext, vmlinuz: Path) -> Path:
    check_tools()
    tarball = find_tarball()
    build_dir = ctx.workdir / "kernel-source" / tarball.name.removesuffix(".tar.xz")
    env = ctx.env()
    env["KBUILD_BUILD_TIMESTAMP"] = f"@{ctx.epoch}"
    env["KBUILD_BUILD_USER"] = "pykata"
    env["KBUILD_BUILD_HOST"] = "pykata"
    if not build_dir.exists():
        with ctx.progress.step("kernel", f"unpacking {tarball.name}"):
            build_dir.parent.mkdir(parents=True, exist_ok=True)
            run(["tar", "-xf", tarball, "-C", build_dir.parent], package="tar")
    with ctx.progress.step("kernel", "merging fragments, olddefconfig, verifying"):
        configure(build_dir, ctx.kernel_config_dir, ctx.arch, env)
    started = time.monotonic()
    with ctx.progress.step("kernel", f"make bzImage -j{os.cpu_count()}"):
        run(
            ["make", f"ARCH={ARCH_DIRS.get(ctx.arch, ctx.arch)}", f"-j{os.cpu_count()}", "bzImage"],
            cwd=build_dir,
            env=env,
            capture=False,
            package="make",
        )
    ctx.progress.say("kernel", f"kernel build time: {time.monotonic() - started:.0f} s")
    vmlinuz.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build_dir / "arch/x86/boot/bzImage", vmlinuz)
    return vmlinuz
