"""vLLM's own argument parser on every suite run, without the 9.4 GB image: a venv under .cache/ holding the pinned
vLLM wheel (--no-deps), the CPU torch wheel these machines carry, and vLLM's other requirements minus the GPU-only
packages. With VLLM_TARGET_DEVICE=cpu, vLLM's `make_arg_parser` imports and parses there exactly as in the image.
Made once (255 s cold here, 3.5 GB; docs/PERFORMANCE.md), reused by every later run. The tests that need it are
marked slow and live in tests/integration (and tests/e2e), not in the unit tier.

vllm_parse is the one way the tests run vLLM's parser on the host: tests/support/vllm_parse.py in that venv.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from support.prerequisites import CACHE, REPO

PARSE = REPO / "tests" / "support" / "vllm_parse.py"
VLLM_VERSION = str(yaml.safe_load((REPO / "images" / "vllm" / "image.yaml").read_text())["version"])
# The CPU torch on the machines (ENVIRONMENT.md: `pip install torch==2.13.0` takes the local wheel). vLLM pins
# torch 2.14.0, whose PyPI wheel is CUDA 13 (with its libraries, most of the 9.4 GB): the parser needs neither.
CPU_TORCH = "torch==2.13.0"
# vLLM requirements that only matter on a GPU (kernels, CUDA libraries, codecs) or need the pinned torch.
GPU_ONLY = re.compile(r"^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer|tilelang|nvidia-|nvtx|"
                      r"fastsafetensors|instanttensor|quack-kernels|tokenspeed|humming-kernels|numba)", re.IGNORECASE)


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def vllm_parser_python() -> Path:
    """The venv's python, made where it is missing (a half-made venv is never reused: it is built aside, then renamed)."""
    venv = CACHE / f"vllm-{VLLM_VERSION}-parser"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    CACHE.mkdir(exist_ok=True)
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
    # venv's scripts name their own folder: the rename below must not break them, so call pip as a module.
    tmp_python = partial / "bin" / "python"
    _pip(tmp_python, "--no-deps", f"vllm=={VLLM_VERSION}")
    requires = subprocess.run([str(tmp_python), "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('vllm')))"],
                              check=True, capture_output=True, text=True).stdout.splitlines()
    wanted = [r for r in requires if "extra ==" not in r and not GPU_ONLY.match(r)]
    _pip(tmp_python, CPU_TORCH, *wanted)
    partial.rename(venv)
    return python


def vllm_parse(python: Path, arg_lists: list[list[str]]) -> dict:
    """vLLM's parser (tests/support/vllm_parse.py run by `python`, usually vllm_parser_python()) on each argument
    list: {"vllm": its version, "parser": the module of make_arg_parser, "results": one {"ok": {...}} or
    {"error": [...]} per list}."""
    done = subprocess.run([str(python), "-P", str(PARSE)], input=json.dumps(arg_lists), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
