"""The vLLM image's preflight (images/vllm/preflight.py), run for real as the entrypoint runs it: a subprocess given
`vllm serve`'s arguments, on model folders with real config.json values. GPUs come from R1KIT_GPU_COUNT and
R1KIT_GPU_MEMORY_GB (this machine has none for NVML to see). The reasoning parsers come from an installed vLLM: the
test venv's (tests/unit/test_vllm_args.py builds it) where present, a copy of its registry's shape otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.hub import DISTILL_ST_CONFIG
from support.prerequisites import REPO

PREFLIGHT = REPO / "images" / "vllm" / "preflight.py"
# DeepSeek-R1's config.json (the keys the estimate reads) and its checkpoint size: about 690 GB of FP8 weights in
# 163 shards (docs: the Hub's listing; FIELD-NOTES.md).
R1_CONFIG = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 61,
             "kv_lora_rank": 512, "qk_rope_head_dim": 64, "num_attention_heads": 128, "hidden_size": 7168,
             "max_position_embeddings": 163840, "torch_dtype": "bfloat16"}
R1_BYTES = 690 * 1000**3
# The recipe this project replaces: 57,344 batched tokens, 112 sequences, 90% of each GPU.
RECIPE = ["--max-num-batched-tokens", "57344", "--max-num-seqs", "112", "--gpu-memory-utilization", "0.9"]


def preflight(*args: str, gpus: tuple[int, float] | None = None, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}
    if gpus:
        env.update(R1KIT_GPU_COUNT=str(gpus[0]), R1KIT_GPU_MEMORY_GB=str(gpus[1]))
    return subprocess.run([python, str(PREFLIGHT), *args], env=env, capture_output=True, text=True, timeout=60)


def refused(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def r1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("r1")
    (folder / "config.json").write_text(json.dumps(R1_CONFIG))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": R1_BYTES}, "weight_map": {}}))
    return folder


@pytest.fixture(scope="module")
def distill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distill's config with a sparse 3.55 GB model.safetensors: the size counts, no disk is used."""
    folder = tmp_path_factory.mktemp("distill")
    (folder / "config.json").write_text(json.dumps(DISTILL_ST_CONFIG))
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(3_554_214_752)
    return folder


def test_r1_does_not_fit_one_8x_h100_node(r1: Path):
    line = refused(preflight(str(r1), "--tensor-parallel-size", "8", *RECIPE, gpus=(8, 80)))
    assert f"{r1.name} does not fit" in line and "weights 690.0 GB" in line and "8 GPU(s) × 80.0 GB × 0.9 = 576.0 GB" in line
    assert "57,344 tokens × 70,272 bytes" in line  # MLA: (512 + 64) × 61 layers × 2 bytes per token


def test_r1_fits_8x_h200_and_16x_h100_over_two_nodes(r1: Path):
    h200 = preflight(str(r1), "-tp", "8", "--enable-expert-parallel", *RECIPE, gpus=(8, 141))
    assert h200.returncode == 0 and "fits" in h200.stderr, h200.stderr
    # Two 8-GPU nodes: pipeline 2 × tensor 8. Each node sees only its own 8 GPUs: without a multi-node setting
    # the 16 GPUs cannot be there.
    alone = refused(preflight(str(r1), "-tp", "8", "-pp", "2", *RECIPE, gpus=(8, 80)))
    assert "= 16 GPUs, but this node has 8" in alone
    ray = preflight(str(r1), "-tp", "8", "-pp", "2", "--distributed-executor-backend", "ray", *RECIPE, gpus=(8, 80))
    assert ray.returncode == 0 and "16 GPU(s) × 80.0 GB × 0.9 = 1,152.0 GB: fits" in ray.stderr, ray.stderr


def test_the_distill_fits_a_modest_gpu_and_not_a_tiny_one(distill: Path):
    ok = preflight(str(distill), "--max-model-len=8192", "--max-num-batched-tokens=8192", "--gpu-memory-utilization=0.90", gpus=(1, 24))
    # Qwen2 1.5B: 28 layers × 2 (K and V) × 2 KV heads × 128 × 2 bytes = 28,672 bytes per token.
    assert ok.returncode == 0 and "8,192 tokens × 28,672 bytes" in ok.stderr and "fits" in ok.stderr, ok.stderr
    assert "does not fit" in refused(preflight(str(distill), "--gpu-memory-utilization", "0.5", gpus=(1, 6)))
    # Without a length, vLLM takes the model's (131,072 tokens here): 3.8 GB of KV cache on top.
    assert "131,072 tokens" in refused(preflight(str(distill), gpus=(1, 8)))


def test_the_kv_cache_dtype_counts(r1: Path):
    fp8 = preflight(str(r1), "-tp", "8", "--kv-cache-dtype", "fp8", *RECIPE, gpus=(8, 141))
    assert "57,344 tokens × 35,136 bytes" in fp8.stderr, fp8.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--tensor-parallel-size", "-1"], "--tensor-parallel-size must be positive, not -1"),
    (["-tp=0"], "--tensor-parallel-size must be positive, not 0"),
    (["--pipeline_parallel_size", "-2"], "--pipeline-parallel-size must be positive, not -2"),
    (["--data-parallel-size", "two"], "--data-parallel-size must be a positive whole number, not 'two'"),
    (["--max-num-seqs", "0"], "--max-num-seqs must be positive"),
    (["--max-num-batched-tokens", "-8192"], "--max-num-batched-tokens must be positive"),
    (["--max-model-len", "lots"], "--max-model-len must be a number of tokens such as 8192 or 32k"),
    (["--gpu-memory-utilization", "1.5"], "a fraction of each GPU's memory (0 to 1), not 1.5"),
    (["--gpu-memory-utilization", "0"], "--gpu-memory-utilization must be positive"),
    (["--api-key", "sk-123"], "--api-key on the command line shows in `docker inspect`"),
])
def test_bad_settings_are_refused_in_one_line_before_anything_loads(distill: Path, args: list[str], says: str):
    # No GPU is needed to refuse these: they are checked first.
    assert says in refused(preflight(str(distill), *args))


def test_an_unknown_reasoning_parser_is_refused_by_the_installed_vllms_list(distill: Path, tmp_path: Path):
    """The names come from the installed vLLM's registry (vllm/reasoning/__init__.py), read without importing it:
    here a package of that shape stands in, put first on the path (the real one: test_vllm_args.py)."""
    package = tmp_path / "site" / "vllm"
    (package / "reasoning").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "reasoning" / "__init__.py").write_text(
        '_REASONING_PARSERS_TO_REGISTER = {\n    "deepseek_r1": ("deepseek_r1_reasoning_parser", "DeepSeekR1ReasoningParser"),\n'
        '    "qwen3": ("qwen3_reasoning_parser", "Qwen3ReasoningParser"),\n}\n')
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package.parent)}
    run = lambda *a: subprocess.run([sys.executable, str(PREFLIGHT), str(distill), *a], env=env, capture_output=True, text=True)
    line = refused(run("--reasoning-parser", "deepseek-r1"))
    assert "--reasoning-parser 'deepseek-r1' is not one vLLM knows: choose one of deepseek_r1, qwen3" in line
    assert run("--reasoning-parser=deepseek_r1").returncode == 0


def test_without_gpus_the_memory_check_says_it_was_skipped(distill: Path):
    """This machine: NVML sees no GPU. The check says so and lets vLLM report what it finds (the e2e test)."""
    result = preflight(str(distill), "--max-model-len", "8192")
    assert result.returncode == 0 and "memory check skipped: no NVIDIA GPU visible" in result.stderr, result.stderr


def test_a_hub_id_is_not_estimated(distill: Path):
    result = preflight("deepseek-ai/DeepSeek-R1", gpus=(8, 80))
    assert result.returncode == 0 and "is not a local model folder" in result.stderr


def test_bad_gpu_overrides_are_refused(distill: Path):
    assert "R1KIT_GPU_COUNT must be a whole number" in refused(preflight(str(distill), gpus=(1, "lots")))  # type: ignore[arg-type]
