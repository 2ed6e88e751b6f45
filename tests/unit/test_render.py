"""Every target and option renders, and hadolint accepts every rendered Dockerfile."""

from __future__ import annotations

import itertools
import re
import subprocess

import pytest

from builder import catalog
from builder.render import image_tag, render
from support.prerequisites import REPO

CATALOG = catalog.load()


def variants():
    """Every target with every combination of its choice options (free-form options at their defaults)."""
    for target in CATALOG.targets.values():
        choices = {o.name: o.choices for o in target.options.values() if o.choices}
        for combo in itertools.product(*choices.values()):
            yield pytest.param(target, dict(zip(choices, combo)), id=f"{target.name}-" + "-".join(combo))


@pytest.mark.parametrize(("target", "settings"), list(variants()))
def test_renders_and_passes_hadolint(target, settings):
    text = render(target, settings)
    assert "# syntax=" not in text  # it would pull a frontend image at build time
    result = subprocess.run(["hadolint", "--config", str(REPO / ".hadolint.yaml"), "-"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_llamacpp_cuda_build_flags():
    text = render(CATALOG.get("llamacpp-cuda"), {"blas": "blis", "cuda_architectures": "90;120"})
    assert "ARG CUDA_ARCHITECTURES=90;120" in text
    assert "nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04" in text and "nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04" in text
    assert "FROM blis-${BLIS_SOURCE} AS blis" in text and "--enable-cblas" in text
    assert "ACCELERATOR=cuda BLAS=blis" in text
    assert "USER 10001:10001" in text and "HEALTHCHECK" in text


def test_cpu_image_has_no_cuda_or_blis_by_default():
    text = render(CATALOG.get("llamacpp-cpu"))
    assert "nvidia" not in text and "blis" not in text.lower()


def test_build_script_flags():
    """The flags the issue asks for live in the one script both the image and the GPU machine run."""
    script = (REPO / "images/llamacpp/build.sh").read_text()
    for flag in ("-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
                 "-DLLAMA_OPENSSL=ON", "-DGGML_BLAS=ON", "-DGGML_BLAS_VENDOR=FLAME", "CMAKE_CUDA_ARCHITECTURES"):
        assert flag in script
    assert "LLAMA_CURL" not in script


@pytest.mark.parametrize(
    ("target", "settings", "tag"),
    [
        ("llamacpp-cuda", {}, "b10864-cu12"),
        ("llamacpp-cuda", {"cuda_version": "13.0.2", "blas": "blis"}, "b10864-cu13-blis"),
        ("llamacpp-cpu", {"blas": "blis"}, "b10864-blis"),
    ],
)
def test_image_tags(target, settings, tag):
    t = CATALOG.get(target)
    assert image_tag(t, settings) == tag.replace("b10864", t.version)


def test_model_init_image():
    cat = catalog.load()
    target = cat.get("model-init")
    # llama-gguf-split comes from the llama.cpp image of the pinned version.
    assert target.params["llamacpp_image"] == f"ghcr.io/r1kit/llamacpp-cpu:{cat.get('llamacpp-cpu').version}"
    assert target.repo_files == ("builder", "pyproject.toml", "README.md") and target.platforms == ("linux/amd64", "linux/arm64")
    text = render(target)
    assert "USER 10001:10001" in text and "umask 0022 && exec builder download" in text
    assert "BUILDER_MODELS_DIR=/models" in text and "HF_HOME=/home/r1kit/.cache/huggingface" in text
    assert "COPY --from=llamacpp /opt/llama.cpp/bin/llama-gguf-split" in text
    assert not re.search(r"HF_TOKEN\w*=", text)  # no token, nor its path, baked into an image layer
