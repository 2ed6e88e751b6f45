"""`builder bundle load`: every checksum verified before anything is loaded, then the images, the stack files and
settings, and the model volume filled as model-init would have filled it. Before any of it, the free space of
Docker's data root against what the load will write there. Each step finds what an earlier run (finished or killed)
already did and does only the rest, so a rerun ends in the same state (and needs no space for what is there)."""

from __future__ import annotations

import shutil
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
from builder.core.progress import DownloadProgress, human
from builder.doctor import checks
from builder.models.download import margin, sha256_of
from builder.plan import envfile


@dataclass(frozen=True)
class LoadRequest:
    bundle: Path
    stacks: Path
    force: bool
    data_root: Path | None  # where to measure free space instead of Docker's data root (docker info's DockerRootDir)


@dataclass(frozen=True)
class SpaceNeeded:
    """Bytes a load writes under Docker's data root: the images not stored yet, the largest image to load once more
    (dockerd untars each `docker load` stream whole under its data root's tmp/ before storing the layers, even
    layers it has), and the model files not yet in the volume (a volume lives under the data root too)."""

    images: int
    unpack: int
    model: int

    @property
    def total(self) -> int:
        return self.images + self.unpack + self.model

    def parts(self) -> str:
        named = [(self.images, "images"), (self.unpack, "one image unpacked by docker load"), (self.model, "model")]
        return ", ".join(f"{what} {human(n)}" for n, what in named if n) or "nothing new"


def run(r: LoadRequest) -> Manifest:
    check_folder(r.stacks, "--stacks")
    reader = BundleReader(r.bundle)
    try:
        manifest = reader.manifest()
        stack_files = [f.path for f in manifest.files if f.path.startswith(f"{STACKS}/")]
        check_stack_files(reader, manifest, stack_files, r.stacks, r.force)
        # An offline host: the engines' own Hub lookups off too (stacks/shared/services.yml reads it).
        settings = read_settings(reader) | {"HF_HUB_OFFLINE": "1"}
        # Space first: a disk too small is said at once, not after verifying hundreds of GB.
        root = space_root(r.data_root)
        docker = DockerClient()
        check_space(root, r.data_root is not None, space_needed(docker, manifest, stack_files, r.stacks, settings))
        verify(reader, manifest)
        # Loading starts here: nothing above wrote anything.
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


def space_root(given: Path | None) -> Path:
    """Where the load's bytes land: Docker's data root, found as doctor's disk check finds it, or `given`."""
    info = checks.docker_info(shutil.which("docker"))
    root = checks.data_root(info, given)
    if info is None or root is None:
        raise UserError("no Docker daemon answers (it loads the images, and says where they and the volumes go): "
                        "start it (sudo systemctl start docker), then load again; nothing was loaded")
    return root


def check_space(root: Path, given: bool, need: SpaceNeeded) -> None:
    """Free space at `root` against what the load will write there, in one line where it does not fit."""
    where = f"{root} (--data-root)" if given else f"{root} (Docker's data root)"
    try:
        free = shutil.disk_usage(root).free
    except OSError as e:
        raise UserError(f"cannot see the free space of {where} ({e.strerror or e}): "
                        "give --data-root, a folder on the disk where Docker keeps images and volumes; nothing was loaded") from None
    keep = margin(need.total)
    if need.total + keep > free:
        raise UserError(f"not enough space in {where}: the load needs about {human(need.total)} ({need.parts()}) + {human(keep)} margin, "
                        f"{human(free)} is free; free {human(need.total + keep - free)} there (or move Docker's data root to a larger disk), "
                        "then load again; nothing was loaded")
    DownloadProgress(verb="load").note(f"load: space: {need.parts()} to write in {where}, {human(free)} free")


def space_needed(docker: DockerClient, manifest: Manifest, stack_files: list[str], folder: Path, settings: dict[str, str]) -> SpaceNeeded:
    """What is not here yet: an image under all its refs and a model file in the volume need nothing again."""
    to_load = [i for i in manifest.images if not image_here(docker, i)]
    sizes = {i.file: manifest.entry(i.file).size for i in to_load}
    present = model_in_place(docker, manifest, stack_files, folder, settings)
    return SpaceNeeded(images=sum(sizes[i.file] for i in to_load if not docker.image.exists(i.id)),
                       unpack=max(sizes.values(), default=0),
                       model=sum(manifest.entry(f"{MODEL}/{p}").size for p in manifest.model.files if p not in present))


def model_in_place(docker: DockerClient, manifest: Manifest, stack_files: list[str], folder: Path, settings: dict[str, str]) -> set[str]:
    """The model files an earlier load (stopped or whole) put in the stack's volume. Only once that load wrote the
    stack files (each as the bundle has it) can the volume be named, and it is read only where it and the model-init
    image are here: a `docker run` would create a missing volume."""
    if not all(stack_file_in_place(manifest, path, folder) for path in stack_files):
        return set()
    # The settings as the load writes them into .env, under this process's environment, as compose ranks them.
    stack = stacks.resolve(folder, manifest.stack, settings | stacks.environment(None))
    if not (docker.volume.exists(stack.volume) and docker.image.exists(stack.model_init_image)):
        return set()
    return volume.survey(stack.model_init_image, stack.volume, model_spec(manifest))


def stack_file_in_place(manifest: Manifest, path: str, folder: Path) -> bool:
    target = folder / path.removeprefix(f"{STACKS}/")
    return target.is_file() and sha256_of(target) == manifest.entry(path).sha256


def image_here(docker: DockerClient, image: ImageEntry) -> bool:
    return all(_image_id(docker, ref) == image.id for ref in image.refs)


def load_image(docker: DockerClient, reader: BundleReader, image: ImageEntry, count: str) -> None:
    """`docker load` the image unless it is here already under every ref, then tag its refs to its ID."""
    if image_here(docker, image):
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
    spec = model_spec(manifest)
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


def model_spec(manifest: Manifest) -> dict:
    """The filler's SPEC (builder/bundle/volume_fill.py): each model file's size and sha256, and the records."""
    model = manifest.model
    return {"files": {p: [manifest.entry(f"{MODEL}/{p}").size, manifest.entry(f"{MODEL}/{p}").sha256] for p in model.files},
            "records": list(model.records)}
