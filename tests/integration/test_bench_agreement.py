"""`builder bench` against the real llama.cpp CPU image serving a small random-weight model: its numbers must agree
with llama-server's own accounting (the `timings` of each response, and /metrics), and bad input must fail in one
line with nothing written. Timings never gate: every check compares two measurements of the same run."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from python_on_whales import DockerClient

from support.builder import builder
from support.http import LOOPBACK_ANY_PORT, published_url, wait_until_healthy
from support.tiny_gguf import write_tiny_model

pytestmark = [pytest.mark.docker, pytest.mark.slow]

API_KEY = "bench-key-not-secret"
# 4 slots x (72 + 32) tokens fit the tiny models' 512-token context.
PROMPT_TOKENS, MAX_TOKENS, REQUESTS = 72, 32, 8
# How far the bench's decode speed may stray from the engine's. Both time the same tokens of the same requests;
# the client's clock also holds the network and its own event loop at the first and the last token: a few ms
# (tens when the 2 cores are busy with other work) against the 0.4 to 2 s each request decodes here.
DECODE_MARGIN = 0.10


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """126 MB, llama-shaped (31M parameters, F32): tens of milliseconds a token here, so that the client's own
    delays (milliseconds, more under load) stay small against the span it times; a 22 MB model decoding 1000
    tokens/s was off by up to 11% on a busy machine. A 4096-token vocabulary of whole words, so that nearly every
    token streams as text at once (the tiny default's byte tokens often wait in the server until they complete a
    UTF-8 character)."""
    folder = tmp_path_factory.mktemp("bench-model")
    folder.chmod(0o755)
    model = write_tiny_model(folder / "bench.gguf", n_embd=512, n_layer=8, n_head=8, n_ff=1536, n_vocab=4096)
    model.chmod(0o644)
    return model


@pytest.fixture(scope="module")
def server(docker: DockerClient, llamacpp_cpu_image: str, bench_model: Path, tmp_path_factory: pytest.TempPathFactory):
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(API_KEY + "\n")
    container = docker.run(
        llamacpp_cpu_image,
        # One thread: on a machine busy with other work, llama.cpp's threads wait for each other at every step
        # (seen: 2 threads at load 7 made the run 10 times slower), and the bench keeps a core for itself.
        ["-m", f"/models/{bench_model.name}", "-c", "512", "-np", "4", "-t", "1", "-tb", "1", "--metrics", "--api-key", API_KEY],
        detach=True, publish=[(LOOPBACK_ANY_PORT, 8080)], volumes=[(str(bench_model.parent), "/models", "ro")],
    )
    try:
        url = published_url(container)
        wait_until_healthy(f"{url}/health")
        yield url, key_file
    finally:
        container.remove(force=True)


def metrics(url: str) -> dict[str, float]:
    """llama-server's Prometheus counters (llamacpp:NAME VALUE)."""
    req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^llamacpp:(\w+) (\S+)$", text, re.M)}


def bench(url: str, *args: str) -> subprocess.CompletedProcess:
    return builder("bench", url, *args, check=False, capture_output=True)


def test_numbers_agree_with_the_engines_accounting(server: tuple[str, Path], tmp_path: Path):
    url, key_file = server
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    before = metrics(url)
    run = bench(f"{url}/v1", "--api-key-file", str(key_file), "--concurrency", "1,4", "--requests", str(REQUESTS),
                "--prompt-tokens", str(PROMPT_TOKENS), "--max-tokens", str(MAX_TOKENS), "--json", str(out_json), "--plot", str(out_png))
    after = metrics(url)
    assert run.returncode == 0, run.stderr
    # stderr is not a terminal here: plain progress lines, one per level at least.
    assert "bench: concurrency 1: 8/8 ok" in run.stderr and "bench: concurrency 4: 8/8 ok" in run.stderr, run.stderr
    assert re.search(r"^\| 1 \| 8 \| 0 \|", run.stdout, re.M) and re.search(r"^\| 4 \| 8 \| 0 \|", run.stdout, re.M), run.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out_json.read_text())
    levels = result["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    requests = [r for lv in levels for r in lv["requests_detail"]]
    assert len(requests) == 2 * REQUESTS and not any(r["error"] for r in requests)

    # Tokens: the bench's count (the server's usage) is what the engine decoded, request by request and in total.
    for r in requests:
        assert r["counted"] == "usage"
        assert r["output_tokens"] == MAX_TOKENS == r["engine"]["predicted_n"], r  # ignore_eos: every request runs to max
    made = sum(lv["output_tokens"] for lv in levels) + result["calibration"]["output_tokens"]
    assert after["tokens_predicted_total"] - before["tokens_predicted_total"] == made

    # The bench's own reading of the engine's /metrics, level by level.
    for lv in levels:
        assert lv["engine_output_tokens"] == lv["output_tokens"], lv
    assert "The engine's own count of output tokens (its /metrics) equals the bench's at every level." in run.stdout

    # The prompts have about the length asked for (fitted from the server's token counts of two setup prompts; this
    # byte-level vocabulary makes a word one token per byte (about 7), so the fit is rougher than a real tokenizer's).
    for lv in levels:
        assert abs(lv["prompt_tokens_mean"] - PROMPT_TOKENS) <= 0.15 * PROMPT_TOKENS, lv["prompt_tokens_mean"]

    # Time: the client's decode speed against the engine's own timings, per level, and its decode time against the
    # engine's total in /metrics.
    for lv in levels:
        assert lv["engine_decode_rate"] is not None
        assert abs(lv["decode_rate"] / lv["engine_decode_rate"] - 1) <= DECODE_MARGIN, lv
    client_decode = sum(r["decode_time"] for r in requests)
    engine_decode = after["tokens_predicted_seconds_total"] - before["tokens_predicted_seconds_total"]
    assert abs(client_decode / engine_decode - 1) <= DECODE_MARGIN, (client_decode, engine_decode)

    # The first token reaches the client after the engine has processed the prompt, never before.
    for r in requests:
        assert r["ttft"] >= r["engine"]["prompt_ms"] / 1000, r


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "no-such-model"], r"model 'no-such-model' is not served at http://127\.0\.0\.1:\d+: it serves /models/bench\.gguf"),
    ([], r"the server wants an API key; give --api-key-file"),
])
def test_bad_input_against_the_server_fails_in_one_line(server: tuple[str, Path], tmp_path: Path, args: list[str], message: str):
    url, key_file = server
    key = ["--api-key-file", str(key_file)] if args else []
    run = bench(url, *key, *args, "--concurrency", "1", "--requests", "1", "--json", str(tmp_path / "out.json"),
                "--plot", str(tmp_path / "out.png"))
    assert run.returncode == 2
    assert re.fullmatch(rf"error: .*{message}.*\n", run.stderr), run.stderr
    assert run.stdout == "" and list(tmp_path.iterdir()) == []


def test_completions_api(server: tuple[str, Path], tmp_path: Path):
    """--api completions: raw prompts to /v1/completions, counted and timed the same way."""
    url, key_file = server
    run = bench(url, "--api", "completions", "--api-key-file", str(key_file), "--concurrency", "2", "--requests", "2",
                "--prompt-tokens", "40", "--max-tokens", "8", "--json", str(tmp_path / "c.json"))
    assert run.returncode == 0, run.stderr
    assert "(completions API, streaming)" in run.stdout
    (level,) = json.loads((tmp_path / "c.json").read_text())["levels"]
    assert level["errors"] == 0 and level["counted"] == "usage" and level["engine_output_tokens"] == level["output_tokens"] == 2 * 8
    assert all(r["engine"]["predicted_n"] == 8 and r["ttft"] is not None for r in level["requests_detail"])
