"""The model catalog, selections, the Ollama Modelfile and the token lookup: pure functions, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.models import download
from builder.models import modelfile
from builder.models import catalog as models
from builder.core.errors import UserError
from support.builder import builder_in_process
from support.prerequisites import REPO

CATALOG = models.load()
R1_QUANTS = {
    "r1-671b-ud-iq1_s": ("DeepSeek-R1-UD-IQ1_S", 3, 131),
    "r1-671b-ud-iq1_m": ("DeepSeek-R1-UD-IQ1_M", 4, 158),
    "r1-671b-ud-iq2_xxs": ("DeepSeek-R1-UD-IQ2_XXS", 4, 183),
    "r1-671b-ud-q2_k_xl": ("DeepSeek-R1-UD-Q2_K_XL", 5, 212),
    "r1-671b-q4_k_m": ("DeepSeek-R1-Q4_K_M", 9, None),
    "r1-671b-q8_0": ("DeepSeek-R1-Q8_0", None, None),
    "r1-671b-bf16": ("DeepSeek-R1-BF16", None, None),
}


@pytest.mark.parametrize("name", sorted(R1_QUANTS))
def test_r1_gguf_quants(name: str):
    folder, shards, size = R1_QUANTS[name]
    m = CATALOG.get(name)
    assert m.repo == "unsloth/DeepSeek-R1-GGUF" and m.include == (f"{folder}/*.gguf",) and m.format == "gguf"
    assert (m.layers, m.dense_layers) == (61, 3) and m.template == "deepseek-r1" and "llamacpp" in m.engines
    if shards:
        assert m.shards == shards
    if size:
        assert m.approx_size_gb == size


def test_fp8_original_is_for_vllm():
    m = CATALOG.get("r1-671b-fp8")
    assert m.repo == "deepseek-ai/DeepSeek-R1" and m.format == "safetensors"
    assert "*.safetensors" in m.include and "*.json" in m.include


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
        ("r1-671b-iq9", (), "unknown model 'r1-671b-iq9': choose one of r1-671b-ud-iq1_s"),
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
