"""A throwaway copy of the checkout, and `builder` run in-process against it: for tests that change what a real run
of a command (sync, pin, bump) would change."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.builder import builder_in_process
from support.prerequisites import REPO


def builder(*args: str, root: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """In-process (BUILDER_ROOT and the cwd are read per call, not at import)."""
    return builder_in_process(*args, check=False, capture_output=True, cwd=root,
                              env={**os.environ, "BUILDER_ROOT": str(root), **(env or {})})


def copy_repo(dest: Path) -> Path:
    """The checkout as git would hand it over (tracked and new files, nothing ignored), as a fresh repository."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], check=True)
    return dest
