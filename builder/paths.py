"""Where the repository's data folders (images/, stacks/) are."""

from __future__ import annotations

import os
from pathlib import Path

from builder.errors import UserError


def repo_root() -> Path:
    """The checkout holding images/: $BUILDER_ROOT, else the folder above this package."""
    root = Path(os.environ.get("BUILDER_ROOT") or Path(__file__).resolve().parent.parent)
    if not (root / "images").is_dir():
        raise UserError(f"no images/ folder under {root}: install builder from a checkout (pip install -e .) or set BUILDER_ROOT")
    return root


def images_dir() -> Path:
    return repo_root() / "images"
