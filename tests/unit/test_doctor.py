"""doctor's checks against real states where they can be made here: a port held by this process, a tiny tmpfs as the
data root, compose missing (an empty DOCKER_CONFIG, so docker finds no plugin) and docker missing from PATH. The
NVIDIA branches take a stand-in NVML result (no GPU here): the driver against the image's CUDA, the toolkit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.privileges import as_root

from builder.doctor import checks
from builder.doctor.checks import CheckContext, Nvml
from builder.doctor.context import check_context, image_cuda, one_line, plan_check, shm_bytes

GB = 1000**3


def test_a_port_held_by_a_process_fails_and_a_free_one_passes():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        c = checks.check_ports(CheckContext(docker=None, ports=(("127.0.0.1", port),)))
        assert c.status == "fail" and f"127.0.0.1:{port} (in use)" in c.detail and "--port" in c.fix
    assert checks.check_ports(CheckContext(docker=None, ports=(("127.0.0.1", port),))).status == "ok"


@pytest.mark.parametrize("small_volume", ["4m"], indirect=True)
def test_the_disk_check_measures_the_data_root_it_is_given(small_volume: Path):
    """A 4 MiB tmpfs as the data root: too small for any model, enough for one that is smaller."""
    small = checks.check_disk(CheckContext(docker=None, model="r1-distill-qwen-1.5b", model_bytes=1 * GB, data_root=small_volume), None)
    assert small.status == "fail" and "4.0 MiB free in" in small.detail and "needs about 1 GB" in small.detail, small
    fits = checks.check_disk(CheckContext(docker=None, model="tiny", model_bytes=1_000_000, data_root=small_volume), None)
    assert fits.status == "ok", fits
    (small_volume / "fill").write_bytes(b"\0" * 3_500_000)  # the free space is read now, not remembered
    assert checks.check_disk(CheckContext(docker=None, model="tiny", model_bytes=1_000_000, data_root=small_volume), None).status == "fail"


def test_disk_without_a_daemon_or_a_readable_root_is_skipped_with_the_reason(tmp_path: Path):
    assert checks.check_disk(CheckContext(docker=None), None).status == "skip"
    missing = checks.check_disk(CheckContext(docker=None, data_root=tmp_path / "none"), None)
    assert missing.status == "skip" and "--data-root" in missing.detail


NVML_OLD = Nvml(driver="535.104.05", cuda=(12, 2), gpus=("NVIDIA H100 80GB HBM3",))  # stand-in: R535 supports CUDA 12.2


@pytest.mark.parametrize(("nvml", "cuda", "status"), [
    (NVML_OLD, "13.0", "fail"),  # a new major version: the driver is too old
    (NVML_OLD, "12.9.1", "warn"),  # same major: minor version compatibility only
    (Nvml(driver="580.65", cuda=(13, 0), gpus=("NVIDIA H100 80GB HBM3",) * 2), "13.0", "ok"),
    (Nvml(error="no NVIDIA driver answered (NVML Shared Library Not Found)"), "13.0", "skip"),
])
def test_the_driver_is_compared_with_the_images_cuda(nvml: Nvml, cuda: str, status: str):
    c = checks.check_driver(CheckContext(docker=None, engine="vllm", gpu=True, image_cuda=cuda), nvml)
    assert c.status == status, c
    if status == "fail":
        assert "supports CUDA 12.2" in c.detail and "CUDA 13.0" in c.detail and "update the NVIDIA driver" in c.fix


def test_the_images_cuda_comes_from_the_image_catalog():
    assert image_cuda("vllm") == "13.0"  # images/vllm/image.yaml: option cuda, default
    assert image_cuda("llamacpp") == "12.9.1"  # llamacpp-cuda's cuda_version default, the stack's -cu12 tag
    assert image_cuda("ollama") is None  # upstream's image


def test_the_toolkit_needs_the_nvidia_runtime_or_a_cdi_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    gpu = CheckContext(docker=None, gpu=True)
    assert checks.check_toolkit(gpu, NVML_OLD, {"Runtimes": {"runc": {}, "nvidia": {}}}).status == "ok"
    monkeypatch.setattr(checks, "CDI_DIRS", (tmp_path,))
    assert checks.check_toolkit(gpu, NVML_OLD, {"Runtimes": {"runc": {}}}).status == "fail"
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    assert checks.cdi_specs((tmp_path,)) == [tmp_path / "nvidia.yaml"]
    assert checks.check_toolkit(CheckContext(docker=None, gpu=False), NVML_OLD, None).status == "skip"


def test_shm_and_numa_and_memlock(tmp_path: Path):
    assert shm_bytes("16g") == 16 * 1024**3 and shm_bytes("512m") == 512 * 1024**2 and shm_bytes("lots") is None
    assert checks.check_shm(CheckContext(docker=None, engine="vllm", vllm_shm=16 * 1024**3), ram=8 * 1024**3).status == "fail"
    assert checks.check_shm(CheckContext(docker=None, engine="vllm", vllm_shm=16 * 1024**3), ram=64 * 1024**3).status == "ok"
    assert checks.check_shm(CheckContext(docker=None, engine="llamacpp"), ram=1).status == "skip"
    assert checks.check_numa(CheckContext(docker=None, engine="ktransformers"), 2).status == "warn"
    assert checks.check_numa(CheckContext(docker=None, engine="llamacpp"), 2).status == "ok"
    assert checks.check_memlock(tmp_path / "no-infiniband").status == "skip"
    (tmp_path / "ib" / "mlx5_0").mkdir(parents=True)
    assert checks.check_memlock(tmp_path / "ib").status in ("ok", "warn")


def test_a_checks_text_is_one_plain_line():
    assert one_line("a\nb\x1b[2Jc\u2028d") == "a b?[2Jc d"


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "builder.cli", "doctor", "--json", "--offline", "--cpu", "r1-distill-qwen-1.5b", *args], env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, {c["name"]: c for c in json.loads(done.stdout)["checks"]}


@pytest.mark.docker
def test_doctor_with_compose_missing_and_docker_missing(tmp_path: Path):
    """The real docker CLI with no compose plugin where it looks (an empty DOCKER_CONFIG), then no docker on PATH."""
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    status, found = doctor(env)
    assert status == 1 and found["docker"]["status"] == "ok", found
    assert found["compose"]["status"] == "fail" and "compose v2" in found["compose"]["detail"] and "docker-compose-plugin" in found["compose"]["fix"]
    assert found["nvidia-driver"]["status"] == "skip" and found["hub"]["status"] == "skip"
    status, found = doctor({**env, "PATH": str(Path(os.path.realpath(sys.executable)).parent)})  # python, no docker
    assert status == 1 and found["docker"]["status"] == "fail" and found["docker"]["detail"] == "no docker command on PATH", found
    assert found["disk"]["status"] == "skip" and found["compose"]["status"] == "fail"


@pytest.mark.docker
def test_doctor_up_refuses_a_busy_port_in_one_line(tmp_path: Path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        status, found = doctor(dict(os.environ), "--port", str(port))
        assert status == 1 and found["ports"]["status"] == "fail"
        env_file = tmp_path / ".env"
        up = subprocess.run(["builder", "up", "r1-distill-qwen-1.5b", "--cpu", "--yes", "--port", str(port), "--env-file", str(env_file)],
                            env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}, capture_output=True, text=True, timeout=120)
    assert up.returncode == 2 and f"error: doctor: ports: cannot publish on 127.0.0.1:{port} (in use)" in up.stderr, up.stderr
    assert not env_file.exists(), "nothing written before the refusal"


@pytest.mark.parametrize("small_volume", ["1m"], indirect=True)
def test_up_refuses_an_env_file_it_cannot_write_and_leaves_it(small_volume: Path):
    """A .env on a read-only file system (even root cannot write it): one line, exit 2, before Docker is asked."""
    env_file = small_volume / ".env"
    env_file.write_text("MINE=1\n")
    subprocess.run(as_root("mount", "-o", "remount,ro", str(small_volume)), check=True)
    try:
        up = subprocess.run(["builder", "up", "r1-distill-qwen-1.5b", "--cpu", "--yes", "--env-file", str(env_file)], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(as_root("mount", "-o", "remount,rw", str(small_volume)), check=True)
    assert up.returncode == 2 and up.stderr.count("\n") == 1 and "--env-file" in up.stderr and "not writable" in up.stderr, up.stderr
    assert env_file.read_text() == "MINE=1\n"


def test_up_refuses_a_model_that_fits_nowhere_and_no_docker_in_one_line(tmp_path: Path):
    """Before anything is written: the planner's refusal (R1 671B on this machine's CPU and RAM), then a PATH without
    docker (the plan passes, Docker is asked next)."""
    env_file = tmp_path / ".env"
    big = subprocess.run(["builder", "up", "r1-671b-ud-iq1_s", "--cpu", "--yes", "--env-file", str(env_file)], capture_output=True, text=True, timeout=120)
    assert big.returncode == 2 and big.stderr.count("\n") == 1 and "r1-671b-ud-iq1_s does not fit" in big.stderr, big.stderr
    python = Path(os.path.realpath(sys.executable)).parent
    no_docker = subprocess.run([sys.executable, "-m", "builder.cli", "up", "r1-distill-qwen-1.5b", "--cpu", "--yes", "--env-file", str(env_file)],
                               env={**os.environ, "PATH": str(python)}, capture_output=True, text=True, timeout=120)
    assert no_docker.returncode == 2 and no_docker.stderr == "error: no docker command on PATH: " + checks.DOCKER_HINT + "\n", no_docker.stderr
    assert not env_file.exists()


def test_a_named_model_that_does_not_fit_is_a_failed_check_and_the_host_is_still_checked():
    from builder.plan import hardware

    box = hardware.describe(gpus="none", ram_gib=16, cores=4, numa=1, cpu="avx2")
    planned, model, engine, _ = plan_check(box, "r1-distill-qwen-1.5b-bf16", None)
    assert planned.status == "fail" and "vLLM needs GPUs" in planned.detail and (model, engine) == ("r1-distill-qwen-1.5b-bf16", "vllm")
    planned, model, engine, download = plan_check(box, None, None)
    assert planned.status == "ok" and engine in ("llamacpp", "ollama") and download is None
    # An engine named without a model, that no model fits here (ktransformers needs a GPU): the rest is still checked.
    planned, model, engine, _ = plan_check(box, None, "ktransformers")
    assert planned.status == "fail" and "NVIDIA GPU" in planned.detail and (model, engine) == (None, "ktransformers"), planned


def test_the_disk_check_counts_both_halves_of_a_ktransformers_download(tmp_path: Path):
    """ktransformers' stack downloads the FP8 folder and the GGUF experts: the disk check wants both, not the GGUF's
    404 GB alone."""
    from builder.models import catalog
    from builder.plan import hardware

    box = hardware.describe(gpus="1x24", ram_gib=512, cores=32, numa=1, cpu="avx512")
    planned, model, engine, download = plan_check(box, None, "ktransformers")
    models = catalog.load()
    halves = models.get("r1-0528-fp8").approx_size_gb + models.get(model).approx_size_gb
    assert planned.status == "ok" and engine == "ktransformers" and download and download > 0.9 * halves * 1e9, (model, download)
    t = check_context(engine=engine, model=model, gpu=True, data_root=tmp_path, download_bytes=download)
    assert t.model_bytes == download
    disk = checks.check_disk(t, None)
    assert f"{model} and its FP8 folder need about {download / 1e9:.0f} GB" in disk.detail, disk
