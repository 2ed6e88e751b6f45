"""images/llamacpp/entrypoint.sh, run by a POSIX shell with stand-ins for llama-server, llama-bench (the CPU probe)
and r1kit-cpu-variants (the image runs it for real: tests/integration/test_llamacpp_image.py and
tests/e2e/test_llamacpp_stack.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.prerequisites import REPO

ENTRYPOINT = REPO / "images" / "llamacpp" / "entrypoint.sh"


def _script(path: Path, text: str) -> None:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    _script(folder / "llama-server", 'echo "model=${LLAMA_ARG_MODEL-<unset>} ts=${LLAMA_ARG_TENSOR_SPLIT-<unset>} ctx=${LLAMA_ARG_CTX_SIZE-<unset>} args=$*"\n')
    return folder


@pytest.fixture
def run(bin_dir: Path):
    def go(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dash", str(ENTRYPOINT), *args], env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env}, capture_output=True, text=True)

    return go


# --- choosing the CPU kernels -------------------------------------------------------------------------------------

SCORES = {"x64": 1, "haswell": 40, "icelake": 90, "zen4": 100, "sapphirerapids": 120, "alderlake": 0}


@pytest.fixture
def home(tmp_path: Path, bin_dir: Path) -> Path:
    """An LLAMACPP_HOME laid out like the image's: CPU variants (empty files), probe models, a scorer that prints
    SCORES, a llama-bench that records each probe and fails for the variants in FAIL ("name" or "name:repack"),
    and a llama-server that prints the variant and repack setting it was started with."""
    home = tmp_path / "llama.cpp"
    (home / "lib" / "ggml-cpu").mkdir(parents=True)
    (home / "share" / "r1kit").mkdir(parents=True)
    for name in SCORES:
        (home / "lib" / "ggml-cpu" / f"libggml-cpu-{name}.so").write_bytes(b"")
    for arch in ("llama", "deepseek2"):
        (home / "share" / "r1kit" / f"probe-{arch}.gguf").write_bytes(b"")
    scores = " ".join(f"{n}={s}" for n, s in SCORES.items())
    _script(bin_dir / "r1kit-cpu-variants", f'for lib; do n=${{lib##*libggml-cpu-}}; n=${{n%.so}}; for p in {scores}; do '
            '[ "${p%=*}" = "$n" ] && echo "${p#*=} $lib"; done; done\n')
    _script(bin_dir / "llama-bench", f'n=${{GGML_BACKEND_PATH##*libggml-cpu-}}; n=${{n%.so}}\n'
            'while [ $# -gt 0 ]; do case $1 in -m) m=$2;; --repack) r=$2;; esac; shift; done\n'
            f'echo "$n:$r:${{m##*/}}" >> {tmp_path}/probes\n'
            'for f in $FAIL; do [ "$f" = "$n" ] || [ "$f" = "$n:$r" ] && { echo "GGML_ASSERT(x) failed" >&2; exit 134; }; done\n'
            'exit 0\n')
    _script(bin_dir / "llama-server", 'n=${GGML_BACKEND_PATH##*libggml-cpu-}; echo "variant=${n%.so} repack=${LLAMA_ARG_REPACK-<unset>} args=$*"\n')
    return home


@pytest.fixture
def choose(home: Path, bin_dir: Path, tmp_path: Path):
    def go(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        out = subprocess.run(["dash", str(ENTRYPOINT), *args], capture_output=True, text=True,
                             env={"PATH": f"{bin_dir}:/usr/bin:/bin", "LLAMACPP_HOME": str(home), **env})
        probes = tmp_path / "probes"
        return out, probes.read_text().split() if probes.exists() else []

    return go


def _model(tmp_path: Path, arch: str) -> str:
    from support.tiny_gguf import write_tiny_deepseek2, write_tiny_model

    path = tmp_path / f"{arch}.gguf"
    (write_tiny_deepseek2 if arch == "deepseek2" else write_tiny_model)(path)
    return str(path)


def test_the_best_variant_that_runs_the_probe_is_loaded(choose, tmp_path: Path):
    out, probes = choose("-m", _model(tmp_path, "llama"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("variant=sapphirerapids repack=<unset> args=-m ")
    assert probes == ["sapphirerapids:1:probe-llama.gguf"]


def test_a_variant_that_dies_is_skipped_for_the_next_best(choose, tmp_path: Path):
    out, probes = choose("-m", _model(tmp_path, "llama"), FAIL="sapphirerapids zen4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("variant=icelake repack=<unset> ")
    # Best first, as ggml ranks them; a variant this CPU cannot run (score 0: alderlake here) is never tried.
    assert probes == ["sapphirerapids:1:probe-llama.gguf", "zen4:1:probe-llama.gguf", "icelake:1:probe-llama.gguf"]
    assert "CPU variant sapphirerapids failed the probe (exit 134: GGML_ASSERT(x) failed)" in out.stderr


def test_deepseek2_models_are_probed_with_a_deepseek2_model(choose, tmp_path: Path):
    # As on the AMX Xeon measured: sapphirerapids aborts on deepseek2 (with repacking on), the next variant runs.
    out, probes = choose("-m", _model(tmp_path, "deepseek2"), FAIL="sapphirerapids:1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("variant=zen4 repack=<unset> ")
    assert probes == ["sapphirerapids:1:probe-deepseek2.gguf", "zen4:1:probe-deepseek2.gguf"]
    assert "CPU variant zen4 for a deepseek2 model (the best that ran the probe" in out.stderr


def test_the_model_path_file_decides_the_probe_model(choose, tmp_path: Path):
    pointer = tmp_path / "engine-path"
    pointer.write_text(_model(tmp_path, "deepseek2") + "\n")
    out, probes = choose(LLAMA_MODEL_PATH_FILE=str(pointer))
    assert out.returncode == 0 and probes == ["sapphirerapids:1:probe-deepseek2.gguf"]


def test_an_unknown_model_is_probed_as_deepseek2(choose):
    out, probes = choose("-hf", "some/repo")
    assert out.returncode == 0 and probes == ["sapphirerapids:1:probe-deepseek2.gguf"]


@pytest.mark.parametrize("setting", ["0", "false"])
def test_repacking_turned_off_by_the_user_applies_to_the_probe(choose, tmp_path: Path, setting: str):
    out, probes = choose("-m", _model(tmp_path, "deepseek2"), FAIL="sapphirerapids:1", LLAMA_ARG_REPACK=setting)
    assert out.stdout.startswith("variant=sapphirerapids repack=0 ")
    assert probes == ["sapphirerapids:0:probe-deepseek2.gguf"]


def test_a_forced_variant_skips_the_probe(choose):
    out, probes = choose(LLAMACPP_CPU_VARIANT="haswell")
    assert out.returncode == 0 and out.stdout.startswith("variant=haswell ") and probes == []


def test_an_unknown_forced_variant_is_one_error_naming_the_choices(choose):
    out, _ = choose(LLAMACPP_CPU_VARIANT="pentium")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "LLAMACPP_CPU_VARIANT=pentium is not in this image" in out.stderr
    assert "haswell" in out.stderr and "sapphirerapids" in out.stderr


def test_a_users_ggml_backend_path_wins(choose, home: Path):
    lib = home / "lib" / "ggml-cpu" / "libggml-cpu-x64.so"
    out, probes = choose(GGML_BACKEND_PATH=str(lib))
    assert out.stdout.startswith("variant=x64 ") and probes == []


def test_no_variant_running_is_a_clear_failure(choose):
    out, _ = choose(FAIL="sapphirerapids zen4 icelake haswell x64")
    assert out.returncode == 1 and out.stdout == ""
    assert "no CPU variant" in out.stderr and "LLAMACPP_CPU_VARIANT" in out.stderr


def test_a_llama_cpp_tool_named_first_runs_instead_of_the_server(choose, bin_dir: Path):
    _script(bin_dir / "llama-quantize", 'n=${GGML_BACKEND_PATH##*libggml-cpu-}; echo "quantize variant=${n%.so} args=$*"\n')
    out, _ = choose("llama-quantize", "in.gguf", "out.gguf", "Q4_0")
    assert out.returncode == 0 and out.stdout.strip() == "quantize variant=sapphirerapids args=in.gguf out.gguf Q4_0"


# --- arguments and the model path ---------------------------------------------------------------------------------
# (No LLAMACPP_HOME here: without CPU variants to choose from, the entrypoint chooses nothing.)


def test_passes_arguments_through_untouched(run):
    out = run("-m", "/models/x.gguf", "--port", "9000")
    assert out.returncode == 0 and out.stdout.strip() == "model=<unset> ts=<unset> ctx=<unset> args=-m /models/x.gguf --port 9000"


@pytest.mark.parametrize("content", ["/models/R1/R1-00001-of-00003.gguf\n", "/models/R1/R1-00001-of-00003.gguf"])
def test_reads_the_model_path_from_the_pointer_file(run, tmp_path: Path, content: str):
    pointer = tmp_path / "engine-path"
    pointer.write_text(content)
    out = run("-c", "512", LLAMA_MODEL_PATH_FILE=str(pointer))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "model=/models/R1/R1-00001-of-00003.gguf ts=<unset> ctx=<unset> args=-c 512"


def test_an_explicit_model_wins_over_the_pointer_file(run):
    out = run(LLAMA_ARG_MODEL="/models/mine.gguf", LLAMA_MODEL_PATH_FILE="/nonexistent")
    assert out.returncode == 0 and out.stdout.startswith("model=/models/mine.gguf ")


@pytest.mark.parametrize(("content", "message"), [(None, "is not a readable file"), ("", "is empty")])
def test_a_missing_or_empty_pointer_file_fails_loudly(run, tmp_path: Path, content: str | None, message: str):
    pointer = tmp_path / "engine-path"
    if content is not None:
        pointer.write_text(content)
    out = run(LLAMA_MODEL_PATH_FILE=str(pointer))
    assert out.returncode == 1 and message in out.stderr and out.stdout == ""


def test_empty_llama_arg_variables_count_as_unset(run):
    out = run(LLAMA_ARG_TENSOR_SPLIT="", LLAMA_ARG_CTX_SIZE="4096", LLAMA_ARG_MODEL="")
    assert out.returncode == 0 and out.stdout.strip() == "model=<unset> ts=<unset> ctx=4096 args="


def test_the_image_uses_it_as_an_exec_form_entrypoint():
    from builder.images import catalog
    from builder.images.render import render

    for target in ("llamacpp-cpu", "llamacpp-cuda"):
        text = render(catalog.load().get(target))
        assert 'ENTRYPOINT ["r1kit-entrypoint"]' in text and "COPY entrypoint.sh /usr/local/bin/r1kit-entrypoint" in text
    assert ENTRYPOINT.stat().st_mode & 0o111, "entrypoint.sh must be executable (COPY keeps the mode)"


def test_llama_bench_gets_repacking_off_as_its_flag(choose, tmp_path: Path):
    model = _model(tmp_path, "deepseek2")
    out, probes = choose("llama-bench", "-m", model, "-p", "16", LLAMA_ARG_REPACK="0")
    # The fake llama-bench records the --repack it was given: llama-bench reads no LLAMA_ARG_*, so it gets the flag.
    assert out.returncode == 0, out.stderr
    assert probes == ["sapphirerapids:0:probe-deepseek2.gguf", "sapphirerapids:0:deepseek2.gguf"]
