"""The bundle commands: `builder bundle save` and `builder bundle load` (docs/offline.md)."""

from __future__ import annotations

from pathlib import Path

import click

from builder.bundle import load, save
from builder.core.errors import Stopped
from builder.core.paths import repo_root
from builder.core.progress import human


def stacks_folder(given: Path | None) -> Path:
    return (given or repo_root() / "stacks").resolve()


@click.group("bundle")
def bundle() -> None:
    """Carry a stack to a host without network: its images, model, files and settings in one verified bundle."""


@bundle.command("save")
@click.argument("stack")
@click.argument("model", required=False)
@click.option("--to", "to", required=True, type=click.Path(path_type=Path), metavar="DIR|FILE.tar",
              help="Where the bundle goes: a new folder, or one file ending in .tar.")
@click.option("--stacks", "stacks", type=click.Path(file_okay=False, path_type=Path), help="The stacks folder (default: the checkout's stacks/).")
def save_command(stack: str, model: str | None, to: Path, stacks: Path | None) -> None:
    """Save STACK (llamacpp, llamacpp-cpu, vllm, ...) with MODEL (default: what its settings name) into one bundle:
    every image it runs, the model from its volume, the stack files and settings, and a manifest of checksums."""
    manifest = save.run(save.SaveRequest(stack, model, to.absolute(), stacks_folder(stacks)))
    click.echo(f"saved {manifest.stack} with {manifest.model.name} ({len(manifest.images)} images, {human(manifest.total)}) to {to}")


@bundle.command("load")
@click.argument("path", metavar="DIR|FILE.tar", type=click.Path(path_type=Path))
@click.option("--stacks", "stacks", type=click.Path(file_okay=False, path_type=Path), help="Where the stack files and settings go (default: the checkout's stacks/).")
@click.option("--force", is_flag=True, help="Replace stack files that differ from the bundle's.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Check free space here instead of Docker's data root (where its images and volumes live).")
def load_command(path: Path, stacks: Path | None, force: bool, data_root: Path | None) -> None:
    """Check free space in Docker's data root, verify every checksum of a bundle, then load its images, stack files,
    settings and model volume. A load that stopped part-way is resumed by running it again."""
    try:
        manifest = load.run(load.LoadRequest(path.absolute(), stacks_folder(stacks), force, data_root))
    except Stopped as e:
        raise Stopped(e.signum, "run the same load again to finish it") from None
    click.echo(f"loaded {manifest.stack} with {manifest.model.name}: start it with `builder up --offline`, or "
               f"`docker compose {' '.join(f'-f {f}' for f in manifest.compose_files)} -f offline.yml up -d` in {stacks_folder(stacks)}")


COMMANDS = (bundle,)
