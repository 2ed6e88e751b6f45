"""The plan command: the best model, engine and settings for a machine, optionally written into a stack's .env."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import click

from builder.core.errors import shown
from builder.core.paths import output_file
from builder.models import catalog
from builder.plan import envfile, hardware, planner


@click.command("plan")
@click.argument("model", required=False)
@click.option("--engine", help="llamacpp, ollama or vllm (default: the best the model allows).")
@click.option("--ctx", "context", type=click.IntRange(256, catalog.CONTEXT_MAX), help="Context length in tokens (default 8192).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--write", type=click.Path(dir_okay=False, path_type=Path), metavar="ENV_FILE", help="Set the plan's variables in a stack's .env file (e.g. stacks/.env), keeping its other lines.")
@click.option("--gpus", help="Describe the GPUs instead of detecting them: 4xRTX4090, 2x80 (GiB each), 24,24, or none.")
@click.option("--ram", "ram_gib", type=click.FloatRange(1, 1 << 20), help="RAM the engine may use, in GiB (default: this machine's available).")
@click.option("--cores", type=click.IntRange(1, 4096), help="Physical CPU cores (default: this machine's).")
@click.option("--numa", type=click.IntRange(1, 64), help="NUMA nodes (default: this machine's).")
@click.option("--cpu", help="The best of the CPU's vector extensions: amx, avx512, avx2 or baseline (default: this machine's).")
@click.option("--ram-bandwidth", type=click.FloatRange(1, 100000), help="Memory bandwidth in GB/s, for the speed estimate (default: a guess from the cores).")
@click.option("--nodes", type=click.IntRange(1, 1024), default=1, show_default=True, help="Identical machines (vLLM across nodes).")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default="models", show_default=True, envvar="BUILDER_MODELS_DIR", help="Where models go (its free space is checked).")
def plan_command(model: str | None, engine: str | None, context: int | None, as_json: bool, write: Path | None, dest: Path, **machine: Any) -> None:
    """The best model, engine and settings for this machine (or one the flags describe). MODEL is a catalog name
    or a downloaded .gguf (its header gives the exact sizes); without it, the best DeepSeek-R1 variant that fits."""
    target = output_file(write, "--write", overwrite=True) if write is not None else None  # refused before any work
    box = hardware.describe(**machine, models_dir=dest)
    chosen, passed = planner.choose(catalog.load(), box, model, engine, context)
    click.echo(json.dumps({**chosen.as_json(), "passed_over": passed}, indent=2) if as_json else planner.report(chosen, box, passed))
    if write is not None and target is not None:
        write_settings(write, target, chosen.settings)


def write_settings(write: Path, target: Path, settings: Mapping[str, str]) -> None:
    """The plan's settings into the .env file, each change said on stderr; a link's target is written and the link
    kept, and that is said too (the user named the link, the file that changes is another)."""
    if write.is_symlink():
        click.echo(f"{write} is a link: writing its target {target}", err=True)
    changes = envfile.update(target, settings)
    for change in changes:
        was = f" (was {shown(change.old)})" if change.old is not None else " (added)"
        click.echo(f"{write}: {change.key}={change.new}{was}", err=True)
    if not changes:
        click.echo(f"{write}: already up to date", err=True)


COMMANDS = (plan_command,)
