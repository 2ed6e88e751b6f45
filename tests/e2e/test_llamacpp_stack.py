"""stacks/llamacpp-webui.yml up for real: the locally built images, model-init fetching a tiny model from the local
Hub, llama.cpp serving it on the CPU (stacks/llamacpp-cpu.yml), a chat completion through the engine's published
endpoint (stacks/llamacpp-port.yml), Open WebUI (its stand-in image, tests/images/open-webui) answering through the
engine, and `down -v` leaving nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from support.http import post_json, status, wait_until_healthy
from support.prerequisites import REPO
from support.stack import ANY_PORT, Stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FILES = [REPO / f for f in ("stacks/llamacpp-webui.yml", "stacks/llamacpp-cpu.yml", "stacks/llamacpp-port.yml", "tests/e2e/hub-on-host.yml")]
API_KEY = "e2e-api-key-not-secret"


@pytest.fixture(scope="module")
def stack(llamacpp_cpu_image: str, model_init_image: str, open_webui_image: str, local_hub):
    from conftest import RUN

    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "LLAMACPP_CPU_IMAGE": llamacpp_cpu_image, "MODEL_INIT_IMAGE": model_init_image, "OPEN_WEBUI_IMAGE": open_webui_image,
        "HF_ENDPOINT": local_hub.url, "HF_TOKEN": "",
        "WEBUI_SECRET_KEY": "e2e-webui-secret", "LLAMACPP_API_KEY": API_KEY,
        "LLAMACPP_PORT": ANY_PORT, "WEBUI_PORT": ANY_PORT,
        "LLAMACPP_CTX_SIZE": "512", "LLAMACPP_THREADS": "2",
    }
    with Stack(f"r1kit-test-{RUN}-e2e", FILES, env) as s:
        started = time.monotonic()
        # `up -d` returns once every service started, and each starts only when its depends_on condition holds.
        s("up", "-d", "--no-build", "--pull", "never")
        s.up_seconds = time.monotonic() - started
        yield s


def engine_url(stack: Stack) -> str:
    return stack.url("llamacpp", 8080)


def test_model_init_ran_once_and_succeeded(stack: Stack):
    init = stack.inspect("model-init")
    assert init["State"]["Status"] == "exited" and init["State"]["ExitCode"] == 0, stack.logs()
    assert init["Config"]["User"].split(":")[0] == "10001"


def test_engine_becomes_healthy_by_its_compose_healthcheck(stack: Stack):
    wait_until_healthy(f"{engine_url(stack)}/health", timeout=120)
    deadline = time.monotonic() + 60
    while (health := stack.inspect("llamacpp")["State"].get("Health", {}).get("Status")) != "healthy":
        assert time.monotonic() < deadline, f"llamacpp: {health}\n{stack.logs()}"
        time.sleep(2)


def test_engine_loads_the_path_model_init_wrote(stack: Stack):
    logs = stack("logs", "--no-color", "llamacpp").stdout
    assert "r1kit-entrypoint: model /models/" in logs and ".path)" in logs, logs[-3000:]
    assert "r1kit-entrypoint: CPU variant " in logs and "(the best that ran the probe" in logs, logs[-3000:]


def test_chat_completion_through_the_engines_endpoint(stack: Stack):
    url = engine_url(stack)
    wait_until_healthy(f"{url}/health", timeout=120)
    assert status(f"{url}/v1/models") == 401, "the API key must guard the endpoint"
    models = json.loads(subprocess.run(["curl", "-fsS", "-H", f"Authorization: Bearer {API_KEY}", f"{url}/v1/models"],
                                       capture_output=True, text=True, check=True).stdout)
    assert [m["id"] for m in models["data"]] == ["r1-distill-qwen-1.5b"], models
    answer = post_json(f"{url}/v1/chat/completions",
                       {"model": "r1-distill-qwen-1.5b", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16},
                       token=API_KEY)
    assert answer["choices"][0]["message"]["content"].strip() and answer["usage"]["completion_tokens"] > 0


def test_engine_is_non_root_with_the_models_read_only(stack: Stack):
    engine = stack.inspect("llamacpp")
    assert engine["Config"]["User"] == "10001:10001"
    mounts = {m["Destination"]: m for m in engine["Mounts"]}
    assert mounts["/models"]["RW"] is False
    assert not engine["HostConfig"].get("DeviceRequests"), "the CPU override must drop the GPU reservation"
    ports = engine["NetworkSettings"]["Ports"]["8080/tcp"]
    assert [p["HostIp"] for p in ports] == ["127.0.0.1"], ports


def test_open_webui_lists_the_engines_model_after_signup(stack: Stack):
    base = stack.url("open-webui", 8080)
    deadline = time.monotonic() + 240
    while status(f"{base}/health") != 200:
        assert time.monotonic() < deadline, f"Open WebUI never answered /health\n{stack.logs()}"
        time.sleep(2)
    user = post_json(f"{base}/api/v1/auths/signup", {"name": "admin", "email": "admin@example.com", "password": "e2e-password-1"})
    req = subprocess.run(["curl", "-fsS", "-H", f"Authorization: Bearer {user['token']}", f"{base}/api/models"], capture_output=True, text=True, check=True)
    assert "r1-distill-qwen-1.5b" in [m["id"] for m in json.loads(req.stdout)["data"]], req.stdout[:2000]
    assert status(f"{base}/api/models") in (401, 403), "auth must be on"
