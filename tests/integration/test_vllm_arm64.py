"""The vLLM image's linux/arm64 build (GH200) under QEMU, as far as this machine allows (heavy; `--heavy`).

Run for real, emulated: the template's own base stage (`python`: Debian's Python 3.11, its headers and gcc, which
Triton needs at run time), rendered from the same text as amd64, built with BuildKit for linux/arm64; then, in that
stage's image, pip installing vLLM's aarch64 wheel from PyPI and checking it is the aarch64 build of the pinned
release. Not run here: the rest of the runtime stage (the aarch64 torch with its CUDA 13 libraries, about 9 GB more,
which the shared disk here cannot spare, and which `vllm --version` imports). docs/PERFORMANCE.md records the times."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from python_on_whales import DockerClient
from support.builder import RUN, builder
from support.prerequisites import ensure_arm64_base_image

from builder.images.build import host_ca_bundle

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.heavy]

STAGE = f"r1kit-test/vllm-arm64-python:{RUN}"
# What the emulated container runs: the aarch64 wheel, its metadata, and the ELF machine of vLLM's compiled ops.
CHECK = """
set -eu
uname -m
python3 -m venv /tmp/vllm
PIP_CERT=/ca/ca-certificates.crt /tmp/vllm/bin/pip install -q --no-cache-dir --disable-pip-version-check --no-deps "vllm==$1" "ray==$2"
/tmp/vllm/bin/python - <<'PY'
import importlib.metadata as m, pathlib
dist = m.distribution("vllm")
print("vllm", dist.version, "ray", m.version("ray"))
print([line for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")][0])
so = next(pathlib.Path(str(dist.locate_file("vllm"))).glob("_C*.so"))
elf = so.read_bytes()[:20]
print(so.name, "e_machine", int.from_bytes(elf[18:20], "little"))
PY
"""


@pytest.fixture(scope="module")
def arm64_python_stage(docker: DockerClient, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    base = ensure_arm64_base_image(docker)
    context = tmp_path_factory.mktemp("vllm-arm64") / "context"
    builder("stage", "vllm", "-o", str(context))
    started = time.monotonic()
    subprocess.run(["/usr/bin/docker", "build", "--platform", "linux/arm64", "--target", "python", "--build-arg", f"BASE_IMAGE={base}",
                    "--tag", STAGE, str(context)], env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"}, check=True,
                   capture_output=True, text=True)
    return STAGE, time.monotonic() - started


def test_the_templates_base_stage_builds_for_arm64_under_qemu(docker: DockerClient, arm64_python_stage: tuple[str, float]):
    image, seconds = arm64_python_stage
    inspected = docker.image.inspect(image)
    assert inspected.architecture == "arm64", inspected.architecture
    print(f"arm64 python stage built under QEMU in {seconds:.0f} s")


def test_vllms_aarch64_wheel_installs_there(docker: DockerClient, arm64_python_stage: tuple[str, float], tmp_path: Path):
    image, _ = arm64_python_stage
    ca = tmp_path / "ca"
    ca.mkdir()
    shutil.copy2(host_ca_bundle(), ca / "ca-certificates.crt")
    started = time.monotonic()
    result = subprocess.run(["docker", "run", "--rm", "--platform", "linux/arm64", "-v", f"{ca}:/ca:ro", "--entrypoint", "sh", image,
                             "-c", CHECK, "check", "0.33.0", "2.60.0"], capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    assert lines[0] == "aarch64"
    assert "vllm 0.33.0 ray 2.60.0" in lines and any(line.startswith("Tag: cp38-abi3-") and line.endswith("_aarch64") for line in lines), result.stdout
    assert any(line.endswith("e_machine 183") for line in lines), result.stdout  # EM_AARCH64
    print(f"vLLM's aarch64 wheel installed and checked under QEMU in {seconds:.0f} s")
