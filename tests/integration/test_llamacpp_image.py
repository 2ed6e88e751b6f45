"""The llama.cpp CPU image, and its BLIS variant, built for real and serving a tiny model."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from python_on_whales import Container, DockerClient
from python_on_whales.exceptions import DockerException
from support.builder import RUN
from support.http import (
    LOOPBACK_ANY_PORT,
    post_json,
    published_url,
    status,
    wait_until_healthy,
)
from support.prerequisites import REPO

from builder.images import build, catalog, runtime

pytestmark = [pytest.mark.docker, pytest.mark.slow]

API_KEY = "test-key-not-secret"
# The llama-server flags the stacks and the GPU run use; each must exist in the built binary.
SERVER_FLAGS = ["-ngl", "--split-mode", "--tensor-split", "--flash-attn", "-c", "--api-key", "--api-key-file",
                "-ot", "--n-cpu-moe", "--threads", "--jinja", "--reasoning-format", "--host", "--port", "-np"]


@pytest.fixture(scope="module", params=["plain", "blis"])
def image(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("llamacpp_cpu_image" if request.param == "plain" else "llamacpp_cpu_blis_image")


@pytest.fixture(scope="module")
def server(docker: DockerClient, image: str, tiny_model: Path):
    container = docker.run(
        image,
        # -lv 4: the line naming the CPU backend variant that was loaded is logged from this level on.
        ["-m", f"/models/{tiny_model.name}", "-c", "512", "--api-key", API_KEY, "-np", "1", "-lv", "4"],
        detach=True,
        publish=[(LOOPBACK_ANY_PORT, 8080)],
        volumes=[(str(tiny_model.parent), "/models", "ro")],
    )
    try:
        url = published_url(container)
        wait_until_healthy(f"{url}/health")
        yield container, url
    finally:
        container.remove(force=True)


def test_chat_completion(server: tuple[Container, str]):
    _, url = server
    answer = post_json(f"{url}/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "Count from one to ten in French"}], "max_tokens": 16, "temperature": 0.6},
                       token=API_KEY)
    assert answer["choices"][0]["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] > 0


def test_completion(server: tuple[Container, str]):
    _, url = server
    answer = post_json(f"{url}/completion", {"prompt": "hello world", "n_predict": 8}, token=API_KEY)
    assert answer["content"].strip() and answer["tokens_predicted"] > 0


def test_api_key_guards_the_api_but_not_health(server: tuple[Container, str]):
    _, url = server
    assert status(f"{url}/health") == 200
    assert status(f"{url}/v1/models") == 401


def test_runs_as_non_root_and_is_healthy_by_its_own_check(server: tuple[Container, str], docker: DockerClient):
    container, _ = server
    assert docker.execute(container, ["id", "-u"]).strip() == "10001"
    assert container.config.user == "10001:10001"
    deadline = time.monotonic() + 60  # the first check runs one interval (15 s) after start
    while container.state.health is None or container.state.health.status != "healthy":
        assert time.monotonic() < deadline, f"HEALTHCHECK never passed: {container.state.health}"
        time.sleep(1)
        container.reload()


def test_picks_a_cpu_variant_at_run_time(server: tuple[Container, str], image: str, docker: DockerClient):
    container, _ = server
    logs = docker.logs(container)
    assert re.search(r"r1kit-entrypoint: CPU variant \w+ for a llama model \(the best that ran the probe", logs), logs[-2000:]
    assert re.search(r"loaded CPU backend from /opt/llama\.cpp/lib/ggml-cpu/libggml-cpu-\w+\.so", logs), logs[-2000:]
    if image.endswith("blis"):
        assert re.search(r"loaded BLAS backend from /opt/llama\.cpp/bin/libggml-blas\.so", logs), logs[-2000:]


def test_llama_bench_runs_inside_the_image(docker: DockerClient, image: str, tiny_model: Path):
    # A llama.cpp tool named first runs instead of llama-server, with the CPU kernels the entrypoint chose.
    out = docker.run(image, ["llama-bench", "-m", f"/models/{tiny_model.name}", "-p", "64", "-n", "16", "-r", "1", "-o", "json"],
                     remove=True, volumes=[(str(tiny_model.parent), "/models", "ro")])
    results = json.loads(out[out.index("["):])
    assert {r["n_prompt"] for r in results} == {64, 0}
    assert all(r["avg_ts"] > 0 for r in results)


def help_entries(help_text: str) -> list[str]:
    """llama-server --help's options, one entry each: its flags on the first line, then its description and env."""
    return re.split(r"\n(?=-)", help_text)


def test_server_flags_exist_in_the_binary(docker: DockerClient, image: str):
    help_text = docker.run(image, ["--help"], remove=True)
    for flag in SERVER_FLAGS:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)", help_text, re.M), f"llama-server has no {flag}"
    # images/llamacpp/runtime.yaml's settings: the stack passes each as a LLAMA_ARG_* variable; `builder plan`
    # prints it as a flag. Both must be the same option of this binary.
    facts = runtime.load("llamacpp")
    stack = yaml.safe_load((REPO / "stacks/llamacpp-webui.yml").read_text())["services"]["llamacpp"]["environment"]
    for key, flag in facts.settings.items():
        if flag is None:
            continue
        (variable,) = [name for name, value in stack.items() if re.match(rf"\$\{{{key}[:}}-]", str(value))]
        (entry,) = [e for e in help_entries(help_text) if re.search(rf"(^|[\s,]){re.escape(flag)}[\s,]", e.splitlines()[0])]
        assert f"(env: {variable})" in entry, f"{key}: the stack sets {variable}, but {flag} is read from: {entry}"
    # The old bare `--flash-attn` switch became `--flash-attn on|off|auto`.
    assert re.search(r"--flash-attn \[?(on\|off\|auto|FA)", help_text), "expected --flash-attn to take a value"


def test_other_tools_are_in_the_image(docker: DockerClient, image: str):
    for tool in ("llama-cli", "llama-gguf-split", "llama-quantize"):
        try:
            docker.run(image, [tool, "--help"], remove=True)
        except DockerException as e:  # some tools print usage and exit 1
            assert "usage" in (e.stdout or "").lower() + (e.stderr or "").lower(), f"{tool}: {e}"


def test_runtime_change_rebuilds_without_compiling(llamacpp_cpu_image: str, base_image: str, backend):
    """Editing a runtime-stage line reuses the compiled build stage (and the fetched source) from the layer cache."""
    target = catalog.load().get("llamacpp-cpu")
    plan = build.plan(target, {}, tags=(f"r1kit-test/llamacpp-cpu:{RUN}-runtime-edit",),
                      build_args=(f"BUILD_IMAGE={base_image}", f"RUNTIME_IMAGE={base_image}"))
    runtime_line = "apt-get install -y --no-install-recommends ca-certificates curl libgomp1"
    assert plan.dockerfile.count(runtime_line) == 1
    edited = dataclasses.replace(plan, dockerfile=plan.dockerfile.replace(runtime_line, runtime_line + " less"))
    log = build.run(edited, backend)
    compile_step = next(i for i, line in enumerate(log) if re.match(r"#\d+ \[build \d+/\d+\] RUN .*r1kit-build/build\.sh", line))
    step_id = log[compile_step].split()[0]
    assert f"{step_id} CACHED" in log, "\n".join(log)
    assert not any("Building C" in line for line in log)
    backend.whales().run(edited.tags[0], ["-c", "command -v less"], entrypoint="/bin/sh", remove=True)
