"""Every target and option renders, and hadolint accepts every rendered Dockerfile."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest
from support.prerequisites import REPO

from builder.images import catalog
from builder.images.render import image_tag, render

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


@pytest.mark.parametrize("target", [t for t in CATALOG.targets.values() if t.pin.url], ids=lambda t: t.name)
def test_a_target_built_from_upstream_source_checks_its_sha256(target):
    """docker-library style: the archive is downloaded to a file, checked with sha256sum -c against the pin (which
    the schema requires), then unpacked."""
    text = render(target)
    fetch = text[text.index("curl "):]
    assert fetch.index("sha256sum -c") < fetch.index("tar -x")
    assert "| tar" not in text and "curl -fsSL" in text and f"={target.pin.sha256}\n" in text


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


BUILD_SH = REPO / "images/llamacpp/build.sh"


@pytest.fixture
def build_sh(tmp_path: Path):
    """Runs images/llamacpp/build.sh with stand-ins for cmake, cc and python3 on PATH that record their arguments
    (cmake --build leaves the tools and two CPU variant libraries where a real build does); returns the exit
    status, cmake's configure arguments, and the installed files."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for name, extra in {
        "cmake": 'if [ "$1" = --build ]; then mkdir -p "$2/bin"; for f in llama-server llama-cli llama-bench llama-gguf-split '
                 'llama-quantize libggml-base.so libggml-cpu-haswell.so libggml-cpu-zen4.so; do : > "$2/bin/$f"; done; fi',
        "cc": 'while [ $# -gt 0 ]; do [ "$1" = -o ] && : > "$2"; shift; done',
        "python3": 'eval "out=\\${$#}"; : > "$out"',
        "patch": "",  # applies images/llamacpp/patches/ (tests/unit/test_amx_tile_check.py checks what it fixes)
    }.items():
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{extra}\n')
        (stubs / name).chmod(0o755)

    def run(*mode: str, **env: str) -> tuple[int, list[str], set[str], str]:
        prefix = tmp_path / "prefix"
        out = subprocess.run(["bash", str(BUILD_SH), *mode, str(tmp_path / "src"), str(prefix)], capture_output=True, text=True,
                             env={"PATH": f"{stubs}:/usr/bin:/bin", **env})
        lines = calls.read_text().splitlines() if calls.exists() else []
        configure = next((line.split()[1:] for line in lines if line.startswith("cmake -S")), [])
        files = {str(p.relative_to(prefix)) for p in prefix.rglob("*") if p.is_file()} if prefix.exists() else set()
        return out.returncode, configure, files, "\n".join(lines) + out.stderr

    return run


def test_build_script_portable_cpu(build_sh):
    rc, args, files, log = build_sh()
    assert rc == 0, log
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DLLAMA_OPENSSL=ON", "-DLLAMA_BUILD_UI=OFF"):
        assert flag in args
    assert not [a for a in args if a.startswith(("-DGGML_CUDA", "-DGGML_BLAS", "-DLLAMA_CURL"))]
    # The CPU variants leave bin/ (ggml would load them all from there); the scorer and both probe models are made.
    assert {"lib/ggml-cpu/libggml-cpu-haswell.so", "lib/ggml-cpu/libggml-cpu-zen4.so", "bin/r1kit-cpu-variants",
            "share/r1kit/probe-llama.gguf", "share/r1kit/probe-deepseek2.gguf", "bin/llama-server", "bin/libggml-base.so"} <= files
    assert not [f for f in files if f.startswith("bin/libggml-cpu-")]
    assert "tiny_gguf.py deepseek2 --quant q4_0" in log
    assert "amx_tile_check.py" in log and "patch -d" in log


def test_the_probe_models_are_a_step_of_their_own(build_sh):
    """The Dockerfile compiles with PROBES=no, then copies tiny_gguf.py and runs `build.sh probes`: an edit to the
    model writer must not reach the compile's layer."""
    rc, _, files, log = build_sh(PROBES="no")
    assert rc == 0, log
    assert "bin/llama-server" in files and not [f for f in files if f.startswith("share/")] and "tiny_gguf.py" not in log
    rc, _, files, log = build_sh("probes")
    assert rc == 0, log
    assert {"share/r1kit/probe-llama.gguf", "share/r1kit/probe-deepseek2.gguf"} <= files
    assert log.count("cmake -S") == 1  # only the first run configured
    dockerfile = (REPO / "images/llamacpp/llamacpp-cpu.Dockerfile").read_text()
    compile_step = dockerfile.index("build.sh /src/llama.cpp /opt/llama.cpp")
    assert "PROBES=no" in dockerfile[:compile_step] and dockerfile.index("COPY tiny_gguf.py") > compile_step
    assert "tiny_gguf.py" not in dockerfile[:compile_step].split("FROM source AS build")[1]


def test_build_script_cuda(build_sh):
    rc, args, _, log = build_sh(ACCELERATOR="cuda", CUDA_ARCHITECTURES="90;120")
    assert rc == 0, log
    assert "-DGGML_CUDA=ON" in args and "-DCMAKE_CUDA_ARCHITECTURES=90;120" in args and "-DGGML_CPU_ALL_VARIANTS=ON" in args


def test_build_script_cuda_needs_architectures(build_sh):
    rc, _, _, log = build_sh(ACCELERATOR="cuda")
    assert rc != 0 and "CUDA_ARCHITECTURES" in log


def test_build_script_blis(build_sh):
    rc, args, _, log = build_sh(BLAS="blis", BLIS_PREFIX="/opt/blis")
    assert rc == 0, log
    assert {"-DGGML_BLAS=ON", "-DGGML_BLAS_VENDOR=FLAME", "-DCMAKE_PREFIX_PATH=/opt/blis", "-DBLAS_INCLUDE_DIRS=/opt/blis/include/blis"} <= set(args)


def test_build_script_native(build_sh):
    rc, args, files, log = build_sh(CPU_TARGET="native")
    assert rc == 0, log
    assert "-DGGML_NATIVE=ON" in args and "-DGGML_CPU_ALL_VARIANTS=ON" not in args
    assert not [f for f in files if f.startswith(("lib/", "share/"))], "a native build has one CPU backend: nothing to choose"


@pytest.mark.parametrize("env", [{"ACCELERATOR": "rocm"}, {"BLAS": "openblas"}, {"CPU_TARGET": "fast"}])
def test_build_script_rejects_unknown_settings(build_sh, env: dict[str, str]):
    rc, args, _, log = build_sh(**env)
    assert rc == 2 and args == [] and "must be" in log


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


def fetch_step(text: str) -> str:
    """The RUN that downloads and checks llama.cpp's source."""
    match = re.search(r"^RUN --mount=type=secret,id=ca,required=false \\\n(?:.*\\\n)*.*$", text, re.M)
    assert match, "no fetch step"
    return match.group(0)


@pytest.mark.parametrize("name", ["llamacpp-cpu", "llamacpp-cuda", "model-init"])
def test_every_llamacpp_build_fetches_the_one_pinned_tree(name: str):
    """The llama.cpp images and model-init's llama-gguf-split build the tree that image.yaml pins: the same archive,
    sha256 and tree as build-arg defaults, and the same download-and-check step, in the renders and the committed
    files compose builds from."""
    cat = catalog.load()
    pin, target = cat.pins["llamacpp"], cat.get(name)
    assert pin.url and pin.sha256 and pin.source_tree and pin.upstream == "llama-cpp-python"
    reference = fetch_step(render(cat.get("llamacpp-cpu")))
    for text in (render(target), (target.folder / f"{name}.Dockerfile").read_text()):
        for arg, value in (("LLAMACPP_URL", pin.source_url), ("LLAMACPP_SHA256", pin.sha256), ("LLAMACPP_TREE", pin.source_tree)):
            assert f"\nARG {arg}={value}\n" in text
        assert fetch_step(text) == reference and 'sha256sum -c -' in reference and '--strip-components="${depth}" "${LLAMACPP_TREE}"' in reference
        assert "ARG LLAMACPP_SOURCE=pinned\n" in text


def test_model_init_image():
    cat = catalog.load()
    target = cat.get("model-init")
    assert target.repo_files == ("builder", "pyproject.toml", "README.md") and target.platforms == ("linux/amd64", "linux/arm64")
    text = render(target)
    assert "USER 10001:10001" in text and "umask 0022 && exec builder download" in text
    assert "BUILDER_MODELS_DIR=/models" in text and "HF_HOME=/home/r1kit/.cache/huggingface" in text
    # llama-gguf-split is built in model-init's own stage from llama.cpp's pin (no image of ours to pull first).
    assert "cmake --build /tmp/build --target llama-gguf-split" in text and "sha256sum -c" in text
    assert "COPY --from=gguf-split /opt/llama.cpp/bin/llama-gguf-split" in text and "ghcr.io/r1kit/llamacpp" not in text
    assert dict(target.extra_sources) == {"llamacpp": "LLAMACPP_SOURCE"}
    assert not re.search(r"HF_TOKEN\w*=", text)  # no token, nor its path, baked into an image layer
