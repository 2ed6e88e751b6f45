"""stacks/monitoring.yml on the llama.cpp CPU stack, for real: the locally built llama.cpp and model-init images, a
tiny model from the local Hub, and Prometheus (its stand-in image from Debian's package, tests/images/prometheus)
scraping llama-server's /metrics with the stack's generated API key. `builder bench --prometheus` then loads the
engine, and every query of every panel of the llama.cpp dashboard is evaluated by that Prometheus over the bench's
window and must return data; the other dashboards' queries must be valid PromQL there (their engines cannot run here).

Grafana and NVIDIA's DCGM exporter cannot be obtained here (no registry, no GPU): the stack is brought up without
them (`up llamacpp prometheus`), and their parts are checked without running them (tests/unit/test_monitoring.py)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support.builder import RUN, builder
from support.http import status, wait_until_healthy
from support.prerequisites import REPO
from support.stack import ANY_PORT, Stack

from builder.images.docker import Backend

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FILES = [REPO / f for f in ("stacks/llamacpp-webui.yml", "stacks/llamacpp-cpu.yml", "stacks/llamacpp-port.yml",
                            "stacks/monitoring.yml", "tests/e2e/hub-on-host.yml")]
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((REPO / "stacks/monitoring/grafana/dashboards").glob("*.json"))}
PROMETHEUS_IMAGE = f"r1kit-test/prometheus:{RUN}"
SCRAPE_INTERVAL = 5  # stacks/monitoring/prometheus.yml
PARALLEL = 2  # llama-server's slots: the bench's 4 concurrent requests keep 2 waiting


@pytest.fixture(scope="module")
def prometheus_image(backend: Backend, base_image: str) -> str:
    """Prometheus's stand-in: Debian bookworm's `prometheus` package on the local base image (seconds when cached)."""
    cmd = [*backend.build_command, "--progress", "plain", "--tag", PROMETHEUS_IMAGE, "--build-arg", f"BASE_IMAGE={base_image}"]
    if backend.kind == "buildx":
        cmd.append("--load")
    built = subprocess.run([*cmd, str(REPO / "tests" / "images" / "prometheus")], env={**os.environ, **backend.env},
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return PROMETHEUS_IMAGE


@pytest.fixture(scope="module")
def stack(llamacpp_cpu_image: str, model_init_image: str, prometheus_image: str, local_hub):
    # No LLAMACPP_API_KEY: secrets-init generates the key, and Prometheus must read that one from the keys volume.
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "LLAMACPP_CPU_IMAGE": llamacpp_cpu_image, "MODEL_INIT_IMAGE": model_init_image, "PROMETHEUS_IMAGE": prometheus_image,
        "HF_ENDPOINT": local_hub.url, "HF_TOKEN": "",
        "LLAMACPP_PORT": ANY_PORT, "PROMETHEUS_PORT": ANY_PORT,
        "LLAMACPP_CTX_SIZE": "2048", "LLAMACPP_THREADS": "2", "LLAMACPP_PARALLEL": str(PARALLEL),
    }
    with Stack(f"r1kit-test-{RUN}-monitoring", FILES, env) as s:
        # Only the engine and Prometheus (and what they wait for): Grafana's and Open WebUI's images are not here.
        s("up", "-d", "--no-build", "--pull", "never", "llamacpp", "prometheus")
        wait_until_healthy(f"{s.url('llamacpp', 8080)}/health", timeout=180)
        wait_until_healthy(f"{s.url('prometheus', 9090)}/-/ready", timeout=60)
        yield s


@pytest.fixture(scope="module")
def api_key(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated key, read as docs/monitoring.md says to."""
    key = stack("exec", "-T", "llamacpp", "cat", "/run/r1kit/keys/llamacpp_api_key").stdout.strip()
    assert len(key) == 64
    path = tmp_path_factory.mktemp("key") / "llamacpp_api_key"
    path.write_text(key + "\n")
    return path


def get(url: str, key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def api(stack: Stack, path: str, **params: str | float) -> dict:
    code, body = get(f"{stack.url('prometheus', 9090)}{path}?{urllib.parse.urlencode(params)}")
    answer = json.loads(body)
    assert code == 200 and answer["status"] == "success", f"{path} {params}: {code} {body[:500]}"
    return answer["data"]


def test_llama_server_metrics_are_behind_its_key_and_name_what_the_dashboard_reads(stack: Stack, api_key: Path):
    engine = stack.url("llamacpp", 8080)
    wait_until_healthy(f"{engine}/health", timeout=120)
    assert status(f"{engine}/metrics") == 401, "llama-server guards /metrics with its API key"
    code, text = get(f"{engine}/metrics", api_key.read_text().strip())
    assert code == 200, text[:500]
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE llamacpp:")}
    queried = {m for p in DASHBOARDS["llamacpp"]["panels"] for t in p["targets"]
               for m in re.findall(r"llamacpp:\w+", t["expr"])}
    assert queried <= exported, f"not exported by this llama-server: {queried - exported}; it exports {sorted(exported)}"


def test_prometheus_scrapes_the_engine_only_with_the_stacks_key(stack: Stack):
    deadline = time.monotonic() + 90
    while True:
        targets = api(stack, "/api/v1/targets")["activeTargets"]
        llamacpp = [t for t in targets if t["labels"]["job"] == "llamacpp"]
        if llamacpp and llamacpp[0]["health"] == "up":
            break
        assert time.monotonic() < deadline, f"llama-server is not scraped: {targets}\n{stack.logs('prometheus')}"
        time.sleep(2)
    # The other engines' names do not resolve in this stack: their jobs have no target, so nothing shows as down.
    assert {t["labels"]["job"] for t in targets} == {"llamacpp"}, targets
    # The overlay's healthcheck (wget, as in upstream's busybox image) passes.
    while (health := stack.inspect("prometheus")["State"]["Health"]["Status"]) != "healthy":
        assert health == "starting" and time.monotonic() < deadline + 60, f"prometheus: {health}"
        time.sleep(2)
    prometheus = stack.inspect("prometheus")
    assert prometheus["Config"]["User"] == "65534:65534" and prometheus["HostConfig"]["ReadonlyRootfs"] is True
    assert prometheus["HostConfig"]["CapDrop"] == ["ALL"]
    assert [p["HostIp"] for p in prometheus["NetworkSettings"]["Ports"]["9090/tcp"]] == ["127.0.0.1"]


@pytest.fixture(scope="module")
def bench(stack: Stack, api_key: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`builder bench --prometheus` against the stack, as a user runs it; its JSON report and stdout."""
    engine = stack.url("llamacpp", 8080)
    wait_until_healthy(f"{engine}/health", timeout=120)
    prometheus = stack.url("prometheus", 9090)
    # A bench begun before Prometheus's first scrape of the engine would find no sample in its first level.
    deadline = time.monotonic() + 90
    while not api(stack, "/api/v1/query", query="llamacpp:requests_processing")["result"]:
        assert time.monotonic() < deadline, f"Prometheus has no sample of the engine\n{stack.logs('prometheus')}"
        time.sleep(1)
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # Levels long enough for several scrapes each (rate() over [1m] needs two samples): 128 requests of 512 tokens
    # took 19 s at concurrency 4 on a two-core machine, twice the two scrapes the test needs.
    started = time.time()
    run = builder("bench", engine, "--api-key-file", str(api_key), "--prometheus", prometheus, "--concurrency", "1,4",
                  "--requests", "128", "--prompt-tokens", "64", "--max-tokens", "512", "--json", str(out),
                  capture_output=True, check=False, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    # The last level's final state reaches Prometheus at its next scrape.
    time.sleep(SCRAPE_INTERVAL + 2)
    return {"report": json.loads(out.read_text()), "stdout": run.stdout, "started": started, "ended": time.time()}


def test_bench_records_the_engines_gauges_per_level(bench: dict):
    levels = {lv["concurrency"]: lv for lv in bench["report"]["levels"]}
    print("\n" + bench["stdout"])
    for c, lv in levels.items():
        assert lv["engine_gauges_problem"] == "", lv["engine_gauges_problem"]
        gauges = {g["name"]: g for g in lv["engine_gauges"]}
        # llama-server exports no KV-cache usage: only these two.
        assert set(gauges) == {"requests_running", "requests_waiting"}, gauges
        assert gauges["requests_running"]["metric"] == "llamacpp:requests_processing"
        assert lv["window"]["end"] - lv["window"]["start"] >= 2 * SCRAPE_INTERVAL, f"level {c} too short to be scraped twice"
    # One request at a time: one slot busy, none waiting; four at a time on two slots: both busy, the rest deferred.
    one, four = ({g["name"]: g for g in levels[c]["engine_gauges"]} for c in (1, 4))
    assert one["requests_running"]["max"] == 1 and one["requests_waiting"]["max"] == 0
    assert four["requests_running"]["max"] == PARALLEL and four["requests_waiting"]["max"] >= 1
    assert 0 < one["requests_running"]["mean"] <= 1 and 1 < four["requests_running"]["mean"] <= PARALLEL
    assert "requests running mean" in bench["stdout"] and "llamacpp:requests_processing" in bench["stdout"]


def test_every_llamacpp_panel_query_has_data_over_the_bench(stack: Stack, bench: dict):
    """Each query of each panel, as Grafana would send it for the bench's time range (query_range, a 5 s step),
    answers at least one series with a finite value."""
    empty = []
    for panel in DASHBOARDS["llamacpp"]["panels"]:
        for target in panel["targets"]:
            data = api(stack, "/api/v1/query_range", query=target["expr"], start=f"{bench['started']:.3f}",
                       end=f"{bench['ended']:.3f}", step=str(SCRAPE_INTERVAL))
            values = [float(v) for series in data["result"] for _, v in series["values"]]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{panel['title']}: {target['expr']}")
    assert not empty, "no data for: " + "; ".join(empty)


@pytest.mark.parametrize("name", [n for n in DASHBOARDS if n != "llamacpp"])
def test_other_dashboards_queries_are_valid_promql(stack: Stack, name: str):
    """vLLM, SGLang and DCGM cannot run here: their queries must still parse and evaluate in this Prometheus (their
    names are checked against the engines' packages in tests/integration/test_metric_names.py)."""
    for panel in DASHBOARDS[name]["panels"]:
        for target in panel["targets"]:
            api(stack, "/api/v1/query", query=target["expr"], time=f"{time.time():.3f}")
