"""`builder plan`'s tensor-granularity placement (issue 28) against the real tensor table of a deepseek2 GGUF and
against llama.cpp's own arithmetic: its -ot parsing (common/arg.cpp: ',' separates overrides, the first '=' ends
the pattern; llama-bench: ';' and ','), its regex_search over tensor names, its --fit's per-layer MoE pattern
(common/fit.cpp, LAYER_FRACTION_MOE) and its layer-to-GPU mapping for -ngl and --tensor-split (test_plan.py's
llamacpp_devices). Then `--measure`'s pure parts: llama-bench's arguments, the ranking, the cache's key, and the
CLI's refusals."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from support.builder import builder_in_process as builder
from support.tiny_gguf import Deepseek2, write_tiny_deepseek2
from test_plan import llamacpp_devices, machine

from builder.models import catalog as models
from builder.models.shapes import EXPERT_TENSOR, from_gguf
from builder.plan import measure, planner

# common/fit.cpp: the pattern --fit gives a layer whose routed experts all stay in RAM.
FIT_MOE = r"blk\.{il}\.ffn_(up|down|gate_up|gate)_(ch|)exps"
# 12 experts of 512 x 256 (f32): three 6 MiB tensors per MoE layer, 5 MoE layers after one dense.
DIMS = Deepseek2(n_embd=256, n_layer=6, n_ff=512, n_ff_exp=512, n_expert=12, n_expert_used=2)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    path = write_tiny_deepseek2(tmp_path_factory.mktemp("tensors") / "ds2.gguf", DIMS)
    import gguf as g

    names = [t.name for t in g.GGUFReader(path).tensors]
    return path, from_gguf(path), names


def small_gpus(spec: str) -> planner.Machine:
    """GPUs of a few tens of MiB of room each after the 1 GiB margin and the compute buffer (about 1.5 GiB): room
    for some of the tiny model's expert tensors, not all."""
    return machine(spec, 8, 4, "avx2")


def ram_pattern(settings: dict[str, str]) -> re.Pattern[str]:
    """The -ot value as llama-server parses it: one override (no ','), pattern before the first '=', buffer CPU."""
    value = settings["LLAMACPP_OVERRIDE_TENSOR"]
    assert "," not in value and ";" not in value, value  # neither llama-server's nor llama-bench's separator
    pattern, buft = value.split("=", 1)
    assert buft == "CPU"
    return re.compile(pattern)


def test_the_header_gives_each_layer_and_each_expert_tensor(gguf):
    _, shape, names = gguf
    assert [layer for layer, _, _ in shape.expert_tensors] == [i for i in range(1, 6) for _ in range(3)]
    assert {kind for _, kind, _ in shape.expert_tensors} == {"gate_exps", "up_exps", "down_exps"}
    assert all(size == 12 * 512 * 256 * 4 for _, _, size in shape.expert_tensors)
    assert sum(size for _, _, size in shape.expert_tensors) == shape.experts
    output_norm = DIMS.n_embd * 4  # the one tensor neither in a layer nor the embedding or output head
    assert sum(shape.layer_bytes) + shape.experts + shape.embedding + shape.output + output_norm == shape.total
    assert len(shape.layer_bytes) == 6 and shape.layer_bytes[0] != shape.layer_bytes[1]  # the dense FFN is not a MoE's
    assert len([n for n in names if EXPERT_TENSOR.match(n)]) == 15


@pytest.mark.parametrize("gpus", ["1x1.55", "1x1.59", "2x1.54", "1.52,1.53,1.52"])
def test_expert_tensors_fill_each_gpu_to_its_budget(gguf, gpus):
    """Every GPU holds at most its budget, and no tensor left in RAM would still fit its layer's GPU: filled to
    the margin, one tensor at a time, not one layer."""
    _, shape, _ = gguf
    box = small_gpus(gpus)
    p = planner.place(shape, box, 1024)
    assert p is not None and p.gpu_layers == shape.layers and p.experts_in_ram, p
    budgets = [g.memory - planner.MARGIN - planner.compute_buffer(shape, True) for g in box.gpus]
    assert all(used <= budget for used, budget in zip(p.gpu_bytes, budgets))
    gpu_of = [gpu for gpu, count in enumerate(p.per_gpu_layers) for _ in range(count)]
    sizes = {(layer, kind): size for layer, kind, size in shape.expert_tensors}
    for layer, kind in p.experts_in_ram:
        gpu = gpu_of[layer]
        assert p.gpu_bytes[gpu] + sizes[layer, kind] > budgets[gpu], (layer, kind)
    on_gpu = len(shape.expert_tensors) - len(p.experts_in_ram)
    assert 0 < on_gpu < len(shape.expert_tensors)


@pytest.mark.parametrize("gpus", ["1x1.55", "2x1.54", "1.52,1.53,1.52"])
def test_the_override_selects_exactly_the_tensors_in_ram(gguf, gpus):
    """llama.cpp matches each tensor name with std::regex_search: the plan's pattern must select the expert tensors
    it keeps in RAM and nothing else (not the shared experts, not another layer's with the same digit)."""
    _, shape, names = gguf
    plan = planner.llamacpp_plan("ds2", shape, small_gpus(gpus), 1024)
    p = planner.place(shape, small_gpus(gpus), 1024)
    pattern = ram_pattern(plan.settings)
    selected = {n for n in names if pattern.search(n)}
    expected = {f"blk.{layer}.ffn_{kind}.weight" for layer, kind in p.experts_in_ram}
    assert selected == expected
    assert plan.settings["LLAMACPP_N_GPU_LAYERS"] == "all" and plan.settings["LLAMACPP_N_CPU_MOE"] == ""
    assert "-ot" in plan.flags and plan.flags[plan.flags.index("-ot") + 1] == plan.settings["LLAMACPP_OVERRIDE_TENSOR"]


def test_a_layer_fully_in_ram_is_what_fits_moe_pattern_selects():
    """Where every expert tensor of a layer stays in RAM, the plan's pattern selects what --fit's own per-layer MoE
    pattern does, for layers whose numbers share digits (1, 11, 21)."""
    names = [f"blk.{i}.{t}.weight" for i in range(30) for t in
             ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_down_shexp", "attn_q_a", "ffn_gate_inp")]
    layers = (1, 11, 21)
    ours = re.compile(planner.override_pattern(tuple((i, f"{k}_exps") for i in layers for k in ("gate", "up", "down"))).split("=")[0])
    fits = [re.compile(FIT_MOE.format(il=i)) for i in layers]
    assert {n for n in names if ours.search(n)} == {n for n in names if any(f.search(n) for f in fits)}


def test_several_gpus_get_the_layers_llamacpp_gives_them():
    """R1 Q4_K_M on 4 RTX 4090s: each GPU filled with expert tensors of its own layers, less than one expert tensor
    unused on each, and llama.cpp's mapping of -ngl and the split puts each layer where the plan filled it."""
    catalog = models.load()
    name = next(n for n in ("r1-0528-q4_k_m", "r1-671b-q4_k_m") if n in catalog.models)
    shape = planner.shape_for(catalog.get(name), catalog.architectures)
    box = machine("4xRTX4090", 384, 64, "avx512")
    p = planner.place(shape, box, 8192)
    plan = planner.llamacpp_plan(name, shape, box, 8192)
    budgets = [g.memory - planner.MARGIN - planner.compute_buffer(shape, True) for g in box.gpus]
    tensor = max(size for _, _, size in planner._expert_tensors(shape))
    assert all(0 <= budget - used < tensor for used, budget in zip(p.gpu_bytes, budgets)), (p.gpu_bytes, budgets)
    split = [int(x) for x in plan.settings["LLAMACPP_TENSOR_SPLIT"].split(",")]
    devices = llamacpp_devices(shape.layers, p.ngl, split)
    expected = [gpu for gpu, count in enumerate(p.per_gpu_layers) for _ in range(count)] + [len(box.gpus) - 1]
    assert devices == expected
    # Each GPU keeps experts of its own first layers in RAM and fills from its last layer back.
    in_ram = {layer for layer, _ in p.experts_in_ram}
    first = 0
    for count in p.per_gpu_layers:
        mine = [i for i in range(first, first + count) if i >= shape.dense_layers]
        first += count
        assert [i in in_ram for i in mine] == sorted((i in in_ram for i in mine), reverse=True)
    assert plan.tokens_per_s > planner.decode_estimate(shape, box, shape.layers, shape.layers, p.per_gpu_layers)


def test_more_memory_never_places_fewer_experts_on_the_gpu(gguf):
    _, shape, _ = gguf
    on_gpu = []
    for mib in range(1600, 1700, 4):
        p = planner.place(shape, machine(f"1x{mib / 1024:.4f}", 8, 4, "avx2"), 1024)
        on_gpu.append(len(shape.expert_tensors) - len(p.experts_in_ram) if p.gpu_layers == shape.layers else -1)
    assert on_gpu == sorted(on_gpu) and on_gpu[-1] == len(shape.expert_tensors)


def test_each_choice_has_its_reason(gguf):
    _, shape, _ = gguf
    plan = planner.llamacpp_plan("ds2", shape, machine("1x1.55", 8, 4, "avx2", numa=2), 1024)
    text = " ".join(plan.reasons)
    for said in ("routed-expert tensors", "-ub 512", "KV cache f16", "threads -t 4", "--numa distribute"):
        assert said in text, said
    assert plan.settings["LLAMACPP_NUMA"] == "distribute" and plan.settings["LLAMACPP_THREADS"] == "4"
    hybrid = planner.llamacpp_plan("ds2", shape, machine("1x2.5", 8, 4, "avx2"), 1024, ubatch=planner.HYBRID_UBATCH)
    assert hybrid.settings["LLAMACPP_UBATCH"] == "2048" and "-ub" in hybrid.flags


def test_bench_args_are_llama_benchs_forms_of_the_settings():
    settings = {"LLAMACPP_N_GPU_LAYERS": "all", "LLAMACPP_OVERRIDE_TENSOR": r"blk\.(3)\.ffn_(up_exps)=CPU",
                "LLAMACPP_SPLIT_MODE": "layer", "LLAMACPP_TENSOR_SPLIT": "30,32", "LLAMACPP_THREADS": "16",
                "LLAMACPP_UBATCH": "2048", "LLAMACPP_CTX_SIZE": "8192", "LLAMACPP_N_CPU_MOE": ""}
    args = measure.bench_args(settings)
    assert args == ("-fa", "1", "-ngl", "999", "-ot", r"blk\.(3)\.ffn_(up_exps)=CPU", "-sm", "layer", "-t", "16",
                    "-ub", "2048", "-ts", "30/32")
    fit = measure.bench_args({**settings, **{k: "" for k in measure.PLACEMENT}})
    assert fit == ("-fa", "1", "-t", "16", "-fitt", "1024")


def error_after_progress(done) -> str:
    """A refusal after --measure's progress lines (each candidate as it starts and ends): exit status 2, and the
    error one line, the last."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1].startswith("error: ") and not any(l.startswith("error: ") for l in lines[:-1]), done.stderr
    assert all(l.startswith(("measuring ", "  ")) for l in lines[:-1]), done.stderr
    return lines[-1]


def result(name: str, tg: float, tg_sd: float, pp: float, error: str = "") -> measure.Result:
    return measure.Result(name, (), pp, 1.0, tg, tg_sd, error)


def test_the_fastest_decode_wins_and_prompts_break_ties_within_the_spread():
    assert measure.fastest([result("a", 100, 1, 10), result("b", 90, 1, 99)]).name == "a"
    assert measure.fastest([result("a", 100, 1, 10), result("b", 99, 0.5, 99)]).name == "b"  # within 1%: a tie
    assert measure.fastest([result("a", 100, 3, 10), result("b", 98, 0.5, 99)]).name == "b"  # within a's spread
    # A noisy candidate's own spread buys no tie (2026-12-06, q2_k at 21 GiB: the fit's 199 ± 49 won by prompts).
    run = [result("plan", 211.5, 5.8, 8184), result("plan -ub 2048", 246.8, 7.8, 7308), result("fit", 199.2, 49.4, 8133)]
    assert measure.fastest(run).name == "plan -ub 2048"
    assert measure.fastest([result("a", 0, 0, 0, "out of memory"), result("fit", 5, 0, 5)]).name == "fit"
    assert measure.fastest([result("a", 0, 0, 0, "out of memory")]) is None


def test_the_cache_key_changes_with_the_model_file_and_the_free_memory(gguf, tmp_path):
    path, _, _ = gguf
    box = machine("1x24", 8, 4, "avx2")
    free = lambda gib: replace(box, gpus=(replace(box.gpus[0], memory=int(gib * 2**30)),))  # noqa: E731
    key = measure.identity(path, box, 8192)
    assert key == measure.identity(path, free(24.5), 8192)  # whole GiB: noise stays out
    assert key != measure.identity(path, free(23.9), 8192)
    assert key != measure.identity(path, machine("1x24", 8, 4, "avx2"), 4096)
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes() + b"\0" * 32)
    assert key["model"] != measure.identity(copy, machine("1x24", 8, 4, "avx2"), 8192)["model"]
    assert measure.cache_file(path) == path.with_name(f".{path.name}.r1kit-measure.json")


@pytest.mark.parametrize("args,message", [
    (["--llama-bench", "llama-bench"], "--llama-bench is for --measure"),
    (["--measure"], "--measure runs the model: give the downloaded .gguf path"),
    (["--measure", "--engine", "ollama", "{model}"], "--measure runs llama-bench, so it plans for llama.cpp"),
    (["--measure", "--llama-bench", "", "{model}"], "--llama-bench is empty"),
    (["--measure", "--llama-bench", "'unclosed", "{model}"], "not a command line"),
    (["--measure", "--llama-bench", "/nonexistent/llama-bench", "{model}"], "is not a command here"),
])
def test_measure_refuses_bad_input_in_one_line(gguf, args, message):
    path, _, _ = gguf
    done = builder("plan", *[str(path) if a == "{model}" else a for a in args], "--gpus", "1x24", "--ram", "8", "--cores", "2",
                   "--cpu", "avx2", check=False, capture_output=True)
    assert message in error_after_progress(done)
    assert not measure.cache_file(path).exists()


def test_a_failed_llama_bench_is_a_refusal_that_names_each_candidate(gguf):
    path, _, _ = gguf
    done = builder("plan", str(path), "--measure", "--llama-bench", "false", "--gpus", "1x1.55", "--ram", "8", "--cores", "2",
                   "--cpu", "avx2", check=False, capture_output=True)
    line = error_after_progress(done)
    assert "no candidate ran" in line and "plan:" in line and "llama.cpp fit:" in line
    assert not measure.cache_file(path).exists() and done.stdout == ""
