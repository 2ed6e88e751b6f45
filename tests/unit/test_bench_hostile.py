"""`builder bench` against bad servers (issue 29): a stream that never ends, chunks and usage of the wrong type or of
absurd size, /metrics values that are not numbers, a URL that cannot be, and outputs onto things that are not files.
Each run ends in its exit status with no traceback, within --timeout and a margin, and a malformed answer counts as
an error in the report (or the engine's metric as unavailable), never as a number."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from support.builder import builder_in_process as builder
from test_bench import NoUsageServer, serve

MARGIN = 8.0  # seconds past --timeout a run may take: setup requests, the good requests, a loaded machine
TIMEOUT = 2  # --timeout of the runs here
# One level of two requests: the first measured one gets the bad answer, the second a good one, so that the report
# has a row to count the error in.
ONE_LEVEL = ["--concurrency", "1", "--requests", "2", "--prompt-tokens", "8", "--max-tokens", "3", "--timeout", str(TIMEOUT)]


def event(chunk: Any) -> bytes:
    """One SSE event: a chunk as JSON, or bytes sent as they are (what json.dumps would never write)."""
    return b"data: " + (chunk if isinstance(chunk, bytes) else json.dumps(chunk).encode()) + b"\n\n"


def text(word: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}


GOOD = [text("one"), text(" two"), {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}}]


class BadServer(NoUsageServer):
    """Answers /v1/models and the two setup requests (max_tokens 1) as a good server does. Of the measured requests
    every other one, the first included, gets `bad` (then [DONE]), or `trickle`; /metrics serves `metrics`."""

    bad: tuple[Any, ...] = ()
    trickle = False  # one token, then an SSE comment every 0.5 s, never [DONE]
    trickle_all = False  # the setup requests too
    slow_models = False  # /v1/models: the headers, then a byte every 0.5 s
    metrics: str | None = None  # None: no /metrics (404)
    posts: itertools.count

    def do_GET(self) -> None:
        if self.path == "/metrics":
            if self.metrics is None:
                self.send_error(404)
            else:
                self._send("text/plain", self.metrics.encode())
        elif self.slow_models:
            self._drip(b"{", b" ")
        else:
            super().do_GET()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        setup = body["max_tokens"] == 1
        misbehave = self.trickle_all or (not setup and (self.bad or self.trickle) and next(self.posts) % 2 == 0)
        if misbehave and (self.trickle or self.trickle_all):
            self._drip(event(text("one")), b": still here\n\n")
        elif misbehave:
            self._send("text/event-stream", b"".join(map(event, self.bad)) + b"data: [DONE]\n\n")
        else:
            self._send("text/event-stream", b"".join(map(event, GOOD)) + b"data: [DONE]\n\n")

    def _drip(self, first: bytes, then: bytes) -> None:
        """`first`, then `then` every 0.5 s until the client hangs up (or 60 s, so that no thread outlives a test by long)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if self.command == "POST" else "application/json")
        self.end_headers()
        try:
            self.wfile.write(first)
            self.wfile.flush()
            for _ in range(120):
                time.sleep(0.5)
                self.wfile.write(then)
                self.wfile.flush()
        except OSError:  # the client gave up: what the test wants
            pass


def bad_server(**behaviour: Any) -> type[BadServer]:
    """A BadServer class with its own request count."""
    return type("Bad", (BadServer,), {"posts": itertools.count(), **behaviour})


def bench(url: str, tmp_path: Path, *args: str) -> tuple[Any, float]:
    """builder bench, its result and its wall time; asserts what holds for every run here: no traceback, and an end
    within --timeout (per request) and a margin."""
    start = time.monotonic()
    run = builder("bench", url, *args, check=False, capture_output=True)
    elapsed = time.monotonic() - start
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode in (0, 2), run.stderr
    if run.returncode == 2:  # the refusal is the last line, and the only one (progress lines may come before it)
        errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
        assert errors == run.stderr.splitlines()[-1:], run.stderr
    assert elapsed < TIMEOUT + MARGIN, f"took {elapsed:.1f} s"
    return run, elapsed


def errors_in_report(stdout: str) -> tuple[int, int]:
    """(requests, errors) of the report's one row."""
    row = next(line for line in stdout.splitlines() if re.match(r"\| 1 \|", line))
    cells = [c.strip() for c in row.strip("|").split("|")]
    return int(cells[1]), int(cells[2])


# --- the deadline ------------------------------------------------------------------------------------------------


def test_a_stream_that_never_ends_is_cut_at_the_timeout_and_counted(tmp_path: Path):
    """One token, then an SSE comment every 0.5 s: each read succeeds, so only a deadline on the whole request ends it."""
    with serve(bad_server(trickle=True)) as url:
        run, elapsed = bench(url, tmp_path, *ONE_LEVEL, "--json", str(tmp_path / "b.json"))
    assert run.returncode == 0, run.stderr
    assert errors_in_report(run.stdout) == (2, 1)
    assert f"no complete answer within --timeout {TIMEOUT} s" in run.stdout
    assert elapsed >= TIMEOUT  # it did wait for the slow request, as long as it was allowed
    level = json.loads((tmp_path / "b.json").read_text())["levels"][0]
    assert level["errors"] == 1 and level["output_tokens"] == 2  # the good request's usage only


def test_a_server_that_never_finishes_a_setup_request_fails_in_one_line_at_the_timeout(tmp_path: Path):
    with serve(bad_server(trickle_all=True)) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL)
    assert run.returncode == 2 and "the first request failed" in run.stderr and "--timeout 2 s" in run.stderr


def test_a_model_list_that_never_ends_fails_in_one_line_at_the_timeout(tmp_path: Path):
    with serve(bad_server(slow_models=True)) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL)
    assert run.returncode == 2 and "/v1/models" in run.stderr and "--timeout 2 s" in run.stderr


# --- chunks and usage ----------------------------------------------------------------------------------------------

HUGE = 10**400
MALFORMED = {
    # usage numbers no request can have: 10**400 overflowed the rate's float; -22 million was reported as a rate
    "completion-tokens-10**400": [text("a"), {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": HUGE}}],
    "prompt-tokens-10**400": [text("a"), {"choices": [], "usage": {"prompt_tokens": HUGE, "completion_tokens": 1}}],
    "completion-tokens-negative": [text("a"), {"choices": [], "usage": {"completion_tokens": -22_000_000}}],
    "completion-tokens-fraction": [text("a"), {"choices": [], "usage": {"completion_tokens": 2.5}}],
    "completion-tokens-text": [text("a"), {"choices": [], "usage": {"completion_tokens": "3"}}],
    "completion-tokens-true": [text("a"), {"choices": [], "usage": {"completion_tokens": True}}],
    "completion-tokens-NaN": [text("a"), b'{"choices": [], "usage": {"completion_tokens": NaN}}'],
    "completion-tokens-5000-digits": [text("a"), b'{"choices": [], "usage": {"completion_tokens": 1' + b"0" * 5000 + b"}}"],
    # the chunk's parts, each of the wrong type
    "choices-an-object": [{"choices": {"index": 0, "delta": {"content": "a"}}}],
    "choices-a-string": [{"choices": "a"}],
    "choice-a-string": [{"choices": ["a"]}],
    "delta-a-string": [{"choices": [{"index": 0, "delta": "a"}]}],
    "content-a-number": [{"choices": [{"index": 0, "delta": {"content": 5}}]}],
    "finish-reason-a-list": [text("a"), {"choices": [{"index": 0, "delta": {}, "finish_reason": ["stop"]}]}],
    "usage-a-list": [text("a"), {"choices": [], "usage": [1, 2]}],
    "usage-a-string": [text("a"), {"choices": [], "usage": "lots"}],
    # llama-server's timings
    "predicted-n-text": [text("a"), {"choices": [], "timings": {"predicted_n": "many", "predicted_ms": 10.0}}],
    "predicted-ms-NaN": [text("a"), b'{"choices": [], "timings": {"predicted_n": 3, "predicted_ms": NaN}}'],
    "timings-a-number": [text("a"), {"choices": [], "timings": 5}],
    # not a chunk at all
    "a-list": [[text("a")]],
    "not-json": [b"{not json"],
    "nested-100000-deep": [b"[" * 100_000 + b"]" * 100_000],
}


@pytest.mark.parametrize("chunks", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_chunk_is_an_error_in_the_report(tmp_path: Path, chunks: list[Any]):
    with serve(bad_server(bad=tuple(chunks))) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL, "--json", str(tmp_path / "b.json"))
    assert run.returncode == 0, run.stderr
    assert errors_in_report(run.stdout) == (2, 1)
    assert "First error per level: concurrency 1: malformed chunk: " in run.stdout, run.stdout
    level = json.loads((tmp_path / "b.json").read_text())["levels"][0]
    # Only the good request counts: its 2 tokens, at a rate that is a rate.
    assert level["output_tokens"] == 2 and 0 <= level["output_rate"] < 1e6


def test_an_error_message_from_the_server_cannot_rewrite_the_terminal(tmp_path: Path):
    with serve(bad_server(bad=({"error": "boom\x1b[2J\rforged line\u2028more"},))) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL)
    assert run.returncode == 0 and errors_in_report(run.stdout) == (2, 1)
    assert "\x1b" not in run.stdout and "\r" not in run.stdout and "\u2028" not in run.stdout
    assert r"stream error: boom\x1b[2J forged line more" in run.stdout


def test_every_request_malformed_fails_in_one_line(tmp_path: Path):
    with serve(bad_server(bad=({"choices": "a"},), posts=itertools.repeat(0))) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL)
    assert run.returncode == 2 and "every request failed, e.g. malformed chunk" in run.stderr


@pytest.mark.parametrize("models", [
    {"data": [{"id": 5}]}, {"data": [{"id": "m", "aliases": 5}]}, {"data": "m"}, [1], {"data": [{"id": "m\x1b[2J"}, {"id": "n"}]},
], ids=["id-a-number", "aliases-a-number", "data-a-string", "a-list", "two-ids-one-with-escape"])
def test_a_bad_model_list_fails_in_one_line(tmp_path: Path, models: Any):
    class Models(BadServer):
        def do_GET(self) -> None:
            self._send("application/json", json.dumps(models).encode())

    with serve(Models) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL)
    assert run.returncode == 2 and "\x1b" not in run.stderr, run.stderr


# --- /metrics --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "NaN", "+Inf", "-Inf", "1e400", "1" + "0" * 400, "0x10"])
def test_a_metric_that_is_not_a_count_is_unavailable(tmp_path: Path, value: str):
    metrics = f"# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{model_name=\"m\"}} {value}\n"
    with serve(bad_server(metrics=metrics)) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL, "--json", str(tmp_path / "b.json"))
    assert run.returncode == 0, run.stderr
    assert errors_in_report(run.stdout) == (2, 0)
    assert "The engine's own count of output tokens (its /metrics) is unavailable: vllm:generation_tokens_total" in run.stdout
    assert json.loads((tmp_path / "b.json").read_text())["levels"][0]["engine_output_tokens"] is None


def counting_server(readings: Iterator[int], suffix: str = "") -> type[BadServer]:
    """A good server whose /metrics output-token counter reads the next of `readings` (written with `suffix`)."""

    class Counting(BadServer):
        posts = itertools.count()

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send("text/plain", f"vllm:generation_tokens_total {next(readings)}{suffix}\n".encode())
            else:
                super().do_GET()

    return Counting


def test_a_counter_that_goes_back_is_unavailable(tmp_path: Path):
    """The engine restarted between the readings: the difference is no count of this level's tokens."""
    with serve(counting_server(itertools.count(start=100, step=-50))) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL, "--json", str(tmp_path / "b.json"))
    assert run.returncode == 0 and "went down" in run.stdout, run.stdout
    assert json.loads((tmp_path / "b.json").read_text())["levels"][0]["engine_output_tokens"] is None


def test_a_good_metric_is_still_counted(tmp_path: Path):
    # 4 tokens between the level's two readings: the good ones.
    with serve(counting_server(itertools.count(start=1000, step=4), ".0")) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL, "--json", str(tmp_path / "b.json"))
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "b.json").read_text())["levels"][0]["engine_output_tokens"] == 4


# --- the URL -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:99999", r"port 99999 is out of range \(1 to 65535\)"),
    ("http://127.0.0.1:0", r"port 0 is out of range"),
    ("http://127.0.0.1:abc", r"is not an http\(s\) URL"),
    ("http://:8080", r"is not an http\(s\) URL"),
    ("http://127.0.0.1:8080/v1?x=1", r"takes no query"),
    ("file:///etc/passwd", r"is not an http\(s\) URL"),
    ("http://[::1", r"is not an http\(s\) URL"),
])
def test_a_url_that_cannot_be_fails_in_one_line_before_any_request(tmp_path: Path, url: str, message: str):
    run, _ = bench(url, tmp_path, "--json", str(tmp_path / "b.json"))
    assert run.returncode == 2 and re.fullmatch(rf"error: URL .*{message}.*\n", run.stderr), run.stderr
    assert list(tmp_path.iterdir()) == []


# --- --json and --plot -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "under-a-file"])
def test_outputs_onto_what_is_not_a_file_are_refused_before_any_request(tmp_path: Path, option: str, kind: str):
    name = "b.png" if option == "--plot" else "b.json"
    if kind == "fifo":
        target = tmp_path / name
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/null")
    elif kind == "folder":
        target = tmp_path / name
        target.mkdir()
    else:
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / name
    with serve(bad_server(posts=itertools.count())) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL, option, str(target))
    assert run.returncode == 2 and run.stdout == "", run.stderr
    assert re.search(r"not a regular file|is a folder|is not a folder|is a directory", run.stderr), run.stderr


def test_outputs_make_their_folders_and_follow_a_link(tmp_path: Path):
    real = tmp_path / "results" / "real.json"
    real.parent.mkdir()
    (tmp_path / "link.json").symlink_to(real)
    with serve(bad_server(posts=itertools.count())) as url:
        run, _ = bench(url, tmp_path, *ONE_LEVEL, "--json", str(tmp_path / "link.json"),
                       "--plot", str(tmp_path / "new" / "deeper" / "b.png"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "link.json").is_symlink() and json.loads(real.read_text())["levels"]
    assert f"--json {tmp_path / 'link.json'} is a link: writing its target {real}" in run.stderr
    assert (tmp_path / "new" / "deeper" / "b.png").read_bytes()[:4] == b"\x89PNG"
