"""`builder slurm`'s scripts: their `vllm serve` arguments, read from each script's own text, parse in vLLM's own
parser. Moved out of tests/unit/test_slurm.py and marked slow: the parser runs in a venv of about 3.5 GB
(tests/support/vllm_venv.py) that the first run builds from PyPI (about 4 minutes), which the unit tier must not wait
for. No Docker needed: `pytest -m slow tests/integration/test_slurm_vllm_args.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cluster import slurm
from support.slurm import EVERYTHING, PRESETS, RAY_BACKEND, render, script_serve_args
from support.vllm_venv import vllm_parse, vllm_parser_python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return vllm_parser_python()


@pytest.mark.parametrize("launcher", slurm.LAUNCHERS)
def test_the_scripts_vllm_arguments_parse_in_vllms_parser(vllm_python: Path, launcher: str):
    cases = {preset: script_serve_args(render(preset, "--launcher", launcher)) for preset in PRESETS}
    cases["every-option"] = script_serve_args(render("2x4-h200", "--launcher", launcher, *EVERYTHING))
    results = vllm_parse(vllm_python, [args + RAY_BACKEND for args in cases.values()])["results"]
    presets = slurm.load_presets().presets
    for (name, args), result in zip(cases.items(), results):
        assert "ok" in result, f"{name}: vLLM refused {args}: {result}"
        ok = result["ok"]
        p = presets.get(name, presets["2x4-h200"])
        models_dir = "/models" if launcher != "bare" else p.models_dir
        assert ok["model_tag"] == f"{models_dir}/r1-0528-fp8"  # the default model: R1-0528
        assert (ok["tensor_parallel_size"], ok["pipeline_parallel_size"]) == (p.tensor_parallel, p.pipeline_parallel)
        assert ok["distributed_executor_backend"] == "ray" and ok["reasoning_parser"] == "deepseek_r1"
        assert ok["served_model_name"] == ["r1-0528-fp8"] and ok["api_key"] is None
        assert ok["host"] == ("0.0.0.0" if name == "every-option" else "127.0.0.1") and ok["port"] == 8000
    assert results[-1]["ok"]["enable_expert_parallel"] is True and results[-1]["ok"]["max_num_seqs"] == 32
