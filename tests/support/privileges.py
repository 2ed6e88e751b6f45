"""What a few tests need root for (a small tmpfs, a PID namespace), had without skipping: directly as root (the
development machines and CI), through passwordless sudo or a user namespace elsewhere (GitHub's runners), and a
failure naming what is missing where neither works: a skipped test proves nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def as_root(*argv: str) -> list[str]:
    """argv run as root: as it is when we are root, else through `sudo -n`."""
    if os.geteuid() == 0:
        return list(argv)
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", *argv]
    pytest.fail(f"{argv[0]} needs root: run the suite as root or with passwordless sudo")


def as_pid_1(*argv: str) -> list[str]:
    """argv as PID 1 of a new PID namespace (as in a container without an init), owned by this user so that the
    test can signal it: a user namespace maps us to root inside where we are not root outside."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to run a process as PID 1")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--pid", "--fork", "--kill-child", *argv]


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 2m) on `folder`, writable by everyone, unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(as_root("mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(folder)), check=True)
    try:
        yield folder
    finally:
        subprocess.run(as_root("umount", str(folder)), check=True)
