"""`builder bundle save`: a stack's images, its model (from the model volume), its files and settings, and a
manifest with the size and sha256 of each, into one folder or one tar file."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException, NoSuchImage

from builder.bundle import stack as stacks
from builder.bundle import volume
from builder.bundle.archive import BundleWriter, is_tar_name
from builder.bundle.manifest import (
    IMAGES,
    MODEL,
    SETTINGS,
    STACKS,
    ImageEntry,
    Manifest,
    ModelEntry,
)
from builder.core.errors import UserError, shown
from builder.core.paths import check_folder
from builder.core.progress import DownloadProgress, human
from builder.models import catalog, download


@dataclass(frozen=True)
class SaveRequest:
    stack: str
    model: str | None
    to: Path
    stacks: Path


@dataclass(frozen=True)
class Image:
    id: str
    refs: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class VolumeModel:
    """The model as model-init left it in the volume: its files (path -> size, sha256) and its records."""

    files: dict[str, tuple[int, str | None]]
    records: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.files.values())


def local_images(docker: DockerClient, stack: stacks.ResolvedStack) -> list[Image]:
    """Each image the stack runs, present on this host, once per image ID with every ref it goes by."""
    by_id: dict[str, Image] = {}
    for ref in stack.images:
        try:
            found = docker.image.inspect(ref)
        except NoSuchImage:
            raise UserError(f"image {ref} (stack {stack.name}) is not present locally: build or pull it, then save again") from None
        known = by_id.get(found.id)
        refs = (*known.refs, ref) if known else (ref,)
        by_id[found.id] = Image(found.id, refs, tuple(found.repo_digests or ()), int(found.size or 0))
    return list(by_id.values())


def downloaded_model(docker: DockerClient, stack: stacks.ResolvedStack) -> VolumeModel:
    """The finished download of the stack's model in its volume, from model-init's own records (the state file
    `builder download` keeps under .r1kit/); a one-line refusal where there is none."""
    fix = "start the stack once (model-init downloads it), then save again"
    if not docker.volume.exists(stack.volume):
        raise UserError(f"model {stack.model} is not downloaded: there is no volume {stack.volume}; {fix}")
    selection = catalog.resolve(stack.model)
    # The same state file model-init reads to find a download complete (builder/models/download.py).
    state_path = download._state_path(Path(stacks.MODEL_ROOT), selection).relative_to(stacks.MODEL_ROOT).as_posix()
    raw = volume.read(stack.model_init_image, stack.volume, state_path)
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        state = {}
    if not state.get("complete"):
        raise UserError(f"model {stack.model} is not (completely) downloaded in volume {stack.volume}; {fix}")
    files = {path: (int(r["size"]), r.get("sha256")) for path, r in state["files"].items()}
    records = [state_path]
    if stack.path_file and volume.read(stack.model_init_image, stack.volume, stack.path_file) is not None:
        records.append(stack.path_file)
    return VolumeModel(files, tuple(records))


def check_output(to: Path) -> None:
    if to.exists() or to.is_symlink():
        raise UserError(f"--to {to} exists: remove it or choose another path (a bundle is never written over)")
    check_folder(to.parent, "--to")


def check_space(to: Path, needed: int) -> None:
    where = to.parent
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    keep = download.margin(needed)
    if needed + keep > free:
        raise UserError(f"not enough space in {where}: the bundle needs about {human(needed)} (+ {human(keep)} margin), {human(free)} is free; "
                        "choose another --to (a disk you carry), or free some space")


def run(r: SaveRequest) -> Manifest:
    check_output(r.to)
    env = stacks.environment(r.model)
    stack = stacks.resolve(r.stacks, r.stack, env)
    settings = stacks.settings(stack, env)
    docker = DockerClient()
    images = local_images(docker, stack)
    model = downloaded_model(docker, stack)
    stack_files = sorted(p for p in r.stacks.rglob("*") if p.is_file() and p.name != ".env")
    # A tar bundle spools one image at a time beside it: room for the largest once more.
    spool = max((i.size for i in images), default=0) if is_tar_name(r.to) else 0
    check_space(r.to, sum(i.size for i in images) + model.size + spool + sum(p.stat().st_size for p in stack_files))

    progress = DownloadProgress(verb="save")
    steps = [*(f"image {i.refs[0]}" for i in images), *model.files]
    progress.start(sum(i.size for i in images) + model.size, len(steps))
    try:
        with BundleWriter(r.to) as out:
            for n, image in enumerate(images, 1):
                progress.file_start(n, steps[n - 1], image.size)
                try:
                    out.add_chunks(f"{IMAGES}/{n:02d}.tar", docker.image.save(list(image.refs)), lambda k, n=n: progress.advance(n, k))
                except DockerException as e:
                    raise UserError(f"docker save {image.refs[0]} failed: {shown(str(e.stderr or e).strip()[-300:], 300)}") from None
                progress.file_done(n)
            save_model(out, stack, model, progress, first=len(images) + 1)
            for path in stack_files:
                with path.open("rb") as f:
                    out.add(f"{STACKS}/{path.relative_to(r.stacks).as_posix()}", path.stat().st_size, f, lambda k: None)
            text = "".join(f"{k}={v}\n" for k, v in settings.items()).encode()
            out.add(SETTINGS, len(text), io.BytesIO(text), lambda k: None)
            manifest = Manifest(
                stack=stack.name, compose_files=stack.files,
                model=ModelEntry(stack.model, stacks.MODEL_VOLUME, tuple(model.files), model.records),
                images=tuple(ImageEntry(f"{IMAGES}/{n:02d}.tar", i.id, i.refs, i.repo_digests) for n, i in enumerate(images, 1)),
                files=tuple(out.entries),
            )
            out.finish(manifest)
    finally:
        progress.close()
    return manifest


def save_model(out: BundleWriter, stack: stacks.ResolvedStack, model: VolumeModel, progress: DownloadProgress, first: int) -> None:
    """The model's files and model-init's records, streamed out of the volume as tar and into the bundle; each file's
    sha256, taken as it streams, must be the one the download recorded."""
    index = {path: n for n, path in enumerate(model.files, first)}
    with volume.exported(stack.model_init_image, stack.volume, [*model.files, *model.records]) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                n = index.get(member.name)
                if n is not None:
                    progress.file_start(n, member.name, member.size)
                source = tar.extractfile(member)
                assert source is not None
                entry = out.add(f"{MODEL}/{member.name}", member.size, source, (lambda k, n=n: progress.advance(n, k)) if n else (lambda k: None))  # type: ignore[misc]
                if n is None:
                    continue
                size, sha = model.files[member.name]
                if entry.size != size or (sha and entry.sha256 != sha):
                    raise UserError(f"{member.name} in volume {stack.volume} differs from its download record (size or sha256): "
                                    f"run `builder download {stack.model} --verify` into it (or start the stack), then save again")
                progress.file_done(n)
