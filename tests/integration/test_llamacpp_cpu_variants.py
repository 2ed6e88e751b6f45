"""The llama.cpp CPU image's CPU kernels, on DeepSeek-R1's own architecture (deepseek2: MLA, a leading dense block,
shared plus routed experts) and on the quant types that take the CPU's AMX and repacked paths (Q4_0, Q8_0, Q4_K):
every variant this CPU can run, the variant the entrypoint picks, and its fallback when a variant dies.

A variant that dies is simulated by a real ggml CPU backend library of our own (a score above every real variant,
and SIGILL when ggml initialises it), mounted into the image's variant folder: the entrypoint's probe must skip it,
as it skips sapphirerapids where that aborts (see docs/PERFORMANCE.md for the AMX Xeon this was measured on)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from python_on_whales import DockerClient

from support.http import LOOPBACK_ANY_PORT, post_json, published_url, wait_until_healthy
from support.tiny_gguf import write_tiny_deepseek2, write_tiny_model

pytestmark = [pytest.mark.docker, pytest.mark.slow]

QUANTS = ("Q4_0", "Q8_0", "Q4_K_M")
VARIANTS = "/opt/llama.cpp/lib/ggml-cpu"

CRASHING_VARIANT = r"""
/* A ggml CPU backend that ggml ranks above every real variant and that dies with SIGILL when loaded. */
int ggml_backend_score(void) { return 1 << 30; }
void *ggml_backend_init(void) { __builtin_trap(); return 0; }
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, docker: DockerClient, llamacpp_cpu_image: str) -> dict[str, str]:
    """Container paths of llama and deepseek2 models, F16 and quantized by the image's own llama-quantize, with
    widths that are multiples of 256 so that every quantized matrix can take the AMX and repacked kernels."""
    folder = tmp_path_factory.mktemp("cpu-variant-models")
    folder.chmod(0o777)  # the image's user (uid 10001) writes the quantized files
    write_tiny_model(folder / "llama-F16.gguf", n_embd=256, n_ff=512, f16=True)
    write_tiny_deepseek2(folder / "deepseek2-F16.gguf", quant="f16")
    script = " && ".join(f"r1kit-entrypoint llama-quantize /models/{arch}-F16.gguf /models/{arch}-{q}.gguf {q} >/dev/null 2>&1"
                         for arch in ("llama", "deepseek2") for q in QUANTS)
    docker.run(llamacpp_cpu_image, ["-c", script], entrypoint="/bin/sh", remove=True, volumes=[(str(folder), "/models", "rw")])
    for p in folder.iterdir():
        p.chmod(0o644)
    return {"folder": str(folder), **{p.stem: f"/models/{p.name}" for p in folder.glob("*.gguf")}}


def _sh(docker: DockerClient, image: str, script: str, models: dict[str, str], **kw) -> str:
    return docker.run(image, ["-c", script], entrypoint="/bin/sh", remove=True, volumes=[(models["folder"], "/models", "ro")], **kw)


def test_the_quantized_models_are_what_they_say(models: dict[str, str]):
    assert {f"{arch}-{q}" for arch in ("llama", "deepseek2") for q in ("F16", *QUANTS)} <= set(models)


def test_every_variant_this_cpu_runs_runs_every_model(docker: DockerClient, llamacpp_cpu_image: str, models: dict[str, str]):
    """Each runnable variant (forced with LLAMACPP_CPU_VARIANT), each model: llama-bench runs to the end. The AMX
    variant takes deepseek2 with repacking off, as the entrypoint gives it (llama.cpp#19184 aborts it otherwise)."""
    names = sorted(m for m in models if m != "folder")
    script = f"""
for lib in $(LD_LIBRARY_PATH=/opt/llama.cpp/bin r1kit-cpu-variants {VARIANTS}/*.so | sed -n 's/^[1-9][0-9]* //p'); do
  v=${{lib##*libggml-cpu-}}; v=${{v%.so}}
  for m in {' '.join(names)}; do
    repack=1; case $v:$m in sapphirerapids:deepseek2-*) repack=0 ;; esac
    LLAMACPP_CPU_VARIANT=$v r1kit-entrypoint llama-bench -m /models/$m.gguf -p 16 -n 4 -r 1 --repack $repack -o csv >/dev/null 2>/tmp/err
    echo "$v $m $?"
  done
done"""
    rows = [line.split() for line in _sh(docker, llamacpp_cpu_image, script, models).splitlines() if line.strip()]
    variants = {v for v, _, _ in rows}
    assert len(variants) >= 2, f"expected several CPU variants to run here: {rows}"
    failed = [r for r in rows if r[2] != "0"]
    assert not failed, f"variant, model, exit status: {failed}"
    assert {m for _, m, _ in rows} == set(names)


@pytest.mark.parametrize("model", ["llama-Q4_0", "deepseek2-Q4_K_M"])
def test_the_entrypoint_picks_a_variant_that_runs(docker: DockerClient, llamacpp_cpu_image: str, models: dict[str, str], model: str):
    out = _sh(docker, llamacpp_cpu_image,
              f"r1kit-entrypoint llama-bench -m {models[model]} -p 16 -n 4 -r 1 -o csv 2>&1 >/dev/null; echo exit=$?", models)
    assert out.rstrip().endswith("exit=0"), out[-3000:]
    arch = model.split("-")[0]
    assert f"for a {arch} model (the best that ran the probe" in out, out[-3000:]


def test_a_variant_that_dies_is_skipped(docker: DockerClient, llamacpp_cpu_image: str, models: dict[str, str], tmp_path: Path):
    source = tmp_path / "crash.c"
    source.write_text(CRASHING_VARIANT)
    lib = tmp_path / "libggml-cpu-zzcrash.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    lib.chmod(0o755)
    out = docker.run(llamacpp_cpu_image, ["-c", f"r1kit-entrypoint llama-bench -m {models['llama-Q4_0']} -p 16 -n 4 -r 1 -o csv 2>&1; echo exit=$?"],
                     entrypoint="/bin/sh", remove=True,
                     volumes=[(models["folder"], "/models", "ro"), (str(lib), f"{VARIANTS}/libggml-cpu-zzcrash.so", "ro")])
    assert "CPU variant zzcrash failed the probe (exit 132" in out, out[-3000:]
    assert "the best that ran the probe" in out and out.rstrip().endswith("exit=0"), out[-3000:]
    assert "loaded CPU backend from /opt/llama.cpp/lib/ggml-cpu/libggml-cpu-" in out and "zzcrash.so" not in out.split("failed the probe")[-1]


def test_a_forced_variant_is_loaded(docker: DockerClient, llamacpp_cpu_image: str, models: dict[str, str]):
    out = _sh(docker, llamacpp_cpu_image, f"r1kit-entrypoint llama-bench -m {models['llama-Q4_0']} -p 16 -n 4 -r 1 -o csv 2>&1", models,
              envs={"LLAMACPP_CPU_VARIANT": "x64"})
    assert "loaded CPU backend from /opt/llama.cpp/lib/ggml-cpu/libggml-cpu-x64.so" in out, out[-3000:]


def test_an_unknown_forced_variant_stops_the_server(docker: DockerClient, llamacpp_cpu_image: str, models: dict[str, str]):
    out = _sh(docker, llamacpp_cpu_image, "r1kit-entrypoint --version 2>&1; echo exit=$?", models, envs={"LLAMACPP_CPU_VARIANT": "pentium"})
    assert "LLAMACPP_CPU_VARIANT=pentium is not in this image; choose auto or one of:" in out and "haswell" in out
    assert out.rstrip().endswith("exit=1") and "version" not in out


def test_deepseek2_serves_a_chat_completion(docker: DockerClient, llamacpp_cpu_image: str, models: dict[str, str]):
    """R1's own architecture through llama-server, as the stacks start it (the entrypoint, an API key)."""
    container = docker.run(llamacpp_cpu_image, ["-m", models["deepseek2-Q4_K_M"], "-c", "512", "--api-key", "k", "-np", "1"],
                           detach=True, publish=[(LOOPBACK_ANY_PORT, 8080)], volumes=[(models["folder"], "/models", "ro")])
    try:
        url = published_url(container)
        wait_until_healthy(f"{url}/health")
        answer = post_json(f"{url}/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "Count from one to ten in French"}], "max_tokens": 16},
                           token="k")
        assert answer["usage"]["completion_tokens"] > 0
        assert "for a deepseek2 model" in docker.logs(container)
    finally:
        container.remove(force=True)
