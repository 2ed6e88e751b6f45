"""The model commands: models (the catalog) and download."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from builder.core.errors import Stopped, UserError, shown
from builder.models import catalog, download, steps

LAYERS_MAX = 1024


class Size(click.ParamType):
    """A size such as 500M or 2G (download.parse_size)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return download.parse_size(str(value))
        except UserError as e:
            self.fail(str(e), param, ctx)


class Layers(click.ParamType):
    """--num-gpu: a number of layers, or `auto`."""

    name = "layers"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        text = str(value)
        if text == "auto" or isinstance(value, int):
            return value
        if not text.isdigit() or len(text) > 4 or int(text) > LAYERS_MAX:
            self.fail(f"{shown(text)} is not a number of layers (0 to {LAYERS_MAX}) or auto", param, ctx)
        return int(text)


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as a JSON array.")
def list_models(as_json: bool) -> None:
    """The model catalog: what `builder download NAME` fetches."""
    cat = catalog.load()
    rows = [{**dataclasses.asdict(m), "default": m.name == cat.default} for m in cat.models.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(name) for name in cat.models)
    for m in cat.models.values():
        size = f"~{m.approx_size_gb:g} GB" if m.approx_size_gb else "?"
        shards = f"{m.shards} files" if m.shards else "1 file"
        mark = " (default)" if m.name == cat.default else ""
        click.echo(f"{m.name:<{width}} {size:>10} {shards:>9}  {m.format:<11} {','.join(m.engines):<30} {m.description}{mark}")


@click.command("download")
@click.argument("model", required=False)
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default="models", show_default=True, envvar="BUILDER_MODELS_DIR",
              help="Folder the files land in, as DEST/<path in the repo> ($BUILDER_MODELS_DIR).")
@click.option("--include", "include", multiple=True, metavar="GLOB", help="Files of the repo to fetch (repeat); replaces a catalog entry's patterns.")
@click.option("--revision", help="Branch, tag or commit of the repo (default: the catalog's, or main).")
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, destination, free space) and fetch nothing.")
@click.option("--verify", is_flag=True, help="Hash every file again, even those a previous run verified.")
@click.option("--merge", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.gguf",
              help="Also join the shards into one file (llama-gguf-split; a single file is hard-linked).")
@click.option("--force", is_flag=True, help="Let --merge overwrite an existing OUT.gguf that builder did not write.")
@click.option("--modelfile", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH", help="Also write an Ollama Modelfile.")
@click.option("--num-ctx", type=click.IntRange(512, catalog.CONTEXT_MAX), default=8192, show_default=True, help="The Modelfile's context length.")
@click.option("--num-gpu", type=Layers(), help="The Modelfile's layers on the GPU: a number, or auto to let ollama decide (default: every layer where the catalog knows the count).")
@click.option("--path-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", help="Also write the engine's model path to FILE.")
@click.option("--min-free", type=Size(), metavar="SIZE",
              help="Space to leave free after the download, e.g. 500M or 2G (default: 3% of what is written, at least 16 MiB).")
@click.option("--connections", type=click.IntRange(1, download.CONNECTIONS_MAX), default=download.CONNECTIONS, show_default=True,
              help="Ranged requests at once, across files and parts of a file (1 for a slow or shared link).")
@click.option("--part-size", type=Size(), default=download.PART_SIZE, metavar="SIZE", show_default="64M",
              help="Large files are fetched in parts of this size, each resumable on its own.")
def download_command(**options: Any) -> None:
    """Fetch MODEL (a catalog name, OWNER/REPO:QUANT, or OWNER/REPO --include GLOB; default: the catalog's default)
    into DEST, resumably and verified; print the path the engine loads."""
    with download.stop_on_signals():
        try:
            click.echo("\n".join(steps.run(steps.Request(**options)).lines))
        except Stopped as e:
            raise Stopped(e.signum, "what was fetched is kept: run the same command again to resume") from None


COMMANDS = (list_models, download_command)
