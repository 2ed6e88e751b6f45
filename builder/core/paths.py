"""Where the repository's data folders (images/, stacks/) are, and checks and writes of the paths a command is given."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from builder.core.errors import UserError, shown

MAX_DEPTH = 256  # folders in a path this tool creates (Path.mkdir recurses once per missing folder)


def repo_root() -> Path:
    """The checkout holding images/: $BUILDER_ROOT, else the folder above this package."""
    root = Path(os.environ.get("BUILDER_ROOT") or Path(__file__).resolve().parents[2])
    if not (root / "images").is_dir():
        raise UserError(f"no images/ folder under {root}: install builder from a checkout (pip install -e .) or set BUILDER_ROOT")
    return root


def find_repo_root() -> Path | None:
    """The checkout, or None where the builder package runs without one (the model-init image)."""
    root = Path(os.environ.get("BUILDER_ROOT") or Path(__file__).resolve().parents[2])
    return root if (root / "images").is_dir() else None


def images_dir() -> Path:
    return repo_root() / "images"


def check_folder(path: Path, what: str, *, writable: bool = True) -> None:
    """`path` can become a folder that we write into: it is one, or its nearest existing ancestor is a writable
    folder. Checked before any work starts, so that `-o FILE/sub` or `--dest FILE/sub` fails at once in one line
    rather than half-way (after a download) with a traceback."""
    if len(path.parts) > MAX_DEPTH:
        raise UserError(f"{what} {shown(str(path))}: {len(path.parts)} folders deep, more than the {MAX_DEPTH} this tool makes")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is not a folder")
    if writable and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {probe} is not writable by this user (uid {os.getuid()})")


def check_file(path: Path, what: str) -> None:
    """`path` can be written as a file: not a folder, and its folder can be made and written into."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    check_folder(path.parent, what)


def output_file(path: Path, what: str, *, force: bool = False, overwrite: bool = False) -> Path:
    """The file to write for an output option (`-o`, `--write`, `--json`, ...), checked before any work starts.

    A symlink is followed, and the path returned is its target (the caller says so): the user's link stays a link.
    An existing target must be a regular file; a FIFO, a device or a socket is refused even with --force. An existing
    file (or a dangling link) is replaced only with `force`, or where the command updates files in place
    (`overwrite`). A missing parent folder is created by the write; one that cannot be is refused here."""
    target = path
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if target.is_symlink():  # realpath stops at a link it cannot resolve: a loop, which writing would replace
            raise UserError(f"{what} {path} is a link that never reaches a file (a loop of links)")
    if target.exists() or path.is_symlink():
        if target.is_dir():
            raise UserError(f"{what} {path} is a folder, not a file")
        if target.exists() and not target.is_file():
            raise UserError(f"{what} {path} is not a regular file (a FIFO, device or socket): write to a file")
        if not (force or overwrite):
            raise UserError(f"{what} {path} exists: give --force to replace it")
    check_folder(target.parent, what)
    if target.exists() and not os.access(target, os.W_OK):
        raise UserError(f"{what} {path} is not writable by this user (uid {os.getuid()})")
    return target


def atomic_write(path: Path, content: str | Callable[[Path], None], *, mode: int = 0o644,
                 check: Callable[[Path], None] | None = None) -> None:
    """The whole file under `path` or nothing: `content` (text, or a function that writes the file it is given) goes
    to a temp file in the same folder, `check` may refuse it, and a rename puts it in place. An interrupted or refused
    write leaves the old file as it was and no temp file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "w") as out:
                out.write(content)
        if check is not None:
            check(tmp)
        os.chmod(tmp, mode)  # 0644 by default: readable by the engines' users, like the model files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
