"""`builder download` for real, as a subprocess, against the local Hub (tests/support/local_hub.py) on 127.0.0.1.

The local Hub stands in for huggingface.co, which the test machines cannot reach: it serves synthetic repos
named like the real ones (tiny random-weight GGUF models, sharded like unsloth's) with the Hub's headers and errors.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from builder.core.progress import DownloadProgress
from support.builder import builder_with_env as builder, one_line_error
from support.hub import (DISTILL_FILE, DISTILL_REPO, FP8_REPO, GATED_REPO, R1_IQ1_S, R1_REPO, SHARDS, files_under, hub_sha,
                         sha256)
from support.local_hub import TEST_TOKEN, LocalHub
from support.prerequisites import REPO

def test_fresh_download(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    result = builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), env=hub_env, check=True)
    # stdout is one line, the engine's path (the first shard); the log goes to stderr.
    assert result.stdout == f"{dest / SHARDS[0]}\n"
    for path in SHARDS:
        assert sha256(dest / path) == hub_sha(local_hub, R1_REPO, path)
        assert (dest / path).stat().st_mode & 0o044 == 0o044  # readable by the engines' users
    assert not (dest / "README.md").exists()  # only what the catalog entry includes
    # Not a terminal: plain progress lines for container logs, and the preflight before them.
    log = result.stderr
    assert "total in 3 file(s)" in log and "free)" in log
    assert re.search(rf"download: 1/3 {re.escape(SHARDS[0])} 100% ", log), log
    assert f"done: {dest / SHARDS[0]}" in log


def test_safetensors_for_vllm_give_the_folder(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    result = builder("download", "r1-671b-fp8", "--dest", str(dest), env=hub_env, check=True)
    assert result.stdout == f"{dest}\n"  # vLLM loads the folder
    got = sorted(str(p.relative_to(dest)) for p in files_under(dest) if ".r1kit" not in p.parts)
    assert got == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json", "modeling_deepseek.py"]
    assert sha256(dest / "model-00002-of-00002.safetensors") == hub_sha(local_hub, FP8_REPO, "model-00002-of-00002.safetensors")
    line = one_line_error(builder("download", "r1-671b-fp8", "--dest", str(dest), "--modelfile", str(tmp_path / "Modelfile"), env=hub_env))
    assert "GGUF" in line


def test_a_finished_download_restarts_instantly_without_the_hub(hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    first = builder("download", "r1-distill-qwen-1.5b", "--dest", str(dest), env=hub_env, check=True)
    before = {p: p.stat().st_mtime_ns for p in files_under(dest)}
    # The Hub is gone (a closed port): the done marker answers, and nothing changes on disk.
    offline = dict(hub_env, HF_ENDPOINT="http://127.0.0.1:9")
    again = builder("download", "r1-distill-qwen-1.5b", "--dest", str(dest), env=offline, check=True)
    assert again.stdout == first.stdout == f"{dest / DISTILL_FILE}\n"
    assert "already downloaded and verified" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in files_under(dest)} == before


def test_default_model_with_path_file_and_modelfile(hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    result = builder("download", "--dest", str(dest), "--path-file", str(dest / "model.path"), "--modelfile", str(dest / "Modelfile"), env=hub_env, check=True)
    assert result.stdout.strip() == str(dest / DISTILL_FILE)
    assert (dest / "model.path").read_text() == f"{dest / DISTILL_FILE}\n"
    text = (dest / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{DISTILL_FILE}\nPARAMETER num_ctx 8192\nPARAMETER num_gpu 29\nPARAMETER temperature 0.6\n")
    assert "<｜User｜>" in text


def test_killed_mid_file_resumes(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    partial_dir = dest / ".r1kit" / "partial"
    with local_hub.faulty(throttle=40_000):  # 40 kB/s: the first shard (about 190 kB) takes seconds
        proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "download", "r1-671b-ud-iq1_s", "--dest", str(dest)],
                                cwd=REPO, env=hub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 50_000 for p in files_under(partial_dir)):
            assert time.monotonic() < deadline and proc.poll() is None, "the download never got going"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # no cleanup at all: a power cut, an OOM kill, `docker kill`
        proc.wait()
    kept = files_under(partial_dir)[0].stat().st_size
    assert kept > 50_000 and not (dest / SHARDS[0]).exists()
    result = builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), env=hub_env, check=True)
    ranges = [r.range for r in local_hub.requests_for(SHARDS[0]) if r.range]
    assert ranges and int(ranges[-1].removeprefix("bytes=").split("-")[0]) >= kept  # asked for the rest only
    assert sha256(dest / SHARDS[0]) == hub_sha(local_hub, R1_REPO, SHARDS[0])
    assert result.stdout.strip() == str(dest / SHARDS[0])
    assert files_under(partial_dir) == []


def test_a_dropped_connection_resumes_in_the_same_run(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    with local_hub.faulty(cut={SHARDS[1]: 40_000}):
        result = builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), env=hub_env, check=True)
    assert "connection lost after" in result.stderr
    assert any(r.range == "bytes=40000-" for r in local_hub.requests_for(SHARDS[1]))
    assert sha256(dest / SHARDS[1]) == hub_sha(local_hub, R1_REPO, SHARDS[1])


def test_a_corrupted_file_is_found_and_fetched_again(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), env=hub_env, check=True)
    shard = dest / SHARDS[1]
    gets = len(local_hub.requests_for(SHARDS[1]))
    data = bytearray(shard.read_bytes())
    data[1000:1010] = b"\xff" * 10  # same size, different bytes: bit rot, a bad copy
    shard.write_bytes(bytes(data))
    result = builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), env=hub_env, check=True)
    assert f"{SHARDS[1]} is corrupt" in result.stderr
    assert len(local_hub.requests_for(SHARDS[1])) == gets + 1  # that file, and only that one, again
    assert sha256(shard) == hub_sha(local_hub, R1_REPO, SHARDS[1])


def test_verify_finds_corruption_the_done_marker_cannot_see(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    builder("download", "r1-distill-qwen-1.5b", "--dest", str(dest), env=hub_env, check=True)
    model = dest / DISTILL_FILE
    st = model.stat()
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert "already downloaded" in builder("download", "r1-distill-qwen-1.5b", "--dest", str(dest), env=hub_env, check=True).stderr
    result = builder("download", "r1-distill-qwen-1.5b", "--dest", str(dest), "--verify", env=hub_env, check=True)
    assert "is corrupt" in result.stderr
    assert sha256(model) == hub_sha(local_hub, DISTILL_REPO, DISTILL_FILE)


def test_a_destination_too_small_is_refused_before_downloading(local_hub: LocalHub, hub_env: dict[str, str], small_volume: Path):
    before = len(local_hub.requests_for(SHARDS[0]))
    line = one_line_error(builder("download", "r1-671b-ud-iq1_s", "--dest", str(small_volume / "models"), env=hub_env))
    assert f"not enough space in {small_volume / 'models'}" in line
    assert re.search(r"needs [\d.]+ KiB more \(\+ 16\.0 MiB margin\), [\d.]+ MiB is free", line), line
    assert list(small_volume.iterdir()) == []  # nothing written
    assert len(local_hub.requests_for(SHARDS[0])) == before  # no byte fetched


def test_dry_run_prints_the_plan_and_fetches_nothing(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    before = len(local_hub.requests_for(".gguf"))
    result = builder("download", "unsloth/DeepSeek-R1-GGUF:UD-IQ1_S", "--dest", str(dest), "--dry-run", env=hub_env, check=True)
    for path in SHARDS:
        assert path in result.stdout
    assert "total in 3 file(s)" in result.stdout and f"destination {dest}" in result.stdout
    assert not dest.exists() and len(local_hub.requests_for(".gguf")) == before


def test_an_unknown_quant_lists_what_the_repo_has(hub_env: dict[str, str], tmp_path: Path):
    line = one_line_error(builder("download", f"{R1_REPO}:UD-IQ9_Z", "--dest", str(tmp_path), env=hub_env))
    assert "nothing in unsloth/DeepSeek-R1-GGUF matches quant 'UD-IQ9_Z'" in line
    assert "DeepSeek-R1-Q4_K_M/" in line and f"{R1_IQ1_S}/" in line


def test_several_models_matching_is_refused(hub_env: dict[str, str], tmp_path: Path):
    line = one_line_error(builder("download", DISTILL_REPO, "--include", "*.gguf", "--dest", str(tmp_path / "m"), env=hub_env))
    assert "2 GGUF models" in line and "Q8_0" in line
    assert not (tmp_path / "m").exists()


def test_an_unknown_repo(hub_env: dict[str, str], tmp_path: Path):
    line = one_line_error(builder("download", "nobody/No-Such-GGUF:Q4_K_M", "--dest", str(tmp_path), env=hub_env))
    assert "no repository nobody/No-Such-GGUF at http://127.0.0.1:" in line


def test_a_gated_repo_needs_a_token(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    line = one_line_error(builder("download", GATED_REPO, "--include", "*.gguf", "--dest", str(tmp_path / "a"), env=hub_env))
    assert "is gated" in line and "HF_TOKEN" in line and "HF_TOKEN_PATH" in line
    wrong = one_line_error(builder("download", GATED_REPO, "--include", "*.gguf", "--dest", str(tmp_path / "b"), env=dict(hub_env, HF_TOKEN="hf_wrong_token")))
    assert "HF_TOKEN" in wrong and "hf_wrong_token" not in wrong
    # The token from a file (a compose secret), never echoed.
    secret = tmp_path / "hf_token"
    secret.write_text(TEST_TOKEN + "\n")
    ok = builder("download", GATED_REPO, "--include", "*.gguf", "--dest", str(tmp_path / "c"), env=dict(hub_env, HF_TOKEN_PATH=str(secret)), check=True)
    assert ok.stdout.strip() == str(tmp_path / "c" / "tiny-Q4_K_M.gguf")
    assert TEST_TOKEN not in ok.stdout + ok.stderr
    assert any(r.authorized for r in local_hub.requests_for("tiny-Q4_K_M.gguf"))


def test_modelfile_for_shards_needs_merge_and_nothing_is_fetched(hub_env: dict[str, str], tmp_path: Path):
    dest = tmp_path / "models"
    line = one_line_error(builder("download", "r1-671b-ud-iq1_s", "--dest", str(dest), "--modelfile", str(tmp_path / "Modelfile"), env=hub_env))
    assert "--merge" in line
    assert files_under(dest) == [] and not (tmp_path / "Modelfile").exists()


def test_merge_without_llama_gguf_split_says_so(hub_env: dict[str, str], tmp_path: Path):
    env = dict(hub_env, PATH=os.path.dirname(sys.executable))  # no llama-gguf-split on this PATH
    line = one_line_error(builder("download", "r1-671b-ud-iq1_s", "--dest", str(tmp_path / "m"), "--merge", str(tmp_path / "m" / "r1.gguf"), env=env))
    assert "llama-gguf-split" in line
    assert not (tmp_path / "m" / "r1.gguf").exists() and not list((tmp_path / "m").glob(".r1.gguf*"))


def test_progress_in_a_terminal_draws_bars():
    out = io.StringIO()
    progress = DownloadProgress(Console(file=out, force_terminal=True, width=120))
    progress.start(300, 2)
    progress.file_start(1, "DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf", 100)
    progress.file_start(2, "DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00002-of-00003.gguf", 200)  # two in flight
    progress.advance(1, 100)
    progress.advance(2, 50)
    progress.file_done(1)
    progress.close()
    text = out.getvalue()
    assert "1/2 DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf" in text and "2/2 DeepSeek-R1-UD-IQ1_S-00002" in text
    assert "total (2 files)" in text and "━" in text


def test_plain_progress_lines_are_rate_limited():
    """In a log: a line per file started and done, and one total line per interval however many files are in flight."""
    now = [0.0]
    lines: list[str] = []
    progress = DownloadProgress(Console(file=io.StringIO(), force_terminal=False), interval=5, clock=lambda: now[0])
    progress.note = lines.append  # type: ignore[method-assign]
    progress.start(3000, 3)
    progress.skip(1000)  # a file verified by an earlier run
    progress.file_start(1, "a.gguf", 1000)
    progress.file_start(2, "b.gguf", 1000)
    progress.file_bytes(2, 200)  # resumed
    for _ in range(10):
        now[0] += 1
        progress.advance(1, 50)
        progress.advance(2, 50)
    progress.file_done(2)
    assert lines == ["download: 1/3 a.gguf (1000 B)", "download: 2/3 b.gguf (1000 B)",
                     "download: total 55% 1.6 KiB/2.9 KiB 90 B/s, 2 file(s) in flight",
                     "download: total 71% 2.1 KiB/2.9 KiB 100 B/s, 2 file(s) in flight",
                     "download: 2/3 b.gguf 100% 1000 B/1000 B 80 B/s"]
