"""The file layouts of the Hub repositories the catalog (builder/models/models.yaml) names, as their listings show
them: every catalog entry's include patterns are checked against these names (tests/unit/test_models.py), and the
local Hub serves them as listing-only repos for dry runs (tests/unit/test_download_layouts.py).

Sources (the Hub itself is unreachable here; read through the search tool's stored copies, 2026-12):
- unsloth/DeepSeek-R1-GGUF: the Hub's folder pages for DeepSeek-R1-UD-IQ1_S, -UD-IQ2_XXS, -UD-Q2_K_XL, -Q2_K_L,
  -Q4_K_M and -Q8_0 (names and per-file sizes, decimal GB); -UD-IQ1_M's first shard (a copy,
  joermd/deep_speedy, 49.3 GB). -BF16's file names and count are not seen: assumed like Q8_0's.
- unsloth/DeepSeek-R1-0528-GGUF: bare quant folders (FIELD-NOTES, unsloth's docs links .../tree/main/UD-IQ1_S ...);
  UD-IQ1_S/DeepSeek-R1-0528-UD-IQ1_S-0000K-of-00004.gguf and the top-level DeepSeek-R1-0528-UD-TQ1_0.gguf are seen
  (unsloth's docs, ik_llama.cpp PR #495). The other folders' file names follow the same stem; their shard counts
  are unverified (the catalog's `shards`). No per-file size seen.
- unsloth/DeepSeek-R1-0528-Qwen3-8B-GGUF: DeepSeek-R1-0528-Qwen3-8B-Q4_K_M.gguf, 5027785216 bytes (the blob
  Ollama's hf.co pull fetches, recorded in a public test fixture); -UD-Q6_K_XL and the others: names seen, sizes not.
- bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF: the `deepseek-ai_` prefix bartowski gives every file.
- deepseek-ai/DeepSeek-R1 and -0528: 163 shards named model-0000K-of-000163.safetensors (six digits after `of`),
  code and config beside them. deepseek-ai/DeepSeek-R1-0528-Qwen3-8B: the transformers shard names; their count
  (2) is not seen.
- The first distills' repos (unsloth/DeepSeek-R1-Distill-*-GGUF, deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B): one file
  per quant named after the repository, as the catalog took them.
A size of None: not seen (the local Hub lists such a file as 0 bytes; the dry-run test uses only entries whose every
file's size was seen).
"""

from __future__ import annotations

GB = 10**9


def shards(folder: str, stem: str, sizes_gb: list[float | None]) -> dict[str, int | None]:
    """A split GGUF's files as llama-gguf-split names them, in `folder` ('' for the top level)."""
    n = len(sizes_gb)
    prefix = f"{folder}/" if folder else ""
    return {f"{prefix}{stem}-{k:05d}-of-{n:05d}.gguf": None if s is None else int(s * GB) for k, s in enumerate(sizes_gb, 1)}


def unseen(n: int) -> list[float | None]:
    return [None] * n


R1_GGUF: dict[str, int | None] = {
    **shards("DeepSeek-R1-UD-IQ1_S", "DeepSeek-R1-UD-IQ1_S", [49.3, 49.4, 41.5]),
    **shards("DeepSeek-R1-UD-IQ1_M", "DeepSeek-R1-UD-IQ1_M", [49.3, None, None, None]),
    **shards("DeepSeek-R1-UD-IQ2_XXS", "DeepSeek-R1-UD-IQ2_XXS", [49.1, 49.8, 49.8, 47.5]),
    **shards("DeepSeek-R1-UD-Q2_K_XL", "DeepSeek-R1-UD-Q2_K_XL", [49.8, 50, 50, 50, 26.8]),
    **shards("DeepSeek-R1-Q2_K_L", "DeepSeek-R1-Q2_K_L", [49.6, 48.5, 48.8, 48.9, 48.4]),
    **shards("DeepSeek-R1-Q4_K_M", "DeepSeek-R1-Q4_K_M", [48.3, 49.4, 49.5, 48.3, 49.4, 48.3, 49.4, 46.9, 14.8]),
    **shards("DeepSeek-R1-Q8_0", "DeepSeek-R1.Q8_0", [47.8] + [48.9] * 8 + unseen(6)),  # a dot, not a dash
    **shards("DeepSeek-R1-BF16", "DeepSeek-R1.BF16", unseen(30)),
    "README.md": 24_600,
    "config.json": 1_610,
}

R1_0528_GGUF: dict[str, int | None] = {
    **shards("UD-IQ1_S", "DeepSeek-R1-0528-UD-IQ1_S", unseen(4)),
    **shards("UD-IQ1_M", "DeepSeek-R1-0528-UD-IQ1_M", unseen(5)),
    **shards("UD-IQ2_XXS", "DeepSeek-R1-0528-UD-IQ2_XXS", unseen(5)),
    **shards("UD-Q2_K_XL", "DeepSeek-R1-0528-UD-Q2_K_XL", unseen(6)),
    **shards("UD-IQ3_XXS", "DeepSeek-R1-0528-UD-IQ3_XXS", unseen(6)),
    **shards("UD-Q3_K_XL", "DeepSeek-R1-0528-UD-Q3_K_XL", unseen(7)),
    **shards("UD-Q4_K_XL", "DeepSeek-R1-0528-UD-Q4_K_XL", unseen(8)),
    **shards("Q4_K_M", "DeepSeek-R1-0528-Q4_K_M", unseen(9)),
    **shards("Q4_1", "DeepSeek-R1-0528-Q4_1", unseen(9)),
    **shards("IQ4_NL", "DeepSeek-R1-0528-IQ4_NL", unseen(8)),
    **shards("Q8_0", "DeepSeek-R1-0528-Q8_0", unseen(15)),
    **shards("BF16", "DeepSeek-R1-0528-BF16", unseen(30)),
    "DeepSeek-R1-0528-UD-TQ1_0.gguf": None,  # one file, for Ollama: no folder
    "README.md": None,
    "config.json": None,
}

R1_0528_QWEN3_8B_GGUF: dict[str, int | None] = {
    "DeepSeek-R1-0528-Qwen3-8B-Q4_K_M.gguf": 5_027_785_216,
    **{f"DeepSeek-R1-0528-Qwen3-8B-{q}.gguf": None for q in ("Q4_K_S", "UD-Q4_K_XL", "UD-Q6_K_XL", "Q8_0", "BF16")},
    "README.md": None,
}

BARTOWSKI_QWEN3_8B_GGUF: dict[str, int | None] = {
    f"deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-{q}.gguf": None for q in ("Q4_K_S", "Q4_K_M", "Q4_K_L", "Q6_K", "Q8_0", "bf16")
}


def _fp8() -> dict[str, int | None]:
    files: dict[str, int | None] = {f"model-{k:05d}-of-000163.safetensors": None for k in range(1, 164)}
    files.update({name: None for name in ("config.json", "configuration_deepseek.py", "modeling_deepseek.py", "model.safetensors.index.json",
                                          "generation_config.json", "tokenizer.json", "tokenizer_config.json", "LICENSE",
                                          "README.md", "figures/benchmark.jpg")})
    return files


QWEN3_8B_SAFETENSORS: dict[str, int | None] = {
    **{f"model-{k:05d}-of-00002.safetensors": None for k in (1, 2)},
    **{name: None for name in ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                               "tokenizer_config.json", "LICENSE", "README.md", "figures/benchmark.png")},
}

def _distill_gguf(name: str) -> dict[str, int | None]:
    return {f"{name}-{q}.gguf": None for q in ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")} | {"README.md": None}


DISTILLS = ("Qwen-1.5B", "Qwen-7B", "Llama-8B", "Qwen-14B", "Qwen-32B", "Llama-70B")

LAYOUTS: dict[str, dict[str, int | None]] = {
    **{f"unsloth/DeepSeek-R1-Distill-{d}-GGUF": _distill_gguf(f"DeepSeek-R1-Distill-{d}") for d in DISTILLS},
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": {name: None for name in ("model.safetensors", "config.json", "generation_config.json",
                                                                          "tokenizer.json", "tokenizer_config.json", "LICENSE", "README.md")},
    "unsloth/DeepSeek-R1-GGUF": R1_GGUF,
    "unsloth/DeepSeek-R1-0528-GGUF": R1_0528_GGUF,
    "unsloth/DeepSeek-R1-0528-Qwen3-8B-GGUF": R1_0528_QWEN3_8B_GGUF,
    "bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF": BARTOWSKI_QWEN3_8B_GGUF,
    "deepseek-ai/DeepSeek-R1": _fp8(),
    "deepseek-ai/DeepSeek-R1-0528": _fp8(),
    "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B": QWEN3_8B_SAFETENSORS,
}
