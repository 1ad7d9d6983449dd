"""``osbuilder kernel | rootfs | initrd | image | all``: build a pykata guest."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agent.system.run import CommandError, CommandNotFound
from osbuilder import config, image, initrd, manifest, rootfs
from osbuilder.context import DEFAULT_WORKDIR, BuildContext, source_date_epoch
from osbuilder.kernel import distro
from osbuilder.progress import Progress


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--output",
        "-o",
        type=click.Path(path_type=Path),
        default=Path("build/guest"),
        show_default=True,
        help="where the results go",
    )(func)
    func = click.option(
        "--workdir",
        type=click.Path(path_type=Path),
        default=DEFAULT_WORKDIR,
        show_default=True,
        help="caches: downloads, unpacked kernel, rootfs trees, wheels",
    )(func)
    return click.option("--quiet", "-q", is_flag=True, help="no progress lines")(func)


def _context(output: Path, workdir: Path, quiet: bool) -> BuildContext:
    ctx = BuildContext(workdir=workdir, output=output, epoch=source_date_epoch(), progress=Progress(quiet))
    ctx.ensure()
    return ctx


def _kernel(ctx: BuildContext, package: str | None) -> distro.GuestKernel:
    kernel = distro.prepare(ctx, package)
    shutil.copyfile(kernel.vmlinuz, ctx.output / "vmlinuz")
    return kernel


@click.group()
def cli() -> None:
    """Build the pykata guest: kernel, rootfs, initrd and disk image."""


@cli.command()
@_common
@click.option("--source", "from_source", is_flag=True, help="build from linux-source with kernel-config/ fragments")
@click.option("--package", default=None, help="Debian kernel package (default: what linux-image-amd64 names)")
def kernel(output: Path, workdir: Path, quiet: bool, from_source: bool, package: str | None) -> None:
    """The guest kernel (vmlinuz) and its module load list."""
    ctx = _context(output, workdir, quiet)
    if from_source:
        from osbuilder.kernel import source

        source.build(ctx, ctx.output / "vmlinuz")
        return
    built = _kernel(ctx, package)
    (ctx.output / "modules.load").write_text(built.modules_load())
    click.echo(f"{ctx.output / 'vmlinuz'} ({built.release})")


@cli.command(name="rootfs")
@_common
def rootfs_command(output: Path, workdir: Path, quiet: bool) -> None:
    """The Debian rootfs tree with the agent (cached in the workdir)."""
    ctx = _context(output, workdir, quiet)
    built = rootfs.build(ctx)
    click.echo(str(built.tree))


COMPRESSION_HELP = (
    "initrd compression. The 29 MiB initrd is 11.1 MiB as gzip, 12.9 lz4, 9.0 zstd, 7.8 xz; unpacking under "
    "TCG took 1.8 s from gzip, 0.8 s lz4, 1.3 s zstd, 5.7 s xz when the kernel unpacked all of it; it now "
    "unpacks the 13 MiB the first Check needs, and /init the rest (gzip inside) once the agent serves"
)


_compression = click.option(
    "--compression",
    type=click.Choice(initrd.COMPRESSIONS),
    default=initrd.DEFAULT_COMPRESSION,
    show_default=True,
    help=COMPRESSION_HELP,
)
SOURCE_HELP = "for a kernel built with `osbuilder kernel --source` (everything built in: no modules)"


@cli.command(name="initrd")
@_common
@_compression
@click.option("--measure-parts", is_flag=True, help="also compress each part on its own to report its share")
@click.option("--source", "from_source", is_flag=True, help=SOURCE_HELP)
def initrd_command(output: Path, workdir: Path, quiet: bool, compression: str, measure_parts: bool,
                   from_source: bool) -> None:  # fmt: skip
    """initrd.img: the agent as /init with the kernel's modules."""
    ctx = _context(output, workdir, quiet)
    kernel = None if from_source else _kernel(ctx, None)
    result = initrd.build(ctx, rootfs.build(ctx), kernel, compression, measure=measure_parts)
    click.echo("\n".join(initrd.report(result)))


@cli.command(name="image")
@_common
def image_command(output: Path, workdir: Path, quiet: bool) -> None:
    """rootfs.img: a partitioned raw disk with the ext4 root."""
    ctx = _context(output, workdir, quiet)
    image.build(ctx, rootfs.build(ctx).tree, ctx.output / "rootfs.img")


@cli.command(name="all")
@_common
@_compression
@click.option("--source", "from_source", is_flag=True, help="the kernel from linux-source and kernel-config/")
def all_command(output: Path, workdir: Path, quiet: bool, compression: str, from_source: bool) -> None:
    """vmlinuz, initrd.img, rootfs.img and manifest.json."""
    ctx = _context(output, workdir, quiet)
    kernel_inputs: dict[str, object]
    if from_source:
        from osbuilder.kernel import source

        source.build(ctx, ctx.output / "vmlinuz")
        kernel = None
        kernel_inputs = source.describe(ctx)
    else:
        kernel = _kernel(ctx, None)
        kernel_inputs = {"package": kernel.package, "version": kernel.package_version, "release": kernel.release,
                         "modules": kernel.guest_modules}  # fmt: skip
    tree = rootfs.build(ctx)
    result = initrd.build(ctx, tree, kernel, compression)
    disk = image.build(ctx, tree.tree, ctx.output / "rootfs.img")
    inputs: dict[str, object] = {
        "kernel": kernel_inputs,
        "debian": config.DEBIAN_RELEASE,
        "rootfs_packages": list(config.ROOTFS_PACKAGES),
        "python_requirements": tree.python_requirements,
        "rootfs_key": tree.key,
        "source_date_epoch": ctx.epoch,
        "initrd_compression": compression,
        "image_cmdline": config.IMAGE_CMDLINE,
    }
    path = manifest.write(ctx.output, inputs, [ctx.output / "vmlinuz", result.image, disk])
    click.echo("\n".join(initrd.report(result)))
    click.echo(str(path))


def main() -> None:
    """Console entry point: domain failures print one line naming what failed and exit 1."""
    try:
        cli(standalone_mode=False)
    except (CommandError, CommandNotFound, FileNotFoundError, LookupError, ValueError, RuntimeError) as exc:
        click.echo(f"osbuilder: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
