"""The vLLM and SGLang metric names the monitoring overlay and `builder bench` read, checked against the engines' own
packages at the versions the images pin: vLLM from images/vllm/image.yaml, sglang-kt (the ktransformers image's
SGLang) from images/ktransformers/requirements.txt. Neither engine can serve here (no GPU), so their source is the
nearest real thing, read, never imported: vLLM's from the parser venv the argument tests already install
(tests/support/vllm_venv.py), sglang-kt's wheel downloaded (pip download --no-deps, cached under .cache/wheels) and
read as a zip. A metric is defined there as Gauge/Counter/Histogram(name="..."); Prometheus's
client exposes a counter as NAME_total and a histogram as NAME_bucket, NAME_sum and NAME_count.

llama.cpp's names need none of this: tests/e2e/test_monitoring.py scrapes the real llama-server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from support.prerequisites import CACHE, REPO
from support.vllm_venv import vllm_parser_python

from builder.images import runtime

pytestmark = pytest.mark.slow

DASHBOARDS = REPO / "stacks" / "monitoring" / "grafana" / "dashboards"
VLLM_VERSION = str(yaml.safe_load((REPO / "images" / "vllm" / "image.yaml").read_text())["version"])
SGLANG_VERSION = re.search(r"^sglang-kt==([\w.]+)", (REPO / "images" / "ktransformers" / "requirements.txt").read_text(), re.M)[1]
# A metric's definition: the constructor (prometheus_client's class, or vLLM's self._gauge_cls and the like), then
# its name as the first argument.
DEFINITION = re.compile(r"([\w.]+)\(\s*name=\"((?:vllm|sglang):\w+)\"")


def wheel(package: str, version: str) -> Path:
    folder = CACHE / "wheels"
    found = sorted(folder.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary", ":all:", "--dest", str(folder), f"{package}=={version}"], check=True)
        found = sorted(folder.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    assert found, f"pip download {package}=={version} left no wheel in {folder}"
    return found[-1]


def wheel_sources(path: Path, top: str) -> Iterable[str]:
    with zipfile.ZipFile(path) as z:
        yield from (z.read(n).decode("utf-8", "replace") for n in z.namelist() if n.startswith(f"{top}/") and n.endswith(".py"))


def installed_sources(python: Path, top: str) -> Iterable[str]:
    """The package's .py files where `python` has it installed (found without importing it)."""
    where = subprocess.run([str(python), "-c", f"import importlib.util; print(importlib.util.find_spec({top!r}).submodule_search_locations[0])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    yield from (f.read_text("utf-8", "replace") for f in sorted(Path(where).rglob("*.py")))


def exposed(sources: Iterable[str]) -> dict[str, str]:
    """Every name the package's Prometheus metrics appear under at /metrics, with the kind of metric."""
    out = {}
    for source in sources:
        for ctor, metric in DEFINITION.findall(source):
            kind = next((k for k in ("counter", "gauge", "histogram") if k in ctor.lower()), None)
            if kind == "counter":
                out[metric.removesuffix("_total") + "_total"] = kind
            elif kind == "histogram":
                out.update({f"{metric}{suffix}": kind for suffix in ("_bucket", "_sum", "_count")})
            elif kind == "gauge":
                out[metric] = kind
    return out


def used(prefix: str, engine: str) -> set[str]:
    """The names of `prefix` that the engine's dashboard queries and that bench reads (images/<engine>/runtime.yaml)."""
    names = set(re.findall(rf"\b{prefix}:\w+", json.dumps(json.loads((DASHBOARDS / f"{engine}.json").read_text()))))
    return names | set(runtime.load(engine).metrics.values())


@pytest.fixture(scope="module")
def vllm_names() -> dict[str, str]:
    python = vllm_parser_python()
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert version == VLLM_VERSION, f"the parser venv holds vLLM {version}, the image pins {VLLM_VERSION}"
    return exposed(installed_sources(python, "vllm"))


@pytest.fixture(scope="module")
def sglang_wheel() -> Path:
    return wheel("sglang-kt", SGLANG_VERSION)


def test_vllm_names_are_vllms_own(vllm_names: dict[str, str]):
    # The reading itself: the figures the issue names are there, with their kinds.
    assert vllm_names["vllm:num_requests_running"] == "gauge" and vllm_names["vllm:kv_cache_usage_perc"] == "gauge"
    assert vllm_names["vllm:time_to_first_token_seconds_bucket"] == "histogram"
    assert vllm_names["vllm:generation_tokens_total"] == "counter"
    missing = used("vllm", "vllm") - set(vllm_names)
    assert not missing, f"not metrics of vLLM {VLLM_VERSION}: {sorted(missing)}"


def test_sglang_names_are_sglangs_own(sglang_wheel: Path):
    names = exposed(wheel_sources(sglang_wheel, "sglang"))
    assert names["sglang:num_running_reqs"] == "gauge" and names["sglang:generation_tokens_total"] == "counter"
    missing = used("sglang", "ktransformers") - set(names)
    assert not missing, f"not metrics of sglang-kt {SGLANG_VERSION}: {sorted(missing)}"


def test_sglang_knows_the_flag_the_stack_passes(sglang_wheel: Path):
    """ktransformers-webui.yml passes --enable-metrics, without which SGLang serves no /metrics."""
    with zipfile.ZipFile(sglang_wheel) as z:
        source = z.read("sglang/srt/server_args.py").decode()
    assert '"--enable-metrics"' in source


def test_a_name_that_is_not_vllms_is_caught(vllm_names: dict[str, str]):
    assert "vllm:gpu_cache_usage_perc" not in vllm_names  # the name before vLLM's V1 engine
    assert "vllm:num_requests_running_total" not in vllm_names  # a gauge has no _total
