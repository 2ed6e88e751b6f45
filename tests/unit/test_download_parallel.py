"""`builder download` with parallel ranged parts (issue 14), for real against the local Hub: several files and parts at
once, the Hub's redirect to another host with a signed link (Range kept, token dropped, an expired link asked for
again), and the kill-anywhere test: SIGKILL at random points, resume, byte-identical and sha256-clean, 10 of 10.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.models import transfer
from builder.core.progress import human
from support.builder import builder_with_env as builder, one_line_error
from support.hub import files_under
from support.local_hub import CDN_HOST, TEST_TOKEN, LocalHub
from support.prerequisites import REPO

MiB = 1024**2
PARALLEL_REPO = "r1kit-test/parallel-safetensors"
GATED_BIG_REPO = "r1kit-test/gated-big-GGUF"
FILES = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
PARTS = ("--part-size", "1M")


@pytest.fixture(scope="module")
def repos(local_hub: LocalHub) -> dict[str, dict[str, bytes]]:
    """Random files of a few parts each (sizes not a multiple of the part size: the last part is short)."""
    rng = random.Random(14)
    parallel = {name: rng.randbytes(3 * MiB - 1000 * i) for i, name in enumerate(FILES)} | {"config.json": b'{"model_type": "deepseek_v3"}\n'}
    gated = {"big-Q4_K_M.gguf": rng.randbytes(3 * MiB + 123)}
    local_hub.add_repo(PARALLEL_REPO, parallel)
    local_hub.add_repo(GATED_BIG_REPO, gated, gated=True)
    return {PARALLEL_REPO: parallel, GATED_BIG_REPO: gated}


def download(dest: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return builder("download", PARALLEL_REPO, "--include", "*", "--dest", str(dest), *PARTS, *args, env=env, check=check)


def partial(dest: Path, path: str, data: bytes) -> Path:
    return dest / ".r1kit" / "partial" / f"{path.replace('/', '__')}.{hashlib.sha256(data).hexdigest()[:16]}.part"


def asked_bytes(requests: list, size: int) -> int:
    """The body bytes a client asked for with these GETs (a Range, or the whole file)."""
    total = 0
    for r in requests:
        if not r.range:
            total += size
            continue
        start, _, end = r.range.removeprefix("bytes=").partition("-")
        total += (int(end) if end else size - 1) - int(start) + 1
    return total


def test_parts_and_files_at_once_are_byte_identical(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, repos: dict):
    dest = tmp_path / "models"
    with local_hub.faulty(throttle=2 * MiB):  # a per-connection cap, so that the parts overlap in time
        result = download(dest, "--connections", "6", env=hub_env)
    for path, data in repos[PARALLEL_REPO].items():
        assert (dest / path).read_bytes() == data
    ranges = {r.range for r in local_hub.requests_for(FILES[0])}
    assert {"bytes=1048576-2097151", "bytes=2097152-"} <= ranges, ranges  # the parts, the last one open-ended
    assert files_under(dest / ".r1kit" / "partial") == []
    # Several files were in flight at once: the second started before the first was done.
    log = result.stderr.splitlines()
    started = log.index(f"download: 3/4 {FILES[1]} ({human(len(repos[PARALLEL_REPO][FILES[1]]))})")  # config.json is 1/4
    assert started < log.index(next(line for line in log if line.startswith(f"download: 2/4 {FILES[0]} 100%"))), log


def test_redirects_keep_the_range_and_never_carry_the_token(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, repos: dict):
    dest = tmp_path / "models"
    env = dict(hub_env, HF_TOKEN=TEST_TOKEN)
    (name, data), = repos[GATED_BIG_REPO].items()
    with local_hub.redirecting():
        result = builder("download", GATED_BIG_REPO, "--include", "*.gguf", "--dest", str(dest), *PARTS, "--connections", "2", env=env, check=True)
    assert (dest / name).read_bytes() == data and TEST_TOKEN not in result.stdout + result.stderr
    hub_gets = [r for r in local_hub.requests_for(name) if r.host != CDN_HOST and r.path.startswith(f"/{GATED_BIG_REPO}/resolve/")]
    cdn_gets = [r for r in local_hub.requests_for(name) if CDN_HOST in r.host]
    assert hub_gets and all(r.authorized for r in hub_gets)  # the Hub gets the token
    assert cdn_gets and not any(r.auth for r in cdn_gets)  # the other host never does
    assert {r.range for r in cdn_gets} >= {"bytes=1048576-2097151", "bytes=2097152-3145727", "bytes=3145728-"}  # Range intact
    assert asked_bytes(cdn_gets, len(data)) == len(data)  # every byte from the CDN, once
    # At most one per connection, for four parts: the signed link is reused for the file's other parts. (One, when a
    # busy machine lets the first connection take the next part before the second starts.)
    assert 1 <= len(hub_gets) <= 2, hub_gets


def test_an_expired_link_is_asked_for_again(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, repos: dict):
    dest = tmp_path / "models"
    path, data = FILES[0], repos[PARALLEL_REPO][FILES[0]]
    # One connection at 2 MiB/s: each 1 MiB part takes half a second, so the link (valid 0.3 s) has expired when the
    # next part starts, and when the first part resumes after its connection was dropped (and the back-off).
    with local_hub.redirecting(ttl=0.3), local_hub.faulty(throttle=2 * MiB, cut={path: 500_000}):
        result = builder("download", PARALLEL_REPO, "--include", path, "--dest", str(dest), *PARTS, "--connections", "1", env=hub_env, check=True)
    assert (dest / path).read_bytes() == data
    cdn_gets = [r for r in local_hub.requests_for(path) if CDN_HOST in r.host]
    refused = [r for r in cdn_gets if r.status == 403]
    assert refused and "asking the Hub for a new one" in result.stderr, result.stderr
    assert any(r.range and r.range.startswith("bytes=500000-") for r in cdn_gets if r.status == 200)  # resumed where it was cut
    resolves = [r for r in local_hub.requests_for(path) if CDN_HOST not in r.host]
    assert len(resolves) >= 1 + len(refused)  # each refusal sent the client back to the Hub


def test_a_server_ignoring_range_is_one_line(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, repos: dict):
    """Parts need Range: a server that answers them with the whole file (200) gets a one-line error, and the advice."""
    dest = tmp_path / "models"
    with local_hub.faulty(ignore_range=True):
        result = download(dest, "--connections", "2", env=hub_env, check=False)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and line.startswith("error: "), result.stderr
    assert "ignores HTTP Range" in line and "--part-size" in line, line
    assert not any((dest / path).exists() for path in FILES)


@pytest.mark.parametrize("args", [("--connections", "0"), ("--connections", "33"), ("--part-size", "100K")])
def test_bad_connections_and_part_sizes_are_one_line(hub_env: dict[str, str], tmp_path: Path, args: tuple[str, str]):
    line = one_line_error(builder("download", "--dest", str(tmp_path / "m"), *args, env=hub_env))
    assert args[0] in line, line
    assert not (tmp_path / "m").exists()


def test_resume_points_come_from_the_record_and_the_files_size(tmp_path: Path):
    part = tmp_path / "x.part"
    # No record: one stream wrote it (a one-part file, or a download from before parts): all of it is a prefix.
    part.write_bytes(b"a" * 2500)
    assert transfer.progress_of(part, 4000, 1000) == (transfer.layout(4000, 1000), [1000, 1000, 500, 0])
    # A record (its part size wins over the one asked for now); the part holding the file's end wrote up to it,
    # past what the record had caught up with; a part the record credits beyond the file's end gets what is there.
    transfer.record_path(part).write_text('{"size": 4000, "part_size": 1000, "have": [1000, 200, 100, 900]}')
    part.write_bytes(b"a" * 3300)
    assert transfer.progress_of(part, 4000, 64) == (transfer.layout(4000, 1000), [1000, 200, 100, 300])
    assert transfer.missing(part, 4000) == 4000 - 1600
    # A record of another file (another size), or one edited into nonsense: nothing is trusted.
    for text in ('{"size": 9999, "part_size": 1000, "have": [1000]}', "{not json"):
        transfer.record_path(part).write_text(text)
        assert transfer.progress_of(part, 4000, 1000)[1] == [0, 0, 0, 0]


# --- kill anywhere -------------------------------------------------------------------------------------------------


def _kill_at_random(hub_env: dict[str, str], dest: Path, rng: random.Random) -> float:
    """Start a parallel download and SIGKILL it at a random moment while it fetches; the delay it was killed at."""
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "download", PARALLEL_REPO, "--include", "*", "--dest", str(dest),
                             *PARTS, "--connections", "4"], cwd=REPO, env=hub_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial_dir = dest / ".r1kit" / "partial"
    deadline = time.monotonic() + 60
    while not files_under(partial_dir):
        assert time.monotonic() < deadline and proc.poll() is None, "the download never got going"
        time.sleep(0.01)
    delay = rng.uniform(0, 1.6)
    time.sleep(delay)
    assert proc.poll() is None, f"finished before the kill at {delay:.2f} s: slow the Hub down"
    proc.send_signal(signal.SIGKILL)  # no cleanup at all: a power cut, an OOM kill, `docker kill`
    proc.wait()
    return delay


def test_killed_anywhere_with_parallel_parts_resumes_clean_10_of_10(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path, repos: dict):
    files = repos[PARALLEL_REPO]
    rng = random.Random(int(os.environ.get("R1KIT_KILL_SEED", "1414")))
    for trial in range(10):
        dest = tmp_path / f"models-{trial}"
        with local_hub.faulty(throttle=1.5 * MiB):  # 4 connections: about 6 MB/s, so 9 MB take about 1.5 s
            delay = _kill_at_random(hub_env, dest, rng)
        missing = 0
        for path, data in files.items():
            if (dest / path).exists():  # under its final name: only ever a complete, verified file
                assert (dest / path).read_bytes() == data, (trial, path)
                continue
            part = partial(dest, path, data)
            parts, have = transfer.progress_of(part, len(data), MiB)
            held = part.read_bytes() if part.exists() else b""
            for p, h in zip(parts, have):  # what the record (and the file's size) claim is really there
                assert held[p.start:p.start + h] == data[p.start:p.start + h], (trial, path, p, h, delay)
            missing += len(data) - sum(have)
        if trial == 0:  # the free-space preflight counts what is in flight: the parts' bytes, not the files' sizes
            plan = download(dest, "--dry-run", env=hub_env)
            assert f"; {human(missing)} to fetch" in plan.stdout, (plan.stdout, missing)
        before = len(local_hub.requests)
        result = download(dest, "--connections", "4", env=hub_env)
        for path, data in files.items():
            assert (dest / path).read_bytes() == data, (trial, path, delay)
        resumed = [r for r in local_hub.requests[before:] if r.method == "GET" and any(r.path.endswith(p) for p in files)]
        asked = sum(asked_bytes([r for r in resumed if r.path.endswith(p)], len(d)) for p, d in files.items())
        assert asked == missing, (trial, asked, missing, delay)  # exactly the rest: no byte fetched twice, none skipped
        assert files_under(dest / ".r1kit" / "partial") == [], trial
        assert result.stdout.strip() == str(dest)


@pytest.mark.parametrize("small_volume", ["12m"], indirect=True)
def test_a_disk_filled_mid_download_stops_in_one_line_and_resumes(local_hub: LocalHub, hub_env: dict[str, str], small_volume: Path, repos: dict):
    """Another program fills the disk after the preflight: every part stops, the error says so in one line, and once
    there is space again the same command resumes the parts and finishes byte-identical."""
    dest, filler = small_volume / "models", small_volume / "filler"
    with local_hub.faulty(throttle=1 * MiB):
        proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "download", PARALLEL_REPO, "--include", "*", "--dest", str(dest),
                                 *PARTS, "--connections", "4", "--min-free", "0"], cwd=REPO, env=hub_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sum(p.stat().st_blocks for p in files_under(dest / ".r1kit" / "partial")) * 512 < MiB:
            assert time.monotonic() < deadline and proc.poll() is None, "the download never got going"
            time.sleep(0.02)
        with filler.open("wb") as f:  # the rest of the volume
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        _, err = proc.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: ") and "No space left on device" in last and "run the same command again to resume" in last, err
    for path in FILES:  # under its final name: only ever a complete, verified file
        assert not (dest / path).exists() or (dest / path).read_bytes() == repos[PARALLEL_REPO][path]
    filler.unlink()
    download(dest, "--connections", "4", "--min-free", "0", env=hub_env)
    for path, data in repos[PARALLEL_REPO].items():
        assert (dest / path).read_bytes() == data
