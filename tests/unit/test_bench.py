"""`builder bench` without Docker: its statistics, its input checks (one line, exit 2, nothing written), a server
that sends no usage, Ctrl-C, and that `builder` starts without matplotlib. Its agreement with a real engine's accounting is
tests/integration/test_bench_agreement.py."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from support.builder import builder_in_process as builder
from support.signals import dispositions

from builder.bench import measure as bench
from builder.core.errors import UserError


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_is_numpys_linear_interpolation(q: float):
    xs = list(np.random.default_rng(7).exponential(size=37))
    assert bench.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_summarize_counts_rates_and_latencies():
    # Two requests of 5 tokens in 2 s: one with its text at 1.0, 1.1, 1.2, 1.3, 1.4, the other failed.
    ok = bench.Sample(start=0.0, end=1.5, first_token=1.0, last_token=1.4, gaps=(0.1,) * 4, chunks=5, output_tokens=5,
                      prompt_tokens=80, counted="usage", engine={"predicted_n": 5, "predicted_ms": 500.0, "prompt_ms": 900.0})
    failed = bench.Sample(start=0.5, end=2.0, error="HTTP 500: boom")
    level = bench.summarize(2, [ok, failed])
    assert (level.requests, level.errors, level.first_error) == (2, 1, "HTTP 500: boom")
    assert level.duration == 2.0 and level.request_rate == 0.5 and level.output_rate == 2.5
    assert level.ttft.p50 == 1.0 and level.itl.n == 4 and level.itl.p99 == pytest.approx(0.1)
    assert level.decode_rate == pytest.approx(4 / 0.4)  # 4 tokens after the first, in 0.4 s
    assert level.engine_decode_rate == pytest.approx(4 / 0.5)
    assert level.engine_prompt_time is not None and level.engine_prompt_time.p50 == pytest.approx(0.9)


@pytest.mark.parametrize(("text", "levels"), [("1,4,16,64", (1, 4, 16, 64)), (" 8 , 2", (8, 2)), ("1", (1,))])
def test_concurrency_lists(text: str, levels: tuple[int, ...]):
    assert bench.parse_concurrency(text) == levels


@pytest.mark.parametrize(("url", "base"), [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"), ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080"),
    ("https://gpu.example/llm/v1", "https://gpu.example/llm"), ("http://h:8000/v1/chat/completions", "http://h:8000"),
])
def test_base_url_takes_the_server_or_its_v1(url: str, base: str):
    assert bench.base_url(url) == base


def _free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--concurrency", "1,x"], r"--concurrency '1,x' is not a comma-separated list of whole numbers"),
    (["--concurrency", ""], r"is not a comma-separated list"),
    (["--concurrency", "1,²"], r"is not a comma-separated list"),
    (["--concurrency", "0,4"], r"--concurrency '0,4': 0 is out of range \(1 to 4096\)"),
    (["--concurrency", "4,4"], r"names a level twice"),
    (["--requests", "0"], r"Invalid value for '--requests': 0 is not in the range x>=1"),
    (["--concurrency", "1,16", "--requests", "8"], r"--requests 8 is fewer than concurrency 16"),
    (["--max-tokens", "0"], r"Invalid value for '--max-tokens'"),
    (["--plot", "{tmp}/out.svg"], r"--plot .*out\.svg: the plot is a PNG"),
    (["--api-key-file", "{tmp}/no-such-key"], r"--api-key-file .*no-such-key: No such file or directory"),
    (["--json", "/etc/hostname/x.json"], r"--json /etc/hostname: /etc/hostname is not a folder"),
])
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str):
    url = f"http://127.0.0.1:{_free_port()}"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    outputs = [] if "--json" in args else ["--json", str(tmp_path / "out.json")]
    run = builder("bench", url, *args, *outputs, check=False, capture_output=True)
    assert run.returncode == 2, run.stderr
    assert re.fullmatch(rf"error: .*{message}.*\n", run.stderr), run.stderr
    assert run.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:{port}", r"http://127\.0\.0\.1:\d+ does not answer \(ConnectError: .*\): is the server up"),
    ("ftp://127.0.0.1/", r"URL 'ftp://127.0.0.1/' is not an http\(s\) URL"),
    ("127.0.0.1:8080", r"is not an http\(s\) URL"),
])
def test_a_url_that_does_not_answer(tmp_path: Path, url: str, message: str):
    run = builder("bench", url.format(port=_free_port()), "--json", str(tmp_path / "out.json"), check=False, capture_output=True)
    assert run.returncode == 2 and re.fullmatch(rf"error: .*{message}.*\n", run.stderr), run.stderr
    assert list(tmp_path.iterdir()) == []


class NoUsageServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that ignores stream_options (as some do): five text chunks, no usage."""

    def do_GET(self) -> None:
        self._send("application/json", json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["stream"] and body["stream_options"] == {"include_usage": True}
        words = ["one", " two", " three", " four", " five"][: body["max_tokens"]]
        events = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        self._send("text/event-stream", b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n")

    def _send(self, kind: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in server on a free loopback port, in a thread, for the block; its base URL.
    test_bench_hostile.py serves its bad servers with it too."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def no_usage_server() -> Iterator[str]:
    with serve(NoUsageServer) as url:
        yield url


def test_without_usage_it_counts_text_chunks_and_says_so(no_usage_server: str, tmp_path: Path):
    run = builder("bench", no_usage_server, "--concurrency", "1,2", "--requests", "4", "--prompt-tokens", "20", "--max-tokens", "5",
                  "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"), check=False, capture_output=True)
    assert run.returncode == 0, run.stderr
    assert "prompts of 20 words (the server reported no prompt tokens)" in run.stdout
    assert "Output tokens counted from chunks (where a server sends no usage, one token per text chunk: a lower bound)" in run.stdout
    result = json.loads((tmp_path / "b.json").read_text())
    for level in result["levels"]:
        assert level["counted"] == "chunks" and level["output_tokens"] == 4 * 5
        assert level["engine_decode_rate"] is None and level["engine_output_tokens"] is None  # no timings, no /metrics
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_builder_starts_without_matplotlib():
    out = subprocess.run([sys.executable, "-c", "import sys, builder.cli; print('matplotlib' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_api_key_file_holds_one_key(tmp_path: Path):
    key = tmp_path / "key"
    key.write_text("two words\n")
    with pytest.raises(UserError, match="expected one key on one line"):
        bench.read_api_key(key)
    key.write_text("sk-1\n")
    assert bench.read_api_key(key) == "sk-1"


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"])
def test_ctrl_c_stops_it_in_one_line_with_nothing_written(tmp_path: Path, inherited: signal.Handlers):
    """Also when started with SIGINT ignored, as a shell's background job is: the CLI installs its own handler."""
    out = tmp_path / "b.json"
    benching = threading.Event()

    class Benching(NoUsageServer):
        def do_POST(self) -> None:
            benching.set()  # the run is past its start-up: its own handler is in place
            super().do_POST()

    with serve(Benching) as url:
        # Far more requests than run before the signal.
        run = subprocess.Popen([sys.executable, "-m", "builder.cli", "bench", url, "--concurrency", "1",
                                "--requests", "1000000", "--prompt-tokens", "8", "--max-tokens", "2", "--json", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=dispositions(sigint=inherited))
        # A fixed sleep lost the race on a loaded machine: a signal before the handler is installed is ignored.
        assert benching.wait(60), "the bench never sent a request"
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "error: interrupted (SIGINT)" and stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []
