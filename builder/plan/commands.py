"""The plan command: the best model, engine and settings for a machine, optionally written into a stack's .env."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Mapping

import click

from builder.core.errors import UserError, shown
from builder.core.paths import output_file
from builder.models import catalog
from builder.models.shapes import from_gguf
from builder.plan import envfile, hardware, measure, planner


@click.command("plan")
@click.argument("model", required=False)
@click.option("--engine", help="llamacpp, ollama, vllm or ktransformers (default: the best the model allows; ktransformers only when named).")
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
@click.option("--measure", "measured", is_flag=True, help="Run llama-bench on the plan's candidates and llama.cpp's own fit here, and keep the fastest (MODEL: a downloaded .gguf; the result is cached beside it). Each candidate loads the model once.")
@click.option("--llama-bench", "llama_bench", metavar="COMMAND", help="How --measure runs llama-bench, e.g. 'docker run --rm --gpus all -v /models:/models IMAGE llama-bench' (the image's entrypoint) or a path (default: llama-bench).")
def plan_command(model: str | None, engine: str | None, context: int | None, as_json: bool, write: Path | None, dest: Path,
                 measured: bool, llama_bench: str | None, **machine: Any) -> None:
    """The best model, engine and settings for this machine (or one the flags describe). MODEL is a catalog name
    or a downloaded .gguf (its header gives the exact sizes); without it, the best DeepSeek-R1 variant that fits."""
    command = _bench_command(measured, llama_bench, model, engine)
    target = output_file(write, "--write", overwrite=True) if write is not None else None  # refused before any work
    box = hardware.describe(**machine, models_dir=dest)
    chosen, passed = planner.choose(catalog.load(), box, model, engine, context)
    extra: dict[str, Any] = {}
    if command is not None and model is not None:
        path = Path(model)
        result = measure.measure(chosen, from_gguf(path), box, path, command, say=lambda line: click.echo(line, err=True))
        if result.cache_note:
            click.echo(f"note: {result.cache_note}", err=True)
        click.echo(f"{'reused the measurement in' if result.cached else 'cached the measurement in'} {result.cache}", err=True)
        chosen, extra = result.plan, result.as_json()
    click.echo(json.dumps({**chosen.as_json(), "passed_over": passed, **extra}, indent=2) if as_json else planner.report(chosen, box, passed))
    if write is not None and target is not None:
        write_settings(write, target, chosen.settings)


def _bench_command(measured: bool, llama_bench: str | None, model: str | None, engine: str | None) -> list[str] | None:
    """llama-bench's command line for --measure, checked before any work; None without --measure."""
    if not measured:
        if llama_bench is not None:
            raise UserError("--llama-bench is for --measure: add --measure, or leave --llama-bench out")
        return None
    if model is None or not (model.endswith(".gguf") or "/" in model):
        raise UserError("--measure runs the model: give the downloaded .gguf path as MODEL (builder download, then its file)")
    if engine not in (None, "llamacpp"):
        raise UserError(f"--measure runs llama-bench, so it plans for llama.cpp, not --engine {engine}; leave --engine out")
    try:
        command = shlex.split(llama_bench if llama_bench is not None else "llama-bench")
    except ValueError as e:
        raise UserError(f"--llama-bench {shown(llama_bench or '')}: not a command line ({e}); quote it as a shell would") from None
    if not command:
        raise UserError("--llama-bench is empty: give the llama-bench command (a path, or docker run ... IMAGE llama-bench)")
    return command


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
