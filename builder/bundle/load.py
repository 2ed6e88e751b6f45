"""`builder bundle load`: every checksum verified before anything is loaded, then the images, the stack files and
settings, and the model volume filled as model-init would have filled it. Each step finds what an earlier run
(finished or killed) already did and does only the rest, so a rerun ends in the same state."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException, NoSuchImage

from builder.bundle import stack as stacks
from builder.bundle import volume
from builder.bundle.archive import CHUNK, BundleReader, Counting
from builder.bundle.manifest import MODEL, SETTINGS, STACKS, ImageEntry, Manifest
from builder.core.errors import UserError, shown
from builder.core.paths import atomic_write, check_folder
from builder.core.progress import DownloadProgress
from builder.models.download import sha256_of
from builder.plan import envfile


@dataclass(frozen=True)
class LoadRequest:
    bundle: Path
    stacks: Path
    force: bool


def run(r: LoadRequest) -> Manifest:
    check_folder(r.stacks, "--stacks")
    reader = BundleReader(r.bundle)
    try:
        manifest = reader.manifest()
        verify(reader, manifest)
        stack_files = [f.path for f in manifest.files if f.path.startswith(f"{STACKS}/")]
        check_stack_files(reader, manifest, stack_files, r.stacks, r.force)
        # An offline host: the engines' own Hub lookups off too (stacks/shared/services.yml reads it).
        settings = read_settings(reader) | {"HF_HUB_OFFLINE": "1"}
        # Loading starts here: nothing above wrote anything.
        docker = DockerClient()
        for n, image in enumerate(manifest.images, 1):
            load_image(docker, reader, image, f"{n}/{len(manifest.images)}")
        write_stack_files(reader, stack_files, r.stacks)
        envfile.update(r.stacks / ".env", settings)
        fill_volume(docker, reader, manifest, r.stacks)
    finally:
        reader.close()
    return manifest


def verify(reader: BundleReader, manifest: Manifest) -> None:
    progress = DownloadProgress(verb="verify")
    progress.start(manifest.total, 1)
    progress.file_start(1, f"{len(manifest.files)} files of {reader.path.name}", manifest.total)
    try:
        reader.verify(manifest, lambda k: progress.advance(1, k))
        progress.file_done(1)
    finally:
        progress.close()


def check_stack_files(reader: BundleReader, manifest: Manifest, paths: list[str], dest: Path, force: bool) -> None:
    """The bundle's stack files go to --stacks; one there that differs is the user's, replaced only with --force."""
    for path in paths:
        target = dest / path.removeprefix(f"{STACKS}/")
        if target.is_dir():
            raise UserError(f"{target} is a folder where the bundle has a file: move it away, or give another --stacks")
        if not force and target.is_file() and sha256_of(target) != manifest.entry(path).sha256:
            raise UserError(f"{target} differs from the bundle's {path}: give --force to replace it, or --stacks an empty folder; nothing was loaded")


def read_settings(reader: BundleReader) -> dict[str, str]:
    with reader.open(SETTINGS) as f:
        lines = f.read().decode(errors="replace").splitlines()
    settings = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not envfile.KEY.fullmatch(key):
            raise UserError(f"{reader.path}: {SETTINGS} holds a line that is not KEY=VALUE: {shown(line)}")
        settings[key] = value
    return settings


def load_image(docker: DockerClient, reader: BundleReader, image: ImageEntry, count: str) -> None:
    """`docker load` the image unless it is here already under every ref, then tag its refs to its ID."""
    if all(_image_id(docker, ref) == image.id for ref in image.refs):
        DownloadProgress(verb="load").note(f"load: image {count} {image.refs[0]}: already here")
        return
    DownloadProgress(verb="load").note(f"load: image {count} {image.refs[0]} ({image.id[:19]})")
    with reader.open(image.file) as f:
        try:
            docker.image.load(iter(lambda: f.read(CHUNK), b""), quiet=True)
        except DockerException as e:
            raise UserError(f"docker load of {image.file} failed: {shown(str(e.stderr or e).strip()[-300:], 300)}; run the same load again") from None
    if not docker.image.exists(image.id):
        raise UserError(f"{image.file} loaded, but no image {image.id} is here now: the bundle's image is not the one its manifest names")
    for ref in image.refs:
        docker.image.tag(image.id, ref)


def _image_id(docker: DockerClient, ref: str) -> str | None:
    try:
        return docker.image.inspect(ref).id
    except NoSuchImage:
        return None


def write_stack_files(reader: BundleReader, paths: list[str], dest: Path) -> None:
    for path in paths:
        target = dest / path.removeprefix(f"{STACKS}/")
        mode = 0o755 if path.endswith(".sh") else 0o644

        def copy(tmp: Path, path: str = path) -> None:
            with reader.open(path) as source, tmp.open("wb") as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)

        atomic_write(target, copy, mode=mode)


def fill_volume(docker: DockerClient, reader: BundleReader, manifest: Manifest, folder: Path) -> None:
    """The stack's model volume (as compose names it on this host) with the bundle's model, written by the stack's
    own model-init image: only the files not already in place, then model-init's records."""
    stack = stacks.resolve(folder, manifest.stack, stacks.environment(None))
    model = manifest.model
    if stack.model != model.name:
        raise UserError(f"MODEL is {stack.model} in this environment, the bundle carries {model.name}: unset MODEL (stacks/.env now names the bundle's)")
    if not docker.volume.exists(stack.volume):
        # Labelled as compose labels its own, so that `up` takes it as the stack's volume and `down -v` removes it.
        docker.volume.create(stack.volume, labels={"com.docker.compose.project": stack.project, "com.docker.compose.volume": stacks.MODEL_VOLUME})
    spec = {"files": {p: [manifest.entry(f"{MODEL}/{p}").size, manifest.entry(f"{MODEL}/{p}").sha256] for p in model.files},
            "records": list(model.records)}
    present = volume.survey(stack.model_init_image, stack.volume, spec)
    wanted = [p for p in model.files if p not in present]
    progress = DownloadProgress(verb="load")
    progress.start(sum(manifest.entry(f"{MODEL}/{p}").size for p in wanted), len(wanted))
    progress.note(f"load: model {model.name} into volume {stack.volume}: {len(wanted)} of {len(model.files)} file(s) to write")

    def write(stdin: BinaryIO) -> None:
        with tarfile.open(fileobj=stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for n, path in enumerate([*wanted, *model.records], 1):
                entry = manifest.entry(f"{MODEL}/{path}")
                info = tarfile.TarInfo(path)
                info.size, info.mode = entry.size, 0o644
                counted = n <= len(wanted)
                if counted:
                    progress.file_start(n, path, entry.size)
                with reader.open(entry.path) as f:
                    tar.addfile(info, Counting(f, (lambda k, n=n: progress.advance(n, k)) if counted else (lambda k: None)))  # type: ignore[arg-type]
                if counted:
                    progress.file_done(n)

    try:
        volume.fill(stack.model_init_image, stack.volume, spec, write)
    finally:
        progress.close()
