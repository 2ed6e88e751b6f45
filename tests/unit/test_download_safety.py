"""`builder download` against hostile or awkward input (issue 15): listings that point outside --dest, outputs it did
not write, paths it cannot write, killed and stopped runs, and the free-space margin. Real `builder` subprocesses
against the local Hub (tests/support/local_hub.py), as in test_download.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import privileges
from support.builder import builder_with_env as builder
from support.builder import one_line_error
from support.hub import (
    DISTILL_FILE,
    DISTILL_REPO,
    R1_REPO,
    SHARDS,
    files_under,
    hub_sha,
    sha256,
)
from support.local_hub import LocalHub
from support.prerequisites import REPO
from support.signals import dispositions

from builder.core.errors import UserError
from builder.models import download as downloads

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


# --- 2. --merge records its output and never overwrites a file it did not write -----------------------------------


def test_merge_never_overwrites_a_file_it_did_not_write(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest, out, modelfile = tmp_path / "models", tmp_path / "out.gguf", tmp_path / "Modelfile"
    out.write_text("not a model\n")
    before = gguf_gets(local_hub)
    line = one_line_error(builder("download", "--dest", str(dest), "--merge", str(out), "--modelfile", str(modelfile), env=hub_env))
    assert "--force" in line and str(out) in line
    assert out.read_text() == "not a model\n" and not modelfile.exists()
    assert gguf_gets(local_hub) == before  # refused in the preflight
    builder("download", "--dest", str(dest), "--merge", str(out), "--modelfile", str(modelfile), "--force", env=hub_env, check=True)
    assert sha256(out) == hub_sha(local_hub, DISTILL_REPO, DISTILL_FILE)
    assert modelfile.read_text().startswith("FROM ./out.gguf\n")


def test_a_merged_output_changed_afterwards_is_detected_and_merged_again(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest, out, modelfile = tmp_path / "models", tmp_path / "merged" / "r1.gguf", tmp_path / "merged" / "Modelfile"
    args = ("download", "--dest", str(dest), "--merge", str(out), "--modelfile", str(modelfile))
    builder(*args, env=hub_env, check=True)
    out.unlink()  # replaced (not edited in place: the model file shares its inode)
    out.write_text("not a model\n")
    again = builder(*args, env=hub_env, check=True)
    assert "merging again" in again.stderr, again.stderr
    assert sha256(out) == hub_sha(local_hub, DISTILL_REPO, DISTILL_FILE)


@pytest.fixture()
def fake_gguf_split(tmp_path: Path) -> Path:
    """A stand-in for llama.cpp's llama-gguf-split (not installed on the test machines): `--merge FIRST OUT` writes
    the shards' bytes, concatenated. What is checked here is the bookkeeping around the tool, not the GGUF."""
    folder = tmp_path / "bin"
    folder.mkdir()
    tool = folder / "llama-gguf-split"
    tool.write_text(f"""#!{sys.executable}
import re, sys
from pathlib import Path
first, out = Path(sys.argv[2]), Path(sys.argv[3])
stem = re.sub(r"-00001-of-(\\d{{5}})\\.gguf$", "", first.name)
with out.open("wb") as f:
    for shard in sorted(first.parent.glob(stem + "-*-of-*.gguf")):
        f.write(shard.read_bytes())
""")
    tool.chmod(0o755)
    return folder


def test_a_merge_of_shards_is_recorded_and_a_stale_output_is_merged_again(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, fake_gguf_split: Path):
    env = dict(hub_env, PATH=f"{fake_gguf_split}:{hub_env['PATH']}")
    dest, out = tmp_path / "models", tmp_path / "models" / "merged" / "r1.gguf"
    args = ("download", "r1-671b-ud-iq1_s", "--dest", str(dest), "--merge", str(out))
    builder(*args, env=env, check=True)
    whole = b"".join(local_hub.repos[R1_REPO].files[s].data for s in SHARDS)
    assert out.read_bytes() == whole
    records = list((dest / ".r1kit").glob("merge-*.json"))
    assert len(records) == 1 and all(s in records[0].read_text() for s in SHARDS)
    mtime = out.stat().st_mtime_ns
    assert "merging" not in builder(*args, env=env, check=True).stderr  # recorded: nothing to do
    assert out.stat().st_mtime_ns == mtime
    out.write_bytes(b"x" * 10)  # truncated in place
    again = builder(*args, env=env, check=True)
    assert "merging again" in again.stderr and out.read_bytes() == whole


# --- 3. bad input is one line and exit 2, before any download -------------------------------------------------------


@pytest.mark.parametrize("repo", ["a/..", "a/-b", "a/b..c", "a/" + "b" * 98, "a/b--c", "a/b.git"])
def test_repo_ids_the_hub_rejects_are_one_line_errors(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, repo: str):
    before = len(local_hub.requests)
    line = one_line_error(builder("download", f"{repo}:Q4_K_M", "--dest", str(tmp_path / "m"), env=hub_env))
    assert "not a Hub repository id" in line and len(line) < 300, line
    assert len(local_hub.requests) == before and not (tmp_path / "m").exists()


@pytest.mark.parametrize("flag", ["--path-file", "--modelfile", "--merge", "--dest"])
def test_an_output_under_a_regular_file_is_refused_before_the_download(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, flag: str):
    afile = tmp_path / "afile"
    afile.write_text("a regular file\n")
    dest = tmp_path / "models"
    args = ["--dest", str(afile / "sub")] if flag == "--dest" else ["--dest", str(dest), flag, str(afile / "sub" / "x")]
    before = gguf_gets(local_hub)
    line = one_line_error(builder("download", *args, env=hub_env))
    assert f"{afile} is not a folder" in line and "again" not in line, line
    assert gguf_gets(local_hub) == before and not dest.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--num-ctx", str(10**30)], "--num-ctx"),
    (["--num-ctx", "100"], "--num-ctx"),
    (["--num-gpu", str(10**30)], "--num-gpu"),
    (["--num-gpu", "-1"], "--num-gpu"),
    (["--min-free", "banana"], "--min-free"),
    (["--min-free", "-5M"], "--min-free"),
    (["--min-free", "1" + "0" * 100_000], "longer than 4096 characters"),  # the CLI's bound on every argument, first
    (["--bogus"], "--bogus"),
])
def test_bad_options_are_one_line_errors_before_any_request(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, args: list[str], message: str):
    before = len(local_hub.requests)
    result = builder("download", "--dest", str(tmp_path / "m"), *args, env=hub_env)
    line = one_line_error(result)
    assert message in line and "--help" in line and len(line) < 400, line
    assert len(local_hub.requests) == before and not (tmp_path / "m").exists()


# --- 4. leftovers of a killed run -----------------------------------------------------------------------------------


def test_temp_files_a_killed_run_left_are_cleaned_on_the_next_run(hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    builder("download", "--dest", str(dest), env=hub_env, check=True)
    (marker,) = (dest / ".r1kit").glob("*.json")
    # Killed between writing a marker and renaming it: atomic_write's temp name (mkstemp's) stays behind.
    stale = [dest / ".r1kit" / f".{marker.name}.k1ll3d_{i}.tmp" for i in range(2)]
    for path in stale:
        path.write_text("{}")
    other = dest / ".r1kit" / ".0123456789abcdef.json.notours.tmp"  # another selection's: left alone
    other.write_text("{}")
    result = builder("download", "--dest", str(dest), env=hub_env, check=True)  # the instant path (done marker)
    assert "already downloaded" in result.stderr
    assert not any(p.exists() for p in stale) and other.exists()
    # ... and on a run that fetches (the marker is gone, so it verifies and writes it again).
    marker.unlink()
    stale[0].write_text("{}")
    builder("download", "--dest", str(dest), env=hub_env, check=True)
    assert not stale[0].exists()


# --- 5. SIGTERM (docker stop) and Ctrl-C ----------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _start(hub_env: dict[str, str], dest: Path, *, as_pid_1: bool) -> tuple[subprocess.Popen, int]:
    """builder download as a subprocess; as_pid_1 runs it as PID 1 of a new PID namespace, as in a container
    without an init, where the kernel drops every signal PID 1 has no handler for. Returns the process and the pid
    to signal."""
    command = [sys.executable, "-m", "builder.cli", "download", "r1-671b-ud-iq1_s", "--dest", str(dest)]
    if as_pid_1:
        command = privileges.as_pid_1(*command)
    proc = subprocess.Popen(command, cwd=REPO, env=hub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=dispositions())
    if not as_pid_1:
        return proc, proc.pid
    deadline = time.monotonic() + 10
    while not _children(proc.pid):
        assert time.monotonic() < deadline and proc.poll() is None, "unshare started no child"
        time.sleep(0.05)
    return proc, _children(proc.pid)[0]


def _wait_for_partial(proc: subprocess.Popen, partial_dir: Path, size: int) -> None:
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > size for p in files_under(partial_dir)):
        assert time.monotonic() < deadline and proc.poll() is None, "the download never got going"
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "status", "as_pid_1"), [
    (signal.SIGTERM, 143, True),  # docker stop, to a builder that is PID 1 (model-init)
    (signal.SIGTERM, 143, False),
    (signal.SIGINT, 130, False),  # Ctrl-C
])
def test_a_stopped_download_exits_promptly_keeps_its_partial_file_and_resumes(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path,
                                                                               signum: int, status: int, as_pid_1: bool):
    dest = tmp_path / "models"
    partial_dir = dest / ".r1kit" / "partial"
    with local_hub.faulty(throttle=40_000):  # about 5 s for the first shard
        proc, pid = _start(hub_env, dest, as_pid_1=as_pid_1)
        try:
            _wait_for_partial(proc, partial_dir, 50_000)
            os.kill(pid, signum)
            sent = time.monotonic()
            _, err = proc.communicate(timeout=10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    assert took < 2, f"took {took:.1f} s to stop"
    assert proc.returncode == status, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "run the same command again to resume" in last, err
    # The three shards are fetched at once (each one part: they are far below --part-size), each kept as it was.
    kept = {path: (partial_dir / f"{path.replace('/', '__')}.{hub_sha(local_hub, R1_REPO, path)[:16]}.part").stat().st_size for path in SHARDS}
    assert len(files_under(partial_dir)) == 3 and all(size > 0 for size in kept.values()), kept
    assert max(kept.values()) > 50_000 and not any((dest / path).exists() for path in SHARDS)
    result = builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), env=hub_env, check=True)
    for path in SHARDS:
        ranges = [r.range for r in local_hub.requests_for(path) if r.range]
        assert ranges and int(ranges[-1].removeprefix("bytes=").split("-")[0]) == kept[path]  # asked for the rest only
    for path in SHARDS:
        assert sha256(dest / path) == hub_sha(local_hub, R1_REPO, path)
    assert result.stdout.strip() == str(dest / SHARDS[0]) and files_under(partial_dir) == []


# --- 6. --merge of a single file links it ---------------------------------------------------------------------------


def test_merge_of_a_single_file_links_it_and_the_preflight_counts_no_copy(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    out = dest / "merged" / "r1.gguf"
    plan = builder("download", "--dest", str(dest), "--merge", str(out), "--dry-run", env=hub_env, check=True)
    assert "to merge" not in plan.stdout, plan.stdout  # a hard link writes no bytes
    builder("download", "--dest", str(dest), "--merge", str(out), env=hub_env, check=True)
    model = dest / DISTILL_FILE
    assert out.stat().st_ino == model.stat().st_ino and model.stat().st_nlink == 2


def test_merge_onto_another_filesystem_counts_the_copy(hub_env: dict[str, str], tmp_path: Path, small_volume: Path):
    plan = builder("download", "--dest", str(tmp_path / "models"), "--merge", str(small_volume / "r1.gguf"), "--min-free", "0", "--dry-run", env=hub_env, check=True)
    assert "to merge" in plan.stdout, plan.stdout


# --- 7. the free-space margin ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("small_volume", ["50m"], indirect=True)
def test_a_small_model_fits_a_small_volume(local_hub: LocalHub, hub_env: dict[str, str], small_volume: Path):
    dest = small_volume / "models"
    result = builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), env=hub_env, check=True)
    assert result.stdout.strip() == str(dest / SHARDS[0])


def test_min_free_sets_the_margin(local_hub: LocalHub, hub_env: dict[str, str], small_volume: Path):
    dest = small_volume / "models"
    line = one_line_error(builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), "--min-free", "1G", env=hub_env))
    assert "(+ 1.0 GiB margin)" in line and "--min-free" in line, line
    builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), "--min-free", "100K", env=hub_env, check=True)
    assert sha256(dest / SHARDS[2]) == hub_sha(local_hub, R1_REPO, SHARDS[2])


def test_the_margin_scales_with_the_download():
    assert downloads.margin(0) == 0
    assert downloads.margin(500 * 1024) == downloads.MARGIN_FLOOR  # a tiny model: the floor, not a gigabyte
    assert downloads.margin(1_120_000_000) < 100 * MiB  # the default model: well under 2.2 GiB in all
    assert downloads.margin(131 * 10**9) == int(131 * 10**9 * downloads.MARGIN_FRACTION)
    assert downloads.margin(131 * 10**9, min_free=0) == 0


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("500M", 500 * MiB), ("2G", 2 * 1024**3), ("2GiB", 2 * 1024**3), ("1.5g", 3 * 1024**3 // 2),
                                             ("100K", 100 * 1024), ("123", 123), ("10 MB", 10 * MiB), ("1T", 1024**4)])
def test_sizes_parse(text: str, value: int):
    assert downloads.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "banana", "-5M", "5X", "1e9", "M", "1.2.3G", "nan"])
def test_bad_sizes_are_refused(text: str):
    with pytest.raises(UserError):
        downloads.parse_size(text)
