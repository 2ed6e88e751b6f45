"""`builder download` against hostile or awkward input (issue 15): listings that point outside --dest, outputs it did
not write, paths it cannot write, killed and stopped runs, and the free-space margin. Real `builder` subprocesses
against the local Hub (tests/support/local_hub.py), as in test_download.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import download as downloads
from builder.errors import UserError
from conftest import DISTILL_FILE, DISTILL_REPO, R1_REPO
from support.local_hub import LocalHub
from support.prerequisites import REPO
from test_download import SHARDS, builder, files_under, hub_sha, one_line_error, sha256

MiB = 1024**2


def gguf_gets(hub: LocalHub) -> int:
    return len(hub.requests_for(".gguf"))


# --- 1. no byte outside --dest -------------------------------------------------------------------------------------


@pytest.mark.parametrize("listed", [
    "../../escape-Q4_K_M.gguf",
    "ABSOLUTE",  # an absolute path under the test's folder (filled in below)
    "models/../../../escape-Q4_K_M.gguf",
    "models\\..\\..\\escape-Q4_K_M.gguf",  # a Windows-style path: no Hub path holds a backslash
    "link/escape-Q4_K_M.gguf",  # a path through a symlink inside DEST that leads out of it
])
def test_a_listing_path_outside_dest_is_refused_before_any_byte(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, listed: str):
    top = tmp_path / "top"
    dest = top / "a" / "b" / "dest"
    outside = top / "outside"
    outside.mkdir(parents=True)
    if listed == "ABSOLUTE":
        listed = str(top / "abs-escape-Q4_K_M.gguf")
    if listed.startswith("link/"):
        dest.mkdir(parents=True)
        (dest / "link").symlink_to(outside)
    repo = f"evil/Escape{len(local_hub.repos)}-GGUF"
    local_hub.add_repo(repo, {listed: os.urandom(5000), "README.md": b"# hostile\n"})
    before = gguf_gets(local_hub)
    line = one_line_error(builder("download", f"{repo}:Q4_K_M", "--dest", str(dest), env=hub_env))
    assert "outside" in line and "escape-Q4_K_M.gguf" in line, line
    assert files_under(top) == []  # nothing written, anywhere: not the file, not a partial, not a marker
    assert list(outside.iterdir()) == []
    assert gguf_gets(local_hub) == before  # refused before the fetch


def test_a_safe_path_is_checked_against_dest_resolved():
    dest = Path("/srv/models")
    assert downloads.target_in(dest, "DeepSeek-R1-UD-IQ1_S/x-00001-of-00003.gguf") == dest / "DeepSeek-R1-UD-IQ1_S/x-00001-of-00003.gguf"
    for bad in ("", "a//b", "./a", "a/./b", "..", "a/..", "C:/x.gguf", "a\x00b", "/etc/passwd"):
        with pytest.raises(UserError):
            downloads.target_in(dest, bad)
