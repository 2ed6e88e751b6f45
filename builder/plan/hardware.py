"""What the machine has, for `builder plan`: GPUs through NVML, RAM, CPU flags, cores, NUMA nodes, free disk.

Everything can also be described by flags (plan before you buy, or for another machine): `describe()` takes the
flags and fills only what they leave out from the running machine. What cannot be read is said in `notes` and the
plan goes on without it (no NVIDIA driver: CPU only).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.errors import UserError, shown

GIB = 1024**3

# Memory bandwidth in GB/s by GPU name (vendor data sheets): decode speed is bound by it. Matched as substrings of
# NVML's name, longest first; an unknown GPU gets a conservative class figure by its memory size.
GPU_BANDWIDTH = {
    "GH200": 4000, "H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "H800": 3350, "H20": 4000,
    "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-PCIE-40GB": 1555, "A100": 1555, "A800": 2039,
    "L40S": 864, "L40": 864, "L4": 300, "A40": 696, "A10": 600, "RTX 6000 Ada": 960, "RTX A6000": 768, "A6000": 768,
    "RTX 5090": 1792, "RTX 4090": 1008, "RTX 4080": 717, "RTX 3090 Ti": 1008, "RTX 3090": 936, "RTX 3080": 760,
    "B200": 8000, "B100": 8000, "RTX PRO 6000": 1792,
}
# Memory in GiB by the names `--gpus` accepts (what NVML would say on that machine).
GPU_MEMORY_GIB = {
    "GH200": 96, "H200": 141, "H100 NVL": 94, "H100": 80, "H800": 80, "A100-SXM4-80GB": 80, "A100 80GB PCIe": 80,
    "A100": 80, "L40S": 48, "L40": 48, "L4": 24, "A40": 48, "A10": 24, "RTX 6000 Ada": 48, "RTX A6000": 48,
    "A6000": 48, "RTX 5090": 32, "RTX 4090": 24, "RTX 4080": 16, "RTX 3090 Ti": 24, "RTX 3090": 24, "B200": 180,
    "RTX PRO 6000": 96,
}
CPU_FLAGS = ("amx", "avx512", "avx2")  # what the CPU kernels care about, best first
GPU_SPEC = re.compile(r"^(?:(\d+)\s*[x×*]\s*)?(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int  # bytes the plan may use: NVML's free memory on this machine, the card's size when described
    bandwidth_gbps: float
    compute_capability: str = ""

    @property
    def memory_gib(self) -> float:
        return self.memory / GIB


@dataclass(frozen=True)
class Machine:
    """One node. `nodes` identical ones make a cluster (vLLM across nodes)."""

    gpus: tuple[Gpu, ...]
    ram: int  # bytes available to the engine
    cores: int  # physical cores
    numa_nodes: int
    cpu_flags: frozenset[str]
    ram_bandwidth_gbps: float
    disk_free: int | None = None  # where the models go
    nodes: int = 1
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def gpu_memory(self) -> int:
        return sum(g.memory for g in self.gpus)

    @property
    def cpu_level(self) -> str:
        return next((f for f in CPU_FLAGS if f in self.cpu_flags), "baseline")


def gpu_bandwidth(name: str, memory_gib: float) -> float:
    for key in sorted(GPU_BANDWIDTH, key=len, reverse=True):
        if key.lower() in name.lower():
            return GPU_BANDWIDTH[key]
    # An unknown card: a mid-range figure for its class, on the slow side so that estimates do not promise too much.
    return 900 if memory_gib >= 40 else 500


def parse_gpus(spec: str) -> tuple[Gpu, ...]:
    """`--gpus`: `4xRTX4090`, `4x24` (GiB each), `24,24,48`, `2xH100,1xA6000`, or `none`."""
    if spec.strip().lower() in ("none", "0", ""):
        return ()
    gpus: list[Gpu] = []
    for part in spec.split(","):
        m = GPU_SPEC.match(part.strip())
        if not m or not m.group(2).strip():
            raise UserError(f"--gpus {shown(spec)}: give COUNTxMODEL or COUNTxGIB, e.g. 4xRTX4090, 2x80 or 24,24")
        count = int(m.group(1) or 1)
        what = m.group(2).strip()
        if count < 1 or count > 64:
            raise UserError(f"--gpus {shown(spec)}: a count of {count} GPUs; give 1 to 64 per entry")
        if re.fullmatch(r"\d+(\.\d+)?\s*(G|GB|GiB)?", what, re.IGNORECASE):
            gib = float(re.sub(r"[^\d.]", "", what))
            if not 1 <= gib <= 1024:
                raise UserError(f"--gpus {shown(spec)}: {gib:g} GiB per GPU is not a GPU's memory")
            gpus += [Gpu(f"{gib:g} GiB GPU", int(gib * GIB), gpu_bandwidth("", gib))] * count
            continue
        key = _known_gpu(what)
        if key is None:
            raise UserError(f"--gpus {shown(spec)}: unknown GPU {shown(what)}; give its memory instead (e.g. {count}x24) or one of: {', '.join(sorted(GPU_MEMORY_GIB))}")
        gib = GPU_MEMORY_GIB[key]
        gpus += [Gpu(key, int(gib * GIB), gpu_bandwidth(key, gib))] * count
    return tuple(gpus)


def _squash(text: str) -> str:
    return re.sub(r"[\s_-]|nvidia|geforce", "", text.lower())


def _known_gpu(text: str) -> str | None:
    """The table's key for a name as users write it (RTX4090, "NVIDIA GeForce RTX 4090", h100), exactly."""
    return next((key for key in GPU_MEMORY_GIB if _squash(key) == _squash(text)), None)


def detect_gpus() -> tuple[tuple[Gpu, ...], str | None]:
    """The GPUs NVML sees, with their free memory; or none and the reason in one line."""
    try:
        import pynvml
    except ImportError:
        return (), "NVML is not installed (pip install nvidia-ml-py): planning without GPUs; describe them with --gpus"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return (), f"no NVIDIA driver answered ({e}): planning without GPUs; describe them with --gpus"
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(Gpu(name, int(mem.free), gpu_bandwidth(name, mem.total / GIB), f"{major}.{minor}"))
        return tuple(gpus), None
    finally:
        pynvml.nvmlShutdown()


def _meminfo() -> dict[str, int]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values


def _cpuinfo() -> tuple[frozenset[str], int]:
    """The CPU's flags (as the kernels care about them) and its physical cores."""
    text = Path("/proc/cpuinfo").read_text()
    raw = set()
    cores = set()
    physical = core = ""
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key in ("flags", "Features"):
            raw |= set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    flags = {f for f, present in (("amx", "amx_tile" in raw), ("avx512", "avx512f" in raw), ("avx2", "avx2" in raw)) if present}
    usable = len(os.sched_getaffinity(0))
    return frozenset(flags), min(len(cores) or usable, usable)


def _numa_nodes() -> int:
    return max(1, len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))))


def estimate_ram_bandwidth(cores: int, numa_nodes: int) -> float:
    """A rough GB/s for decode estimates when the user gives none: what a dual-channel desktop reaches (about
    60 GB/s), more for many-core servers (about 5 GB/s per core, up to 12-channel DDR5's ~350 per socket). A second
    socket adds little: llama.cpp's threads read across the NUMA link (about +30% each, not double)."""
    per_node = min(max(60.0, cores / numa_nodes * 5.0), 350.0)
    return round(per_node * (1 + 0.3 * (numa_nodes - 1)))


def describe(*, gpus: str | None = None, ram_gib: float | None = None, cores: int | None = None,
             numa: int | None = None, cpu: str | None = None, ram_bandwidth: float | None = None,
             nodes: int = 1, models_dir: Path | None = None) -> Machine:
    """This machine, with whatever the flags describe instead. A flag given means: that is the machine."""
    notes: list[str] = []
    if gpus is not None:
        found = parse_gpus(gpus)
    else:
        found, note = detect_gpus()
        if note:
            notes.append(note)
    flags, detected_cores = _cpuinfo() if cpu is None or cores is None else (frozenset(), 0)
    if cpu is not None:
        wanted = {c.strip().lower() for c in cpu.split(",") if c.strip()}
        unknown = wanted - set(CPU_FLAGS) - {"baseline"}
        if unknown:
            raise UserError(f"--cpu {shown(cpu)}: unknown flag {sorted(unknown)[0]!r}; give some of {', '.join(CPU_FLAGS)} (or baseline)")
        # AMX machines have AVX-512 too, AVX-512 ones AVX2: naming the best one implies the rest.
        rank = [f for f in CPU_FLAGS if f in wanted]
        flags = frozenset(CPU_FLAGS[CPU_FLAGS.index(rank[0]):]) if rank else frozenset()
    n_cores = cores if cores is not None else detected_cores
    n_numa = numa if numa is not None else _numa_nodes()
    ram = int(ram_gib * GIB) if ram_gib is not None else _meminfo().get("MemAvailable", 0)
    disk = None
    if models_dir is not None:
        probe = models_dir if models_dir.exists() else next((p for p in models_dir.parents if p.exists()), Path("/"))
        disk = shutil.disk_usage(probe).free
    bandwidth = ram_bandwidth if ram_bandwidth is not None else estimate_ram_bandwidth(n_cores, n_numa)
    return Machine(found, ram, n_cores, n_numa, flags, bandwidth, disk, nodes, tuple(notes))
