"""`builder download` as a sequence: the done check, preflight, fetch, merge, Modelfile and path file.

The steps themselves live in download.py (the Hub, files, merges) and modelfile.py; this module orders them for one
request, so that the CLI only parses options and prints the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.core.errors import UserError
from builder.core.paths import atomic_write, check_file, check_folder
from builder.core.progress import DownloadProgress, human
from builder.models import catalog, download, modelfile


@dataclass(frozen=True)
class Request:
    """`builder download`'s options, as the command line parsed them."""

    model: str | None
    dest: Path
    include: tuple[str, ...]
    revision: str | None
    dry_run: bool
    verify: bool
    merge: Path | None
    force: bool
    modelfile: Path | None
    num_ctx: int
    num_gpu: int | str | None
    path_file: Path | None
    min_free: int | None
    connections: int
    part_size: int


@dataclass(frozen=True)
class Outcome:
    """What the command prints on stdout: the plan (a dry run) or the path the engine loads."""

    lines: tuple[str, ...]


def run(o: Request) -> Outcome:
    selection = catalog.resolve(o.model or catalog.load().default, o.include, o.revision)
    dest, merge, modelfile_path = o.dest, o.merge, o.modelfile
    gpu_layers = num_gpu(o.num_gpu, selection)
    if modelfile_path and selection.model and selection.model.format != "gguf":
        raise UserError(f"--modelfile is for GGUF models; {selection.label} is {selection.model.format}")
    # Every output's folder is checked before the download: a path under a regular file used to fail only after it.
    check_folder(dest, "--dest", writable=False)  # a finished download in a read-only folder still answers
    for flag, path in (("--merge", merge), ("--modelfile", modelfile_path), ("--path-file", o.path_file)):
        if path is not None:
            check_file(path, flag)
    if o.part_size < download.PART_SIZE_MIN:
        raise UserError(f"--part-size {human(o.part_size)} is too small: give 1M or more (each part costs a request)")
    progress = DownloadProgress()
    dest = dest.resolve()
    if o.dry_run:  # writes nothing, so it takes no lock and never waits for a run in progress
        plan = download.plan(selection, dest, download.read_token(), merge=merge, force=o.force, min_free=o.min_free)
        return Outcome(tuple(download.describe(plan)))
    with download.locked(dest, progress.note):  # a second run into DEST waits here for the first
        return fetch_and_finish(o, selection, dest, progress, gpu_layers)


def fetch_and_finish(o: Request, selection: catalog.Selection, dest: Path, progress: DownloadProgress, gpu_layers: int | None) -> Outcome:
    """The run itself, under DEST's lock: leftovers cleaned, the download (or the finished one found), then the
    merge, Modelfile and path file."""
    merge, modelfile_path = o.merge, o.modelfile
    download.clean_leftovers(dest, selection)
    engine = None if o.verify else download.done(selection, dest)
    if engine is not None:
        progress.note(f"{selection.label}: already downloaded and verified in {dest}")
    else:
        check_folder(dest, "--dest")
        token = download.read_token()
        plan = download.plan(selection, dest, token, merge=merge, force=o.force, min_free=o.min_free)
        if modelfile_path:  # checked before a byte is fetched
            check_modelfile_source(plan.format == "gguf", len(plan.gguf_files) > 1, merge)
        for line in download.describe(plan):
            progress.note(line)
        try:
            download.fetch(plan, token, progress, verify=o.verify, connections=o.connections, part_size=o.part_size)
        except OSError as e:  # a disk filled by someone else meanwhile
            raise UserError(f"{e.filename or dest}: {e.strerror or e}; run the same command again to resume") from None
        engine = plan.engine_path
    if modelfile_path is not None:  # again for a finished download, which made no plan
        check_modelfile_source(engine.suffix == ".gguf", bool(catalog.SHARD.match(engine.name)), merge)
    if merge is not None:
        if engine.suffix != ".gguf":
            raise UserError("--merge is for GGUF models")
        engine = download.merge(dest, selection, engine, merge, force=o.force, note=progress.note)
    if modelfile_path is not None:
        template = selection.model.template if selection.model else None
        text = modelfile.render(modelfile.from_path(engine, modelfile_path), template=template, num_ctx=o.num_ctx, num_gpu=gpu_layers)
        atomic_write(modelfile_path.resolve(), text)
        progress.note(f"wrote {modelfile_path}")
    if o.path_file is not None:
        atomic_write(o.path_file.resolve(), f"{engine}\n")
    progress.note(f"done: {engine} ({human(engine.stat().st_size) if engine.is_file() else 'folder'})")
    return Outcome((str(engine),))


def check_modelfile_source(gguf: bool, sharded: bool, merge: Path | None) -> None:
    """An Ollama Modelfile names one GGUF file: a merged one where the model is sharded."""
    if not gguf:
        raise UserError("--modelfile is for GGUF models")
    if sharded and merge is None:
        raise UserError("--modelfile needs one GGUF file: add --merge OUT.gguf to join the shards")


def num_gpu(value: int | str | None, selection: catalog.Selection) -> int | None:
    if value is None:
        # Every layer: the blocks plus the output layer, which ollama counts as one more.
        layers = selection.model.layers if selection.model else None
        return layers + 1 if layers else None
    return None if value == "auto" else int(value)
