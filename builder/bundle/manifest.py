"""A bundle's manifest (manifest.json): what it holds, and the size and sha256 of every other file in it.

Layout, the same in a folder and in one tar file:

    manifest.json          this
    images/NN.tar          `docker save` of one image (every ref the stack names for it)
    model/PATH             the model's files as the volume holds them (PATH relative to the volume's root), and
                           model-init's records under model/.r1kit/ (the download's state, the engine's path file)
    stacks/...             the stack files (stacks/ without its .env)
    settings.env           the stack's settings (the variables its files read, secrets left out)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from builder.core.errors import UserError, shown

FORMAT = "r1kit-bundle/1"
MANIFEST = "manifest.json"
IMAGES = "images"
MODEL = "model"
STACKS = "stacks"
SETTINGS = "settings.env"


@dataclass(frozen=True)
class FileEntry:
    path: str  # in the bundle, `/`-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class ImageEntry:
    file: str  # images/NN.tar
    id: str  # the image's config digest (sha256:...), what `docker load` must give back
    refs: tuple[str, ...]  # the names the stack runs it by, tagged again on load
    repo_digests: tuple[str, ...]  # registry digests where it was pulled or pushed (none for a local build)


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what the stack's MODEL names
    volume: str  # the stack's volume key model-init writes to (`models`)
    files: tuple[str, ...]  # the model's files, relative to the volume's root (each also under model/ here)
    records: tuple[str, ...]  # model-init's own files under .r1kit/, relative to the volume's root


@dataclass(frozen=True)
class Manifest:
    stack: str
    compose_files: tuple[str, ...]  # relative to stacks/
    model: ModelEntry
    images: tuple[ImageEntry, ...]
    files: tuple[FileEntry, ...]  # every file of the bundle but this manifest
    format: str = FORMAT

    def entry(self, path: str) -> FileEntry:
        return next(f for f in self.files if f.path == path)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise UserError(f"{where}: {MANIFEST} is of format {shown(raw.get('format'))}, not {FORMAT}: load it with the builder that saved it")
            model = raw["model"]
            manifest = cls(
                stack=str(raw["stack"]),
                compose_files=tuple(str(f) for f in raw["compose_files"]),
                model=ModelEntry(str(model["name"]), str(model["volume"]), tuple(map(str, model["files"])), tuple(map(str, model["records"]))),
                images=tuple(ImageEntry(str(i["file"]), str(i["id"]), tuple(map(str, i["refs"])), tuple(map(str, i["repo_digests"]))) for i in raw["images"]),
                files=tuple(FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in raw["files"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{where}: {MANIFEST} is not a bundle manifest (unreadable or a field missing): copy the bundle again") from None
        named = {f.path for f in manifest.files}
        wanted = {i.file for i in manifest.images} | {f"{MODEL}/{p}" for p in (*manifest.model.files, *manifest.model.records)} | {SETTINGS}
        if not wanted <= named:
            raise UserError(f"{where}: {MANIFEST} names no checksum for {', '.join(sorted(wanted - named))}: copy the bundle again")
        return manifest
