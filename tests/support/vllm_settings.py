"""Settings of the vLLM stack (stacks/vllm-webui.yml) and the `vllm serve` arguments compose resolves from them: shared by
the parser tests on the host (tests/unit/test_vllm_args.py) and in the image (tests/integration/test_vllm_image.py)."""

from __future__ import annotations

import json
import os
import subprocess

from support.prerequisites import REPO
from support.stack import COMPOSE

# Each setting, as a user puts it in stacks/.env, and what vLLM must make of it.
SETTINGS = {
    "defaults": ({}, {"model_tag": "/models/r1-distill-qwen-1.5b-bf16", "served_model_name": ["r1-distill-qwen-1.5b-bf16"],
                      "host": "0.0.0.0", "port": 8000, "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                      "enable_expert_parallel": False, "max_model_len": 8192, "gpu_memory_utilization": 0.9,
                      "max_num_seqs": 64, "max_num_batched_tokens": 8192, "reasoning_parser": "deepseek_r1",
                      "trust_remote_code": False, "api_key": None}),
    # R1's FP8 weights on one 8×H200 node.
    "r1-8xh200": ({"VLLM_MODEL": "r1-671b-fp8", "VLLM_TENSOR_PARALLEL_SIZE": "8", "VLLM_EXPERT_PARALLEL": "--enable-expert-parallel",
                   "VLLM_TRUST_REMOTE_CODE": "--trust-remote-code", "VLLM_MAX_MODEL_LEN": "32768"},
                  {"model_tag": "/models/r1-671b-fp8", "served_model_name": ["r1-671b-fp8"], "tensor_parallel_size": 8,
                   "enable_expert_parallel": True, "trust_remote_code": True, "max_model_len": 32768}),
    # The 16×H100 recipe's batch settings, as pipeline 2 × tensor 8, and a served name of the user's.
    "recipe-16xh100": ({"VLLM_MODEL": "r1-671b-fp8", "VLLM_TENSOR_PARALLEL_SIZE": "8", "VLLM_PIPELINE_PARALLEL_SIZE": "2",
                        "VLLM_MAX_NUM_SEQS": "112", "VLLM_MAX_NUM_BATCHED_TOKENS": "57344", "VLLM_GPU_MEMORY_UTILIZATION": "0.95",
                        "VLLM_SERVED_MODEL_NAME": "deepseek-r1"},
                       {"served_model_name": ["deepseek-r1"], "tensor_parallel_size": 8, "pipeline_parallel_size": 2, "max_num_seqs": 112,
                        "max_num_batched_tokens": 57344, "gpu_memory_utilization": 0.95}),
    # The GH200 recipe: pipeline 4 × tensor 4, 8,000-token context, 64 sequences.
    "gh200": ({"VLLM_TENSOR_PARALLEL_SIZE": "4", "VLLM_PIPELINE_PARALLEL_SIZE": "4", "VLLM_MAX_MODEL_LEN": "8000", "VLLM_MAX_NUM_SEQS": "64"},
              {"tensor_parallel_size": 4, "pipeline_parallel_size": 4, "max_model_len": 8000, "max_num_seqs": 64}),
}


def vllm_command(env: dict[str, str]) -> list[str]:
    """The vllm service's command as `docker compose config` resolves it with only `env` set (no .env)."""
    result = subprocess.run([COMPOSE, "--project-directory", str(REPO / "stacks"), "-f", str(REPO / "stacks/vllm-webui.yml"),
                             "--env-file", os.devnull, "config", "--format", "json"],
                            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)["services"]["vllm"]["command"]
