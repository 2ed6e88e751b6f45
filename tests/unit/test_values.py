"""The one validation layer (builder/core/values.py) and the output-file rule (builder/core/paths.output_file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.core.errors import UserError
from builder.core.paths import output_file
from builder.core.values import LINE_BREAKS, matching, plain

# Every character some reader ends a line at, other control characters, and escapes.
HOSTILE = [*sorted(LINE_BREAKS), "\x00", "\x1b", "\x7f", "\x9b"]


@pytest.mark.parametrize("ch", HOSTILE, ids=lambda c: f"U+{ord(c):04X}")
def test_a_control_character_anywhere_is_refused_in_one_line(ch: str):
    for value in (f"/etc/r1/key{ch}touch /tmp/pwned #", f"{ch}x", f"x{ch}"):
        with pytest.raises(UserError) as e:
            plain(value, "--api-key-file")
        message = str(e.value)
        assert "\n" not in message and "--api-key-file" in message and "control character" in message


def test_printable_text_passes_unchanged():
    for value in ("/etc/r1 keys/key-é.txt", "0.0.0.0", "a;b|c$(d)", "\u00e9\u4e2d"):
        assert plain(value, "x") == value
    assert plain("a\tb", "x", allow_tab=True) == "a\tb"
    with pytest.raises(UserError):
        plain("a\tb", "x")


def test_matching_is_a_full_match():
    assert matching(r"[0-9.]+", "0.0.0.0", "--host", "an IPv4 address") == "0.0.0.0"
    for bad in ("0.0.0.0\n", "0.0.0.0 x", "x0.0.0.0"):
        with pytest.raises(UserError):
            matching(r"[0-9.]+", bad, "--host", "an IPv4 address")


def test_output_file_refuses_what_it_must_not_replace(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for force in (False, True):
        with pytest.raises(UserError, match="not a regular file"):
            output_file(fifo, "-o", force=force)
        with pytest.raises(UserError, match="is a folder"):
            output_file(tmp_path, "-o", force=force)
    with pytest.raises(UserError, match="not a regular file"):
        output_file(Path("/dev/null"), "-o", force=True)
    existing = tmp_path / "job.sbatch"
    existing.write_text("mine")
    with pytest.raises(UserError, match="give --force"):
        output_file(existing, "-o")
    assert output_file(existing, "-o", force=True) == existing
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(UserError, match="give --force"):
        output_file(dangling, "-o")


def test_output_file_follows_a_link_and_makes_missing_folders_writable(tmp_path: Path):
    real = tmp_path / "real.env"
    real.write_text("A=1\n")
    link = tmp_path / ".env"
    link.symlink_to(real)
    assert output_file(link, "--write", overwrite=True) == real
    assert output_file(tmp_path / "new" / "deeper" / "out.json", "--json") == tmp_path / "new" / "deeper" / "out.json"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="is not a folder"):
        output_file(blocker / "x.json", "--json")
