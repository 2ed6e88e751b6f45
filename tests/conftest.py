"""Shared fixtures: the Docker engine, local base images, llama.cpp's source, a tiny GGUF, built images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from python_on_whales import DockerClient

from builder.docker import Backend, find_backend
from support.prerequisites import REPO, ensure_base_image, llamacpp_source
from support.tiny_gguf import write_tiny_model

# Tags of the images the suite builds; the stack tests run these too.
LLAMACPP_CPU = "r1kit-test/llamacpp-cpu:test"
LLAMACPP_CPU_BLIS = "r1kit-test/llamacpp-cpu:test-blis"


def builder(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real `builder` command line."""
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=REPO, check=check, text=True, **kw)


@pytest.fixture(scope="session")
def backend() -> Backend:
    return find_backend()


@pytest.fixture(scope="session")
def docker(backend: Backend) -> DockerClient:
    return backend.whales()


@pytest.fixture(scope="session")
def base_image(docker: DockerClient) -> str:
    return ensure_base_image(docker)


@pytest.fixture(scope="session")
def source_tarball() -> Path:
    return llamacpp_source()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GGUF in a folder the images' non-root user (uid 10001) can read when mounted."""
    folder = tmp_path_factory.mktemp("models")
    folder.chmod(0o755)
    model = write_tiny_model(folder / "tiny.gguf")
    model.chmod(0o644)
    return model


def _build(tag: str, source: Path, *extra: str) -> str:
    builder("build", "llamacpp-cpu", "--source", str(source), "--tag", tag, *extra)
    return tag


@pytest.fixture(scope="session")
def llamacpp_cpu_image(base_image: str, source_tarball: Path) -> str:
    return _build(LLAMACPP_CPU, source_tarball)


@pytest.fixture(scope="session")
def llamacpp_cpu_blis_image(base_image: str, source_tarball: Path) -> str:
    # AMD's BLIS source is on GitHub only: the suite links the distribution's BLIS through the same FLAME path.
    return _build(LLAMACPP_CPU_BLIS, source_tarball, "--blas", "blis", "--build-arg", "BLIS_SOURCE=distro")
