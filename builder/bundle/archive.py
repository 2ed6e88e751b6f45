"""A bundle on disk, a folder or one tar file: written file by file with each file's sha256 taken as it streams, read
back member by member. Nothing is ever held in memory whole, and a tar bundle is written in one pass (a file whose
size is not known beforehand, `docker save`'s output, is first spooled beside it: images only, never the model)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from builder.bundle.manifest import MANIFEST, FileEntry, Manifest
from builder.core.errors import UserError

CHUNK = 8 * 1024 * 1024
Advance = Callable[[int], None]


class Counting:
    """A reader that reports the bytes passing through it (the progress bar)."""

    def __init__(self, source: BinaryIO, advance: Advance) -> None:
        self.source, self.advance = source, advance
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.size += len(data)
        self.advance(len(data))
        return data


class Hashing(Counting):
    """A reader that also takes the sha256 of what passes through it."""

    def __init__(self, source: BinaryIO, advance: Advance) -> None:
        super().__init__(source, advance)
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        self.digest.update(data)
        return data


def is_tar_name(path: Path) -> bool:
    return path.suffix == ".tar"


class BundleWriter:
    """Writes to a temporary name beside `out` (`.NAME.partial`) and renames it into place at finish(): a stopped
    save leaves no half bundle under the name given, and the next save removes the leftover."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tar_file = is_tar_name(out)
        self.partial = out.with_name(f".{out.name}.partial")
        self.entries: list[FileEntry] = []
        self.tar: tarfile.TarFile | None = None

    def __enter__(self) -> BundleWriter:
        remove(self.partial)  # a stopped save's leftover
        if self.tar_file:
            self.tar = tarfile.open(self.partial, "w", format=tarfile.PAX_FORMAT)
        else:
            self.partial.mkdir(parents=True)
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.tar is not None:
            self.tar.close()
        if kind is not None:
            remove(self.partial)

    def add(self, path: str, size: int, source: BinaryIO, advance: Advance) -> FileEntry:
        """`size` bytes from `source` as the bundle's `path`."""
        reader = Hashing(source, advance)
        if self.tar is not None:
            info = tarfile.TarInfo(path)
            info.size, info.mode = size, 0o644
            self.tar.addfile(info, reader)  # type: ignore[arg-type]
        else:
            target = self.partial / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
        if reader.size != size:
            raise UserError(f"{path}: {reader.size} bytes came where {size} were expected; nothing was saved")
        entry = FileEntry(path, size, reader.digest.hexdigest())
        self.entries.append(entry)
        return entry

    def add_chunks(self, path: str, chunks: Iterable[bytes], advance: Advance) -> FileEntry:
        """A stream of unknown size (`docker save`): straight into a folder bundle; spooled beside a tar bundle first."""
        if self.tar is None:
            target = self.partial / path
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            with target.open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    advance(len(chunk))
            entry = FileEntry(path, size, digest.hexdigest())
            self.entries.append(entry)
            return entry
        with tempfile.TemporaryFile(dir=self.partial.parent, prefix=f".{self.out.name}.spool.") as spool:
            for chunk in chunks:
                spool.write(chunk)
            size = spool.tell()
            spool.seek(0)
            return self.add(path, size, spool, advance)  # type: ignore[arg-type]

    def finish(self, manifest: Manifest) -> None:
        data = manifest.to_json().encode()
        if self.tar is not None:
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o644
            self.tar.addfile(info, _Bytes(data))  # type: ignore[arg-type]
            self.tar.close()
            self.tar = None
        else:
            (self.partial / MANIFEST).write_bytes(data)
        os.replace(self.partial, self.out)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class BundleReader:
    """A saved bundle: its manifest, and each member as a stream."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            return
        if not path.is_file():
            raise UserError(f"no bundle at {path}: give the folder or the .tar file `builder bundle save` wrote")
        try:
            self.tar = tarfile.open(path, "r:")
            self.members = {m.name: m for m in self.tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"{path} is not a bundle (not a readable tar file: {e}): give the folder or the .tar file `builder bundle save` wrote") from None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def manifest(self) -> Manifest:
        if not self.exists(MANIFEST):
            raise UserError(f"{self.path} holds no {MANIFEST}: not a bundle, or one whose save did not finish; save it again")
        with self.open(MANIFEST) as f:
            return Manifest.from_json(f.read().decode(errors="replace"), str(self.path))

    def exists(self, name: str) -> bool:
        if self.tar is not None:
            return name in self.members
        return (self.path / name).is_file()

    def size(self, name: str) -> int:
        return self.members[name].size if self.tar is not None else (self.path / name).stat().st_size

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        if self.tar is not None:
            f = self.tar.extractfile(self.members[name])
            assert f is not None
            with f:
                yield f  # type: ignore[misc]
        else:
            with (self.path / name).open("rb") as f:
                yield f

    def verify(self, manifest: Manifest, advance: Advance) -> None:
        """Every file the manifest names, present with its size and sha256; the first that is not, in one line."""
        for entry in manifest.files:
            if not self.exists(entry.path):
                raise UserError(f"{self.path}: {entry.path} is missing from the bundle: nothing was loaded; copy the bundle again")
            if self.size(entry.path) != entry.size:
                raise UserError(f"{self.path}: {entry.path} is {self.size(entry.path)} bytes, the manifest says {entry.size}: nothing was loaded; copy the bundle again")
            digest = hashlib.sha256()
            with self.open(entry.path) as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    advance(len(chunk))
            if digest.hexdigest() != entry.sha256:
                raise UserError(f"{self.path}: {entry.path} is corrupt (its sha256 differs from the manifest's): nothing was loaded; copy the bundle again")
