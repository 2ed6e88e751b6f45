"""The host checks of `builder doctor` (and the first step of `builder up`): one small function per check, each
answering a Check with ok, warn, fail or skip, a one-line detail and, where something is wrong, a one-line fix.
Nothing here needs a GPU: a check that cannot run says so (skip) with the reason."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

from builder.core.errors import UserError
from builder.core.progress import human

Status = Literal["ok", "warn", "fail", "skip"]
GB = 1000**3
DISK_MARGIN = 1.1  # the model plus a tenth: partial files, the merge of split GGUFs for Ollama, logs
CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
COMPOSE_HINT = "install Docker's compose v2 plugin (apt-get install docker-compose-plugin, or see https://docs.docker.com/compose/install/linux/)"
DOCKER_HINT = "install Docker Engine (https://docs.docker.com/engine/install/) and start it (sudo systemctl start docker)"
ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 0x1023, 18  # Linux's prctl asking for the AMX tile data state


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class CheckContext:
    """What the checks are about: the docker client, the planned engine and model, the ports the stack publishes."""

    docker: str | None  # the docker command; None: none on PATH
    engine: str | None = None
    gpu: bool = False  # the stack will use NVIDIA GPUs
    image_cuda: str | None = None  # the CUDA of the engine's image (images/<engine>/image.yaml)
    engine_image: str | None = None
    model: str | None = None
    model_bytes: int | None = None  # what the stack downloads: the catalog's approximate size, or the plan's (ktransformers: both halves)
    repo: str | None = None
    ports: tuple[tuple[str, int], ...] = ()  # (bind address, port)
    data_root: Path | None = None  # instead of docker info's DockerRootDir (a volume's disk)
    hub: bool = True  # False: offline, the Hub is not asked
    vllm_shm: int | None = None  # bytes of /dev/shm the vLLM stack gives its container


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    """argv's result, or None where the program is missing or hangs."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def docker_info(docker: str | None) -> dict | None:
    """`docker info` as JSON, or None where there is no docker command or no daemon answers."""
    if docker is None:
        return None
    done = _run([docker, "info", "--format", "{{json .}}"])
    if done is None or done.returncode != 0:
        return None
    try:
        info = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) and info.get("ServerVersion") else None


def check_docker(t: CheckContext, info: dict | None) -> Check:
    if t.docker is None:
        return Check("docker", "fail", "no docker command on PATH", DOCKER_HINT)
    if info is None:
        host = os.environ.get("DOCKER_HOST", "the local socket")
        return Check("docker", "fail", f"{t.docker} found, but no Docker daemon answers at {host}",
                     "start it (sudo systemctl start docker), or add yourself to the docker group, or set DOCKER_HOST")
    return Check("docker", "ok", f"engine {info['ServerVersion']} ({info.get('OperatingSystem', '?')}), data root {info.get('DockerRootDir', '?')}")


def compose_version(docker: str | None) -> tuple[str | None, str | None]:
    """(compose v2's version through `docker compose`, a standalone `docker-compose` v1's version)."""
    v2 = None
    if docker is not None:
        done = _run([docker, "compose", "version", "--short"])
        if done is not None and done.returncode == 0 and re.match(r"v?[2-9]\.", done.stdout.strip()):
            v2 = done.stdout.strip().lstrip("v")
    v1 = None
    standalone = shutil.which("docker-compose")
    if v2 is None and standalone:
        done = _run([standalone, "version"])
        match = re.search(r"version v?(1\.[\d.]+)", done.stdout if done else "")
        v1 = match.group(1) if match else None
    return v2, v1


def check_compose(t: CheckContext) -> Check:
    v2, v1 = compose_version(t.docker)
    if v2:
        return Check("compose", "ok", f"docker compose {v2}")
    if v1:
        return Check("compose", "fail", f"only docker-compose {v1} (compose v1) is installed; the stacks need compose v2 (`docker compose`)", COMPOSE_HINT)
    return Check("compose", "fail", "`docker compose` (compose v2) is not installed", COMPOSE_HINT)


def check_buildkit(t: CheckContext, info: dict | None) -> Check:
    """Only `builder build` needs BuildKit (cache and secret mounts); pulling the published images does not."""
    from builder.images.docker import find_backend

    if info is None:
        return Check("buildkit", "skip", "no Docker daemon to build with")
    try:
        backend = find_backend()
    except UserError as e:
        return Check("buildkit", "warn", f"`builder build` cannot build here: {e}", "install the docker-buildx plugin (pulling the published images works without it)")
    return Check("buildkit", "ok", f"{backend.client} ({'buildx' if backend.kind == 'buildx' else 'DOCKER_BUILDKIT=1 docker build'})")


@dataclass(frozen=True)
class Nvml:
    """What NVML says: the driver, the highest CUDA it supports, the GPUs; or why it could not be asked."""

    driver: str | None = None
    cuda: tuple[int, int] | None = None
    gpus: tuple[str, ...] = ()
    error: str | None = None


def read_nvml() -> Nvml:
    try:
        import pynvml
    except ImportError:
        return Nvml(error="NVML's Python binding (nvidia-ml-py) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return Nvml(error=f"no NVIDIA driver answered ({e})")
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # 12040 means CUDA 12.4
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return Nvml(driver.decode() if isinstance(driver, bytes) else driver, (cuda // 1000, cuda % 1000 // 10), tuple(names))
    finally:
        pynvml.nvmlShutdown()


def check_driver(t: CheckContext, nvml: Nvml) -> Check:
    if nvml.error or not nvml.gpus:
        return Check("nvidia-driver", "skip", f"{nvml.error or 'NVML lists no GPU'}: the CPU stack is used")
    gpus = f"{len(nvml.gpus)} x {nvml.gpus[0]}" if len(set(nvml.gpus)) == 1 else ", ".join(nvml.gpus)
    have = f"{nvml.cuda[0]}.{nvml.cuda[1]}" if nvml.cuda else "?"
    if not t.image_cuda or nvml.cuda is None:
        return Check("nvidia-driver", "ok", f"driver {nvml.driver} (CUDA {have}), {gpus}; {t.engine or 'the engine'}'s image names no CUDA version to compare")
    need = tuple(int(p) for p in t.image_cuda.split(".")[:2])
    detail = f"driver {nvml.driver} supports CUDA {have}; the {t.engine} image is built on CUDA {t.image_cuda}; {gpus}"
    if nvml.cuda >= need:
        return Check("nvidia-driver", "ok", detail)
    fix = f"update the NVIDIA driver to one supporting CUDA {need[0]}.{need[1]} or newer (https://www.nvidia.com/drivers)"
    if nvml.cuda[0] == need[0]:  # CUDA's minor version compatibility: most of it runs, kernels compiled as PTX do not
        return Check("nvidia-driver", "warn", detail + " (minor version compatibility only)", fix)
    return Check("nvidia-driver", "fail", detail, fix)


def cdi_specs(dirs: tuple[Path, ...] = CDI_DIRS) -> list[Path]:
    """The CDI spec files that describe NVIDIA GPUs (`nvidia-ctk cdi generate` writes nvidia.yaml)."""
    found = []
    for folder in dirs:
        for spec in sorted(folder.glob("*.y*ml")) + sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                if "nvidia.com/gpu" in spec.read_text(errors="replace"):
                    found.append(spec)
            except OSError:
                continue
    return found


def check_toolkit(t: CheckContext, nvml: Nvml, info: dict | None) -> Check:
    if not t.gpu or not nvml.gpus:
        return Check("container-toolkit", "skip", "no NVIDIA GPU in the plan")
    runtimes = sorted((info or {}).get("Runtimes", {}))
    specs = cdi_specs()
    if "nvidia" in runtimes or specs:
        how = ", ".join(filter(None, ["the nvidia runtime" if "nvidia" in runtimes else "", *map(str, specs)]))
        return Check("container-toolkit", "ok", f"Docker reaches the GPUs through {how}")
    return Check("container-toolkit", "fail", f"Docker has no nvidia runtime (it has {', '.join(runtimes) or 'none'}) and no CDI spec in /etc/cdi or /var/run/cdi",
                 "install the NVIDIA Container Toolkit and run `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`")


def check_gpu_in_container(t: CheckContext, nvml: Nvml, toolkit: Check) -> Check:
    if not t.gpu or not nvml.gpus:
        return Check("gpu-in-container", "skip", "no NVIDIA GPU in the plan")
    if toolkit.status != "ok":
        return Check("gpu-in-container", "skip", "the container toolkit check did not pass")
    image = t.engine_image
    if t.docker is None or not image or (_run([t.docker, "image", "inspect", image]) or subprocess.CompletedProcess([], 1)).returncode != 0:
        return Check("gpu-in-container", "skip", f"the engine's image {image or '?'} is not on this machine yet (the first `builder up` pulls it)")
    done = _run([t.docker, "run", "--rm", "--gpus", "all", "--entrypoint", "nvidia-smi", image, "-L"], timeout=120)
    seen = len(re.findall(r"^GPU \d+:", done.stdout, re.M)) if done else 0
    if done is not None and done.returncode == 0 and seen:
        return Check("gpu-in-container", "ok", f"a container of {image} sees {seen} GPU(s)" + ("" if seen == len(nvml.gpus) else f" of the host's {len(nvml.gpus)}"))
    said = " ".join(((done.stderr or done.stdout) if done else "timed out").split())[:200]
    return Check("gpu-in-container", "fail", f"`docker run --gpus all {image} nvidia-smi -L` failed: {said}",
                 "check the NVIDIA Container Toolkit (`nvidia-ctk runtime configure --runtime=docker`, restart Docker)")


def data_root(info: dict | None, given: Path | None = None) -> Path | None:
    """Where Docker keeps its images and volumes: `given` (a --data-root), else `docker info`'s DockerRootDir; None
    where neither says (no daemon answers)."""
    return given or (Path(info["DockerRootDir"]) if info and info.get("DockerRootDir") else None)


def check_disk(t: CheckContext, info: dict | None) -> Check:
    """Free space where Docker keeps volumes (the models volume) against the model's size."""
    root = data_root(info, t.data_root)
    if root is None:
        return Check("disk", "skip", "no Docker daemon to say where it keeps volumes")
    try:
        free = shutil.disk_usage(root).free
    except OSError as e:
        return Check("disk", "skip", f"cannot see {root}'s free space ({e.strerror}): run doctor as root, or give --data-root")
    if not t.model_bytes:
        return Check("disk", "ok", f"{human(free)} free in {root}; the model's size is not known before its download")
    need = int(t.model_bytes * DISK_MARGIN)
    detail = f"{human(free)} free in {root}; {t.model}{' and its FP8 folder' if t.engine == 'ktransformers' else ''} need{'' if t.engine == 'ktransformers' else 's'} about {t.model_bytes / GB:.0f} GB"
    if free >= need:
        return Check("disk", "ok", detail)
    return Check("disk", "fail", detail, f"free {human(need - free)} in {root}, move Docker's data-root to a larger disk, or pick a smaller model")


def port_free(bind: str, port: int) -> str | None:
    """None where `port` can be bound on `bind` now, else why not."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((bind, port))
        except OSError as e:
            return "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
    return None


def check_ports(t: CheckContext) -> Check:
    if not t.ports:
        return Check("ports", "skip", "no port to publish (the stack is up already, or none was asked for)")
    busy = [f"{bind}:{port} ({why})" for bind, port in t.ports if (why := port_free(bind, port))]
    if busy:
        return Check("ports", "fail", f"cannot publish on {', '.join(busy)}", "stop what holds it, or pick another port: builder up --port N")
    return Check("ports", "ok", "free: " + ", ".join(f"{b}:{p}" for b, p in t.ports))


def check_shm(t: CheckContext, ram: int) -> Check:
    shm = shutil.disk_usage("/dev/shm").total if Path("/dev/shm").is_dir() else 0
    if t.engine != "vllm" or not t.vllm_shm:
        return Check("shm", "skip", f"only vLLM's tensor-parallel workers use /dev/shm (host's: {human(shm)})")
    if t.vllm_shm > ram:
        return Check("shm", "fail", f"the vLLM stack gives its container a {human(t.vllm_shm)} /dev/shm, more than the {human(ram)} of RAM available",
                     "set VLLM_SHM_SIZE in stacks/.env below the RAM (e.g. 8g)")
    return Check("shm", "ok", f"the vLLM stack gives its container {human(t.vllm_shm)} of /dev/shm (VLLM_SHM_SIZE); {human(ram)} RAM available")


def check_memlock(ib_dir: Path = Path("/sys/class/infiniband")) -> Check:
    devices = sorted(p.name for p in ib_dir.iterdir()) if ib_dir.is_dir() else []
    if not devices:
        return Check("memlock", "skip", "no InfiniBand device (only RDMA pins memory)")
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return Check("memlock", "ok", f"unlimited for {', '.join(devices)} (stacks/cluster-ib.yml sets it for its containers too)")
    return Check("memlock", "warn", f"memlock is {human(soft)} here, with InfiniBand {', '.join(devices)}: RDMA registrations fail above it",
                 "the cluster stack sets memlock -1 in its containers (stacks/cluster-ib.yml); for tools on the host, raise it in /etc/security/limits.conf")


def check_numa(t: CheckContext, nodes: int) -> Check:
    if nodes <= 1:
        return Check("numa", "ok", "one NUMA node")
    if t.engine != "ktransformers":
        return Check("numa", "ok", f"{nodes} NUMA nodes ({t.engine or 'the engine'} needs no SYS_NICE)")
    return Check("numa", "warn", f"{nodes} NUMA nodes: kt-kernel binds memory per node (mbind), which needs SYS_NICE in its container",
                 "add `cap_add: [SYS_NICE]` to the ktransformers service in an override file (-f), and set KT_NUMA_NODES")


def amx_granted() -> bool | None:
    """Whether Linux grants this process the AMX tile data state (the request images/ktransformers/cpu_probe.py
    makes); None where the CPU has no AMX."""
    flags = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    if " amx_tile" not in flags or platform.machine() != "x86_64":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(158, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0  # 158: arch_prctl on x86_64


def check_amx(t: CheckContext) -> Check:
    granted = amx_granted()
    if granted is None:
        return Check("amx", "skip", "the CPU has no AMX")
    if granted:
        return Check("amx", "ok", "the kernel grants the AMX tile state (llama.cpp's and kt-kernel's AMX kernels can run)")
    return Check("amx", "warn", "the CPU has AMX but the kernel refuses the tile state (a kernel before 5.16, or a hypervisor)",
                 "the images probe and fall back to AVX-512 kernels by themselves; a kernel 5.16 or newer enables AMX")


def check_hub(t: CheckContext, token: str | None) -> Check:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    from builder.models.download import endpoint

    if not t.hub:
        return Check("hub", "skip", "offline: the Hub is not asked")
    if not t.repo:
        return Check("hub", "skip", "no model chosen")
    where = endpoint()
    api = HfApi(endpoint=where, token=token or False)
    try:
        user = api.whoami()["name"] if token else None
    except HfHubHTTPError:
        return Check("hub", "fail", f"{where} refuses the token (HF_TOKEN)", "make a new read token at https://huggingface.co/settings/tokens and set HF_TOKEN in stacks/.env")
    except Exception as e:  # noqa: BLE001 - any transport error means the same to the user: not reachable
        return Check("hub", "fail", f"cannot reach {where} ({type(e).__name__})", "check the network or proxy (HTTPS_PROXY), or set HF_ENDPOINT to a mirror")
    who = f" as {user}" if user else " without a token"
    try:
        info = api.model_info(t.repo)
        if info.gated:
            if not token:
                return Check("hub", "fail", f"{t.repo} is gated and no token is set", f"accept its terms at {where}/{t.repo}, then set HF_TOKEN in stacks/.env")
            api.auth_check(t.repo)
    except GatedRepoError:
        return Check("hub", "fail", f"the token{who} has not been granted {t.repo}", f"accept its terms at {where}/{t.repo}")
    except RepositoryNotFoundError:
        return Check("hub", "fail", f"no repository {t.repo} at {where}{who}", "check the model's name (builder models), or the token if it is private")
    except Exception as e:  # noqa: BLE001
        return Check("hub", "fail", f"cannot reach {where} ({type(e).__name__})", "check the network or proxy (HTTPS_PROXY), or set HF_ENDPOINT to a mirror")
    return Check("hub", "ok", f"{where} reached{who}; {t.repo}" + (" (gated, granted)" if info.gated else ""))


def run_all(t: CheckContext, *, ram: int, numa_nodes: int, token: str | None, nvml: Callable[[], Nvml] = read_nvml) -> list[Check]:
    info = docker_info(t.docker)
    found = nvml()
    toolkit = check_toolkit(t, found, info)
    return [
        check_docker(t, info), check_compose(t), check_buildkit(t, info),
        check_driver(t, found), toolkit, check_gpu_in_container(t, found, toolkit),
        check_disk(t, info), check_ports(t), check_shm(t, ram), check_memlock(), check_numa(t, numa_nodes), check_amx(t),
        check_hub(t, token),
    ]
