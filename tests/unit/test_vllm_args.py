"""The vLLM stack's exact `vllm serve` arguments, as `docker compose config` resolves them for several settings,
parsed by vLLM's own parser (tests/support/vllm_parse.py in the cached venv of tests/support/vllm_venv.py), and our
preflight refusing what vLLM's parser lets through. The image itself runs the same parse (tests/integration/
test_vllm_image.py, opt-in: it is 9 GB)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.prerequisites import REPO
from support.vllm_venv import VLLM_VERSION, vllm_parser_python
from test_stacks import COMBOS, config

PARSE = REPO / "tests" / "support" / "vllm_parse.py"
PREFLIGHT = REPO / "images" / "vllm" / "preflight.py"
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


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return vllm_parser_python()


def vllm_command(env: dict[str, str]) -> list[str]:
    return config(COMBOS["vllm"], **env)["services"]["vllm"]["command"]


def parse(python: Path, arg_lists: list[list[str]]) -> dict:
    result = subprocess.run([str(python), "-P", str(PARSE)], input=json.dumps(arg_lists), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_stacks_arguments_parse_in_vllms_own_parser(vllm_python: Path):
    commands = {name: vllm_command(env) for name, (env, _) in SETTINGS.items()}
    out = parse(vllm_python, list(commands.values()))
    assert out["vllm"] == VLLM_VERSION and out["parser"].endswith("cli_args"), out
    for (name, (_, want)), result in zip(SETTINGS.items(), out["results"]):
        assert "ok" in result, f"{name}: vLLM refused {commands[name]}: {result}"
        got = {k: result["ok"][k] for k in want}
        assert got == want, name


def test_the_parser_under_test_refuses_what_vllm_refuses(vllm_python: Path):
    """The check can fail: an unknown option or a malformed number is an error in vLLM's parser."""
    out = parse(vllm_python, [["/models/m", "--no-such-option=1"], ["/models/m", "--max-num-seqs=many"]])
    assert all("error" in r for r in out["results"]), out


def test_what_vllms_parser_lets_through_our_preflight_refuses(vllm_python: Path):
    """vLLM 0.33.0's parser accepts a negative tensor parallel size and an unknown reasoning parser (it would fail
    later, in the engine); the image's preflight, run by the same Python as in the image, refuses both in one line."""
    bad = {"VLLM_TENSOR_PARALLEL_SIZE": "-2", "VLLM_REASONING_PARSER": "deepseek-r1"}
    commands = [vllm_command({k: v}) for k, v in bad.items()]
    out = parse(vllm_python, commands)
    assert [r["ok"]["tensor_parallel_size"] for r in out["results"][:1]] == [-2]
    assert [r["ok"]["reasoning_parser"] for r in out["results"][1:]] == ["deepseek-r1"]
    for command, says in zip(commands, ["--tensor-parallel-size must be positive, not -2",
                                        "--reasoning-parser 'deepseek-r1' is not one vLLM knows: choose one of "]):
        result = subprocess.run([str(vllm_python), str(PREFLIGHT), *command], capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin"})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    # ... and reads the names from the installed vLLM: R1's parser is among them.
    ok = subprocess.run([str(vllm_python), str(PREFLIGHT), *vllm_command({})], capture_output=True, text=True, timeout=60,
                        env={"PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
