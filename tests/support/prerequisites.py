"""What the suite needs before it can build anything, made locally where no registry or GitHub is reachable."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
# The llama-cpp-python sdist vendors a full llama.cpp tree (here: ggml-org/llama.cpp@0c1e570, 2026-10-01).
LLAMA_CPP_PYTHON = "0.3.36"
TRIM = ("models", "docs", "media", "tests", ".git", ".github")


# The suite's Debian base image, under a name of its own: where no registry answers it is made with debootstrap,
# and under upstream's name it would stand in for debian:bookworm-slim in every later build on that daemon.
# Builds get it as their base-image build argument.
BASE_IMAGE = "r1kit-test/debian:bookworm-slim"
UPSTREAM_BASE_IMAGE = "debian:bookworm-slim"


def ensure_base_image(docker: DockerClient, ref: str = BASE_IMAGE) -> str:
    """`ref` in the local image store: upstream's image re-tagged where a registry answers, else made with
    debootstrap."""
    if docker.image.exists(ref):
        return ref
    try:
        docker.image.pull(UPSTREAM_BASE_IMAGE, quiet=True)
        docker.image.tag(UPSTREAM_BASE_IMAGE, ref)
        return ref
    except DockerException:
        pass
    suite = ref.split(":")[1].split("-")[0]
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", suite, str(rootfs), "http://deb.debian.org/debian"], check=True, stdout=subprocess.DEVNULL)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*docker.client_config.docker_cmd, "import", "-", ref], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        tar.wait()
    return ref


def llamacpp_source() -> Path:
    """A trimmed llama.cpp source tarball (about 11 MB), cached under .cache/."""
    out = CACHE / f"llama.cpp-from-llama-cpp-python-{LLAMA_CPP_PYTHON}.tar.gz"
    if out.exists():
        return out
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["python3", "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
            check=True,
        )
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as t:
            t.extractall(tmp, filter="data")
        tree = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        for name in TRIM:
            shutil.rmtree(tree / name, ignore_errors=True)
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w:gz") as t:
            t.add(tree, arcname="llama.cpp")
        partial.rename(out)
    return out
