"""The local Hub's synthetic repos (tests/support/local_hub.py serves them) and what the download tests share.

The repos are named like the real ones, so that catalog names resolve against the local Hub: `builder download
r1-671b-ud-iq1_s` fetches three tiny shards, `r1-0528-ud-iq1_s` four from a bare quant folder, `r1-distill-qwen-1.5b`
(the stacks' default) one tiny file. The models
are random-weight llama models that llama.cpp loads (tests/support/tiny_gguf.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from support.local_hub import LocalHub
from support.tiny_gguf import write_tiny_model

R1_REPO = "unsloth/DeepSeek-R1-GGUF"
R1_IQ1_S = "DeepSeek-R1-UD-IQ1_S"
DISTILL_REPO = "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF"
DISTILL_FILE = "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf"
FP8_REPO = "deepseek-ai/DeepSeek-R1"
# The vLLM stack's default: the distill's original safetensors. Its config.json is the real model's (Qwen2, 28
# layers, 2 KV heads of 128), so the image's memory check computes with real numbers; the weights are random bytes.
DISTILL_ST_REPO = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
DISTILL_ST_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "num_hidden_layers": 28, "max_position_embeddings": 131072,
                     "vocab_size": 151936, "torch_dtype": "bfloat16"}
GATED_REPO = "r1kit-test/gated-GGUF"
# The three shards of R1_IQ1_S, as the repo holds them.
SHARDS = [f"{R1_IQ1_S}/{R1_IQ1_S}-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
# R1-0528's repository: bare quant folders (UD-IQ1_S/, not DeepSeek-R1-0528-UD-IQ1_S/), four shards in UD-IQ1_S as
# the real one holds (tests/support/hub_layouts.py), and a one-file quant at the top level beside them.
R1_0528_REPO = "unsloth/DeepSeek-R1-0528-GGUF"
R1_0528_IQ1_S = "DeepSeek-R1-0528-UD-IQ1_S"
R1_0528_SHARDS = [f"UD-IQ1_S/{R1_0528_IQ1_S}-0000{i}-of-00004.gguf" for i in (1, 2, 3, 4)]
R1_0528_TQ1_0 = "DeepSeek-R1-0528-UD-TQ1_0.gguf"
QWEN3_DISTILL_REPO = "unsloth/DeepSeek-R1-0528-Qwen3-8B-GGUF"
QWEN3_DISTILL_FILE = "DeepSeek-R1-0528-Qwen3-8B-Q4_K_M.gguf"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def populate_hub(hub: LocalHub, work: Path) -> None:
    r1 = work / "r1"
    write_tiny_model(r1 / R1_IQ1_S / f"{R1_IQ1_S}.gguf", split_max_tensors=8, seed=1)  # 3 shards
    write_tiny_model(r1 / "DeepSeek-R1-Q4_K_M" / "DeepSeek-R1-Q4_K_M.gguf", split_max_tensors=12, seed=2)  # 2 shards
    (r1 / "README.md").write_text("# DeepSeek-R1 GGUF (a synthetic stand-in served by the r1kit test suite)\n")
    (r1 / "config.json").write_text('{"model_type": "deepseek_v3"}\n')
    hub.add_repo(R1_REPO, _files(r1))
    distill = work / "distill"
    write_tiny_model(distill / DISTILL_FILE, seed=3)
    write_tiny_model(distill / "DeepSeek-R1-Distill-Qwen-1.5B-Q8_0.gguf", seed=4)
    (distill / "README.md").write_text("# a synthetic distill\n")
    hub.add_repo(DISTILL_REPO, _files(distill))
    # The FP8 safetensors layout (shards, index, config, code, and a figure the catalog leaves out); the bytes are
    # random: nothing loads them here (no vLLM without a GPU).
    hub.add_repo(FP8_REPO, {
        "config.json": b'{"model_type": "deepseek_v3", "num_hidden_layers": 61, "first_k_dense_replace": 3}\n',
        "model.safetensors.index.json": b'{"weight_map": {}}\n',
        "modeling_deepseek.py": b"# synthetic\n",
        "model-00001-of-00002.safetensors": os.urandom(300_000),
        "model-00002-of-00002.safetensors": os.urandom(200_000),
        "figures/benchmark.jpg": os.urandom(50_000),
    })
    hub.add_repo(DISTILL_ST_REPO, {
        "config.json": json.dumps(DISTILL_ST_CONFIG).encode(),
        "generation_config.json": b'{"temperature": 0.6, "top_p": 0.95}\n',
        "tokenizer.json": b'{"version": "1.0"}\n',
        "tokenizer_config.json": b'{"model_max_length": 16384}\n',
        "model.safetensors": os.urandom(400_000),
        "README.md": b"# a synthetic distill in safetensors\n",
    })
    r1_0528 = work / "r1-0528"
    write_tiny_model(r1_0528 / "UD-IQ1_S" / f"{R1_0528_IQ1_S}.gguf", split_max_tensors=6, seed=6)  # 4 shards
    write_tiny_model(r1_0528 / "Q4_K_M" / "DeepSeek-R1-0528-Q4_K_M.gguf", split_max_tensors=12, seed=7)  # 2 shards
    write_tiny_model(r1_0528 / "UD-Q4_K_XL" / "DeepSeek-R1-0528-UD-Q4_K_XL.gguf", seed=8)
    write_tiny_model(r1_0528 / R1_0528_TQ1_0, seed=9)
    (r1_0528 / "README.md").write_text("# DeepSeek-R1-0528 GGUF (a synthetic stand-in served by the r1kit test suite)\n")
    hub.add_repo(R1_0528_REPO, _files(r1_0528))
    qwen3 = work / "qwen3-distill"
    write_tiny_model(qwen3 / QWEN3_DISTILL_FILE, seed=10)
    write_tiny_model(qwen3 / "DeepSeek-R1-0528-Qwen3-8B-UD-Q4_K_XL.gguf", seed=11)
    hub.add_repo(QWEN3_DISTILL_REPO, _files(qwen3))
    gated = work / "gated"
    write_tiny_model(gated / "tiny-Q4_K_M.gguf", seed=5)
    hub.add_repo(GATED_REPO, _files(gated), gated=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hub_sha(hub: LocalHub, repo: str, path: str) -> str:
    return hub.repos[repo].files[path].sha256


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
