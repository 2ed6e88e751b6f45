"""The model catalog, selections, the Ollama Modelfile and the token lookup: pure functions, no network."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest
from support.builder import builder_in_process
from support.hub_layouts import LAYOUTS
from support.prerequisites import REPO

from builder.core.errors import UserError
from builder.models import catalog as models
from builder.models import download, modelfile

CATALOG = models.load()
# name: (repository, quant folder, shards, size in decimal GB). The original R1's sizes are the Hub listing's sums;
# R1-0528's dynamic quants are unsloth's table (see models.yaml for each figure's source).
R1_QUANTS = {
    "r1-671b-ud-iq1_s": ("unsloth/DeepSeek-R1-GGUF", "DeepSeek-R1-UD-IQ1_S", 3, 140.2),
    "r1-671b-ud-iq1_m": ("unsloth/DeepSeek-R1-GGUF", "DeepSeek-R1-UD-IQ1_M", 4, 169.7),
    "r1-671b-ud-iq2_xxs": ("unsloth/DeepSeek-R1-GGUF", "DeepSeek-R1-UD-IQ2_XXS", 4, 196.2),
    "r1-671b-ud-q2_k_xl": ("unsloth/DeepSeek-R1-GGUF", "DeepSeek-R1-UD-Q2_K_XL", 5, 226.6),
    "r1-671b-q4_k_m": ("unsloth/DeepSeek-R1-GGUF", "DeepSeek-R1-Q4_K_M", 9, 404.3),
    "r1-671b-q8_0": ("unsloth/DeepSeek-R1-GGUF", "DeepSeek-R1-Q8_0", 15, 713),
    "r1-671b-bf16": ("unsloth/DeepSeek-R1-GGUF", "DeepSeek-R1-BF16", 30, 1340),
    "r1-0528-ud-iq1_s": ("unsloth/DeepSeek-R1-0528-GGUF", "UD-IQ1_S", 4, 185),
    "r1-0528-ud-iq1_m": ("unsloth/DeepSeek-R1-0528-GGUF", "UD-IQ1_M", 5, 200),
    "r1-0528-ud-iq2_xxs": ("unsloth/DeepSeek-R1-0528-GGUF", "UD-IQ2_XXS", 5, 216),
    "r1-0528-ud-q2_k_xl": ("unsloth/DeepSeek-R1-0528-GGUF", "UD-Q2_K_XL", 6, 251),
    "r1-0528-q4_k_m": ("unsloth/DeepSeek-R1-0528-GGUF", "Q4_K_M", 9, 404.3),
    "r1-0528-q8_0": ("unsloth/DeepSeek-R1-0528-GGUF", "Q8_0", 15, 713),
    "r1-0528-bf16": ("unsloth/DeepSeek-R1-0528-GGUF", "BF16", 30, 1340),
}


@pytest.mark.parametrize("name", sorted(R1_QUANTS))
def test_r1_gguf_quants(name: str):
    repo, folder, shards, size = R1_QUANTS[name]
    m = CATALOG.get(name)
    assert m.repo == repo and m.include == (f"{folder}/*.gguf",) and m.format == "gguf"
    assert (m.layers, m.dense_layers, m.arch) == (61, 3, "deepseek-r1") and m.template == "deepseek-r1" and "llamacpp" in m.engines
    assert (m.shards, m.approx_size_gb) == (shards, size)
    assert m.released == ("2025-05-28" if name.startswith("r1-0528-") else "2025-01-20")


def test_the_dynamic_quants_are_in_decimal_gb_not_unsloths_gib():
    """unsloth quoted the original R1's dynamic quants in GiB (131, 158, 183, 212); the Hub lists 140.2, 196.2 and
    226.6 GB for three of them: those GiB figures in GB to within 1% (unsloth rounded), 7% above them read as GB."""
    for name, gib in (("r1-671b-ud-iq1_s", 131), ("r1-671b-ud-iq2_xxs", 183), ("r1-671b-ud-q2_k_xl", 212)):
        gb = CATALOG.get(name).approx_size_gb
        assert abs(gb - gib * 2**30 / 1e9) < 0.01 * gb and gb > 1.06 * gib, name
    assert CATALOG.get("r1-671b-ud-iq1_m").approx_size_gb == round(158 * 2**30 / 1e9, 1)  # no Hub figure: converted


# --- every entry against its repository's real file names (tests/support/hub_layouts.py) ---------------------------


@pytest.mark.parametrize("name", list(CATALOG.models))
def test_every_entrys_patterns_select_its_files_in_the_real_layout(name: str):
    m = CATALOG.get(name)
    assert m.repo in LAYOUTS, f"{m.repo}: add its real file names to tests/support/hub_layouts.py"
    layout = LAYOUTS[m.repo]
    selection = models.resolve(name, catalog=CATALOG)
    chosen = sorted(p for p in layout if selection.matches(p))
    if m.format == "gguf":
        assert len(chosen) == (m.shards or 1) and all(p.endswith(".gguf") for p in chosen), chosen
        if m.shards:  # one split set: one folder, one stem, numbered 1..N of N
            parts = [models.SHARD.match(PurePosixPath(p).name) for p in chosen]
            assert all(parts) and len({PurePosixPath(p).parent for p in chosen}) == 1 and len({x["stem"] for x in parts}) == 1
            assert [(int(x["index"]), int(x["count"])) for x in parts] == [(k, m.shards) for k in range(1, m.shards + 1)]
    else:  # every weight file and the configs vLLM reads; no figures, no README
        weights = {p for p in layout if p.endswith(".safetensors")}
        assert weights <= set(chosen) and "config.json" in chosen and len(weights) == (m.shards or len(weights))
        assert not [p for p in chosen if p.startswith("figures/") or p.endswith(".md")]


@pytest.mark.parametrize(("spec", "expected"), [
    ("unsloth/DeepSeek-R1-0528-GGUF:UD-IQ1_S", [f"UD-IQ1_S/DeepSeek-R1-0528-UD-IQ1_S-0000{k}-of-00004.gguf" for k in (1, 2, 3, 4)]),
    ("unsloth/DeepSeek-R1-0528-GGUF:TQ1_0", ["DeepSeek-R1-0528-UD-TQ1_0.gguf"]),
    ("unsloth/DeepSeek-R1-0528-GGUF:Q4_K_M", [f"Q4_K_M/DeepSeek-R1-0528-Q4_K_M-0000{k}-of-00009.gguf" for k in range(1, 10)]),
    ("unsloth/DeepSeek-R1-GGUF:Q8_0", [f"DeepSeek-R1-Q8_0/DeepSeek-R1.Q8_0-{k:05d}-of-00015.gguf" for k in range(1, 16)]),
    ("bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF:Q4_K_M", ["deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-Q4_K_M.gguf"]),
    ("unsloth/DeepSeek-R1-0528-Qwen3-8B-GGUF:Q4_K_M", ["DeepSeek-R1-0528-Qwen3-8B-Q4_K_M.gguf"]),
])
def test_a_quant_selects_one_quant_in_the_real_layouts(spec: str, expected: list[str]):
    """OWNER/REPO:QUANT against bare folders (R1-0528), prefixed ones (R1), a dotted stem (R1's Q8_0) and bartowski's
    prefixed files: the quant's files and no neighbour's (UD-Q4_K_XL/ beside Q4_K_M/, the top-level TQ1_0 file)."""
    selection = models.resolve(spec, catalog=CATALOG)
    assert sorted(p for p in LAYOUTS[selection.repo] if selection.matches(p)) == expected


def test_the_qwen3_distill_of_r1_0528():
    """GGUF for llama.cpp and Ollama, BF16 for vLLM; Qwen3-8B's shape for the planner; R1's chat template, which
    it keeps (R1's tokenizer and special tokens), for the Modelfile: every layer plus the output on the GPU."""
    gguf, bf16 = CATALOG.get("r1-0528-qwen3-8b-q4_k_m"), CATALOG.get("r1-0528-qwen3-8b-bf16")
    assert gguf.repo == "unsloth/DeepSeek-R1-0528-Qwen3-8B-GGUF" and set(gguf.engines) == {"llamacpp", "ollama"}
    assert bf16.repo == "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B" and bf16.engines == ("vllm",) and bf16.format == "safetensors"
    arch = CATALOG.architectures["qwen3-8b"]
    assert (gguf.arch, bf16.arch, gguf.layers, arch["layers"]) == ("qwen3-8b", "qwen3-8b", 36, 36)
    assert arch["kv_bytes_per_token"] == 36 * 2 * 8 * 128 * 2 and arch["max_context"] == 131072
    text = modelfile.render("./d.gguf", template=gguf.template, num_ctx=8192, num_gpu=gguf.layers + 1)
    assert "PARAMETER num_gpu 37" in text and "<｜User｜>{{ .Content }}" in text and 'PARAMETER stop "<｜end▁of▁sentence｜>"' in text


@pytest.mark.parametrize(("name", "repo"), [("r1-671b-fp8", "deepseek-ai/DeepSeek-R1"), ("r1-0528-fp8", "deepseek-ai/DeepSeek-R1-0528")])
def test_fp8_originals_are_for_vllm_and_ktransformers(name: str, repo: str):
    m = CATALOG.get(name)
    assert m.repo == repo and m.format == "safetensors" and set(m.engines) == {"vllm", "ktransformers"}
    assert "*.safetensors" in m.include and "*.json" in m.include and m.shards == 163


def test_default_is_a_small_single_file_distill():
    m = CATALOG.get(CATALOG.default)
    assert m.name == "r1-distill-qwen-1.5b"
    assert m.repo == "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF" and m.include == ("DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",)
    assert m.format == "gguf" and m.approx_size_gb < 2
    distills = [n for n in CATALOG.models if n.startswith("r1-distill-") and CATALOG.get(n).format == "gguf"]
    assert len(distills) >= 4


def test_vllm_serves_the_safetensors_entries():
    """vLLM's stack needs safetensors: R1's FP8 weights, and a small distill as its default."""
    fp8, distill = CATALOG.get("r1-671b-fp8"), CATALOG.get("r1-distill-qwen-1.5b-bf16")
    assert "vllm" in fp8.engines and "vllm" in distill.engines
    assert distill.repo == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and distill.format == "safetensors"
    assert distill.approx_size_gb < 4 and "*.safetensors" in distill.include and "*.json" in distill.include
    assert all(CATALOG.get(n).format == "safetensors" for n in CATALOG.models if "vllm" in CATALOG.get(n).engines)


def test_every_engine_a_model_names_is_one_the_image_catalog_or_a_stack_runs():
    from builder.images import catalog

    known = catalog.load().engines(REPO / "stacks")
    assert {"llamacpp", "ollama"} <= known
    models.check_engines(CATALOG, known)
    with pytest.raises(UserError, match="names engine 'exllama'"):
        models.check_engines(models.load("default: x\nmodels:\n  x: {description: d, repo: a/b, include: ['*'], format: gguf, engines: [exllama]}\n"), known)


def test_a_broken_catalog_is_refused():
    with pytest.raises(UserError, match="default"):
        models.load("default: nope\nmodels: {}\n")
    with pytest.raises(UserError, match="bad format"):
        models.load("default: x\nmodels:\n  x: {description: d, repo: a/b, include: ['*'], format: exl2, engines: [llamacpp]}\n")
    with pytest.raises(UserError, match="released 'May 2025', which is not a date"):
        models.load("default: x\nmodels:\n  x: {description: d, repo: a/b, include: ['*'], format: gguf, engines: [llamacpp], released: May 2025}\n")


def test_builder_models_json_is_the_catalog():
    result = builder_in_process("models", "--json", check=False, capture_output=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(CATALOG.models)
    assert [r["name"] for r in rows if r["default"]] == ["r1-distill-qwen-1.5b"]
    assert {"repo", "include", "format", "approx_size_gb", "layers", "engines"} <= set(rows[0])


# --- selections -----------------------------------------------------------------------------------------------------


def test_resolve_a_catalog_name_and_override_its_patterns():
    s = models.resolve("r1-671b-ud-iq1_s")
    assert (s.repo, s.include, s.revision, s.model.name) == ("unsloth/DeepSeek-R1-GGUF", ("DeepSeek-R1-UD-IQ1_S/*.gguf",), "main", "r1-671b-ud-iq1_s")
    assert models.resolve("r1-671b-ud-iq1_s", ["README.md"]).include == ("README.md",)


def test_resolve_a_repo_with_a_quant_or_patterns():
    s = models.resolve("unsloth/DeepSeek-R1-GGUF:UD-IQ1_S")
    assert s.quant == "UD-IQ1_S" and s.matches("DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf")
    assert not s.matches("DeepSeek-R1-UD-IQ1_SX/x.gguf") and not s.matches("DeepSeek-R1-UD-IQ1_S/README.md")
    q = models.resolve("someone/Model-GGUF:q4_k_m")
    assert q.matches("Model-Q4_K_M.gguf") and not q.matches("Model-Q4_K_S.gguf")
    assert models.resolve("someone/Model-GGUF", ["*.gguf"]).matches("a/b.gguf")


@pytest.mark.parametrize(
    ("spec", "include", "message"),
    [
        ("r1-671b-iq9", (), "unknown model 'r1-671b-iq9': choose one of r1-0528-ud-iq1_s"),
        ("someone/Model-GGUF", (), "say which files"),
        ("someone/Model-GGUF:Q4_K_M", ("*.gguf",), "either"),
        ("not a repo/x y", ("*",), "not a Hub repository id"),
    ],
)
def test_resolve_errors(spec: str, include: tuple[str, ...], message: str):
    with pytest.raises(UserError, match=message):
        models.resolve(spec, include)


# --- the Modelfile --------------------------------------------------------------------------------------------------


def test_modelfile_text():
    text = modelfile.render("./DeepSeek-R1-UD-IQ1_S.gguf", template="deepseek-r1", num_ctx=16384, num_gpu=7)
    lines = text.splitlines()
    assert lines[:4] == ["FROM ./DeepSeek-R1-UD-IQ1_S.gguf", "PARAMETER num_ctx 16384", "PARAMETER num_gpu 7", "PARAMETER temperature 0.6"]
    template = text.split('TEMPLATE """', 1)[1]
    assert "<｜User｜>{{ .Content }}" in template and "<｜Assistant｜>" in template and template.rstrip().endswith('"""')
    assert 'PARAMETER stop "<｜end▁of▁sentence｜>"' in text


def test_modelfile_without_known_layers_or_template():
    text = modelfile.render("/m/x.gguf", template=None, num_ctx=4096, num_gpu=None)
    assert text == "FROM /m/x.gguf\nPARAMETER num_ctx 4096\nPARAMETER temperature 0.6\n"
    with pytest.raises(UserError):
        modelfile.render("x", template="chatml-nope", num_ctx=4096, num_gpu=None)


def test_modelfile_from_is_relative_to_the_modelfile(tmp_path: Path):
    assert modelfile.from_path(tmp_path / "models" / "a.gguf", tmp_path / "models" / "Modelfile") == "./a.gguf"
    assert modelfile.from_path(tmp_path / "models" / "a.gguf", tmp_path / "ollama" / "Modelfile") == "../models/a.gguf"


# --- the token ------------------------------------------------------------------------------------------------------


def test_token_from_env_then_file(tmp_path: Path):
    secret = tmp_path / "hf_token"
    secret.write_text("hf_from_file\n")
    assert download.read_token({"HF_TOKEN": "hf_env", "HF_TOKEN_PATH": str(secret)}) == "hf_env"
    assert download.read_token({"HF_TOKEN_PATH": str(secret)}) == "hf_from_file"
    secret.write_text("\n")  # compose writes an empty secret from an unset variable: no token
    assert download.read_token({"HF_TOKEN_PATH": str(secret), "HF_HOME": str(tmp_path)}) is None
    with pytest.raises(UserError, match="HF_TOKEN_PATH"):
        download.read_token({"HF_TOKEN_PATH": str(tmp_path / "missing")})
