"""stacks/vllm-webui.yml up on this CPU-only machine, as far as it goes (heavy: the 10 GB vLLM image; `--heavy`).

model-init fetches the default safetensors distill from the local Hub into its own folder of the models volume;
secrets-init makes the keys; the vLLM service starts from the image's entrypoint. What stops it is asserted: a bad
setting stops it in the preflight with one line (exit 2); with the defaults the preflight notes that no GPU is
visible and vLLM itself stops, unable to find a device (exit 1). Open WebUI, waiting for a healthy engine, never
starts. Never run: vLLM loading and serving the model (it needs an NVIDIA GPU; docs/vllm.md)."""

from __future__ import annotations

import os
import subprocess

import pytest

from support.prerequisites import REPO
from support.stack import Stack

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.heavy]

FILES = [REPO / f for f in ("stacks/vllm-webui.yml", "tests/e2e/vllm-no-gpu.yml", "tests/e2e/hub-on-host.yml")]
MODEL_DIR = "/models/r1-distill-qwen-1.5b-bf16"


@pytest.fixture(scope="module")
def stack(vllm_image: str, model_init_image: str, local_hub):
    from conftest import RUN

    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "VLLM_IMAGE": vllm_image, "MODEL_INIT_IMAGE": model_init_image, "OPEN_WEBUI_IMAGE": "r1kit-test/open-webui:never-started",
        "HF_ENDPOINT": local_hub.url, "HF_TOKEN": "",
    }
    with Stack(f"r1kit-test-{RUN}-vllm", FILES, env) as s:
        yield s


def attempt(stack: Stack, **settings: str) -> tuple[int, str]:
    """`up -d vllm` (its dependencies first), then the engine's exit status and its log."""
    stack("up", "-d", "--no-build", "--pull", "never", "vllm", extra=settings)
    container = stack("ps", "-a", "-q", "vllm").stdout.split()[0]
    code = int(subprocess.run(["docker", "wait", container], capture_output=True, text=True, check=True, timeout=900).stdout)
    return code, stack("logs", "--no-color", "vllm", check=False).stdout


def test_model_init_fetches_the_safetensors_distill_into_its_folder(stack: Stack):
    code, log = attempt(stack, VLLM_TENSOR_PARALLEL_SIZE="-1")
    init = stack.inspect("model-init")
    assert init["State"]["ExitCode"] == 0, stack.logs("model-init")
    listing = stack("run", "--rm", "--no-deps", "--entrypoint", "ls", "vllm", MODEL_DIR).stdout.split()
    assert sorted(listing) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    # A bad setting stops the engine in the preflight, in one line, before vLLM is imported.
    assert code == 2, log
    assert log.strip().splitlines()[-1].endswith("error: argument -tp/--tensor-parallel-size: --tensor-parallel-size must be positive, not -1"), log[-2000:]


def test_without_a_gpu_vllm_stops_finding_no_device(stack: Stack):
    code, log = attempt(stack)
    engine = stack.inspect("vllm")
    assert engine["Config"]["User"] == "10001:10001" and engine["HostConfig"]["ReadonlyRootfs"] is True
    assert engine["HostConfig"]["ShmSize"] == 16 * 1024**3
    assert "r1kit-vllm: memory check skipped: no NVIDIA GPU visible" in log, log[-3000:]
    assert code == 1 and "RuntimeError: Failed to infer device type" in log, log[-3000:]
    # Open WebUI waits for a healthy engine: it was never created.
    assert stack("ps", "-a", "-q", "open-webui").stdout.strip() == ""
