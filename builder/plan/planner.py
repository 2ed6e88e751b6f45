"""`builder plan`: which model, which engine, and which settings, for this machine (or one described by flags).

The question every R1 recipe answers by hand: what goes on the GPUs and what stays in RAM. For llama.cpp the
answer, in order of what decode speed loses least:
1. everything on the GPUs;
2. every layer on the GPUs, and as many routed-expert tensors (each layer's gate, up and down) as fill each GPU to
   its margin, the rest in RAM (`-ot PATTERN=CPU`, the unit llama.cpp's own --fit places): a token reads only 8 of
   R1's 256 experts, so experts in RAM cost far less than whole layers in RAM;
3. the last N layers on the GPUs with all their experts in RAM, the rest on the CPU (`-ngl N`).
Each GPU gets contiguous layers (llama.cpp's layer split); `--tensor-split` is the count per GPU. Memory per GPU:
the layers, their KV cache, the output head on the last one, a compute buffer and a safety margin (as llama.cpp's
own `--fit` leaves one). Sizes are the GGUF's own tensor sizes when the file is here. Decode speed is estimated from the bytes each token reads and the memory bandwidth of
where they lie; it is an estimate to compare choices, said as one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Mapping

from builder.core.errors import UserError, shown
from builder.images import runtime
from builder.models.catalog import Model, ModelCatalog, load
from builder.models.shapes import GB, Shape, from_catalog, from_gguf
from builder.plan.hardware import GIB, Machine

MARGIN = 1 * GIB  # left free on each GPU, as llama.cpp's --fit leaves by default (1024 MiB)
COMPUTE_BASE = 512 * 1024**2  # llama.cpp's CUDA compute buffer at the default 512-token micro-batch, before logits
UBATCH = 512  # llama.cpp's default prompt micro-batch (-ub)
HYBRID_UBATCH = 2048  # a micro-batch that amortizes copying RAM-resident experts to the GPU per prompt batch
# Filled in this order within a layer, as llama.cpp's --fit does (up first, then gate; down overflows first).
EXPERT_ORDER = ("up", "gate_up", "gate", "down")
RAM_HEADROOM = 0.9  # of available RAM the weights may fill: the OS, the page cache's churn and the engine need the rest
# Fractions of peak bandwidth a decode step reaches (llama.cpp, measured orders of magnitude, not promises).
GPU_EFFICIENCY = 0.55
CPU_EFFICIENCY = 0.35
MIN_USEFUL_TPS = 2.0  # below this a recommendation is not worth the download
DEFAULT_CONTEXT = 8192  # the stacks' default
VLLM_UTILIZATION = 0.90
# sglang's --mem-fraction-static (the ktransformers stack's KT_MEM_FRACTION default): the share of GPU memory for the
# weights and the KV pool; the rest is left for activations and CUDA graphs.
KT_MEM_FRACTION = 0.9
KT_MAX_TP = 8  # sglang's tensor parallel within one host: a power of two that divides R1's 128 attention heads
# Planned only when named with --engine: no measurement here shows ktransformers faster than llama.cpp's plan on the
# same machine, so the recommendation keeps llama.cpp (and the tests that pin it).
ASKED_ONLY = ("ktransformers",)


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp puts a model's weights."""

    gpu_layers: int  # the last N blocks on the GPUs; the output head is there too whenever N > 0
    cpu_moe: int  # --n-cpu-moe: the first K layers keep their routed experts in RAM
    per_gpu_layers: tuple[int, ...]  # blocks per GPU, in order
    gpu_bytes: tuple[int, ...]
    ram_bytes: int
    tokens_per_s: float  # estimated decode speed
    experts_in_ram: tuple[tuple[int, str], ...] = ()  # (layer, kind) of routed-expert tensors kept in RAM by -ot
    ubatch: int = UBATCH

    def describe(self, shape: Shape) -> str:
        if not self.per_gpu_layers:
            return "everything on the CPU"
        if self.gpu_layers == shape.layers and self.experts_in_ram:
            tensors = len(_expert_tensors(shape))
            return (f"every layer on the GPUs, {tensors - len(self.experts_in_ram)} of {tensors} routed-expert tensors "
                    f"on the GPUs, {len(self.experts_in_ram)} in RAM")
        if self.gpu_layers == shape.layers and self.cpu_moe == 0:
            return "everything on the GPUs"
        if self.gpu_layers == shape.layers:
            cpu_moe_layers = max(0, self.cpu_moe - shape.dense_layers)
            return f"every layer on the GPUs, the routed experts of {cpu_moe_layers} of {shape.moe_layers} MoE layers in RAM"
        return f"{self.gpu_layers} of {shape.layers} layers on the GPUs" + (", their routed experts in RAM" if self.cpu_moe else "")

    @property
    def ngl(self) -> int:
        """llama.cpp's -ngl: it counts the output head as one more layer, and offloads the last N of the n+1."""
        return self.gpu_layers + 1 if self.per_gpu_layers else 0

    @property
    def tensor_split(self) -> tuple[int, ...]:
        """--tensor-split such that llama.cpp's own mapping (layer i of the last -ngl goes to the first GPU whose
        cumulative share exceeds i / ngl; llama-model.cpp, load_tensors) puts each GPU's blocks where the plan
        does: the output head, the last of them, counted on the last GPU that holds blocks."""
        split = list(self.per_gpu_layers)
        last = max(i for i, c in enumerate(split) if c)
        split[last] += 1
        return tuple(split)


@dataclass(frozen=True)
class Plan:
    model: str
    engine: str
    shape: Shape
    context: int
    settings: Mapping[str, str]  # the stack's variables (stacks/.env)
    flags: tuple[str, ...]  # the settings as the engine's flags (images/<engine>/runtime.yaml), for running it by hand
    expectation: str
    tokens_per_s: float
    gpu_bytes: tuple[int, ...] = ()
    ram_bytes: int = 0
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    download: int = 0  # bytes model-init fetches where more than the model's (ktransformers: its two halves)

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "engine": self.engine, "context": self.context, "settings": dict(self.settings),
            "flags": list(self.flags), "expected_decode_tokens_per_s": round(self.tokens_per_s, 1),
            "gpu_memory_gib": [round(b / GIB, 1) for b in self.gpu_bytes], "ram_gib": round(self.ram_bytes / GIB, 1),
            "shape_from": self.shape.source, "reasons": list(self.reasons), "notes": list(self.notes),
        }


def compute_buffer(shape: Shape, experts_in_ram: bool, ubatch: int = UBATCH) -> int:
    """A GPU's compute buffer: the graph's scratch and the logits of a micro-batch (both grow with -ub), and, once
    experts stay in RAM, room for the largest expert tensor, which llama.cpp copies to the GPU to multiply prompt
    batches there."""
    logits = min(shape.output, 2 * GIB) // 4  # a micro-batch's f32 logits: about a quarter of a 4-bit output head
    largest_expert_tensor = max((b for _, _, b in _expert_tensors(shape)), default=0) if experts_in_ram else 0
    return (COMPUTE_BASE + logits) * ubatch // UBATCH + largest_expert_tensor


def _expert_tensors(shape: Shape) -> tuple[tuple[int, str, int], ...]:
    """(layer, kind, bytes) of every routed-expert tensor: the GGUF's own, or a catalog estimate's three equal ones
    per MoE layer."""
    if shape.expert_tensors or not shape.experts:
        return shape.expert_tensors
    third = shape.layer_experts // 3
    return tuple((i, f"{kind}_exps", third) for i in range(shape.dense_layers, shape.layers) for kind in ("gate", "up", "down"))


def _dense(shape: Shape, i: int) -> int:
    """Layer i's bytes without its routed experts."""
    return shape.layer_bytes[i] if shape.layer_bytes else shape.layer


def _layer_experts(shape: Shape, i: int) -> int:
    return sum(b for layer, _, b in _expert_tensors(shape) if layer == i)


def _layer_costs(shape: Shape, context: int, cpu_moe: int) -> list[int]:
    kv = shape.kv_per_token * context // shape.layers
    return [_dense(shape, i) + kv + (_layer_experts(shape, i) if i >= cpu_moe else 0) for i in range(shape.layers)]


def _assign(costs: list[int], budgets: list[int], output: int) -> tuple[list[int], list[int]] | None:
    """Contiguous layers per GPU, in order, each GPU filled before the next; the output head on the last used."""
    counts = [0] * len(budgets)
    used = [0] * len(budgets)
    gpu = 0
    for cost in costs:
        while gpu < len(budgets) and used[gpu] + cost > budgets[gpu]:
            gpu += 1
        if gpu == len(budgets):
            return None
        counts[gpu] += 1
        used[gpu] += cost
    last = max(i for i, c in enumerate(counts) if c) if any(counts) else 0
    if used[last] + output > budgets[last]:
        return None
    used[last] += output
    return counts, used


def _estimate(shape: Shape, machine: Machine, on_gpu_layers: list[bool], experts_on_gpu: list[float], per_gpu: list[int]) -> float:
    """Decode tokens/s from the bytes a token reads: all of a layer's weights but its routed experts, of which a
    token reads `active_experts`; GPUs run one after another in a layer split."""
    gpu_time = cpu_time = 0.0
    bandwidths = []
    for gpu, count in enumerate(per_gpu):
        bandwidths += [machine.gpus[gpu].bandwidth_gbps] * count
    layer_index = 0
    for i in range(shape.layers):
        dense_bytes = _dense(shape, i)
        expert_bytes = _layer_experts(shape, i) * shape.active_experts
        if on_gpu_layers[i]:
            bw = bandwidths[layer_index] * GB * GPU_EFFICIENCY
            layer_index += 1
            gpu_time += (dense_bytes + expert_bytes * experts_on_gpu[i]) / bw
            cpu_time += expert_bytes * (1 - experts_on_gpu[i]) / (machine.ram_bandwidth_gbps * GB * CPU_EFFICIENCY)
        else:
            cpu_time += (dense_bytes + expert_bytes) / (machine.ram_bandwidth_gbps * GB * CPU_EFFICIENCY)
    if any(on_gpu_layers) and per_gpu:
        gpu_time += shape.output / (machine.gpus[len([c for c in per_gpu if c]) - 1].bandwidth_gbps * GB * GPU_EFFICIENCY)
    else:
        cpu_time += shape.output / (machine.ram_bandwidth_gbps * GB * CPU_EFFICIENCY)
    return 1.0 / (gpu_time + cpu_time)


def decode_estimate(shape: Shape, machine: Machine, gpu_layers: int, cpu_moe: int, per_gpu_layers: tuple[int, ...]) -> float:
    """The estimate for settings given by hand (-ngl, --n-cpu-moe, --tensor-split as layer counts), e.g. a recipe's,
    to compare with the plan's."""
    on_gpu = [i >= shape.layers - gpu_layers for i in range(shape.layers)]
    experts_on_gpu = [float(on_gpu[i] and i >= cpu_moe) for i in range(shape.layers)]
    return _estimate(shape, machine, on_gpu, experts_on_gpu, list(per_gpu_layers))


def place(shape: Shape, machine: Machine, context: int, *, experts_apart: bool = True, ubatch: int = UBATCH) -> Placement | None:
    """The fastest placement that fits, or None when the weights do not fit GPUs and RAM together.
    `experts_apart=False` is for engines that cannot keep experts in RAM separately (Ollama)."""
    ram_budget = int(machine.ram * RAM_HEADROOM)
    kv = shape.kv_per_token * context // shape.layers

    def result(gpu_layers: int, cpu_moe: int, counts: list[int], used: list[int],
               in_ram: tuple[tuple[int, str], ...] = ()) -> Placement | None:
        """The placement, or None when what stays off the GPUs does not fit RAM (then nothing does: any other
        placement that fits the GPUs leaves more in RAM)."""
        on_gpu = [i >= shape.layers - gpu_layers for i in range(shape.layers)]
        ram_tensors = set(in_ram)
        experts_on_gpu = []
        for i in range(shape.layers):
            total = _layer_experts(shape, i)
            if not on_gpu[i] or i < cpu_moe:
                experts_on_gpu.append(0.0)
            elif total:
                experts_on_gpu.append(sum(b for layer, kind, b in _expert_tensors(shape)
                                          if layer == i and (layer, kind) not in ram_tensors) / total)
            else:
                experts_on_gpu.append(1.0)
        ram = shape.embedding + sum(
            (0 if on_gpu[i] else _dense(shape, i) + kv) + int(_layer_experts(shape, i) * (1 - experts_on_gpu[i]))
            for i in range(shape.layers)) + (0 if counts else shape.output)
        if ram > ram_budget:
            return None
        return Placement(gpu_layers, cpu_moe, tuple(counts), tuple(used), ram,
                         _estimate(shape, machine, on_gpu, experts_on_gpu, counts), in_ram, ubatch)

    if machine.gpus:
        # 1. everything on the GPUs
        budgets = [g.memory - MARGIN - compute_buffer(shape, experts_in_ram=False, ubatch=ubatch) for g in machine.gpus]
        fitted = _assign(_layer_costs(shape, context, 0), budgets, shape.output)
        if fitted:
            return result(shape.layers, 0, *fitted)
        budgets = [g.memory - MARGIN - compute_buffer(shape, experts_in_ram=True, ubatch=ubatch) for g in machine.gpus]
        if shape.experts and experts_apart:
            # 2. every layer on the GPUs, expert tensors filling each GPU to its budget, the rest in RAM
            filled = _fill_experts(shape, kv, budgets)
            if filled:
                return result(shape.layers, 0, *filled)
        # 3. the last N layers on the GPUs (their experts in RAM where the engine can), the rest on the CPU
        cpu_moe = shape.layers if shape.experts and experts_apart else 0
        costs = _layer_costs(shape, context, cpu_moe)
        for n in range(shape.layers - 1, 0, -1):
            fitted = _assign(costs[shape.layers - n:], budgets, shape.output)
            if fitted:
                return result(n, cpu_moe, *fitted)
    return result(0, 0, [], [])


def _fill_experts(shape: Shape, kv: int, budgets: list[int]) -> tuple[list[int], list[int], tuple[tuple[int, str], ...]] | None:
    """Every layer's non-expert weights and KV cache on the GPUs, then routed-expert tensors, one by one, on the
    GPU of their layer while it has room: llama.cpp's --fit arithmetic (common/fit.cpp), which overflows single
    gate/up/down tensors rather than whole layers. The layers are split in proportion to what each GPU can hold
    of a layer's share, so that each GPU has experts of its own to fill itself with; each GPU fills from its
    last layer back, so that the experts in RAM are the first layers' of each GPU. Returns the layers per GPU,
    the bytes per GPU and the (layer, kind) of each tensor left in RAM; None when the non-expert weights do not
    fit."""
    dense = [_dense(shape, i) + kv for i in range(shape.layers)]
    experts = [_layer_experts(shape, i) for i in range(shape.layers)]
    room = sum(budgets) - sum(dense) - shape.output
    if room < 0:
        return None
    share = min(1.0, room / max(sum(experts), 1))
    fitted = None
    while fitted is None and share >= 0:  # rounding (whole layers per GPU) may need a slightly smaller share
        fitted = _assign([d + int(e * share) for d, e in zip(dense, experts)], budgets, shape.output)
        share -= 0.02
    if fitted is None:
        return None
    counts = fitted[0]
    by_layer: dict[int, list[tuple[str, int]]] = {}
    for layer, kind, size in _expert_tensors(shape):
        by_layer.setdefault(layer, []).append((kind, size))
    used, in_ram, first = [], [], 0
    last_gpu = max(i for i, c in enumerate(counts) if c)
    for gpu, count in enumerate(counts):
        layers = range(first, first + count)
        first += count
        total = sum(dense[i] for i in layers) + (shape.output if gpu == last_gpu else 0)
        for i in reversed(layers):
            for kind, size in sorted(by_layer.get(i, []), key=lambda t: EXPERT_ORDER.index(t[0].rsplit("_", 1)[0])):
                if total + size <= budgets[gpu]:
                    total += size
                else:
                    in_ram.append((i, kind))
        used.append(total)
    return counts, used, tuple(sorted(in_ram))


def override_pattern(in_ram: tuple[tuple[int, str], ...]) -> str:
    """llama.cpp's -ot value that keeps these expert tensors in RAM: one regular expression (no ',' or ';', which
    llama-server and llama-bench split on), the layers that keep the same tensors grouped, e.g.
    `blk\\.(3|4|5)\\.ffn_(down_exps|gate_exps|up_exps)|blk\\.(6)\\.ffn_(down_exps)=CPU`."""
    kinds: dict[int, list[str]] = {}
    for layer, kind in in_ram:
        kinds.setdefault(layer, []).append(kind)
    groups: dict[tuple[str, ...], list[int]] = {}
    for layer, ks in sorted(kinds.items()):
        groups.setdefault(tuple(sorted(ks)), []).append(layer)
    parts = [f"blk\\.({'|'.join(map(str, layers))})\\.ffn_({'|'.join(ks)})" for ks, layers in groups.items()]
    return "|".join(parts) + "=CPU" if parts else ""


def llamacpp_plan(name: str, shape: Shape, machine: Machine, context: int, ubatch: int = UBATCH) -> Plan:
    p = place(shape, machine, context, ubatch=ubatch)
    if p is None:
        raise UserError(_refusal(name, shape, machine, context))
    all_layers = p.gpu_layers == shape.layers
    settings = {
        "MODEL": name,
        "LLAMACPP_N_GPU_LAYERS": "all" if all_layers and p.per_gpu_layers else str(p.ngl),
        "LLAMACPP_N_CPU_MOE": str(p.cpu_moe) if p.cpu_moe else "",
        "LLAMACPP_OVERRIDE_TENSOR": override_pattern(p.experts_in_ram),
        "LLAMACPP_SPLIT_MODE": "layer" if len(machine.gpus) > 1 else "",
        "LLAMACPP_TENSOR_SPLIT": ",".join(map(str, p.tensor_split)) if len(machine.gpus) > 1 else "",
        "LLAMACPP_CTX_SIZE": str(context),
        "LLAMACPP_THREADS": str(machine.cores) if machine.cores else "",
        "LLAMACPP_UBATCH": str(p.ubatch) if p.ubatch != UBATCH else "",
        "LLAMACPP_NUMA": "distribute" if machine.numa_nodes > 1 else "",
        "LLAMACPP_PARALLEL": "1",
    }
    return Plan(name, "llamacpp", shape, context, settings, runtime.load("llamacpp").flags(settings), p.describe(shape), p.tokens_per_s,
                p.gpu_bytes, p.ram_bytes, _llamacpp_reasons(shape, machine, context, p))


def _llamacpp_reasons(shape: Shape, machine: Machine, context: int, p: Placement) -> tuple[str, ...]:
    """One line per choice the plan makes for llama.cpp, each with its reason."""
    reasons = [p.describe(shape)]
    if p.experts_in_ram:
        layers = sorted({layer for layer, _ in p.experts_in_ram})
        reasons.append(f"a token reads only a few routed experts, so experts in RAM cost least: every layer stays on the "
                       f"GPUs and single expert tensors fill each GPU to its {MARGIN // 2**20} MiB margin (as --fit "
                       f"does); layer{'s' if len(layers) > 1 else ''} {_ranges(layers)} keep{'' if len(layers) > 1 else 's'} "
                       "experts in RAM")
    elif p.cpu_moe:
        reasons.append("a token reads only a few routed experts, so experts in RAM cost least; layers stay on the GPUs")
    if p.experts_in_ram or p.cpu_moe:
        reasons.append(f"prompt micro-batch -ub {p.ubatch}: with experts in RAM, llama.cpp copies them to the GPU per "
                       f"micro-batch, so a larger one ({HYBRID_UBATCH}) speeds prompts, at "
                       f"{(compute_buffer(shape, True, HYBRID_UBATCH) - compute_buffer(shape, True)) / GIB:.1f} GiB more "
                       "compute buffer per GPU taken from experts; `--measure` tries both")
    kv = shape.kv_per_token * context
    smallest = min((b for _, _, b in _expert_tensors(shape)), default=0)
    reasons.append(f"KV cache f16: {kv / GIB:.2f} GiB at {context} tokens" + (
        f"; q8_0 would free {kv / 2 / GIB:.2f} GiB, less than one expert tensor ({smallest / GIB:.2f} GiB), and costs accuracy"
        if p.experts_in_ram and kv / 2 < smallest else "; a quantized cache costs accuracy, and -c is the lever"))
    if machine.cores:
        reasons.append(f"threads -t {machine.cores}: the physical cores (a second hyper-thread per core only contends "
                       "for the memory bandwidth that expert and CPU layers are bound by)")
    if machine.numa_nodes > 1:
        reasons.append(f"--numa distribute: {machine.numa_nodes} NUMA nodes; spreading the threads and pages over all of "
                       "them uses every node's memory bandwidth (drop the page cache before the first start)")
    return tuple(reasons)


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 7 as '1-3, 7'."""
    out: list[str] = []
    for n in numbers:
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        elif out and "-" not in out[-1] and int(out[-1]) == n - 1:
            out[-1] = f"{out[-1]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def ollama_plan(name: str, shape: Shape, machine: Machine, context: int) -> Plan:
    p = place(shape, machine, context, experts_apart=False)
    if p is None:
        raise UserError(_refusal(name, shape, machine, context))
    settings = {"MODEL": name, "OLLAMA_NUM_GPU": str(p.ngl), "OLLAMA_CONTEXT_LENGTH": str(context)}
    reasons = [p.describe(shape), "Ollama offloads whole layers only (no experts-in-RAM split): llama.cpp is faster here"
               if shape.experts and p.gpu_layers < shape.layers else "whole layers fit as they are"]
    return Plan(name, "ollama", shape, context, settings, runtime.load("ollama").flags(settings),
                p.describe(shape), p.tokens_per_s, p.gpu_bytes, p.ram_bytes, tuple(reasons))


def vllm_plan(name: str, shape: Shape, machine: Machine, context: int) -> Plan:
    """vLLM holds every weight on the GPUs: tensor parallel within a node, pipeline parallel across nodes."""
    gpus_per_node = len(machine.gpus)
    total_gpus = gpus_per_node * machine.nodes
    if not total_gpus:
        raise UserError(f"{name}: vLLM needs GPUs, and this plan has none; describe them with --gpus (and --nodes)")
    usable = sum(g.memory for g in machine.gpus) * machine.nodes * VLLM_UTILIZATION
    kv_per_token = shape.kv_per_token  # vLLM's MLA cache holds the same latent per token as llama.cpp's (bf16)
    kv_room = usable - shape.total
    if kv_room < kv_per_token * context:
        need = (shape.total + kv_per_token * context) / VLLM_UTILIZATION / GB
        raise UserError(f"{name} does not fit vLLM on {total_gpus} GPUs: weights {shape.total / GB:.0f} GB plus the KV cache of one {context}-token sequence need {need:.0f} GB of GPU memory at {VLLM_UTILIZATION:.0%} use, and the GPUs have {sum(g.memory for g in machine.gpus) * machine.nodes / GB:.0f} GB; add GPUs or nodes, or take a GGUF quant with llama.cpp")
    batched = int(min(kv_room // kv_per_token, 65536))
    seqs = max(1, min(256, batched // context))
    settings = {
        "VLLM_MODEL": name,  # the vLLM stack's own variable: the shared MODEL names the GGUF stacks' model
        "VLLM_TENSOR_PARALLEL_SIZE": str(gpus_per_node),
        "VLLM_PIPELINE_PARALLEL_SIZE": str(machine.nodes),
        "VLLM_MAX_MODEL_LEN": str(context),
        "VLLM_GPU_MEMORY_UTILIZATION": f"{VLLM_UTILIZATION:.2f}",
        "VLLM_MAX_NUM_SEQS": str(seqs),
        # R1's experts spread over the GPUs rather than each split across all of them (vLLM's advice for R1).
        "VLLM_EXPERT_PARALLEL": "--enable-expert-parallel" if shape.experts and total_gpus > 1 else "",
    }
    bw = min(g.bandwidth_gbps for g in machine.gpus) * GB * GPU_EFFICIENCY
    per_token = (shape.total - shape.experts + shape.experts * shape.active_experts) / gpus_per_node
    tps = 1.0 / (per_token / bw)
    expectation = (f"weights on {total_gpus} GPUs (tensor parallel {gpus_per_node} within a node, pipeline parallel "
                   f"{machine.nodes} across nodes); room for about {kv_room // kv_per_token:,} tokens of KV cache")
    gpu_each = int((shape.total / total_gpus) + kv_per_token * context / total_gpus)
    return Plan(name, "vllm", shape, context, settings, runtime.load("vllm").flags(settings), expectation, tps, (gpu_each,) * total_gpus, 0,
                ("vLLM serves many users at once; every weight stays on the GPUs",))


def release_pair(catalog: ModelCatalog, name: str) -> tuple[Model, list[Model]]:
    """ktransformers' two halves of one release, for a catalog name of either: the safetensors folder (KT_MODEL: config,
    tokenizer and the GPU part's weights) and the GGUFs whose routed experts the CPU may run (KT_EXPERTS): the one
    named, or the release's, largest first. The experts must be that model's, so both come from the same architecture
    and release date."""
    entry = catalog.models.get(name)
    served = sorted(m.name for m in catalog.models.values() if "ktransformers" in m.engines)
    if entry is None or "ktransformers" not in entry.engines:
        raise UserError(f"{shown(name)}: ktransformers is planned by catalog name, one of {', '.join(served)} (the stack "
                        "fetches its model folder and its experts by name); give one of them")
    pair = [m for m in catalog.models.values() if "ktransformers" in m.engines and (m.arch, m.released) == (entry.arch, entry.released)]
    weights = [m for m in pair if m.format == "safetensors"]
    experts = [m for m in pair if m.format == "gguf"]
    if len(weights) != 1 or not experts or "routed_experts" not in catalog.architectures.get(entry.arch or "", {}):
        raise UserError(f"models.yaml: {name}'s release needs one safetensors and a GGUF entry served by ktransformers, "
                        "and its architecture's routed_experts, for ktransformers to be planned")
    return weights[0], [entry] if entry.format == "gguf" else sorted(experts, key=lambda m: -(m.approx_size_gb or 0))


def tensor_parallel(gpus: int) -> int:
    """The largest power of two GPUs, up to KT_MAX_TP, that sglang can split R1 over."""
    tp = 1
    while tp * 2 <= min(gpus, KT_MAX_TP):
        tp *= 2
    return tp


def ktransformers_plan(name: str, shape: Shape, machine: Machine, context: int) -> Plan:
    """ktransformers (kt-kernel + sglang-kt): attention, the dense layers and the shared experts on the GPUs, from
    the release's safetensors folder; the routed experts in RAM, from its GGUF, run by kt-kernel on the CPU; as many
    experts per MoE layer as fit on the GPUs besides. `shape` is one of the two halves; both are sized from the
    catalog's estimates, since the stack fetches them by name."""
    catalog = load()  # the shipped catalog: the stack fetches both halves by these names
    weights, candidates = release_pair(catalog, name)
    gpu_part = shape_for(weights, catalog.architectures)
    routed = int(catalog.architectures[weights.arch or ""]["routed_experts"])
    if not machine.gpus:
        raise UserError(f"{name}: ktransformers runs attention, the dense layers and the shared experts on an NVIDIA GPU, "
                        "and this plan has none; describe one with --gpus (24 GB or more), or leave --engine out for llama.cpp")
    if machine.cpu_level == "baseline":
        raise UserError(f"{name}: kt-kernel's CPU kernels need AVX2 at least, and this CPU has none of AVX2, AVX-512 or "
                        "AMX; run ktransformers on an x86 CPU with AVX2, or leave --engine out for llama.cpp")
    tp = tensor_parallel(len(machine.gpus))
    gpus = machine.gpus[:tp]
    budget = min(g.memory for g in gpus) * KT_MEM_FRACTION - MARGIN
    dense = gpu_part.total - gpu_part.experts  # attention, dense layers, shared experts, embedding and head (FP8)
    kv = gpu_part.kv_per_token * context  # MLA's latent cache: every tensor-parallel rank holds all of it
    fixed = dense / tp + kv
    if fixed > budget:
        need = (fixed + MARGIN) / KT_MEM_FRACTION
        raise UserError(f"{name} does not fit ktransformers' GPU part: {weights.name}'s non-expert weights (about "
                        f"{dense / GB:.0f} GB{f' over {tp} GPUs' if tp > 1 else ''}) and a {context}-token KV cache need "
                        f"about {need / GIB:.0f} GiB per GPU at --mem-fraction-static {KT_MEM_FRACTION:g}, and "
                        f"{'the GPU has' if tp == 1 else 'the smallest has'} {min(g.memory for g in gpus) / GIB:.0f} GiB; "
                        "use a larger GPU or more of them, give a smaller --ctx, or leave --engine out for llama.cpp")
    # The largest quant whose routed experts fit RAM: kt-kernel holds every one of them there.
    ram_budget = machine.ram * RAM_HEADROOM
    fitting = [(m, s) for m in candidates if (s := shape_for(m, catalog.architectures)).experts <= ram_budget]
    if not fitting:
        experts, cpu_part = candidates[-1], shape_for(candidates[-1], catalog.architectures)
        raise UserError(f"{name} does not fit ktransformers' CPU part: {experts.name}'s routed experts (about "
                        f"{cpu_part.experts / GB:.0f} GB) stay in RAM for kt-kernel, and this machine has "
                        f"{ram_budget / GB:.0f} GB to give ({RAM_HEADROOM:.0%} of {machine.ram / GIB:.0f} GiB available); "
                        f"it needs about {cpu_part.experts / RAM_HEADROOM / GIB:.0f} GiB of available RAM, or leave "
                        "--engine out: llama.cpp plans a smaller quant")
    experts, cpu_part = fitting[0]
    per_expert = gpu_part.experts / routed / tp  # one expert in every MoE layer, FP8, per GPU
    on_gpu = min(routed, int((budget - fixed) // per_expert))
    gpu_bytes = int(fixed + on_gpu * per_expert)
    settings = {
        "KT_MODEL": weights.name,
        "KT_EXPERTS": experts.name,
        "KT_METHOD": "LLAMAFILE",
        "KT_CPU_THREADS": str(machine.cores) if machine.cores else "",
        "KT_NUMA_NODES": str(machine.numa_nodes),
        "KT_NUM_GPU_EXPERTS": str(on_gpu),
        "KT_CTX_SIZE": str(context),
        "KT_MEM_FRACTION": f"{KT_MEM_FRACTION:g}",
        "KT_TP_SIZE": str(tp),
    }
    # Decode reads every non-expert weight on the GPUs and a token's 8 routed experts, each on the GPU at the share
    # held there (uniform placement), else from RAM through kt-kernel.
    share = on_gpu / routed
    gpu_bw = min(g.bandwidth_gbps for g in gpus) * GB * GPU_EFFICIENCY
    gpu_time = (dense - gpu_part.embedding + gpu_part.experts * gpu_part.active_experts * share) / tp / gpu_bw
    cpu_time = cpu_part.experts * cpu_part.active_experts * (1 - share) / (machine.ram_bandwidth_gbps * GB * CPU_EFFICIENCY)
    where = "the GPU" if tp == 1 else f"{tp} GPUs"
    expectation = (f"attention, dense layers and shared experts on {where} with {on_gpu} of {routed} experts per MoE layer; "
                   f"the other routed experts in RAM on the CPU (kt-kernel)")
    reasons = [
        f"KT_MODEL={weights.name}: the model's folder (config, tokenizer, and the GPU part: about {dense / GB:.0f} GB of "
        f"non-expert weights in FP8); KT_EXPERTS={experts.name}: the same release's GGUF, whose {cpu_part.experts / GB:.0f} GB "
        "of routed experts stay in RAM (the experts must be that model's)" + (
            f"; the largest of {', '.join(m.name for m in candidates)} whose experts fit {ram_budget / GB:.0f} GB of RAM"
            if len(candidates) > 1 else ""),
        "KT_METHOD=LLAMAFILE: kt-kernel reads the GGUF's experts as they are" + (
            "; AMXINT4/AMXINT8 would use this CPU's AMX but need experts converted by kt-kernel, which the stack does not do"
            if machine.cpu_level == "amx" else ""),
        f"KT_NUM_GPU_EXPERTS={on_gpu}: each expert kept on {where} in every MoE layer costs {per_expert / GIB:.1f} GiB per GPU, "
        f"and {(budget - fixed) / GIB:.1f} GiB is left per GPU after the GPU part, the KV cache, the {1 - KT_MEM_FRACTION:.0%} "
        f"sglang keeps for activations and a {MARGIN // 2**20} MiB margin",
        f"KV cache: {kv / GIB:.2f} GiB for one {context}-token sequence (MLA); sglang's pool takes the rest of its "
        f"{KT_MEM_FRACTION:g} share",
        f"downloads: {weights.name} (about {weights.approx_size_gb:g} GB) and {experts.name} (about {experts.approx_size_gb:g} GB)",
    ]
    if machine.cores:
        reasons.append(f"KT_CPU_THREADS={machine.cores}: the physical cores (kt-kernel's advice; a second hyper-thread per "
                       "core only contends for the memory bandwidth the experts are bound by)")
    reasons.append(f"KT_NUMA_NODES={machine.numa_nodes}: one kt-kernel thread pool per NUMA node, each reading its node's memory"
                   + ("; the stack needs `cap_add: [SYS_NICE]` to bind them (docs/stacks.md)" if machine.numa_nodes > 1 else ""))
    if tp > 1 or len(machine.gpus) > 1:
        reasons.append(f"KT_TP_SIZE={tp}: sglang's tensor parallel splits the GPU part over {tp} GPUs (a power of two, at "
                       f"most {KT_MAX_TP})" + (f"; {len(machine.gpus) - tp} GPU(s) left unused" if len(machine.gpus) > tp else ""))
    # The plan is the experts' GGUF's: what the RAM holds and the tokens read most; KT_MODEL is said in its settings.
    return Plan(experts.name, "ktransformers", cpu_part, context, settings, runtime.load("ktransformers").flags(settings),
                expectation, 1.0 / (gpu_time + cpu_time), (gpu_bytes,) * tp, int(cpu_part.experts), tuple(reasons),
                download=gpu_part.total + cpu_part.total)


PLANNERS = {"llamacpp": llamacpp_plan, "ollama": ollama_plan, "vllm": vllm_plan, "ktransformers": ktransformers_plan}


def _refusal(name: str, shape: Shape, machine: Machine, context: int) -> str:
    have = machine.gpu_memory + machine.ram * RAM_HEADROOM
    need = shape.total + shape.kv_per_token * context
    return (f"{name} does not fit: its weights and a {context}-token KV cache need about {need / GB:.0f} GB, and this "
            f"machine has {machine.gpu_memory / GB:.0f} GB of GPU memory and {machine.ram * RAM_HEADROOM / GB:.0f} GB "
            f"of RAM to give ({have / GB:.0f} GB); take a smaller quant (builder plan without a model recommends one)")


def shape_for(model: Model, catalog_arches: Mapping[str, Mapping[str, Any]]) -> Shape:
    if not model.arch or model.arch not in catalog_arches or not model.approx_size_gb:
        raise UserError(f"{model.name}: the catalog has no architecture for it, so it cannot be planned; give the downloaded .gguf path instead")
    return from_catalog(model.name, model.approx_size_gb, catalog_arches[model.arch])


def check_context(shape: Shape, context: int | None) -> int:
    if context is None:
        return min(DEFAULT_CONTEXT, shape.max_context)
    if context > shape.max_context:
        raise UserError(f"--ctx {context} is more than {shape.name} supports ({shape.max_context} tokens); give --ctx {shape.max_context} or less")
    return context


def plan_model(name: str, shape: Shape, machine: Machine, engine: str, context: int | None, *, catalog_name: bool = True) -> Plan:
    ctx = check_context(shape, context)
    plan = PLANNERS[engine](name, shape, machine, ctx)
    if not catalog_name:
        plan = replace(plan, settings={k: v for k, v in plan.settings.items() if k not in ("MODEL", "VLLM_MODEL")})
    return _with_notes(plan, machine)


def _with_notes(plan: Plan, machine: Machine) -> Plan:
    notes = list(machine.notes)
    need = max(plan.download, plan.shape.total)
    if machine.disk_free is not None and plan.shape.source == "catalog estimate" and machine.disk_free < need:
        notes.append(f"the models folder has {machine.disk_free / GB:.0f} GB free and {plan.model} needs about {need / GB:.0f} GB: free space or pick another --dest")
    return replace(plan, notes=tuple(notes))


def engines_for(model: Model, wanted: str | None) -> list[str]:
    usable = [e for e in model.engines if e in PLANNERS and e not in ASKED_ONLY]
    if wanted:
        if wanted not in model.engines:
            raise UserError(f"{model.name} is not served by {wanted} (it is by {', '.join(model.engines) or 'no engine yet'}); pick another model or engine")
        return [wanted]
    return usable


def recommend(catalog: ModelCatalog, machine: Machine, engine: str | None, context: int | None) -> tuple[Plan, list[str]]:
    """The best DeepSeek-R1 variant that fits and decodes at a useful speed. Quality order: the full model before
    the distills, its original weights (FP8, vLLM) before quants, the newer release before the older (R1-0528 at
    any quant before R1: DeepSeek's update scores higher than the original), larger quants before smaller. Returns
    the plan and why each better one was passed over."""
    ranked = sorted((m for m in catalog.models.values() if m.arch and m.approx_size_gb and m.recommend),
                    key=lambda m: (-float(catalog.architectures[m.arch]["params_b"]), m.format != "safetensors",
                                   -date.fromisoformat(m.released).toordinal() if m.released else 0, -m.approx_size_gb))
    passed: list[str] = []
    refused: UserError | None = None  # the best model's refusal: what a named engine that fits nothing here says
    slow: str | None = None  # the best model that fits, too slowly
    for model in ranked:
        engines = [e for e in (engines_for(model, None) if engine is None else [engine] if engine in model.engines else [])
                   if machine.nodes == 1 or e == "vllm"]  # only vLLM spans nodes
        reasons = []
        for eng in engines:
            try:
                plan = plan_model(model.name, shape_for(model, catalog.architectures), machine, eng, context)
            except UserError as e:
                refused = refused or e
                reasons.append(f"{eng}: does not fit")
                continue
            if plan.tokens_per_s < MIN_USEFUL_TPS:
                slow = slow or f"{model.name} on {eng} at about {plan.tokens_per_s:.1f} tokens/s"
                reasons.append(f"{eng}: fits, at about {plan.tokens_per_s:.1f} tokens/s")
                continue
            return plan, passed
        if reasons:
            passed.append(f"{model.name} ({model.approx_size_gb:g} GB): " + "; ".join(reasons))
    if engine and refused is not None and not slow:
        raise refused
    raise UserError("nothing in the catalog fits this machine" + (f" with {engine}" if engine else "")
                    + (f" at {MIN_USEFUL_TPS:g} tokens/s or more (the best: {slow})" if slow else "") + "; see `builder models`")


FILE_ENGINE = "llamacpp"  # a .gguf file named directly: llama.cpp loads it as it is


def choose(catalog: ModelCatalog, machine: Machine, model: str | None, engine: str | None, context: int | None) -> tuple[Plan, list[str]]:
    """`builder plan [MODEL]`: the recommendation (no MODEL), a downloaded .gguf (its header gives the exact sizes;
    the stack's MODEL stays as it is), or a catalog name on its first engine the planner knows. Returns the plan and
    the better models passed over."""
    if engine is not None and engine not in PLANNERS:
        raise UserError(f"--engine {shown(engine)}: the planner knows {', '.join(PLANNERS)}")
    if model is None:
        return recommend(catalog, machine, engine, context)
    if model.endswith(".gguf") or "/" in model:
        return plan_model(Path(model).name, from_gguf(Path(model)), machine, engine or FILE_ENGINE, context, catalog_name=False), []
    entry = catalog.get(model)
    engines = engines_for(entry, engine)
    if not engines:
        raise UserError(f"{model}: the planner knows none of its engines ({', '.join(entry.engines) or 'none yet'})")
    return plan_model(model, shape_for(entry, catalog.architectures), machine, engines[0], context), []


def report(plan: Plan, machine: Machine, passed: list[str] | None = None) -> str:
    """The plan as a person reads it."""
    gpus = ", ".join(f"{g.name} ({g.memory_gib:.0f} GiB{' free' if g.compute_capability else ''})" for g in machine.gpus) or "no GPU"
    nodes = f"{machine.nodes} nodes of " if machine.nodes > 1 else ""
    lines = [
        f"machine:  {nodes}{gpus}; {machine.ram / GIB:.0f} GiB RAM, {machine.cores} cores ({machine.cpu_level}), "
        f"{machine.numa_nodes} NUMA node{'s' if machine.numa_nodes > 1 else ''}",
        f"model:    {plan.model} ({plan.shape.source}: {plan.shape.total / GB:.0f} GB"
        + (f", routed experts {plan.shape.experts / GB:.0f} GB" if plan.shape.experts else "") + ")",
        f"engine:   {plan.engine}: {plan.expectation}",
    ]
    if plan.gpu_bytes:
        lines.append("memory:   " + ", ".join(f"GPU{i} {b / GIB:.1f} GiB" for i, b in enumerate(plan.gpu_bytes[:8]))
                     + (" ..." if len(plan.gpu_bytes) > 8 else "") + f"; RAM {plan.ram_bytes / GIB:.0f} GiB")
    lines.append(f"decode:   about {plan.tokens_per_s:.0f} tokens/s for one user (an estimate from memory bandwidth)")
    lines.append("settings: " + " ".join(f"{k}={v}" for k, v in plan.settings.items() if v))
    lines.append("flags:    " + " ".join(plan.flags))
    lines += [f"why:      {r}" for r in plan.reasons]
    if passed:
        lines += [f"passed:   {p}" for p in passed[:6]]
    lines += [f"note:     {n}" for n in plan.notes]
    return "\n".join(lines)
