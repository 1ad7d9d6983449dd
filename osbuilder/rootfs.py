"""The guest root filesystem: Debian bookworm built by mkosi, with the agent and its dependencies.

mkosi builds the Debian base once (cached by its configuration). The agent, its wheels, the launcher,
the systemd unit and the masked units are laid out in a staging tree that is copied on top of a copy of
the base; that result is cached by a hash of every input, so a rebuild with nothing changed is instant
and a changed agent costs a copy, not a Debian install.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.system.run import run
from osbuilder import config, pydeps
from osbuilder.context import BuildContext

UNIT_TEMPLATE = """\
[Unit]
Description=pykata agent
Documentation=https://github.com/kata-containers/kata-containers/blob/main/docs/design/architecture
# The guest has no purpose without its agent: power off when it fails, so the host sees it.
FailureAction=poweroff
OnFailure=poweroff.target
After=systemd-udevd.service systemd-modules-load.service

[Service]
Type=simple
ExecStart=/{launcher}
Restart=no
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

# Trimmed from the image: documentation, translations and package caches.
REMOVE_FILES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
    "/var/cache/apt/*",
    "/var/lib/apt/lists/*",
)


# Marks a finished tree: a build that died half way is not reused.
COMPLETE = ".pykata-complete"


@dataclass(frozen=True)
class Rootfs:
    tree: Path
    key: str
    python_requirements: list[str]


def _copy_package(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), symlinks=True)


def stage(ctx: BuildContext, staging: Path, wheels: list[Path]) -> None:
    """Everything pykata adds to the Debian tree, laid out as it will appear in the guest."""
    if staging.exists():
        shutil.rmtree(staging)
    lib = staging / config.AGENT_LIB_DIR
    pydeps.install(wheels, lib, ctx)
    _copy_package(ctx.source / "agent", lib / "agent")
    launcher = staging / config.AGENT_LAUNCHER
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(launcher_script())
    launcher.chmod(0o755)
    units = staging / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / config.AGENT_UNIT).write_text(UNIT_TEMPLATE.format(launcher=config.AGENT_LAUNCHER))
    os.symlink(f"../{config.AGENT_UNIT}", units / "multi-user.target.wants" / config.AGENT_UNIT)
    for unit in config.MASKED_UNITS:
        os.symlink("/dev/null", units / unit)
    (staging / "etc/pykata").mkdir(parents=True)
    (staging / "etc/hostname").write_text("pykata\n")


def launcher_script() -> str:
    """The launcher with a shebang to the guest interpreter, isolated and without site scanning."""
    body = (Path(__file__).parent / "guest/launcher.py").read_text()
    return f"#!/{config.GUEST_PYTHON} -IS\n{body}"


def tree_digest(root: Path) -> str:
    """A hash of a directory's paths, modes, link targets and contents."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{info.st_mode:o}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def mkosi_argv(output: Path, cache: Path) -> list[str | Path]:
    argv: list[str | Path] = [
        "mkosi",
        "--force",
        "--distribution",
        "debian",
        "--release",
        config.DEBIAN_RELEASE,
        "--mirror",
        config.DEBIAN_MIRROR,
        "--format",
        "directory",
        "--output",
        output,
        "--cache",
        cache,
        "--nspawn-keep-unit",
        "yes",
        "--hostname",
        "pykata",
    ]
    for package in config.ROOTFS_PACKAGES:
        argv += ["--package", package]
    for pattern in REMOVE_FILES:
        argv += ["--remove-files", pattern]
    argv.append("build")
    return argv


def _key(inputs: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def build_base(ctx: BuildContext) -> tuple[Path, dict[str, object]]:
    """The Debian tree from mkosi, cached by its configuration (the slow part: about a minute)."""
    work = ctx.rootfs_cache
    inputs: dict[str, object] = {"mkosi": [str(a) for a in mkosi_argv(Path("OUT"), Path("CACHE"))]}
    base = work / f"base-{_key(inputs)}"
    if (base / COMPLETE).exists():
        ctx.progress.say("rootfs", f"Debian base tree cached: {base}")
        return base, inputs
    for old in work.glob("base-*"):
        shutil.rmtree(old, ignore_errors=True)
    ctx.mkosi_cache.mkdir(parents=True, exist_ok=True)
    empty = work / "mkosi-cwd"  # mkosi reads mkosi.* files from its cwd: give it an empty one
    empty.mkdir(parents=True, exist_ok=True)
    with ctx.progress.step("rootfs", f"mkosi: Debian {config.DEBIAN_RELEASE} with {', '.join(config.ROOTFS_PACKAGES)}"):
        run(
            mkosi_argv(base.resolve(), ctx.mkosi_cache.resolve()),
            cwd=empty,
            env=ctx.env(),
            package="mkosi systemd-container",
            hint="mkosi failed building the Debian base tree",
        )
    (base / COMPLETE).write_text(json.dumps(inputs, sort_keys=True) + "\n")
    return base, inputs


def build(ctx: BuildContext) -> Rootfs:
    """The guest rootfs: the cached Debian base with pykata's staging tree on top (cached by both)."""
    requirements = config.python_requirements(ctx.source / "pyproject.toml")
    wheels = pydeps.with_dependencies(ctx, requirements)
    base, base_inputs = build_base(ctx)
    work = ctx.rootfs_cache
    staging = work / "staging"
    with ctx.progress.step("rootfs", "staging the agent and its Python dependencies"):
        stage(ctx, staging, wheels)
    inputs = {**base_inputs, "staging": tree_digest(staging), "epoch": ctx.epoch}
    key = _key(inputs)
    tree = work / f"tree-{key}"
    if (tree / COMPLETE).exists():
        ctx.progress.say("rootfs", f"cached: {tree}")
        return Rootfs(tree, key, requirements)
    for old in work.glob("tree-*"):
        shutil.rmtree(old, ignore_errors=True)
    with ctx.progress.step("rootfs", "copying the base tree and adding the agent"):
        run(["cp", "-a", "--reflink=auto", base, tree], package="coreutils")
        (tree / COMPLETE).unlink()
        run(["cp", "-a", f"{staging}/.", tree], package="coreutils")
    with ctx.progress.step("rootfs", "precompiling the agent and its dependencies"):
        compile_tree(tree / config.AGENT_LIB_DIR, "/" + config.AGENT_LIB_DIR)
    (tree / COMPLETE).write_text(json.dumps(inputs, sort_keys=True) + "\n")
    return Rootfs(tree, key, requirements)


def compile_tree(directory: Path, guest_path: str) -> None:
    """__pycache__ .pyc files with unchecked hashes, so the image boots without writing bytecode."""
    import compileall
    import py_compile

    compileall.compile_dir(
        directory,
        quiet=1,
        ddir=guest_path,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        workers=1,
    )
