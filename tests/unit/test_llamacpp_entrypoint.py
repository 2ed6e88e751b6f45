"""images/llamacpp/entrypoint.sh, run by a POSIX shell with a stand-in llama-server (the image runs it for real:
tests/integration/test_llamacpp_image.py and tests/e2e/test_llamacpp_stack.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.prerequisites import REPO

ENTRYPOINT = REPO / "images" / "llamacpp" / "entrypoint.sh"


@pytest.fixture
def run(tmp_path: Path):
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "model=${LLAMA_ARG_MODEL-<unset>} ts=${LLAMA_ARG_TENSOR_SPLIT-<unset>} ctx=${LLAMA_ARG_CTX_SIZE-<unset>} args=$*"\n')
    fake.chmod(0o755)

    def go(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dash", str(ENTRYPOINT), *args], env={"PATH": f"{fake.parent}:/usr/bin:/bin", **env}, capture_output=True, text=True)

    return go


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
    from builder import catalog
    from builder.render import render

    for target in ("llamacpp-cpu", "llamacpp-cuda"):
        text = render(catalog.load().get(target))
        assert 'ENTRYPOINT ["r1kit-entrypoint"]' in text and "COPY entrypoint.sh /usr/local/bin/r1kit-entrypoint" in text
    assert ENTRYPOINT.stat().st_mode & 0o111, "entrypoint.sh must be executable (COPY keeps the mode)"
