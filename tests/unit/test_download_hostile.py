"""`builder download` against what issue 29 found: two runs into one --dest at once, listed names too long for a
partial file's flattened name, and listed names that hold control characters or line breaks (a hostile mirror forging
log lines). Real `builder` processes against the local Hub (tests/support/local_hub.py), as in test_download_safety.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from support.builder import builder_with_env as builder
from support.builder import one_line_error
from support.hub import files_under, hub_sha, sha256
from support.local_hub import LocalHub
from support.prerequisites import REPO

from builder.models import download as downloads

MiB = 1024**2
LOCK_REPO = "r1kit-test/lock-safetensors"
LOCK_FILES = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
WAITING = "waiting for it to finish"


@pytest.fixture(scope="module")
def lock_repo(local_hub: LocalHub) -> str:
    rng = random.Random(29)
    local_hub.add_repo(LOCK_REPO, {name: rng.randbytes(2 * MiB + 777 * i) for i, name in enumerate(LOCK_FILES)})
    return LOCK_REPO


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`command` started with stderr to `log` (read while it runs), and killed on the way out if it still runs."""
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(dest: Path, env: dict[str, str], log: Path):
    """`builder download` of the lock repo in parts of 1 MiB (see `running`)."""
    return running([sys.executable, "-m", "builder.cli", "download", LOCK_REPO, "--include", "*", "--dest", str(dest), "--part-size", "1M"], env, log)


def wait_until(what: str, condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline and proc.poll() is None, f"never saw: {what}"
        time.sleep(0.05)


def partial_bytes(dest: Path) -> int:
    return sum(p.stat().st_size for p in files_under(dest / ".r1kit" / "partial"))


def assert_complete_and_clean(hub: LocalHub, dest: Path) -> None:
    for name in LOCK_FILES:
        assert sha256(dest / name) == hub_sha(hub, LOCK_REPO, name)
    state = dest / ".r1kit"
    assert files_under(state / "partial") == []  # no partial file, no stale `.parts` record
    assert not (state / downloads.LOCK_NAME).exists()
    assert [p.name for p in state.iterdir() if p.name != "partial"] == [downloads._state_path(dest, downloads_selection()).name]


def downloads_selection():
    from builder.models import catalog

    return catalog.resolve(LOCK_REPO, ("*",), None)


# --- 1. one --dest, two runs at once ----------------------------------------------------------------------------------


@pytest.mark.parametrize("round", range(3))
def test_a_second_run_into_the_same_dest_waits_for_the_first_and_both_succeed(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path,
                                                                              lock_repo: str, round: int):
    dest = tmp_path / "models"
    with local_hub.faulty(total=3 * MiB):  # about 2 s for the first run's 6 MiB
        with start(dest, hub_env, tmp_path / "first.log") as first:
            wait_until("the first run's bytes", lambda: partial_bytes(dest) > 0, first)
            with start(dest, hub_env, tmp_path / "second.log") as second:
                out1, _ = first.communicate(timeout=120)
                out2, _ = second.communicate(timeout=120)
    err1, err2 = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert WAITING not in err1 and WAITING in err2, err2
    assert "already downloaded" in err2, err2  # it waited, then found the first run's files done
    assert "No such file" not in err1 + err2 and "Traceback" not in err1 + err2
    assert out1.strip() == out2.strip() == str(dest.resolve())
    assert_complete_and_clean(local_hub, dest)


def test_a_waiting_run_resumes_the_download_when_the_first_is_killed(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, lock_repo: str):
    dest = tmp_path / "models"
    with local_hub.faulty(total=2 * MiB):
        with start(dest, hub_env, tmp_path / "first.log") as first:
            wait_until("the first run's bytes", lambda: partial_bytes(dest) > MiB // 2, first)
            with start(dest, hub_env, tmp_path / "second.log") as second:
                wait_until("the second run waiting", lambda: WAITING in (tmp_path / "second.log").read_text(), second)
                first.send_signal(signal.SIGKILL)  # no cleanup at all: the kernel drops its lock
                first.wait(10)
                out2, _ = second.communicate(timeout=120)
    err2 = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, err2
    assert "going on" in err2 and "Traceback" not in err2, err2
    assert out2.strip() == str(dest.resolve())
    assert_complete_and_clean(local_hub, dest)


def test_a_waiting_run_stops_at_once_on_sigterm_and_the_first_run_goes_on(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, lock_repo: str):
    dest = tmp_path / "models"
    with local_hub.faulty(total=3 * MiB):
        with start(dest, hub_env, tmp_path / "first.log") as first:
            wait_until("the first run's bytes", lambda: partial_bytes(dest) > 0, first)
            with start(dest, hub_env, tmp_path / "second.log") as second:
                wait_until("the second run waiting", lambda: WAITING in (tmp_path / "second.log").read_text(), second)
                second.send_signal(signal.SIGTERM)  # docker stop of the waiting container
                second.communicate(timeout=5)
            first.communicate(timeout=120)
    err2 = (tmp_path / "second.log").read_text()
    assert second.returncode == 143, err2
    assert err2.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err2, err2
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    assert_complete_and_clean(local_hub, dest)


def test_a_dry_run_takes_no_lock_and_a_refused_run_leaves_no_lock_file(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, lock_repo: str):
    dest = tmp_path / "models"
    builder("download", LOCK_REPO, "--include", "*", "--dest", str(dest), "--dry-run", env=hub_env, check=True)
    assert not dest.exists()
    line = one_line_error(builder("download", LOCK_REPO, "--include", "*.gguf", "--dest", str(dest), env=hub_env))
    assert "nothing in" in line, line
    assert files_under(dest) == []


# --- 2. partial-file names within NAME_MAX, whatever the listed path's length -----------------------------------------


LONG_NAMES = [
    "/".join(["d" * 60] * 4) + "/model-Q4_K_M.gguf",  # 258 characters flattened, every component short
    "é" * 120 + "-Q4_K_M.gguf",  # 252 bytes in UTF-8 in one component
    "/".join(f"folder{i:02d}-" + "x" * 200 for i in range(12)) + "/deep-Q4_K_M.gguf",  # 2.5 kB of path
]


@pytest.mark.parametrize("listed", LONG_NAMES, ids=["four-folders", "utf8-component", "twelve-long-folders"])
def test_a_long_listed_name_downloads_and_resumes_from_the_same_partial_file(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, listed: str):
    repo = f"r1kit-test/long{len(local_hub.repos)}-GGUF"
    local_hub.add_repo(repo, {listed: os.urandom(400_000)})
    dest = tmp_path / "models"
    log = tmp_path / "first.log"
    command = [sys.executable, "-m", "builder.cli", "download", f"{repo}:Q4_K_M", "--dest", str(dest)]
    with local_hub.faulty(throttle=100_000), running(command, hub_env, log) as proc:
        wait_until("a partial file", lambda: partial_bytes(dest) > 50_000, proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 143, log.read_text()
    (partial,) = files_under(dest / ".r1kit" / "partial")
    kept = partial.stat().st_size
    assert len(partial.name.encode()) <= downloads.PARTIAL_NAME_MAX and kept > 50_000
    result = builder("download", f"{repo}:Q4_K_M", "--dest", str(dest), env=hub_env, check=True)
    ranges = [r.range for r in local_hub.requests_for(listed[-20:]) if r.range]
    assert ranges and ranges[-1] == f"bytes={kept}-", ranges  # the same partial file, found again: only the rest asked for
    assert sha256(dest / listed) == hub_sha(local_hub, repo, listed)
    assert result.stdout.strip() == str((dest / listed).resolve())
    assert files_under(dest / ".r1kit" / "partial") == []


def test_partial_names_stay_readable_distinct_and_within_the_limit():
    short = downloads.partial_name("a/b.gguf", "0123456789abcdef")
    assert short == "a__b.gguf.0123456789abcdef.part"  # unchanged: partial files of earlier runs still resume
    one, two = (downloads.partial_name("x" * 300 + suffix, "0123456789abcdef") for suffix in ("-1.gguf", "-2.gguf"))
    assert one != two and one.startswith("x" * 100)
    for name in ("é" * 300, "日本" * 200, "a/" * 1000 + "b"):
        flat = downloads.partial_name(name, "size5")
        assert len(flat.encode()) <= downloads.PARTIAL_NAME_MAX and flat.endswith(".size5.part")
        assert downloads.partial_name(name, "size5") == flat  # the same name every run: that is how resume finds it


def test_a_listed_name_no_file_system_can_hold_is_one_line(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    repo = f"r1kit-test/toolong{len(local_hub.repos)}-GGUF"
    listed = "y" * 300 + "-Q4_K_M.gguf"
    local_hub.add_repo(repo, {listed: os.urandom(5000)})
    line = one_line_error(builder("download", f"{repo}:Q4_K_M", "--dest", str(tmp_path / "m"), env=hub_env))
    assert repo in line and "bytes" in line and len(line) < 600, line
    assert files_under(tmp_path / "m") == []


# --- 3. control characters and line breaks in listed names ------------------------------------------------------------


HOSTILE = ["\n", "\r", "\x1b[2K", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x7f", "\x00", "\t"]


@pytest.mark.parametrize("ch", HOSTILE, ids=[repr(c) for c in HOSTILE])
@pytest.mark.parametrize("selected", [True, False], ids=["selected", "beside"])
def test_a_listed_name_with_a_control_character_is_refused_before_any_byte(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path,
                                                                            ch: str, selected: bool):
    repo = f"evil/Forge{len(local_hub.repos)}-GGUF"
    forged = f"x{ch}done: /models/ok.gguf (1 GiB)" + ("-Q4_K_M.gguf" if selected else ".txt")
    local_hub.add_repo(repo, {forged: os.urandom(5000), "model-Q4_K_M.gguf" if not selected else "README.md": os.urandom(5000)})
    before = len(local_hub.requests_for(".gguf"))
    dest = tmp_path / "m"
    result = builder("download", f"{repo}:Q4_K_M", "--dest", str(dest), env=hub_env)
    line = one_line_error(result)
    assert repo in line and "control character" in line and "done:" not in result.stderr.replace(line, ""), line
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert files_under(dest) == []
    assert len(local_hub.requests_for(".gguf")) == before
